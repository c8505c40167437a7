"""Cases on one card retried by several workers at once: the card's network budget holds
across workers, because it is checked again under the card's lock (a PostgreSQL advisory
lock) in the transaction that records the attempt, just before the charge."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from recovery import engine
from recovery.models import PaymentAttempt, RecoveryCase
from tests import stripe_factory as sf
from tests.conftest import requires_postgres
from tests.recovery.test_scheduler_concurrency import OPENED, SLOT, CountingGateway

pytestmark = [requires_postgres(), pytest.mark.django_db(transaction=True)]


def _nine_cases_on_one_mastercard(webhooks) -> None:
    """Nine failed renewals on one Mastercard: nine attempts in 24 h, one left."""
    for i in range(9):
        webhooks.deliver(
            "invoice.payment_failed",
            sf.failed_invoice(
                subscription=f"sub_race_{i}",
                fingerprint="fp_race_mc",
                brand="mastercard",
                decline_code="insufficient_funds",
            ),
        )


def test_two_retries_on_one_card_at_the_same_moment_take_its_last_attempt_once(webhooks, store):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    with time_machine.travel(OPENED, tick=False) as traveller:
        _nine_cases_on_one_mastercard(webhooks)
        now = SLOT + dt.timedelta(minutes=5)
        traveller.move_to(now)
        gateway = CountingGateway(seed=3)
        ids = list(RecoveryCase.objects.order_by("pk").values_list("pk", flat=True))
        barrier = threading.Barrier(len(ids))

        def retry(pk):
            try:
                case = RecoveryCase.objects.select_related(
                    "customer__default_payment_method", "store", "invoice"
                ).get(pk=pk)
                barrier.wait(timeout=30)
                return engine.case_retry(case, now=now, gateway=gateway)
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            results = list(pool.map(retry, ids))

    sent = [r for r in results if r is not None]
    assert len(sent) == 1 and len(gateway.calls) == 1
    assert (
        PaymentAttempt.objects.filter(card_fingerprint="fp_race_mc")
        .exclude(outcome="not_sent")
        .count()
        == 10
    )
    refused = RecoveryCase.objects.filter(events__kind="retry_refused").distinct().count()
    assert refused == len(ids) - 1


def test_workers_batching_cases_of_one_card_take_its_last_attempt_once(
    webhooks, store, monkeypatch
):
    """The same race through the scheduler: three workers, each claiming batches of three
    of the nine cases, all due at once on a card with one attempt left."""
    from tests.recovery.test_scheduler_concurrency import run_workers

    monkeypatch.setattr("recovery.scheduler.BATCH", 3)
    with time_machine.travel(OPENED, tick=False) as traveller:
        _nine_cases_on_one_mastercard(webhooks)
        now = SLOT + dt.timedelta(minutes=5)
        traveller.move_to(now)
        assert (
            RecoveryCase.objects.filter(next_action="retry", next_action_at__lte=now).count() == 9
        )
        gateway = CountingGateway(seed=3)
        reports = run_workers(3, now=now, gateways={store.pk: gateway})

    assert not any(r.actions.get("error") for r in reports), [r.actions for r in reports]
    assert sum(r.claimed for r in reports) >= 9
    assert len(gateway.calls) == 1  # ten in 24 h on a Mastercard: one was left
    assert (
        PaymentAttempt.objects.filter(card_fingerprint="fp_race_mc")
        .exclude(outcome="not_sent")
        .count()
        == 10
    )
