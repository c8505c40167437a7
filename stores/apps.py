from django.apps import AppConfig
from django.db.backends.signals import connection_created

from common.db import session_settings_apply


class StoresConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "stores"

    def ready(self):
        from . import login_limits  # noqa: F401  (connects the login-failure counting)

        # PostgreSQL session settings on each new connection (settings.DATABASE_SESSION_SETTINGS).
        connection_created.connect(session_settings_apply, dispatch_uid="recoup-session-settings")
