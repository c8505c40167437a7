"""The scheduler pass: claim due work, act on it, record it. Safe with many workers.

Cases are claimed in short transactions with `select_for_update(skip_locked=True)` and a
lease (`claimed_until`), so two workers never hold the same case; network calls happen
after the claim's transaction has committed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from stores.models import Store

from . import batch, engine, ports
from .gateways import gateway_for
from .models import RecoveryCase

logger = logging.getLogger(__name__)

BATCH = 200
ROLLUP_EVERY = 10_000  # cases claimed by a pass between two refreshes of the rollups


@dataclass
class PassReport:
    claimed: int = 0
    actions: dict = field(default_factory=dict)
    events_retried: int = 0
    declines_read: int = 0
    expiry_warnings: int = 0
    holds_released: int = 0
    messages_sent: int = 0
    queue_settled: int = 0
    rollups_refreshed: int = 0
    stopped_early: bool = False  # out of time: due work is left to the next pass

    def count(self, what: str) -> None:
        self.actions[what] = self.actions.get(what, 0) + 1


def cases_claim(*, now: dt.datetime, limit: int = BATCH, store_id=None) -> list[int]:
    """Claim up to `limit` due open cases for this worker (of one store when given);
    returns their ids."""
    # From the wall clock: a pass's `now` is fixed at its start, and a batch claimed late
    # in a long pass must still hold its cases for the whole lease.
    lease_end = max(now, timezone.now()) + engine.CLAIM_LEASE
    with transaction.atomic():
        qs = (
            RecoveryCase.objects.filter(status=RecoveryCase.Status.OPEN, next_action_at__lte=now)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("next_action_at")
        )
        if store_id is not None:
            qs = qs.filter(store_id=store_id)
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("pk", flat=True)[:limit])
        if ids:
            RecoveryCase.objects.filter(pk__in=ids).update(claimed_until=lease_end)
    return ids


def cases_release(*, case_ids: list[int]) -> None:
    """Give the cases back: what is still due at the pass's time is claimed again."""
    if case_ids:
        RecoveryCase.objects.filter(pk__in=case_ids).update(claimed_until=None)


def run_due(
    *,
    now: dt.datetime | None = None,
    max_cases: int | None = None,
    gateways: dict | None = None,
    store_id=None,
    rollups: bool = True,
    max_seconds: float | None = None,
) -> PassReport:
    """One pass over everything due at `now` (cases of one store when `store_id` is
    given; the store-independent sweeps run either way). `rollups=False` leaves the
    analytics rollup to its next refresh (a replay refreshes it once at the end).
    `max_seconds`: claim no new batch after that long; the next pass goes on from there.
    Returns what it did."""
    from .intake import stripe_event_reprocess_pending
    from .lookups import decline_lookups_run
    from .predunning import predunning_pass

    now = now or timezone.now()
    report = PassReport()
    report.events_retried = stripe_event_reprocess_pending()
    report.declines_read = decline_lookups_run(now=now)
    gateways = gateways if gateways is not None else {}
    started = time.monotonic()
    next_rollup = ROLLUP_EVERY
    while max_cases is None or report.claimed < max_cases:
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            report.stopped_early = True
            break
        ids = cases_claim(
            now=now,
            limit=min(BATCH, (max_cases - report.claimed) if max_cases else BATCH),
            store_id=store_id,
        )
        if not ids:
            break
        report.claimed += len(ids)
        cases = (
            RecoveryCase.objects.filter(pk__in=ids)
            .select_related(
                "store",
                "customer",
                "customer__default_payment_method",
                "invoice",
                "subscription",
                "order",
            )
            .order_by("next_action_at", "pk")
        )
        released: set = set()
        try:
            cases = _with_gateways(list(cases), gateways=gateways, now=now, report=report)
            # Due retries and messages go together (recovery/batch.py); the rest one at a time.
            rest = batch.retries_process(
                cases, now=now, gateways=gateways, report=report, released=released
            )
            rest = batch.messages_process(rest, now=now, report=report, released=released)
            for case in rest:
                try:
                    gateway = gateways[case.store_id]
                    report.count(engine.case_process_due(case, now=now, gateway=gateway))
                except Exception:
                    logger.exception("case %s failed in the scheduler pass", case.pk)
                    report.count("error")
                    RecoveryCase.objects.filter(pk=case.pk).update(
                        next_action_at=now + engine.RECONCILE_DELAY
                    )
        finally:
            cases_release(case_ids=[pk for pk in ids if pk not in released])
        if rollups and report.claimed >= next_rollup:
            # A long pass keeps the home page's rollup close behind it, and each refresh
            # reads only the cases saved since the one before (less the rollup's lag), so
            # what it holds does not grow with the length of the pass.
            next_rollup = report.claimed + ROLLUP_EVERY
            try:
                _rollups_refresh(now=now, report=report)
            except Exception:  # a cache: the pass goes on; the page refreshes it itself
                logger.exception("refreshing the rollups during the pass failed")
    report.expiry_warnings = predunning_pass(now=now)
    # The other apps' part of the pass (their functions, plugged into recovery's ports).
    report.holds_released = ports.holds_expire(now=now)
    report.messages_sent = ports.messages_send_scheduled(now=now)
    # Cases the pass closed in a batch (a retry that paid): their queue items leave too.
    report.queue_settled = ports.queue_settle_closed(now=now)
    if rollups:  # a cache for the home page, which also refreshes it before reading
        _rollups_refresh(now=now, report=report)
    return report


def _rollups_refresh(*, now: dt.datetime, report: PassReport) -> None:
    # As of the wall clock (the pass's `now` is its start): the next refresh then reads
    # only what was saved after this one, less the rollup's lag.
    report.rollups_refreshed += ports.rollups_refresh(now=max(now, timezone.now()))


def _with_gateways(cases: list, *, gateways: dict, now: dt.datetime, report: PassReport) -> list:
    """The cases whose store's gateway is at hand (resolved once per store); a store whose
    gateway cannot be built (a missing key) has its cases put off, the others go on."""
    out = []
    for case in cases:
        if case.store_id not in gateways:
            try:
                gateways[case.store_id] = gateway_for(case.store)
            except Exception:
                logger.exception("no payment gateway for store %s", case.store_id)
                gateways[case.store_id] = None
        if gateways[case.store_id] is None:
            report.count("error")
            RecoveryCase.objects.filter(pk=case.pk).update(
                next_action_at=now + engine.RECONCILE_DELAY
            )
        else:
            out.append(case)
    return out


def stores_with_due_work(*, now: dt.datetime) -> list[Store]:
    return list(
        Store.objects.filter(cases__status="open", cases__next_action_at__lte=now).distinct()
    )
