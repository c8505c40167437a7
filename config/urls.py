from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from common.api import api_not_found
from recovery.webhooks import stripe_webhook
from stores.views import admin_login


def healthz(request):
    return JsonResponse({"ok": True})


urlpatterns = [
    path("admin/login/", admin_login),  # the admin's login behind the dashboard's limits
    path("admin/", admin.site.urls),
    path("webhooks/stripe/<str:store_id>/", stripe_webhook, name="stripe-webhook"),
    path("api/v1/", include("config.api_urls")),
    path("", include("messaging.urls")),  # /pay/<token>/ and Twilio/Postmark webhooks
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    re_path(r"^api/(?P<path>.*)$", api_not_found),  # any other /api/ address: a JSON 404
    path("healthz", healthz),
    path("", include("stores.urls")),  # the dashboard: /, /accounts/…, /s/<store_id>/…
]
