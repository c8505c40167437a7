"""django-q2 entry points. Thin: each calls one service."""

from __future__ import annotations

from django.conf import settings

from .intake import stripe_event_process, stripe_events_work


def stripe_event_process_task(event_pk: int) -> str:
    return stripe_event_process(event_pk=event_pk)


def stripe_events_work_task() -> str:
    """The intake worker, started every minute by django-q2's scheduler: claims and
    processes stored events for RECOUP_INTAKE_SECONDS (several may run at once)."""
    return f"processed {stripe_events_work(max_seconds=settings.RECOUP_INTAKE_SECONDS)} events"


def run_due_task() -> str:
    """The every-minute pass registered with django-q2's scheduler."""
    from .scheduler import run_due

    report = run_due(max_seconds=settings.RECOUP_PASS_SECONDS)
    return f"claimed {report.claimed}: {report.actions}"


def schedules_register(**kwargs) -> None:
    """Register the every-minute pass, idempotently (post_migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="recoup-intake",
        defaults={
            "func": "recovery.tasks.stripe_events_work_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
    Schedule.objects.update_or_create(
        name="recoup-run-due",
        defaults={
            "func": "recovery.tasks.run_due_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
