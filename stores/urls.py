"""The dashboard's URLs. Every page of a store lives under /s/<store_id>/, so the
access check (stores.access) sees which store is asked for before anything else."""

from django.urls import include, path

from . import views

settings_patterns = [
    path("", views.settings_index, name="settings"),
    path("retry-policy/", views.settings_retry, name="settings-retry"),
    path("templates/", views.settings_templates, name="settings-templates"),
    path(
        "templates/<slug:purpose>/<slug:channel>/",
        views.settings_template_edit,
        name="settings-template-edit",
    ),
    path("escalation/", views.settings_escalation, name="settings-escalation"),
    path("holds/", views.settings_holds, name="settings-holds"),
    path("connections/", views.settings_connections, name="settings-connections"),
    path(
        "connections/<slug:action>/",
        views.settings_connection_action,
        name="settings-connection-action",
    ),
]

store_patterns = [
    path("", include("analytics.urls")),
    path("", include("recovery.urls")),
    path("", include("support.urls")),
    path("settings/", include(settings_patterns)),
]

urlpatterns = [
    path("", views.root, name="dashboard-root"),
    path("switch/", views.store_switch, name="store-switch"),
    path("accounts/login/", views.RateLimitedLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("s/<uuid:store_id>/", include(store_patterns)),
]
