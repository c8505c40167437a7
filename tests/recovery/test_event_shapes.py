"""Authentic but malformed Stripe events: stored, marked failed with the reason, shown to
operators, and writing no domain rows. Stripe would never send these; a bug upstream or
a replay tool might, and the rows would poison analytics."""

from __future__ import annotations

import copy

import pytest

from orders.models import Order
from recovery import event_shapes
from recovery.intake import stripe_event_reprocess_pending
from recovery.models import PaymentAttempt, RecoveryCase, StripeEvent
from subscriptions.models import Customer, Invoice, PaymentMethod, Subscription
from tests import stripe_factory as sf

pytestmark = pytest.mark.django_db

DOMAIN = (Customer, Invoice, Subscription, PaymentMethod, RecoveryCase, PaymentAttempt, Order)


def rows() -> dict:
    return {model.__name__: model.objects.count() for model in DOMAIN}


def _invoice(**changes):
    invoice = sf.failed_invoice()
    invoice.update(changes)
    return invoice


def _customer(**changes):
    customer = sf.stripe_object("customer", id="cus_shape")
    customer.update(changes)
    return customer


def _pi(**changes):
    pi = sf.payment_intent_failed(sf.failed_invoice())
    pi.update(changes)
    return pi


def _pm(**card):
    pm = sf.stripe_object("payment_method", id="pm_shape", customer="cus_test_alice")
    pm["card"].update(card)
    return pm


MALFORMED = [
    ("invoice.payment_failed", lambda: _invoice(customer=12345), "data.object.customer"),
    ("invoice.payment_failed", lambda: _invoice(customer=["cus_a"]), "data.object.customer"),
    ("invoice.payment_failed", lambda: _invoice(currency=["usd"]), "data.object.currency"),
    ("invoice.payment_failed", lambda: _invoice(amount_due="2900"), "data.object.amount_due"),
    ("invoice.payment_failed", lambda: _invoice(amount_due=10**30), "data.object.amount_due"),
    ("invoice.payment_failed", lambda: _invoice(amount_due=True), "data.object.amount_due"),
    (
        "invoice.payment_failed",
        lambda: _invoice(subscription="sub_" + "x" * 10_000),
        "subscription",
    ),
    ("invoice.payment_failed", lambda: _invoice(status="wobbly"), "data.object.status"),
    ("invoice.payment_failed", lambda: _invoice(attempt_count=-1), "attempt_count"),
    ("invoice.paid", lambda: _invoice(id=7), "data.object.id"),
    ("payment_intent.payment_failed", lambda: _pi(payment_method=42), "payment_method"),
    ("payment_intent.payment_failed", lambda: _pi(amount=1.5), "data.object.amount"),
    ("customer.updated", lambda: _customer(email=["a@b.c"]), "data.object.email"),
    ("customer.updated", lambda: _customer(metadata={"sms_opt_in": True}), "metadata"),
    ("customer.updated", lambda: _customer(phone="1" * 500), "data.object.phone"),
    ("payment_method.attached", lambda: _pm(exp_month="ab"), "card.exp_month"),
    ("payment_method.attached", lambda: _pm(exp_month=13), "card.exp_month"),
    (
        "customer.subscription.updated",
        lambda: {**sf.stripe_object("subscription", id="sub_s", customer="cus_s"), "status": 3},
        "status",
    ),
]


@pytest.mark.parametrize("type_, build, where", MALFORMED)
def test_an_authentic_malformed_event_is_kept_failed_and_writes_nothing(
    webhooks, type_, build, where
):
    before = rows()
    webhooks.deliver(type_, build())
    event = StripeEvent.objects.get()
    assert event.outcome == "failed"
    assert event.error.startswith("malformed: ") and where in event.error
    assert rows() == before
    # Not tried again: it would fail the same way.
    StripeEvent.objects.filter(pk=event.pk).update(received_at=event.received_at.replace(year=2020))
    assert stripe_event_reprocess_pending() == 0


def test_every_builder_the_suite_uses_is_shaped_as_stripe_sends():
    invoice = sf.failed_invoice()
    events = [
        sf.event("invoice.payment_failed", invoice),
        sf.event("invoice.paid", sf.paid_invoice(invoice)),
        sf.event("payment_intent.payment_failed", sf.payment_intent_failed(invoice)),
        sf.event("charge.failed", sf.charge_failed(invoice)),
        sf.event("customer.updated", sf.stripe_object("customer", id="cus_x")),
        sf.event("customer.subscription.updated", sf.stripe_object("subscription", id="sub_x")),
        sf.event("payment_method.attached", sf.stripe_object("payment_method", id="pm_x")),
    ]
    for event in events:
        assert event_shapes.event_problem(event) == "", event["type"]


def test_real_stripe_fixtures_pass_the_shape_check():
    """The project's copies of Stripe's own objects (tests/fixtures/stripe) are the
    shapes the checks were written from."""
    objects = sf._objects()
    checked = 0
    for kind, check in event_shapes.OBJECTS.items():
        if kind in objects:
            assert check(copy.deepcopy(objects[kind])) == "", kind
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("event_id", [12345, ["evt_1"], "evt_" + "x" * 300, "evt 1"])
def test_an_event_whose_id_is_no_stripe_id_is_a_400_and_not_stored(webhooks, event_id):
    event = sf.event("invoice.payment_failed", sf.failed_invoice())
    event["id"] = event_id
    response = webhooks.send(event)
    assert response.status_code == 400
    assert "Stripe id" in response.json()["error"]["message"]
    assert StripeEvent.objects.count() == 0


def test_operators_see_a_malformed_event_on_the_connections_page(webhooks, store, operator):
    from django.test import Client

    webhooks.deliver("invoice.payment_failed", _invoice(customer=12345), event_id="evt_bad_1")
    client = Client()
    client.force_login(operator)
    page = client.get(f"/s/{store.id}/settings/connections/").content.decode()
    assert "Stripe events Recoup could not apply" in page
    assert "evt_bad_1" in page and "malformed: data.object.customer: expected a Stripe id" in page
