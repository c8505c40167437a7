"""django-q2 entry points. Thin: each calls one service."""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.db import transaction
from django_q.brokers import get_broker
from django_q.tasks import async_task

from .intake import stripe_event_process


def stripe_event_process_task(event_pk: int) -> str:
    return stripe_event_process(event_pk=event_pk)


@lru_cache(maxsize=1)
def _broker():
    # django-q2 builds a new broker (and a new Redis connection) per call unless given
    # one; one per process keeps the webhook path to a single round trip.
    return get_broker()


def stripe_event_enqueue(event_pk: int) -> None:
    """Queue processing once the event row is committed (inline when Q_CLUSTER sync)."""
    transaction.on_commit(
        lambda: async_task(
            "recovery.tasks.stripe_event_process_task",
            event_pk,
            task_name=f"stripe-event-{event_pk}",
            broker=_broker(),
        )
    )


def run_due_task() -> str:
    """The every-minute pass registered with django-q2's scheduler."""
    from .scheduler import run_due

    report = run_due(max_seconds=settings.RECOUP_PASS_SECONDS)
    return f"claimed {report.claimed}: {report.actions}"


def schedules_register(**kwargs) -> None:
    """Register the every-minute pass, idempotently (post_migrate)."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="recoup-run-due",
        defaults={
            "func": "recovery.tasks.run_due_task",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
