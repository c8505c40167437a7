"""The demo and `simulate` play Stripe: what they send and what their Stripe records
have the shapes Stripe's current API gives.

An invoice's `payments` is an includable field, never in a webhook payload; PaymentIntents
and Charges have no `invoice` field. So a failed invoice's decline is read back from the
sandbox, which answers from the PaymentIntents (with their Charge expanded) that the demo
and the simulation recorded with `sandbox_payment_record`.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command

from demo import replay as demo
from demo import simulation
from recovery.gateways.sandbox import SandboxGateway
from recovery.models import CaseEvent, DeclineLookup, RecoveryCase, SandboxPayment, StripeEvent
from recovery.stripe_payloads import decline_from_payment_intent

END = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
CARD_FIELDS = ("brand", "last4", "fingerprint", "exp_month", "exp_year", "country")


def stripe_shape_problems(value, path: str = "", *, in_invoice: bool = False) -> list[str]:
    """Where a payload differs from what Stripe sends: `payments` anywhere inside an
    invoice, an `invoice` on a PaymentIntent or a Charge."""
    problems = []
    if isinstance(value, dict):
        kind = value.get("object")
        in_invoice = in_invoice or kind == "invoice"
        if in_invoice and "payments" in value:
            problems.append(f"{path or '.'}: payments inside an invoice")
        if kind in ("payment_intent", "charge") and "invoice" in value:
            problems.append(f"{path or '.'}: {kind} with an invoice")
        for key, inner in value.items():
            problems += stripe_shape_problems(inner, f"{path}.{key}", in_invoice=in_invoice)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            problems += stripe_shape_problems(inner, f"{path}[{i}]", in_invoice=in_invoice)
    return problems


def test_the_shape_check_finds_what_stripe_never_sends():
    bad_invoice = {"object": "invoice", "lines": {"data": [{"payments": {}}]}}
    bad_pi = {"object": "payment_intent", "invoice": "in_1", "latest_charge": {}}
    bad_charge = {"object": "event", "data": {"object": {"object": "charge", "invoice": "x"}}}
    assert stripe_shape_problems(bad_invoice) == [".lines.data[0]: payments inside an invoice"]
    assert stripe_shape_problems(bad_pi) == [".: payment_intent with an invoice"]
    assert stripe_shape_problems(bad_charge) == [".data.object: charge with an invoice"]
    assert stripe_shape_problems({"object": "list", "payments": []}) == []


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        summary, _ = demo.demo_seed(customers=60, days=30, seed=3, failure_rate=0.3, end=END)
        yield summary.store
        call_command("flush", interactive=False, verbosity=0)
        # The sandbox's Stripe remembers what it charged, by invoice id, for the process:
        # another seed's invoices have the same ids.
        SandboxGateway._paid.clear()


@pytest.fixture
def store(seeded, db):
    return seeded


def test_every_event_the_demo_delivers_has_stripes_shape(store):
    events = StripeEvent.objects.filter(store=store)
    types = set(events.values_list("type", flat=True))
    assert {"invoice.payment_failed", "invoice.payment_action_required"} <= types
    assert types & {"payment_intent.succeeded", "payment_intent.payment_failed"}
    for event in events:
        assert stripe_shape_problems(event.payload) == [], event.type
        data = event.payload["data"]["object"]
        if event.type.startswith("payment_intent."):
            # As Stripe sends it: the charge an id, not expanded.
            assert isinstance(data["latest_charge"], str), event.type


def test_the_demos_stripe_knows_each_failed_invoices_payment_and_charge(store):
    invoices = set(
        StripeEvent.objects.filter(store=store, type__startswith="invoice.").values_list(
            "payload__data__object__id", flat=True
        )
    )
    payments = list(SandboxPayment.objects.filter(store=store))
    assert invoices and {p.invoice_stripe_id for p in payments} == invoices
    for payment in payments:
        pi = payment.payment_intent
        assert stripe_shape_problems(pi) == [], payment
        charge = pi["latest_charge"]
        assert charge["object"] == "charge" and charge["payment_intent"] == pi["id"]
        card = charge["payment_method_details"]["card"]
        assert all(card[name] for name in CARD_FIELDS), card
        if pi["status"] != "succeeded":
            outcome = charge["outcome"]
            assert outcome["type"] == "issuer_declined"
            assert outcome["reason"] == pi["last_payment_error"]["decline_code"]
            assert charge["status"] == "failed" and charge["failure_code"]


def test_failed_invoices_are_classified_by_the_decline_read_back(store):
    cases = RecoveryCase.objects.filter(store=store, kind=RecoveryCase.Kind.INVOICE)
    assert cases.exists()
    assert not cases.filter(decline_code="").exists()
    assert not cases.filter(decline_awaited_until__isnull=False).exists()
    assert not DeclineLookup.objects.filter(store=store, answered_at__isnull=True).exists()
    read = cases.filter(pk__in=CaseEvent.objects.filter(kind="decline_read").values("case_id"))
    # invoice.payment_action_required names its code itself (authentication_required).
    assert not cases.exclude(track="authentication").exclude(pk__in=read).exists()
    codes = set(read.values_list("decline_code", flat=True))
    assert len(codes) > 3 and "insufficient_funds" in codes, codes
    for case in read:
        # The failed card and the network's codes, as the read-back found them.
        assert case.card_brand and case.card_last4 and case.card_fingerprint, case
        assert case.card_exp_month and case.card_exp_year and case.card_country, case
    assert read.exclude(network_decline_code="").exists()


def test_the_demo_builders_send_what_stripe_sends():
    person = demo.demo_plan(seed=5, customers=10, days=10, end=END).people[0]
    at = END - dt.timedelta(days=1)
    payment = dict(
        pi_id="pi_demo_x",
        person=person,
        amount=2900,
        at=at,
        decline=("generic_decline", "do_not_try_again"),
        description="Subscription cycle",
    )
    pi = demo._payment_intent(charge_id="ch_demo_x", **payment)
    charge = demo._charge(charge_id="ch_demo_x", **payment)
    assert pi["latest_charge"] == "ch_demo_x"
    assert charge["outcome"]["reason"] == "generic_decline"
    assert charge["outcome"]["advice_code"] == "do_not_try_again"
    paid = dict(payment, decline=None)
    for status in ("open", "paid"):
        invoice = demo._invoice(
            inv_id="in_demo_x",
            person=person,
            amount=2900,
            at=at,
            attempt_count=2,
            status=status,
            order_number="R1",
            next_payment_attempt=None,
        )
        assert stripe_shape_problems(invoice) == []
    for payload in (
        pi,
        charge,
        demo._payment_intent(charge_id="ch_demo_y", **paid),
        demo._charge(charge_id="ch_demo_y", **paid),
    ):
        assert stripe_shape_problems(payload) == []


def test_the_simulations_stripe_knows_each_failure_as_the_read_back_finds_it(db, monkeypatch):
    cohort = simulation.build_cohort(seed=2, customers=30, days=10, failure_rate=0.5)
    assert cohort.failures
    recorded: dict[str, dict] = {}

    def record(*, store, invoice_id, payment_intent, at=None):
        recorded[invoice_id] = payment_intent
        simulation_record(store=store, invoice_id=invoice_id, payment_intent=payment_intent, at=at)

    simulation_record = simulation.sandbox_payment_record
    monkeypatch.setattr(simulation, "sandbox_payment_record", record)
    result = simulation.run_recoup(cohort)
    assert result.metrics["failed"] == len(cohort.failures)
    assert set(recorded) == {f.invoice_id for f in cohort.failures}
    for failure in cohort.failures:
        pi = recorded[failure.invoice_id]
        assert stripe_shape_problems(pi) == []
        assert isinstance(pi["latest_charge"], dict)
        assert pi["latest_charge"]["payment_method_details"]["card"]["brand"]
        decline = decline_from_payment_intent(pi)
        assert decline.decline_code == failure.code
        assert decline.card_fingerprint and decline.charge_id
