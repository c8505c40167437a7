from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RecoveryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "recovery"

    def ready(self) -> None:
        from django.core import checks

        from .ports import wiring_problems

        @checks.register()
        def recovery_ports_check(app_configs=None, **kwargs):
            """Every port plugged and every event that must be handled subscribed to."""
            return [checks.Error(problem, id="recovery.E001") for problem in wiring_problems()]

        from .tasks import schedules_register

        post_migrate.connect(schedules_register, sender=self)
