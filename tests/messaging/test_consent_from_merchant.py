"""SMS consent as the merchant keeps it: in the Stripe customer's metadata (read from
customer.created / customer.updated through the signed webhook) and through
POST /api/v1/customers/<id>/consent. A STOP wins until START; only a change records an
event; statements arriving in any order end in the same state."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from messaging import sms
from messaging.consent import consent_sms_opt_in, consent_sms_opt_out
from messaging.models import ConsentEvent, Message, Suppression
from recovery.models import RecoveryCase
from recovery.scheduler import run_due
from stores.services import api_token_create
from subscriptions.models import Customer
from tests import stripe_factory as sf

from .conftest import T0

PHONE = "+4915112345678"
MIN = dt.timedelta(minutes=1)
URL = "/api/v1/customers/cus_test_alice/consent"


@pytest.fixture(autouse=True)
def _frozen(time_machine):
    time_machine.move_to(T0 + dt.timedelta(hours=1), tick=False)


def customer(*, metadata=None, phone=PHONE, stripe_id="cus_test_alice") -> dict:
    return sf.stripe_object(
        "customer",
        id=stripe_id,
        email="alice@example.com",
        name="Alice Example",
        phone=phone,
        metadata=metadata or {},
    )


def deliver(webhooks, type_, data, *, at, previous=None):
    return webhooks.deliver(type_, data, created=int(at.timestamp()), previous_attributes=previous)


def alice() -> Customer:
    return Customer.objects.get(stripe_id="cus_test_alice")


def sms_events() -> list[tuple[str, str, dt.datetime]]:
    return list(
        ConsentEvent.objects.filter(customer=alice(), channel="sms")
        .order_by("at", "id")
        .values_list("action", "source", "at")
    )


# ------------------------------------------------------------------ Stripe metadata


@pytest.mark.parametrize("value", ["true", "YES", "1", "Yes"])
def test_metadata_consent_on_a_new_customer_opts_in_and_is_recorded(webhooks, value):
    deliver(webhooks, "customer.created", customer(metadata={"sms_opt_in": value}), at=T0)
    assert alice().sms_opt_in is True
    assert sms_events() == [("opt_in", "stripe_metadata", T0)]
    event = ConsentEvent.objects.get(customer=alice())
    assert event.address == PHONE


@pytest.mark.parametrize("value", ["maybe", "", "on", "y"])
def test_a_value_that_is_not_a_yes_or_a_no_is_ignored(webhooks, value):
    deliver(webhooks, "customer.created", customer(metadata={"sms_opt_in": value}), at=T0)
    assert alice().sms_opt_in is False
    assert sms_events() == []


def test_a_no_in_metadata_opts_out(webhooks):
    deliver(webhooks, "customer.created", customer(metadata={"sms_opt_in": "yes"}), at=T0)
    deliver(
        webhooks,
        "customer.updated",
        customer(metadata={"sms_opt_in": "No"}),
        at=T0 + MIN,
        previous={"metadata": {"sms_opt_in": "yes"}},
    )
    assert alice().sms_opt_in is False
    assert [a for a, *_ in sms_events()] == ["opt_in", "opt_out"]


def test_the_store_setting_names_the_metadata_key(webhooks, store):
    store.sms_consent_key = "texts_ok"
    store.save(update_fields=["sms_consent_key"])
    deliver(
        webhooks,
        "customer.created",
        customer(metadata={"sms_opt_in": "no", "texts_ok": "true"}),
        at=T0,
    )
    assert alice().sms_opt_in is True


def test_only_a_change_records_an_event(webhooks):
    deliver(webhooks, "customer.created", customer(metadata={"sms_opt_in": "yes"}), at=T0)
    for n in range(1, 4):  # unrelated updates repeat the metadata
        deliver(
            webhooks,
            "customer.updated",
            customer(metadata={"sms_opt_in": "yes"}),
            at=T0 + n * MIN,
            previous={"name": f"Alice {n}"},
        )
    assert len(sms_events()) == 1


def test_an_unchanged_value_repeated_later_does_not_undo_a_newer_opt_out(webhooks, api):
    deliver(webhooks, "customer.created", customer(metadata={"sms_opt_in": "yes"}), at=T0)
    response = api.post(URL, {"sms": False, "source": "support_call"}, "application/json")
    assert response.status_code == 201
    deliver(
        webhooks,
        "customer.updated",
        customer(metadata={"sms_opt_in": "yes"}),
        at=T0 + dt.timedelta(hours=2),
        previous={"email": "old@example.com"},  # something else changed
    )
    assert alice().sms_opt_in is False


def test_a_stop_wins_over_metadata_until_start(webhooks):
    deliver(webhooks, "customer.created", customer(metadata={"sms_opt_in": "yes"}), at=T0)
    consent_sms_opt_out(phone=PHONE, at=T0 + MIN, source="twilio_inbound", detail="STOP")
    # The merchant sets the flag again: the STOP still stands.
    deliver(
        webhooks,
        "customer.updated",
        customer(metadata={"sms_opt_in": "true"}),
        at=T0 + 2 * MIN,
        previous={"metadata": {"sms_opt_in": "yes"}},
    )
    assert alice().sms_opt_in is False
    assert Suppression.objects.filter(channel="sms", address=PHONE, reason="stop").exists()
    consent_sms_opt_in(phone=PHONE, at=T0 + 3 * MIN, source="twilio_inbound", detail="START")
    assert alice().sms_opt_in is True
    assert [(a, s) for a, s, _ in sms_events()] == [
        ("opt_in", "stripe_metadata"),
        ("opt_out", "twilio_inbound"),
        ("opt_in", "twilio_inbound"),
    ]


def test_no_number_no_opt_in(webhooks):
    deliver(
        webhooks,
        "customer.created",
        customer(metadata={"sms_opt_in": "yes"}, phone="not a number"),
        at=T0,
    )
    assert (alice().phone, alice().sms_opt_in) == ("", False)
    assert sms_events() == []


@pytest.mark.parametrize("order", ["in order", "newest first"])
def test_metadata_changes_in_any_order_end_the_same(webhooks, order):
    deliver(webhooks, "customer.created", customer(), at=T0)
    yes = (customer(metadata={"sms_opt_in": "yes"}), T0 + MIN, {"metadata": {"sms_opt_in": None}})
    no = (
        customer(metadata={"sms_opt_in": "no"}),
        T0 + 2 * MIN,
        {"metadata": {"sms_opt_in": "yes"}},
    )
    for data, at, previous in [yes, no] if order == "in order" else [no, yes]:
        deliver(webhooks, "customer.updated", data, at=at, previous=previous)
    assert alice().sms_opt_in is False


def test_consent_given_after_the_case_opened_brings_the_sms(
    webhooks, django_capture_on_commit_callbacks
):
    invoice = sf.failed_invoice(decline_code="expired_card")
    deliver(webhooks, "invoice.payment_failed", invoice, at=T0)
    case = RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])
    deliver(
        webhooks,
        "customer.updated",
        customer(metadata={"sms_opt_in": "yes"}),
        at=T0 + MIN,
        previous={"metadata": {"sms_opt_in": None}, "phone": None},
    )
    with django_capture_on_commit_callbacks(execute=True):
        run_due(now=T0 + dt.timedelta(hours=1))
    text = Message.objects.get(case=case, channel="sms")
    assert (text.to, text.status) == (PHONE, Message.Status.SENT)
    assert [m.to for m in sms.outbox] == [PHONE]


def test_without_consent_the_same_case_gets_email_only(
    webhooks, django_capture_on_commit_callbacks
):
    invoice = sf.failed_invoice(decline_code="expired_card")
    deliver(webhooks, "invoice.payment_failed", invoice, at=T0)
    deliver(webhooks, "customer.updated", customer(), at=T0 + MIN, previous={"phone": None})
    with django_capture_on_commit_callbacks(execute=True):
        run_due(now=T0 + dt.timedelta(hours=1))
    assert not Message.objects.filter(channel="sms").exists()
    assert Message.objects.filter(channel="email").exists()


# ------------------------------------------------------------------ the API


@pytest.fixture
def known(webhooks):
    deliver(webhooks, "customer.created", customer(), at=T0)
    return alice()


def test_the_api_records_a_change_once(api, known):
    at = (T0 + MIN).isoformat()
    response = api.post(URL, {"sms": True, "source": "checkout", "at": at}, "application/json")
    assert response.status_code == 201, response.content
    assert response.json() == {
        "customer": "cus_test_alice",
        "sms": True,
        "changed": True,
        "reason": "",
    }
    again = api.post(URL, {"sms": True, "source": "checkout", "at": at}, "application/json")
    assert again.status_code == 200
    assert again.json()["changed"] is False
    assert sms_events() == [("opt_in", "checkout", T0 + MIN)]


def test_the_api_defaults_to_now_and_source_api(api, known):
    assert api.post(URL, {"sms": True}, "application/json").status_code == 201
    assert sms_events() == [("opt_in", "api", T0 + dt.timedelta(hours=1))]


@pytest.mark.parametrize("order", ["in order", "newest first"])
def test_the_api_in_any_order_ends_the_same(api, known, order):
    older = {"sms": True, "at": (T0 + MIN).isoformat()}
    newer = {"sms": False, "at": (T0 + 2 * MIN).isoformat()}
    for body in [older, newer] if order == "in order" else [newer, older]:
        assert api.post(URL, body, "application/json").status_code in (200, 201)
    assert alice().sms_opt_in is False
    if order == "newest first":
        late = api.post(URL, older, "application/json").json()
        assert late["changed"] is False and "stated later" in late["reason"]


def test_the_api_cannot_lift_a_stop(api, known):
    consent_sms_opt_out(phone=PHONE, at=T0, source="twilio_inbound", detail="STOP")
    response = api.post(URL, {"sms": True}, "application/json")
    assert response.status_code == 409
    assert "START" in response.json()["error"]["message"]
    assert alice().sms_opt_in is False


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "sms"),
        ({"sms": "perhaps"}, "sms"),
        ({"sms": True, "at": "yesterday"}, "at"),
        ({"sms": True, "at": "2999-01-01T00:00:00Z"}, "at"),
        ({"sms": True, "source": "the phone call"}, "source"),
        ({"sms": True, "source": "x" * 33}, "source"),
    ],
)
def test_bad_input_is_a_400_that_names_the_field(api, known, body, field):
    response = api.post(URL, body, "application/json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert sms_events() == []


def test_another_stores_customer_is_404(known, other_store):
    other = Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(store=other_store)[1]}")
    response = other.post(URL, {"sms": True}, "application/json")
    assert response.status_code == 404
    assert alice().sms_opt_in is False


def test_an_unknown_customer_is_404(api, known):
    response = api.post("/api/v1/customers/cus_nobody/consent", {"sms": True}, "application/json")
    assert response.status_code == 404
