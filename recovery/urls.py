from django.urls import path

from . import views

urlpatterns = [
    path("cases/", views.case_list, name="case-list"),
    path("cases/<int:pk>/", views.case_detail, name="case-detail"),
    path("cases/<int:pk>/<slug:action>/", views.case_action, name="case-action"),
    path("customers/", views.customer_list, name="customer-list"),
    path("customers/<int:pk>/", views.customer_detail, name="customer-detail"),
]
