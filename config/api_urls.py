from django.urls import path

from recovery import api as recovery_api

urlpatterns = [
    path("cases/", recovery_api.CaseListView.as_view(), name="api-case-list"),
    path("cases/<int:pk>/", recovery_api.CaseDetailView.as_view(), name="api-case-detail"),
]
