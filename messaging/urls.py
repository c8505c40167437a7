from django.urls import path

from . import views, webhooks

urlpatterns = [
    path("pay/<str:token>/", views.pay, name="pay"),
    path("pay/<str:token>/complete/", views.pay_complete, name="pay-complete"),
    path("pay/<str:token>/fresh-link/", views.pay_fresh_link, name="pay-fresh-link"),
    path("webhooks/twilio/status/", webhooks.twilio_status, name="twilio-status"),
    path("webhooks/twilio/inbound/", webhooks.twilio_inbound, name="twilio-inbound"),
    path("webhooks/postmark/", webhooks.postmark_webhook, name="postmark-webhook"),
]
