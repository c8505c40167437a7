from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "analytics"

    def ready(self) -> None:
        from . import ports

        ports.connect()  # its side of recovery's ports
        from .metrics import connect_signals

        connect_signals()
