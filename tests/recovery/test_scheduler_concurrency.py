"""Several scheduler workers on the same due work at once, against a real PostgreSQL.

Each thread has its own connection, as each django-q2 worker would; a counting wrapper
around the sandbox issuer sees every charge request that leaves Recoup.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import time_machine
from django.db import connection

from recovery import engine
from recovery.gateways.sandbox import SandboxGateway
from recovery.models import PaymentAttempt, RecoveryCase
from recovery.scheduler import run_due
from tests import stripe_factory as sf
from tests.conftest import requires_postgres

pytestmark = [requires_postgres(), pytest.mark.django_db(transaction=True)]

# Wednesday 15:30 in the store's Berlin: the only slot for a first retry within hours
# is 17:00 local, so every case opened now is due at the same moment.
OPENED = dt.datetime(2026, 3, 4, 14, 30, tzinfo=dt.UTC)
SLOT = dt.datetime(2026, 3, 4, 16, 0, tzinfo=dt.UTC)
CASES = 60


class CountingGateway(SandboxGateway):
    """The sandbox issuer, recording every charge request and how many overlap per case."""

    def __init__(self, *, seed: int = 0):
        super().__init__(seed=seed)
        self.calls: list[tuple[str, str]] = []
        self.overlaps: list[str] = []
        self._inflight: Counter = Counter()
        self._count_lock = threading.Lock()

    def invoice_pay(self, *, invoice_id: str, idempotency_key: str, **kwargs):
        with self._count_lock:
            self.calls.append((invoice_id, idempotency_key))
            self._inflight[invoice_id] += 1
            if self._inflight[invoice_id] > 1:
                self.overlaps.append(invoice_id)
        try:
            return super().invoice_pay(
                invoice_id=invoice_id, idempotency_key=idempotency_key, **kwargs
            )
        finally:
            with self._count_lock:
                self._inflight[invoice_id] -= 1


def run_workers(workers: int, *, now: dt.datetime, gateways: dict) -> list:
    barrier = threading.Barrier(workers)

    def work(_):
        try:
            barrier.wait(timeout=30)
            return run_due(now=now, gateways=gateways)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(work, range(workers)))


def open_due_cases(webhooks) -> None:
    for i in range(CASES):
        webhooks.deliver(
            "invoice.payment_failed",
            sf.failed_invoice(
                customer=f"cus_conc_{i}",
                subscription=f"sub_conc_{i}",
                fingerprint=f"fp_conc_{i}",
                decline_code="insufficient_funds",
            ),
        )
    assert set(RecoveryCase.objects.values_list("retry_at", flat=True)) == {SLOT}


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_passes_charge_each_due_case_once(webhooks, store, workers):
    gateway = CountingGateway(seed=7)
    gateways = {store.id: gateway}
    with time_machine.travel(OPENED, tick=False) as traveller:
        open_due_cases(webhooks)
        now = SLOT + dt.timedelta(minutes=5)
        traveller.move_to(now)

        reports = run_workers(workers, now=now, gateways=gateways)
        # The same pass again, by as many workers: everything due has been done.
        again = run_workers(workers, now=now, gateways=gateways)

    assert not any(r.actions.get("error") for r in reports + again), [r.actions for r in reports]
    assert sum(r.actions.get("retried", 0) for r in reports) == CASES
    assert not any(r.actions.get("retried") for r in again)

    invoices = Counter(invoice for invoice, _ in gateway.calls)
    keys = [key for _, key in gateway.calls]
    assert len(invoices) == CASES and set(invoices.values()) == {1}  # each case charged once
    assert len(keys) == len(set(keys))  # no idempotency key used twice
    assert gateway.overlaps == []  # never two charges of one case on the wire at once

    ours = PaymentAttempt.objects.filter(source__in=engine.OUR_SOURCES)
    assert ours.count() == len(gateway.calls)
    assert set(ours.values_list("idempotency_key", flat=True)) == set(keys)
    assert not ours.filter(outcome="unknown").exists()
    assert not RecoveryCase.objects.exclude(inflight_key="").exists()
    for case in RecoveryCase.objects.all():
        assert case.attempts.filter(source__in=engine.OUR_SOURCES).count() == 1
        assert case.claimed_until is None


# ------------------------------------------------------------------ through each broker


def _broker(kind: str):
    """The django-q2 broker a worker deployment would use: the ORM (one machine, the
    embedded default) or Redis (several machines sharing one PostgreSQL)."""
    import os
    import uuid

    from django_q.brokers.orm import ORM
    from django_q.brokers.redis_broker import Redis

    key = f"recoup-test-{uuid.uuid4().hex[:8]}"
    if kind == "orm":
        return ORM(list_key=key)
    url = os.environ.get("REDIS_URL_FOR_TESTS", "redis://127.0.0.1:6379/15")

    class TestRedis(Redis):
        @staticmethod
        def get_connection(list_key=None):
            import redis

            return redis.from_url(url)

    try:
        broker = TestRedis(list_key=key)
        broker.ping()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"needs Redis at {url} (set REDIS_URL_FOR_TESTS): {exc}")
    return broker


def _work_queue(broker) -> list[str]:
    """What a django-q2 worker does with the queue: take a package, check its signature,
    run the named function, acknowledge it; until the queue is empty."""
    import pydoc

    from django_q.signing import SignedPackage

    results = []
    try:
        while broker.queue_size():
            for ack_id, payload in broker.dequeue() or []:
                task = SignedPackage.loads(payload)
                func = pydoc.locate(task["func"])
                results.append(func(*task["args"], **task["kwargs"]))
                if ack_id is not None:
                    broker.acknowledge(ack_id)
    finally:
        connection.close()
    return results


@pytest.mark.parametrize("broker_kind", ["orm", "redis"])
def test_workers_fed_by_the_broker_charge_each_due_case_once(
    webhooks, store, broker_kind, monkeypatch
):
    """The every-minute pass, queued twice per worker through a real broker and taken
    off it by two concurrent workers: every due case is charged exactly once."""
    from django_q.tasks import async_task

    gateway = CountingGateway(seed=7)
    monkeypatch.setattr("recovery.scheduler.gateway_for", lambda store: gateway)
    broker = _broker(broker_kind)
    workers = 2
    with time_machine.travel(OPENED, tick=False) as traveller:
        open_due_cases(webhooks)
        now = SLOT + dt.timedelta(minutes=5)
        traveller.move_to(now)
        for _ in range(workers * 2):
            async_task("recovery.tasks.run_due_task", broker=broker, sync=False)
        # The ORM broker hands out packages locked before "now".
        traveller.move_to(now + dt.timedelta(seconds=1))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_work_queue, broker) for _ in range(workers)]
            results = [r for f in futures for r in f.result(timeout=120)]

    assert len(results) == workers * 2, results
    invoices = Counter(invoice for invoice, _ in gateway.calls)
    assert len(invoices) == CASES and set(invoices.values()) == {1}
    assert gateway.overlaps == []
    ours = PaymentAttempt.objects.filter(source__in=engine.OUR_SOURCES)
    assert ours.count() == CASES and not ours.filter(outcome="unknown").exists()
