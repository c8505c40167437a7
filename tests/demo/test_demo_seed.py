"""The seeded demo: a small store (60 customers, 30 days) replayed through the real code.

One replay serves the module's read-only tests (it takes a few seconds); it is committed
to the test database and flushed at the end of the module.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command

from demo import replay as demo
from demo.simulation import Attempt, network_violations
from messaging.models import ConsentEvent, Message
from orders.models import InventoryHold, Order
from recovery.gateways.sandbox import SandboxGateway
from recovery.models import CaseEvent, PaymentAttempt, RecoveryCase, StripeEvent, Track
from stores.models import ApiToken, Membership, Store
from subscriptions.models import Customer, Invoice, PaymentMethod, Subscription

END = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
SMALL = {"customers": 60, "days": 30, "seed": 3, "failure_rate": 0.3, "end": END}
START = END - dt.timedelta(days=30)


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        summary, token = demo.demo_seed(**SMALL)
        yield summary, token
        call_command("flush", interactive=False, verbosity=0)
        # The sandbox's Stripe remembers what it charged, by invoice id, for the process:
        # another seed's invoices have the same ids.
        SandboxGateway._paid.clear()


@pytest.fixture
def store(seeded, db) -> Store:
    return seeded[0].store


def test_small_demo_has_cases_on_every_track(store):
    tracks = set(RecoveryCase.objects.filter(store=store).values_list("track", flat=True))
    assert tracks == set(Track.values)


def test_small_demo_recovers_some_and_loses_some(store):
    cases = RecoveryCase.objects.filter(store=store)
    assert cases.filter(status="recovered").exists()
    assert cases.filter(status="lost").exists()
    via = set(cases.filter(status="recovered").values_list("recovered_via", flat=True))
    assert RecoveryCase.RecoveredVia.RECOUP_RETRY in via
    assert RecoveryCase.RecoveredVia.CUSTOMER in via
    # A lost renewal ends its subscription by the store's policy (cancel by default).
    lost_sub = cases.filter(status="lost", subscription__isnull=False).first()
    assert lost_sub is not None
    assert lost_sub.subscription.status == Subscription.Status.CANCELED


def test_the_catalogue_customers_and_cards_are_there(store):
    assert Customer.objects.filter(store=store).count() == 60
    assert Subscription.objects.filter(store=store).count() == 60
    assert PaymentMethod.objects.filter(store=store, is_default=True).count() == 60
    skus = {s.sku: s for s in store.skus.all()}
    assert skus["PRE-HOLIDAY-500"].preorder
    assert any(s.on_hand < 20 for s in skus.values()), "some SKUs are low on stock"


def test_hard_declines_are_never_retried_on_the_same_card(store):
    for case in RecoveryCase.objects.filter(
        store=store, track__in=[Track.HARD, Track.CARD_UPDATE, Track.FRAUD]
    ):
        ours = case.attempts.filter(
            source__in=[PaymentAttempt.Source.RECOUP_RETRY, PaymentAttempt.Source.CARD_UPDATE]
        ).order_by("attempted_at")
        assert not ours.filter(source=PaymentAttempt.Source.RECOUP_RETRY).exists(), case
        for attempt in ours:
            # Every retry on these tracks follows a card change after the last failure.
            last_failure = (
                case.attempts.filter(attempted_at__lt=attempt.attempted_at)
                .exclude(outcome="succeeded")
                .order_by("-attempted_at")
                .first()
            )
            assert case.events.filter(
                kind="card_changed",
                at__gte=last_failure.attempted_at,
                at__lte=attempt.attempted_at,
            ).exists(), attempt


def test_no_card_goes_over_a_network_budget(store):
    attempts = [
        Attempt(
            row.case_id or 0,
            row.attempted_at,
            row.source,
            row.outcome,
            row.card_fingerprint,
            row.card_brand,
        )
        for row in PaymentAttempt.objects.filter(store=store)
    ]
    assert attempts
    assert network_violations(attempts) == (0, 0)


def test_every_row_came_through_the_services(store):
    """Cases were opened by the intake from stored Stripe events, with their timeline and
    the failed attempt; nothing was written beside them."""
    events = StripeEvent.objects.filter(store=store)
    assert events.exists()
    assert not events.exclude(outcome__in=["processed", "ignored"]).exists()
    assert set(events.values_list("type", flat=True)) >= {
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "payment_intent.succeeded",
    }
    for case in RecoveryCase.objects.filter(store=store):
        assert case.events.filter(kind="opened").exists(), case
        first = case.attempts.order_by("attempted_at", "id").first()
        assert first is not None and first.stripe_event_id is not None, case
        assert first.outcome in ("failed", "requires_action")
        if case.status != "open":
            assert case.events.filter(kind=case.status).exists(), case
    for invoice in Invoice.objects.filter(store=store):
        assert events.filter(payload__data__object__id=invoice.stripe_id).exists()
    for attempt in PaymentAttempt.objects.filter(store=store, source="recoup_retry"):
        assert attempt.idempotency_key.startswith(f"recoup-case-{attempt.case_id}-attempt-")


def test_failed_orders_hold_stock_and_messages_are_due(store):
    assert InventoryHold.objects.filter(store=store, case__isnull=False).exists()
    assert Order.objects.filter(store=store, subscription__isnull=False).exists()
    assert CaseEvent.objects.filter(store=store, kind="message_due").exists()
    assert CaseEvent.objects.filter(store=store, kind="card_changed").exists()


def test_cases_escalate_to_the_queue_and_failed_orders_hold_stock(store):
    assert RecoveryCase.objects.filter(store=store, escalated=True).exists()
    assert CaseEvent.objects.filter(store=store, kind="escalated").exists()
    holds = InventoryHold.objects.filter(store=store, case__isnull=False)
    assert holds.filter(status="held").exists() or holds.filter(status="released").exists()
    assert holds.filter(status="committed").exists()


def test_customers_from_before_the_period_were_imported_with_card_and_subscription(store):
    before = Customer.objects.filter(store=store, first_seen_at__lt=START)
    during = Customer.objects.filter(store=store, first_seen_at__gte=START)
    assert before.exists() and during.exists()
    for customer in Customer.objects.filter(store=store).select_related("default_payment_method"):
        card = customer.default_payment_method
        assert card is not None and card.is_default and card.customer_id == customer.pk
        assert card.last4 and card.exp_year and card.fingerprint
        sub = Subscription.objects.get(customer=customer)
        assert sub.mrr > 0 and sub.product_name and sub.current_period_end
        # Recoup has the rows from when it connected, just before the period, or for
        # those who joined later from their signup: never before the customer existed.
        assert sub.created_at >= customer.first_seen_at, customer
        assert (sub.created_at < START) == (customer.first_seen_at < START), customer


def test_some_customers_opted_in_to_sms_at_signup_and_got_texts(store):
    opted = Customer.objects.filter(store=store, sms_opt_in=True)
    assert opted.exists()
    assert opted.count() < Customer.objects.filter(store=store).exclude(phone="").count()
    assert not opted.filter(phone="").exists()
    # Each consent came through messaging's consent service: one event each, at signup.
    events = ConsentEvent.objects.filter(store=store, channel="sms", action="opt_in")
    assert sorted(events.values_list("customer_id", flat=True)) == sorted(
        opted.values_list("pk", flat=True)
    )
    for event in events.select_related("customer"):
        assert event.source == "signup"
        assert event.at == event.customer.first_seen_at
        assert event.address == event.customer.phone
    texts = Message.objects.filter(store=store, channel="sms", status="sent")
    assert texts.exists()
    assert not texts.exclude(customer__in=opted).exists()
    assert set(texts.values_list("to", flat=True)) <= set(opted.values_list("phone", flat=True))


def test_logins_and_token_come_last(store, seeded):
    roles = set(Membership.objects.filter(store=store).values_list("user__username", "role"))
    assert roles == {("operator", "operator"), ("agent", "agent")}
    token = seeded[1]
    assert token.startswith("rk_")
    assert ApiToken.objects.filter(store=store, name=demo.DEMO_TOKEN_NAME).exists()
    assert demo.demo_is_complete(store)


def test_the_summary_reports_what_the_product_recorded(seeded, db):
    summary = seeded[0]
    assert summary.counts["customers"] == 60
    assert summary.counts["errors"] == 0, summary.counts["first_errors"]
    assert "recovery rate" in summary.text
    assert summary.counts["sms_sent_during_replay"] > 0
    assert "import" in summary.timing and "the period" in summary.timing


def test_the_plan_is_the_same_for_the_same_seed():
    a = demo.demo_plan(seed=5, customers=40, days=20, end=END)
    b = demo.demo_plan(seed=5, customers=40, days=20, end=END)
    c = demo.demo_plan(seed=6, customers=40, days=20, end=END)
    key = lambda p: [(h.at, h.kind, h.data) for h in p.happenings]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)
