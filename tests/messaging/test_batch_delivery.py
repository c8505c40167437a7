"""A scheduler batch's emails (messaging.sending.messages_send_for_cases and
messages_deliver): decided as one at a time would decide them, and one bad message, one
refused address or one provider failure fails only its own message."""

from __future__ import annotations

import json

import pytest
import time_machine
from django.core import mail, validators
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend

from messaging.consent import email_suppress
from messaging.delivery import messages_deliver
from messaging.models import Message, MessagingSettings, Purpose, Suppression
from messaging.policy import Known, _email_blocked
from recovery.gateways import gateway_for
from recovery.models import CaseEvent, RecoveryCase
from recovery.scheduler import run_due
from stores.services import store_create
from subscriptions.models import Customer
from tests import stripe_factory as sf
from tests.messaging.conftest import T0

INACTIVE = (
    "You tried to send to recipient(s) that have been marked as inactive. "
    "Found inactive addresses: {}."
)


def _queued(store, name: str) -> Message:
    customer = Customer.objects.create(
        store=store, stripe_id=f"cus_{name}", email=f"{name}@example.com", first_seen_at=T0
    )
    return Message.objects.create(
        store=store,
        customer=customer,
        purpose=Purpose.PREDUNNING,
        channel="email",
        to=customer.email,
        subject="Your card expires soon",
        body_text="Hello",
        status="queued",
        created_at=T0,
    )


@pytest.mark.django_db
def test_one_postmark_request_and_each_refusal_names_only_its_own_recipient(postmark):
    # Two stores' messages in one batch (a pass over every store).
    messages = [
        _queued(store_create(name=name, stripe_webhook_secret=f"whsec_{name}_0123456789"), name)
        for name in ("alpha", "beta", "gamma")
    ]
    postmark.replies.append(
        (
            200,
            [
                {"ErrorCode": 406, "Message": INACTIVE.format("alpha@example.com")},
                {"ErrorCode": 0, "Message": "OK", "MessageID": "pm-beta"},
                {"ErrorCode": 406, "Message": INACTIVE.format("gamma@example.com")},
            ],
        )
    )
    messages_deliver(message_ids=[m.pk for m in messages], now=T0)

    assert len(postmark.requests) == 1 and postmark.requests[0]["path"] == "/email/batch"
    assert [e["To"] for e in json.loads(postmark.requests[0]["body"])] == [
        "alpha@example.com",
        "beta@example.com",
        "gamma@example.com",
    ]
    alpha, beta, gamma = (Message.objects.get(pk=m.pk) for m in messages)
    assert (beta.status, beta.provider, beta.provider_id) == ("sent", "postmark", "pm-beta")
    assert alpha.status == gamma.status == "failed"
    assert "alpha@example.com" in alpha.status_reason and "406" in alpha.status_reason
    # Another store's customer never shows on this message (nor on its timeline).
    assert "alpha@example.com" not in gamma.status_reason
    assert "gamma@example.com" in gamma.status_reason


@pytest.mark.django_db
def test_postmark_unreachable_fails_the_batch_and_sends_nothing_twice(postmark, store):
    messages = [_queued(store, name) for name in ("one", "two")]
    postmark.replies.append((500, {"ErrorCode": 500, "Message": "down"}))
    messages_deliver(message_ids=[m.pk for m in messages], now=T0)
    assert set(Message.objects.values_list("status", flat=True)) == {"failed"}
    # Delivered again (a second hook, a sweep): nothing queued is left to send.
    messages_deliver(message_ids=[m.pk for m in messages], now=T0)
    assert len(postmark.requests) == 1


class RefusingBackend(LocmemBackend):
    """An SMTP-like backend: refuses one address, stops at the first refusal."""

    def send_messages(self, messages):
        for message in messages:
            if "refused@" in message.to[0]:
                raise OSError("550 mailbox unavailable")
        return super().send_messages(messages)


@pytest.mark.django_db
def test_a_backend_refusing_one_address_fails_only_that_message(settings, store):
    settings.EMAIL_BACKEND = "tests.messaging.test_batch_delivery.RefusingBackend"
    messages = [_queued(store, name) for name in ("first", "refused", "last")]
    messages_deliver(message_ids=[m.pk for m in messages], now=T0)
    status = dict(Message.objects.values_list("to", "status"))
    assert status == {
        "first@example.com": "sent",
        "refused@example.com": "failed",
        "last@example.com": "sent",
    }
    assert sorted(m.to[0] for m in mail.outbox) == ["first@example.com", "last@example.com"]
    assert "550" in Message.objects.get(to="refused@example.com").status_reason


@pytest.mark.django_db(transaction=True)
def test_an_email_that_cannot_be_built_fails_alone_and_the_stage_moves_on_once(webhooks, store):
    # A sender on an international domain: the model accepts it, the email header not.
    validators.validate_email("rechnung@bäckerei.de")
    MessagingSettings.objects.create(store=store, from_email="rechnung@bäckerei.de")
    with time_machine.travel(T0, tick=False) as traveller:
        for i in range(2):
            webhooks.deliver(
                "invoice.payment_failed",
                sf.failed_invoice(
                    customer=f"cus_idn_{i}",
                    subscription=f"sub_idn_{i}",
                    decline_code="expired_card",
                    fingerprint=f"fp_idn_{i}",
                    email=f"c{i}@example.com",
                ),
            )
        at = max(RecoveryCase.objects.values_list("next_action_at", flat=True))
        traveller.move_to(at)
        run_due(now=at, gateways={store.pk: gateway_for(store)}, store_id=store.pk)

    # Recorded failed (not left "sending", not sent twice), each step taken once.
    messages = Message.objects.filter(store=store)
    assert messages.count() == 2
    assert set(messages.values_list("status", flat=True)) == {"failed"}
    assert all("Error" in m.status_reason for m in messages)
    for case in RecoveryCase.objects.filter(store=store):
        assert case.dunning_stage == 1
        assert CaseEvent.objects.filter(case=case, kind="message_due").count() == 1


@pytest.mark.parametrize(
    "email", ["jörg@example.de", "JÖRG@example.de", "straße@example.de", "Plain@Example.com"]
)
@pytest.mark.django_db
def test_the_batch_sees_every_suppression_one_at_a_time_sees(store, email):
    customer = Customer.objects.create(
        store=store, stripe_id="cus_x", email=email, first_seen_at=T0
    )
    email_suppress(store_id=store.pk, address=email, reason=Suppression.Reason.HARD_BOUNCE, at=T0)
    customer.refresh_from_db()
    single = _email_blocked(customer)
    assert single, "one at a time sees the suppression"
    assert _email_blocked(customer, Known(customers=[customer])) == single
