"""Many simultaneous deliveries against a real PostgreSQL: the database decides, once.

Each thread has its own connection, as each gunicorn worker would. With
transaction=True the view's on_commit work runs for real. The webhook only stores the
event; intake workers, several at once as on several machines, then claim and apply the
stored events (`stripe_events_work`).
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client

from recovery.gateways.sandbox import sandbox_payment_record
from recovery.intake import stripe_events_work
from recovery.models import DeclineLookup, PaymentAttempt, RecoveryCase, StripeEvent
from subscriptions.models import Customer, Invoice
from tests import stripe_factory as sf
from tests.conftest import WEBHOOK_SECRET, requires_postgres

pytestmark = [requires_postgres(), pytest.mark.django_db(transaction=True)]


def deliver_all_at_once(path: str, bodies: list[str]) -> list[tuple[int, dict]]:
    """POST every body from its own thread, all released by one barrier."""
    barrier = threading.Barrier(len(bodies))
    headers = [sf.sign(body, WEBHOOK_SECRET) for body in bodies]

    def deliver(i: int) -> tuple[int, dict]:
        try:
            client = Client()
            barrier.wait(timeout=30)
            response = client.post(
                path,
                data=bodies[i],
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=headers[i],
            )
            return response.status_code, json.loads(response.content)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(deliver, range(len(bodies))))


def work_all_at_once(workers: int) -> int:
    """Intake workers on their own connections, released together, each taking one
    stored event at a time until none is left. Returns how many events they applied."""
    barrier = threading.Barrier(workers)

    def work(_: int) -> int:
        try:
            barrier.wait(timeout=30)
            return stripe_events_work(until_idle=True, limit=1)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(work, range(workers)))


def stripe_knows(store, invoice_id: str) -> None:
    """The sandbox's Stripe holds the invoice's payments (what the read-back finds)."""
    for pi in sf.invoice_payment_intents(invoice_id):
        sandbox_payment_record(store=store, invoice_id=invoice_id, payment_intent=pi)


def test_fifty_simultaneous_deliveries_of_one_event_are_stored_and_applied_once(store):
    invoice = sf.failed_invoice()
    stripe_knows(store, invoice["id"])
    body = json.dumps(sf.event("invoice.payment_failed", invoice))

    results = deliver_all_at_once(store.webhook_path, [body] * 50)
    applied = work_all_at_once(5)

    assert [status for status, _ in results] == [200] * 50, results
    assert applied == 1
    assert all(payload["received"] is True for _, payload in results)
    assert sorted(payload["duplicate"] for _, payload in results) == [False] + [True] * 49
    assert StripeEvent.objects.count() == 1
    assert StripeEvent.objects.get().outcome == StripeEvent.Outcome.PROCESSED
    assert RecoveryCase.objects.count() == 1
    assert PaymentAttempt.objects.count() == 1
    case = RecoveryCase.objects.get()
    assert case.invoice.stripe_id == invoice["id"]
    assert case.attempt_count == 1
    assert case.events.filter(kind="opened").count() == 1


def test_twenty_distinct_failures_of_one_invoice_at_once_give_one_case(store):
    first = sf.failed_invoice()
    invoices = [first] + [
        sf.failed_invoice(invoice_id=first["id"], attempt_count=n) for n in range(2, 21)
    ]
    stripe_knows(store, first["id"])
    bodies = [json.dumps(sf.event("invoice.payment_failed", inv)) for inv in invoices]
    assert len({json.loads(b)["id"] for b in bodies}) == 20

    results = deliver_all_at_once(store.webhook_path, bodies)
    applied = work_all_at_once(20)

    assert [status for status, _ in results] == [200] * 20, results
    assert applied == 20
    assert all(payload["duplicate"] is False for _, payload in results)
    assert StripeEvent.objects.count() == 20
    assert Customer.objects.filter(store=store, stripe_id="cus_test_alice").count() == 1
    assert Invoice.objects.filter(store=store, stripe_id=first["id"]).count() == 1
    assert RecoveryCase.objects.count() == 1
    case = RecoveryCase.objects.get()
    assert case.invoice.stripe_id == first["id"]
    assert case.events.filter(kind="opened").count() == 1
    # Every event was applied on its first delivery: none lost to the race, none left
    # for the sweep to retry, and each attempt (own charge, own attempt number) counted.
    outcomes = list(StripeEvent.objects.values_list("outcome", "error"))
    assert all(outcome == StripeEvent.Outcome.PROCESSED for outcome, _ in outcomes), outcomes
    assert PaymentAttempt.objects.filter(case=case).count() == 20
    assert case.attempt_count == 20
    assert sorted(case.attempts.values_list("invoice_attempt_number", flat=True)) == list(
        range(1, 21)
    )


def test_two_workers_with_their_read_back_threads_classify_every_case(store):
    """The production intake worker (a time budget, not until idle): events in the main
    thread, decline read-backs in a thread of their own; two of them at once, each on
    its own connections, classify every case from what Stripe holds."""
    codes = ["insufficient_funds", "expired_card", "lost_card", "incorrect_cvc"] * 5
    invoices = [
        sf.failed_invoice(customer=f"cus_w{i}", decline_code=c) for i, c in enumerate(codes)
    ]
    for inv in invoices:
        stripe_knows(store, inv["id"])
    bodies = []
    for inv in invoices:
        bodies.append(json.dumps(sf.event("charge.failed", sf.charge_failed(inv))))
        bodies.append(json.dumps(sf.event("invoice.payment_failed", inv)))
    results = deliver_all_at_once(store.webhook_path, bodies)
    assert [status for status, _ in results] == [200] * len(bodies)

    def all_classified() -> bool:
        cases = RecoveryCase.objects.filter(store=store)
        return (
            cases.count() == len(invoices)
            and not cases.filter(decline_awaited_until__isnull=False).exists()
            and not StripeEvent.objects.filter(outcome="pending").exists()
        )

    def work(_: int) -> int:
        try:
            return stripe_events_work(max_seconds=60, should_stop=all_classified)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert sum(pool.map(work, range(2))) == len(bodies)
    assert all_classified()
    got = dict(RecoveryCase.objects.values_list("invoice__stripe_id", "decline_code"))
    assert got == {inv["id"]: code for inv, code in zip(invoices, codes, strict=True)}
    # Reads made ahead of the intake and the cases' own requests met on one lookup per
    # invoice, each taken over by its case.
    lookups = DeclineLookup.objects.filter(store=store)
    assert lookups.count() == len(invoices) and not lookups.filter(case__isnull=True).exists()


def test_events_that_open_cases_are_claimed_first(store):
    from django.utils import timezone

    from recovery.intake import stripe_event_store, stripe_events_claim

    invoice = sf.failed_invoice()
    later = [
        sf.event("charge.failed", sf.charge_failed(invoice)),
        sf.event("customer.updated", sf.stripe_object("customer", id="cus_test_alice")),
    ]
    for event in later + [sf.event("invoice.payment_failed", invoice)]:
        stripe_event_store(store=store, event=event)
    claimed = stripe_events_claim(now=timezone.now(), limit=1)
    assert StripeEvent.objects.get(pk=claimed[0]).type == "invoice.payment_failed"
    rest = stripe_events_claim(now=timezone.now(), limit=5)
    assert [StripeEvent.objects.get(pk=pk).type for pk in rest] == [e["type"] for e in later]


def test_two_workers_recording_one_charge_at_once_keep_one_attempt(store):
    """One worker records a charge (a read-back's answer) and holds its transaction open;
    another records the same charge (its charge.failed) meanwhile: its INSERT waits on the
    unique index, loses, and merges into the committed row instead of failing the event."""
    import datetime as dt

    from django.db import transaction
    from django.utils import timezone

    from recovery.services import payment_attempt_record
    from recovery.stripe_payloads import DeclineInfo

    at = timezone.now()
    recorded, release = threading.Event(), threading.Event()

    def report(decline: DeclineInfo, *, hold: bool):
        try:
            with transaction.atomic():
                attempt, created = payment_attempt_record(
                    store=store,
                    case=None,
                    customer=None,
                    source="stripe",
                    outcome="failed",
                    amount=2900,
                    currency="usd",
                    at=at,
                    decline=decline,
                )
                if hold:
                    recorded.set()
                    release.wait(timeout=30)
            return attempt.pk, created
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(report, DeclineInfo(charge_id="ch_race", card_brand="visa"), hold=True)
        assert recorded.wait(timeout=30)
        second = pool.submit(
            report, DeclineInfo(charge_id="ch_race", card_last4="4242"), hold=False
        )
        threading.Timer(1.0, release.set).start()
        (pk1, created1), (pk2, created2) = first.result(timeout=60), second.result(timeout=60)
    assert (created1, created2) == (True, False) and pk1 == pk2
    attempt = PaymentAttempt.objects.get()
    assert (attempt.card_brand, attempt.card_last4) == ("visa", "4242")
    assert dt.timedelta(0) == attempt.attempted_at - at


def test_a_webhook_on_a_connection_the_database_dropped_is_still_stored(store):
    """The webhook sends no health-check query: its INSERT is the check. When PostgreSQL
    has ended the process's connection (a restart, a failover, an idle timeout), the
    event is stored on a new connection and acknowledged once, not answered with a 500."""
    import psycopg
    from django.conf import settings

    client = Client()

    def post(invoice_id: str):
        body = json.dumps(
            sf.event("invoice.payment_failed", sf.failed_invoice(invoice_id=invoice_id))
        )
        return client.post(
            f"/webhooks/stripe/{store.pk}/",
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sf.sign(body, WEBHOOK_SECRET),
        )

    assert post("in_drop_1").json() == {"received": True, "duplicate": False}
    pid = connection.connection.info.backend_pid
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
        autocommit=True,
    ) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]

    response = post("in_drop_2")
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    assert connection.connection.info.backend_pid != pid
    stored = StripeEvent.objects.values_list("payload__data__object__id", flat=True)
    assert sorted(stored) == ["in_drop_1", "in_drop_2"]


def test_while_a_stores_read_backs_queue_up_its_other_events_wait_behind_them(store):
    """A burst: the read-backs its new cases wait for come before the Charge and
    PaymentIntent events that repeat them, up to reads_first_at_most(); another store's
    events, and the events that open or close a case, are claimed as ever."""
    import datetime as dt

    from django.utils import timezone

    from recovery.intake import stripe_event_process, stripe_event_store, stripe_events_claim
    from recovery.intake.worker import reads_first_at_most
    from recovery.models import DeclineLookup
    from stores.models import Store

    def put(to, event: dict) -> StripeEvent:
        stripe_event_store(store=to, event=event)
        return StripeEvent.objects.get(store=to, event_id=event["id"])

    other = Store.objects.create(name="Other", stripe_webhook_secret="whsec_other")
    first = sf.failed_invoice(customer="cus_q1")
    opened = put(store, sf.event("invoice.payment_failed", first))
    stripe_event_process(event_pk=opened.pk)
    lookup = DeclineLookup.objects.get()
    assert lookup.due_at is not None and lookup.answered_at is None  # a read is queued

    charge = put(store, sf.event("charge.failed", sf.charge_failed(first)))
    second = sf.failed_invoice(customer="cus_q2")
    invoice_event = put(store, sf.event("invoice.payment_failed", second))
    elsewhere = put(other, sf.event("charge.failed", sf.charge_failed(sf.failed_invoice())))
    now = timezone.now()
    claimed = stripe_events_claim(now=now, limit=10)
    assert sorted(claimed) == sorted([invoice_event.pk, elsewhere.pk])
    StripeEvent.objects.filter(pk__in=claimed).update(outcome=StripeEvent.Outcome.PROCESSED)

    # Taken by a reader (its lease moves due_at on): nothing queued, the charge goes on.
    DeclineLookup.objects.filter(pk=lookup.pk).update(due_at=now + dt.timedelta(minutes=2))
    assert stripe_events_claim(now=now, limit=10) == [charge.pk]

    # Queued again, but the charge has waited long enough: it goes on all the same.
    StripeEvent.objects.filter(pk=charge.pk).update(claimed_until=None)
    DeclineLookup.objects.filter(pk=lookup.pk).update(due_at=now)
    later = now + reads_first_at_most() + dt.timedelta(seconds=1)
    assert stripe_events_claim(now=later, limit=10) == [charge.pk]


def test_the_sweep_leaves_an_event_a_worker_holds_and_takes_it_once_the_lease_ran_out(store):
    import datetime as dt

    from django.utils import timezone

    from recovery.intake import stripe_event_reprocess_pending, stripe_event_store

    event = sf.event("invoice.payment_failed", sf.failed_invoice(customer="cus_sweep"))
    stripe_event_store(store=store, event=event)
    row = StripeEvent.objects.get(event_id=event["id"])
    long_ago = timezone.now() - dt.timedelta(minutes=10)
    StripeEvent.objects.filter(pk=row.pk).update(
        received_at=long_ago, claimed_until=timezone.now() + dt.timedelta(minutes=1)
    )
    assert stripe_event_reprocess_pending() == 0  # an intake worker has it
    StripeEvent.objects.filter(pk=row.pk).update(claimed_until=long_ago)
    assert stripe_event_reprocess_pending() == 1  # that worker was lost: swept
    row.refresh_from_db()
    assert row.outcome == StripeEvent.Outcome.PROCESSED
    assert RecoveryCase.objects.filter(invoice__stripe_id=event["data"]["object"]["id"]).exists()
