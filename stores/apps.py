from django.apps import AppConfig


class StoresConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "stores"

    def ready(self):
        from django.db.backends.signals import connection_created

        from common.db import session_settings_apply

        from . import login_limits  # noqa: F401  (connects the login-failure counting)

        connection_created.connect(session_settings_apply, dispatch_uid="recoup-session-settings")
