from django.urls import path

from . import views

urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("queue/<int:pk>/<slug:action>/", views.queue_action, name="queue-action"),
]
