from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("export/<slug:table>.csv", views.export, name="home-export"),
]
