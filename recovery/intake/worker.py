"""The intake workers: claim stored events from the table and apply them."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Q, When
from django.utils import timezone

from .. import lookups
from ..models import DeclineLookup, StripeEvent
from .inbox import MALFORMED
from .processing import stripe_event_process

logger = logging.getLogger(__name__)

EVENT_LEASE = dt.timedelta(minutes=2)


# Events that open or close a case come first when events queue up: each opening one
# starts a decline read, and those reads (paced at the account's rate limit) are what a
# burst waits for. The rest (PaymentIntent, Charge, customer events) follow; their order
# does not change a case's outcome (tests/recovery/test_decline_lookup.py).
FIRST = ("invoice.payment_failed", "invoice.payment_action_required", "invoice.paid")


# While a store's decline read-backs queue up (due, not taken by a reader yet), its other
# events wait behind them, for this long at most: in a burst of failures, the CPU goes to
# opening cases and recording what Stripe says about them (what their plans wait for)
# before the rest: the Charge and PaymentIntent events, which repeat what the read-back
# tells, and customer and subscription updates, which re-plan a case already planned.
# As long as a case waits for its decline at most (RECOUP_DECLINE_LOOKUP_SECONDS).
def reads_first_at_most() -> dt.timedelta:
    return dt.timedelta(seconds=settings.RECOUP_DECLINE_LOOKUP_SECONDS)


# The longest an idle worker sleeps between two claims (seconds).
IDLE_SLEEP_MOST = 1.0


def stripe_events_claim(*, now: dt.datetime, limit: int = 100) -> list[int]:
    """Claim stored events not processed yet for this worker, those that open or close
    a case first, then oldest first: rows locked and skipped if another worker holds
    them, then leased."""
    with transaction.atomic():
        qs = (
            StripeEvent.objects.filter(outcome=StripeEvent.Outcome.PENDING)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .exclude(_behind_reads(now))
            .annotate(later=Case(When(type__in=FIRST, then=0), default=1))
            .order_by("later", "received_at", "pk")
        )
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("pk", flat=True)[:limit])
        if ids:
            StripeEvent.objects.filter(pk__in=ids).update(claimed_until=now + EVENT_LEASE)
    return ids


def _behind_reads(now: dt.datetime) -> Q:
    """The events that wait behind their store's queued read-backs (reads_first_at_most)."""
    reads_queued = DeclineLookup.objects.filter(due_at__lte=now).values("store_id")
    return (
        ~Q(type__in=FIRST)
        & Q(store_id__in=reads_queued)
        & Q(received_at__gt=now - reads_first_at_most())
    )


def stripe_events_work(
    *,
    max_seconds: float | None = None,
    until_idle: bool = False,
    idle_sleep: float = 0.1,
    limit: int = 100,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """The intake worker: process stored events as they arrive, and read back the
    declines they did not carry. Claims straight from the table (the webhook only
    verifies and inserts), so any number of workers on any machines share the work.

    On PostgreSQL the reads run in a thread of their own beside the events (a read waits
    on Stripe, and on the store's rate limit, not on this process), so a backlog of
    events never holds the reads back, nor the reads the events. `until_idle`: one
    thread, returning once nothing is left (tests, the demo). `should_stop`: checked
    between batches. Returns how many events it processed."""
    started, done = time.monotonic(), 0

    def running() -> bool:
        if should_stop is not None and should_stop():
            return False
        return max_seconds is None or time.monotonic() - started < max_seconds

    reader, stopped = None, threading.Event()
    if not until_idle and connection.vendor == "postgresql":
        reader = threading.Thread(
            target=_lookups_loop,
            args=(lambda: not stopped.is_set() and running(), idle_sleep),
            name="recoup-lookups",
            daemon=True,
        )
        reader.start()
    idle = 0
    try:
        while running():
            ids = stripe_events_claim(now=timezone.now(), limit=limit)
            for pk in ids:
                stripe_event_process(event_pk=pk)
            done += len(ids)
            read = 0 if reader else lookups.decline_lookups_run(now=timezone.now())
            if ids or read:
                idle = 0
                continue
            if until_idle:
                break
            # Nothing to claim: wait longer each time, up to IDLE_SLEEP_MOST. A claim
            # that finds nothing still reads the pending events it skips (those waiting
            # behind a store's read-backs: tens of thousands in a burst).
            time.sleep(min(idle_sleep * 2 ** min(idle, 5), max(idle_sleep, IDLE_SLEEP_MOST)))
            idle += 1
    finally:
        stopped.set()  # the reader ends with this loop, however it ended
        if reader is not None:
            reader.join()
    return done


def _lookups_loop(running: Callable[[], bool], idle_sleep: float) -> None:
    """The intake worker's read-back thread (`lookups.decline_lookups_stream`)."""
    try:
        while running():
            try:
                lookups.decline_lookups_stream(running=running, idle_sleep=idle_sleep)
            except Exception:  # kept on the lookups; the stream starts again
                logger.exception("decline read-backs failed")
                time.sleep(idle_sleep)
    finally:
        connection.close()


def stripe_event_reprocess_pending(
    *, older_than: dt.timedelta = dt.timedelta(minutes=2), limit: int = 500
) -> int:
    """The sweep: events not processed yet (lost task, earlier error) get another go;
    not those an intake worker holds, nor those waiting behind their store's read-backs."""
    now = timezone.now()
    cutoff = now - older_than
    pks = list(
        StripeEvent.objects.filter(
            outcome__in=[StripeEvent.Outcome.PENDING, StripeEvent.Outcome.FAILED],
            received_at__lt=cutoff,
            attempts__lt=10,
        )
        .exclude(error__startswith=MALFORMED)
        .exclude(claimed_until__gt=now)
        .exclude(_behind_reads(now))
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in pks:
        stripe_event_process(event_pk=pk)
    return len(pks)
