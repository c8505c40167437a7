from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SupportConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "support"

    def ready(self) -> None:
        from . import ports

        ports.connect()  # its side of recovery's ports
        from .tasks import schedules_register

        post_migrate.connect(schedules_register, sender=self)
