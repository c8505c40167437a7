# ruff: noqa: F811 - tests take the imported `fake_stripe` fixture by its name
"""Retries through the real stripe SDK against a local Stripe (tests/fake_stripe.py).

Cases are opened the way production opens them, by a signed webhook; the scheduler
pass then acts on them with a StripeGateway whose client talks to the fake server over
HTTP. Time is moved with time_machine; the only wait is the fake server holding back an
answer past the client's timeout.
"""

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from orders.models import Order
from recovery import engine
from recovery.gateways import gateway_for
from recovery.gateways.stripe import StripeGateway
from recovery.models import PaymentAttempt, RecoveryCase
from recovery.scheduler import run_due
from subscriptions.models import Customer, Invoice
from tests import stripe_factory as sf
from tests.conftest import requires_postgres
from tests.fake_stripe import FakeStripe, fake_stripe  # noqa: F401 - a fixture

CLIENT_TIMEOUT = 1.0  # seconds; the fake server holds a late answer for 3


@pytest.fixture
def stripe_store(store):
    store.gateway = "stripe"
    store.save(update_fields=["gateway"])
    return store


@pytest.fixture
def gateway(fake_stripe, stripe_store):
    return StripeGateway(api_key=stripe_store.stripe_secret_key, timeout=CLIENT_TIMEOUT)


def open_invoice_case(webhooks, fake: FakeStripe, **fields) -> tuple[RecoveryCase, dict]:
    """A failed renewal that Stripe holds and that Recoup learnt of by webhook."""
    invoice = sf.failed_invoice(**fields)
    fake.add_invoice(invoice)
    webhooks.deliver("invoice.payment_failed", invoice)
    # The webhook carries no decline: Recoup read it back. The tests look at what follows.
    assert [(r.method, r.path) for r in fake.requests] == [("GET", f"/v1/invoices/{invoice['id']}")]
    fake.requests.clear()
    return RecoveryCase.objects.get(invoice__stripe_id=invoice["id"]), invoice


def run_pass(at: dt.datetime, gateway: StripeGateway, store):
    with time_machine.travel(at, tick=False):
        return run_due(now=timezone.now(), gateways={store.id: gateway})


def run_until_due_retry(case: RecoveryCase, gateway: StripeGateway, store, *, passes: int = 20):
    """Pass at each next action until the case's next retry has been made (or it closed)."""
    attempts = case.attempts.filter(source__in=engine.OUR_SOURCES).count()
    for _ in range(passes):
        case.refresh_from_db()
        if not case.is_open or case.attempts.filter(source__in=engine.OUR_SOURCES).count() > (
            attempts
        ):
            return case
        assert case.next_action_at is not None, case.next_action_reason
        run_pass(case.next_action_at, gateway, store)
    raise AssertionError(f"no retry after {passes} passes: {case.next_action_reason}")


def our_attempts(case: RecoveryCase) -> list[PaymentAttempt]:
    return list(case.attempts.filter(source__in=engine.OUR_SOURCES).order_by("attempted_at", "pk"))


def pay_path(invoice: dict) -> str:
    return f"/v1/invoices/{invoice['id']}/pay"


def test_an_approved_retry_pays_the_invoice_off_session_with_its_own_key(
    webhooks, fake_stripe, stripe_store, gateway
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    assert gateway_for(stripe_store).name == "stripe"
    assert case.next_action == RecoveryCase.NextAction.RETRY
    fake_stripe.script("approve")

    report = run_pass(case.next_action_at, gateway, stripe_store)

    assert report.actions == {"retried": 1}
    (request,) = fake_stripe.requests_to("POST", pay_path(invoice))
    assert request.param("off_session") == "true"
    assert request.param("payment_method") == "pm_fp_visa_alice"
    assert request.idempotency_key == f"recoup-case-{case.pk}-attempt-1"
    assert request.headers["Authorization"] == "Bearer sk_test_beanbox_123456"
    assert fake_stripe.real_charges == 1
    case.refresh_from_db()
    assert (case.status, case.recovered_via, case.recovered_amount) == (
        "recovered",
        "recoup_retry",
        2900,
    )
    assert case.inflight_key == ""
    (attempt,) = our_attempts(case)
    assert (attempt.source, attempt.outcome) == ("recoup_retry", "succeeded")
    assert attempt.idempotency_key == request.idempotency_key
    assert Invoice.objects.get(stripe_id=invoice["id"]).status == "paid"


def test_a_declined_retry_moves_the_case_to_card_update_and_never_retries_that_card(
    webhooks, fake_stripe, stripe_store, gateway
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script("decline:expired_card")

    run_pass(case.next_action_at, gateway, stripe_store)

    (attempt,) = our_attempts(case)
    assert (attempt.outcome, attempt.decline_code, attempt.failure_code) == (
        "failed",
        "expired_card",
        "card_declined",
    )
    assert attempt.charge_id == fake_stripe.charges[0].id
    case.refresh_from_db()
    assert (case.status, case.track, case.decline_code) == ("open", "card_update", "expired_card")
    assert case.inflight_key == "" and case.retry_at is None
    assert case.events.filter(kind="retry_failed").exists()
    # Every pass until the window ends: messages may go out, the card is never tried again.
    day = case.opened_at + dt.timedelta(days=1)
    while day < case.window_end:
        run_pass(day, gateway, stripe_store)
        day += dt.timedelta(days=1)
    assert len(fake_stripe.requests_to("POST", pay_path(invoice))) == 1
    assert fake_stripe.unscripted == 0 and fake_stripe.real_charges == 0
    assert len(our_attempts(case)) == 1


@pytest.mark.parametrize("lost_answer", ["timeout_after_charge", "drop_after_charge"])
def test_a_charge_whose_answer_is_lost_is_read_back_and_never_charged_twice(
    webhooks, fake_stripe, stripe_store, gateway, lost_answer
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script(lost_answer, "approve")  # a second /pay would charge again

    first = case.next_action_at
    run_pass(first, gateway, stripe_store)

    (attempt,) = our_attempts(case)
    assert attempt.outcome == "unknown"
    case.refresh_from_db()
    assert case.inflight_key == attempt.idempotency_key == f"recoup-case-{case.pk}-attempt-1"
    assert case.next_action == RecoveryCase.NextAction.RECONCILE
    assert fake_stripe.real_charges == 1  # the money moved; Recoup does not know yet

    report = run_pass(case.next_action_at, gateway, stripe_store)

    assert report.actions == {"reconciled": 1}
    assert [(r.method, r.path) for r in fake_stripe.requests] == [
        ("POST", pay_path(invoice)),
        ("GET", f"/v1/invoices/{invoice['id']}"),
    ]
    attempt.refresh_from_db()
    assert attempt.outcome == "succeeded" and attempt.resolved_at is not None
    case.refresh_from_db()
    assert (case.status, case.recovered_via, case.inflight_key) == (
        "recovered",
        "recoup_retry",
        "",
    )
    assert fake_stripe.real_charges == 1
    assert {r.idempotency_key for r in fake_stripe.requests_to("POST", pay_path(invoice))} == {
        f"recoup-case-{case.pk}-attempt-1"
    }
    assert fake_stripe.pending_outcomes == ["approve"]
    assert len(our_attempts(case)) == 1


def test_a_server_error_that_charged_nothing_is_not_sent_and_the_next_retry_has_a_new_key(
    webhooks, fake_stripe, stripe_store, gateway
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script("500", "approve")

    run_pass(case.next_action_at, gateway, stripe_store)

    (attempt,) = our_attempts(case)
    assert attempt.outcome == "unknown"
    case.refresh_from_db()
    assert case.next_action == RecoveryCase.NextAction.RECONCILE

    run_pass(case.next_action_at, gateway, stripe_store)

    assert [r.method for r in fake_stripe.requests] == ["POST", "GET"]
    attempt.refresh_from_db()
    assert attempt.outcome == "not_sent"  # Stripe's attempt_count did not move: no charge
    case.refresh_from_db()
    assert case.status == "open" and case.inflight_key == ""
    assert case.next_action == RecoveryCase.NextAction.RETRY

    case = run_until_due_retry(case, gateway, stripe_store)

    keys = [r.idempotency_key for r in fake_stripe.requests_to("POST", pay_path(invoice))]
    # Stripe replays a stored 500 for its key, so the retry must not reuse it.
    assert keys == [f"recoup-case-{case.pk}-attempt-1", f"recoup-case-{case.pk}-attempt-2"]
    assert [a.outcome for a in our_attempts(case)] == ["not_sent", "succeeded"]
    assert (case.status, case.recovered_via) == ("recovered", "recoup_retry")
    assert fake_stripe.real_charges == 1


def test_a_rate_limited_retry_is_not_sent_charges_nothing_and_is_made_later(
    webhooks, fake_stripe, stripe_store, gateway
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script("429", "approve")

    first = case.next_action_at
    run_pass(first, gateway, stripe_store)

    (attempt,) = our_attempts(case)
    assert attempt.outcome == "not_sent"
    assert fake_stripe.real_charges == 0
    case.refresh_from_db()
    assert case.status == "open" and case.inflight_key == ""
    assert case.next_action == RecoveryCase.NextAction.RETRY
    assert case.next_action_at >= first + dt.timedelta(minutes=5)
    assert case.events.filter(kind="attempt_not_sent").exists()

    case = run_until_due_retry(case, gateway, stripe_store)

    assert [(r.method, r.status) for r in fake_stripe.requests] == [("POST", 429), ("POST", 200)]
    assert fake_stripe.requests[1].idempotency_key == f"recoup-case-{case.pk}-attempt-2"
    assert [a.outcome for a in our_attempts(case)] == ["not_sent", "succeeded"]
    assert case.status == "recovered" and fake_stripe.real_charges == 1


def test_a_server_error_after_a_declined_retry_is_still_read_back_as_not_sent(
    webhooks, fake_stripe, stripe_store, gateway
):
    """Stripe's attempt_count already counts Recoup's first, declined retry; a second
    retry that never reached the card leaves it there and must count as not sent."""
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script("decline:insufficient_funds", "500", "approve")

    run_pass(case.next_action_at, gateway, stripe_store)
    case.refresh_from_db()
    assert (case.track, case.status) == ("soft", "open") and case.retry_at is not None
    case = run_until_due_retry(case, gateway, stripe_store)
    assert case.next_action == RecoveryCase.NextAction.RECONCILE
    assert fake_stripe.invoices[invoice["id"]]["attempt_count"] == 2

    run_pass(case.next_action_at, gateway, stripe_store)

    assert [a.outcome for a in our_attempts(case)] == ["failed", "not_sent"]
    case = run_until_due_retry(case, gateway, stripe_store)
    assert [a.outcome for a in our_attempts(case)] == ["failed", "not_sent", "succeeded"]
    assert fake_stripe.real_charges == 1


@pytest.mark.parametrize("answer", ["authentication_required", "invoice_requires_action"])
def test_a_payment_the_bank_wants_confirmed_asks_the_customer_and_stops_off_session_retries(
    webhooks, fake_stripe, stripe_store, gateway, answer
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script(answer)

    run_pass(case.next_action_at, gateway, stripe_store)

    (attempt,) = our_attempts(case)
    assert attempt.outcome == "requires_action"
    assert {attempt.decline_code, attempt.failure_code} - {""} == {
        "authentication_required": {"authentication_required"},
        "invoice_requires_action": {"invoice_payment_intent_requires_action"},
    }[answer]
    case.refresh_from_db()
    assert (case.status, case.track) == ("open", "authentication")
    assert case.retry_at is None
    run_pass(case.opened_at + dt.timedelta(days=3), gateway, stripe_store)
    assert len(fake_stripe.requests_to("POST", pay_path(invoice))) == 1


def open_order_case(webhooks, fake: FakeStripe, store) -> tuple[RecoveryCase, Order, dict]:
    """A one-off order payment whose PaymentIntent failed, linked by its metadata."""
    customer = Customer.objects.create(
        store=store, stripe_id="cus_shop", first_seen_at="2026-01-01T00:00:00Z"
    )
    order = Order.objects.create(store=store, customer=customer, number="1001", amount=5000)
    pi = sf.stripe_object(
        "payment_intent",
        id=sf.uid("pi"),
        amount=5000,
        customer="cus_shop",
        metadata={"order_id": "1001"},
        payment_method="pm_card_shop",
        latest_charge="ch_first_failure",
        last_payment_error={
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "charge": "ch_first_failure",
            "payment_method": {
                "id": "pm_card_shop",
                "object": "payment_method",
                "card": {"brand": "visa", "last4": "4242", "fingerprint": "fp_shop"},
            },
        },
    )
    fake.add_payment_intent(pi)
    webhooks.deliver("payment_intent.payment_failed", pi)
    case = RecoveryCase.objects.get(payment_intent_id=pi["id"])
    assert (case.kind, case.order, case.track) == ("payment", order, "soft")
    return case, order, pi


def test_an_order_payment_is_retried_by_confirming_its_payment_intent_off_session(
    webhooks, fake_stripe, stripe_store, gateway
):
    case, order, pi = open_order_case(webhooks, fake_stripe, stripe_store)
    fake_stripe.script("approve")

    case = run_until_due_retry(case, gateway, stripe_store)

    (request,) = fake_stripe.requests
    assert (request.method, request.path) == ("POST", f"/v1/payment_intents/{pi['id']}/confirm")
    assert request.param("off_session") == "true"
    assert request.param("payment_method") == "pm_card_shop"
    assert request.idempotency_key == f"recoup-case-{case.pk}-attempt-1"
    assert (case.status, case.recovered_via, case.recovered_amount) == (
        "recovered",
        "recoup_retry",
        5000,
    )
    assert [a.outcome for a in our_attempts(case)] == ["succeeded"]
    order.refresh_from_db()
    assert order.payment_status == "paid"
    assert fake_stripe.payment_intents[pi["id"]]["status"] == "succeeded"
    assert fake_stripe.real_charges == 1


def test_stripe_api_base_is_read_when_a_client_is_built(fake_stripe, settings):
    invoice = sf.failed_invoice()
    fake_stripe.add_invoice(invoice)
    before = StripeGateway(api_key="sk_test_a", timeout=CLIENT_TIMEOUT)
    other = FakeStripe().start()
    try:
        other.add_invoice(sf.paid_invoice(invoice))
        settings.STRIPE_API_BASE = other.url
        after = StripeGateway(api_key="sk_test_a", timeout=CLIENT_TIMEOUT)

        assert after.invoice_read(invoice_id=invoice["id"]).paid is True
        assert before.invoice_read(invoice_id=invoice["id"]).paid is False
    finally:
        other.stop()
    assert [r.path for r in other.requests] == [f"/v1/invoices/{invoice['id']}"]
    assert [r.path for r in fake_stripe.requests] == [f"/v1/invoices/{invoice['id']}"]


def test_a_server_error_on_an_order_retry_is_not_sent_and_keeps_the_first_failure_intact(
    webhooks, fake_stripe, stripe_store, gateway
):
    """The PaymentIntent still shows the failure that opened the case; a retry that never
    reached the card must not be taken for a new decline of that old charge."""
    case, order, pi = open_order_case(webhooks, fake_stripe, stripe_store)
    (first_failure,) = case.attempts.all()
    fake_stripe.script("500", "approve")

    case = run_until_due_retry(case, gateway, stripe_store)
    assert case.next_action == RecoveryCase.NextAction.RECONCILE
    run_pass(case.next_action_at, gateway, stripe_store)

    confirm = f"/v1/payment_intents/{pi['id']}/confirm"
    assert [(r.method, r.path) for r in fake_stripe.requests] == [
        ("POST", confirm),
        ("GET", f"/v1/payment_intents/{pi['id']}"),
    ]
    first_failure.refresh_from_db()
    assert (first_failure.outcome, first_failure.charge_id) == ("failed", "ch_first_failure")
    assert [(a.outcome, a.charge_id) for a in our_attempts(case)] == [("not_sent", "")]

    case = run_until_due_retry(case, gateway, stripe_store)
    assert [r.idempotency_key for r in fake_stripe.requests_to("POST", confirm)] == [
        f"recoup-case-{case.pk}-attempt-1",
        f"recoup-case-{case.pk}-attempt-2",
    ]
    assert case.status == "recovered" and fake_stripe.real_charges == 1


def test_stripes_paid_event_before_the_read_back_credits_the_retry_that_charged(
    webhooks, fake_stripe, stripe_store, gateway
):
    """Stripe sends invoice.paid seconds after the charge; the read-back is minutes
    later. The event must settle Recoup's own in-flight attempt, not add another."""
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script("timeout_after_charge")
    run_pass(case.next_action_at, gateway, stripe_store)
    (attempt,) = our_attempts(case)
    assert attempt.outcome == "unknown"

    with time_machine.travel(attempt.attempted_at + dt.timedelta(seconds=30), tick=False):
        webhooks.deliver("invoice.paid", sf.paid_invoice(invoice))
    run_pass(attempt.attempted_at + dt.timedelta(minutes=10), gateway, stripe_store)

    case.refresh_from_db()
    assert (case.status, case.recovered_via) == ("recovered", "recoup_retry")
    assert case.inflight_key == ""
    attempt.refresh_from_db()
    assert attempt.outcome == "succeeded"
    assert case.attempts.filter(outcome="succeeded").count() == 1  # one charge, one record
    assert fake_stripe.real_charges == 1


@requires_postgres()
@pytest.mark.django_db(transaction=True)
def test_two_workers_on_one_due_retry_charge_the_card_once(
    webhooks, fake_stripe, stripe_store, gateway
):
    case, invoice = open_invoice_case(webhooks, fake_stripe)
    fake_stripe.script("approve", "approve")
    barrier = threading.Barrier(2)

    def worker(_):
        try:
            gw = StripeGateway(api_key=stripe_store.stripe_secret_key, timeout=CLIENT_TIMEOUT)
            barrier.wait(timeout=30)
            return run_due(now=case.next_action_at, gateways={stripe_store.id: gw}).actions
        finally:
            connection.close()

    with time_machine.travel(case.next_action_at, tick=False):
        with ThreadPoolExecutor(max_workers=2) as pool:
            reports = list(pool.map(worker, range(2)))

    assert sorted(r.get("retried", 0) for r in reports) == [0, 1]
    assert len(fake_stripe.requests_to("POST", pay_path(invoice))) == 1
    assert fake_stripe.real_charges == 1
    case.refresh_from_db()
    assert case.status == "recovered" and len(our_attempts(case)) == 1
