"""django-q2 entry points for the escalation queue. Thin: each calls one service."""

from __future__ import annotations


def support_pass_task() -> str:
    """Promises whose date came, items of closed cases, cases the engine escalated."""
    from .services import support_pass

    return str(support_pass())


def schedules_register(**kwargs) -> None:
    """Register the every-minute support pass, idempotently (post_migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="recoup-support-pass",
        defaults={
            "func": "support.tasks.support_pass_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
