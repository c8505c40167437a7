"""Provider callbacks are verified (Twilio's X-Twilio-Signature with the SDK's
RequestValidator, Postmark's shared secret); forged ones get 4xx and change nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from django.core import mail
from twilio.request_validator import RequestValidator

from messaging import sms
from messaging.models import ConsentEvent, Message, MessageEvent, Purpose, Suppression
from messaging.sending import message_send_for_case
from subscriptions.models import Customer

from .conftest import T0, sms_customer

TWILIO_TOKEN = "test-twilio-auth-token"
SITE = "http://127.0.0.1:8000"


def twilio_post(client, path: str, params: dict, *, token: str = TWILIO_TOKEN):
    signature = RequestValidator(token).compute_signature(SITE + path, params)
    return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)


def postmark_post(client, record: dict, *, secret: str = "test-postmark-webhook-secret"):
    auth = base64.b64encode(f"recoup:{secret}".encode()).decode()
    return client.post(
        "/webhooks/postmark/",
        json.dumps(record),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {auth}",
    )


@pytest.fixture
def sent(card_case, django_capture_on_commit_callbacks):
    """The card-update request, sent by email and SMS."""
    sms_customer(card_case.customer)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    return {m.channel: m for m in Message.objects.filter(case=card_case)}


# ------------------------------------------------------------------ Twilio


def test_twilio_status_callbacks_record_delivery(client, sent):
    text = sent["sms"]
    params = {"MessageSid": text.provider_id, "MessageStatus": "delivered", "AccountSid": "AC1"}
    assert twilio_post(client, "/webhooks/twilio/status/", params).status_code == 204
    text.refresh_from_db()
    assert text.status == Message.Status.DELIVERED and text.delivered_at is not None
    assert MessageEvent.objects.filter(message=text, kind="delivered").count() == 1


def test_a_forged_twilio_callback_changes_nothing(client, sent):
    text = sent["sms"]
    params = {"MessageSid": text.provider_id, "MessageStatus": "failed", "ErrorCode": "30003"}
    forged = twilio_post(client, "/webhooks/twilio/status/", params, token="not-the-token")
    assert forged.status_code == 403
    unsigned = client.post("/webhooks/twilio/status/", params)
    assert unsigned.status_code == 403
    # A real signature over other parameters does not cover these.
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        SITE + "/webhooks/twilio/status/", {**params, "MessageStatus": "delivered"}
    )
    tampered = client.post("/webhooks/twilio/status/", params, HTTP_X_TWILIO_SIGNATURE=signature)
    assert tampered.status_code == 403
    text.refresh_from_db()
    assert (text.status, text.failed_at) == (Message.Status.SENT, None)
    assert not MessageEvent.objects.exists()


def test_stop_start_and_help_update_consent(client, sent, card_case):
    phone = "+4915112345678"
    reply = twilio_post(client, "/webhooks/twilio/inbound/", {"From": phone, "Body": " Stop "})
    assert reply.status_code == 200
    customer = Customer.objects.get(pk=card_case.customer_id)
    assert customer.sms_opt_in is False
    assert Suppression.objects.filter(channel="sms", address=phone, reason="stop").exists()
    assert ConsentEvent.objects.filter(customer=customer, action="opt_out").count() == 1
    # No SMS follows a STOP, even for the final notice.
    message_send_for_case(
        case=card_case, purpose=Purpose.FINAL_NOTICE, at=T0 + dt.timedelta(hours=100)
    )
    assert len(sms.outbox) == 1

    help_reply = twilio_post(client, "/webhooks/twilio/inbound/", {"From": phone, "Body": "help"})
    assert "Payment reminders from Bean Box" in help_reply.content.decode()
    assert "Reply STOP" in help_reply.content.decode()

    twilio_post(client, "/webhooks/twilio/inbound/", {"From": phone, "Body": "START"})
    customer.refresh_from_db()
    assert customer.sms_opt_in is True
    assert not Suppression.objects.filter(channel="sms", address=phone).exists()
    assert list(
        ConsentEvent.objects.filter(customer=customer).values_list("action", flat=True)
    ) == ["opt_out", "help", "opt_in"]


def test_start_never_opts_in_someone_who_never_opted_in(client, card_case):
    Customer.objects.filter(pk=card_case.customer_id).update(phone="+4915100000000")
    twilio_post(client, "/webhooks/twilio/inbound/", {"From": "+4915100000000", "Body": "START"})
    assert Customer.objects.get(pk=card_case.customer_id).sms_opt_in is False


def test_a_forged_stop_changes_nothing(client, sent, card_case):
    forged = client.post(
        "/webhooks/twilio/inbound/",
        {"From": "+4915112345678", "Body": "STOP"},
        HTTP_X_TWILIO_SIGNATURE="bm90IGEgc2lnbmF0dXJl",
    )
    assert forged.status_code == 403
    assert Customer.objects.get(pk=card_case.customer_id).sms_opt_in is True
    assert not ConsentEvent.objects.exists()


# ------------------------------------------------------------------ Postmark


def test_postmark_delivery_open_and_click_are_recorded(client, sent):
    email = sent["email"]
    meta = {"recoup_message": str(email.pk)}
    postmark_post(
        client,
        {
            "RecordType": "Delivery",
            "MessageID": "pm-1",
            "Metadata": meta,
            "DeliveredAt": "2026-03-04T09:00:05Z",
        },
    )
    postmark_post(
        client,
        {
            "RecordType": "Open",
            "MessageID": "pm-1",
            "Metadata": meta,
            "ReceivedAt": "2026-03-04T10:00:00Z",
        },
    )
    postmark_post(
        client,
        {
            "RecordType": "Click",
            "MessageID": "pm-1",
            "Metadata": meta,
            "ReceivedAt": "2026-03-04T10:01:00Z",
        },
    )
    email.refresh_from_db()
    assert email.status == Message.Status.DELIVERED
    assert email.delivered_at.isoformat() == "2026-03-04T09:00:05+00:00"
    assert email.opened_at.isoformat() == "2026-03-04T10:00:00+00:00"
    assert email.clicked_at.isoformat() == "2026-03-04T10:01:00+00:00"


def test_a_hard_bounce_stops_email_and_tries_sms(
    client, card_case, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    email = Message.objects.get(case=card_case, channel="email")
    sms_customer(card_case.customer)  # opted in after the first message went out
    bounce = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "TypeCode": 1,
        "Inactive": True,
        "Email": "alice@example.com",
        "MessageID": "pm-2",
        "Metadata": {"recoup_message": str(email.pk)},
        "BouncedAt": "2026-03-04T09:01:00Z",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert postmark_post(client, bounce).status_code == 200
    email.refresh_from_db()
    assert email.status == Message.Status.BOUNCED
    assert Suppression.objects.filter(channel="email", address="alice@example.com").exists()
    assert len(sms.outbox) == 1 and "/pay/" in sms.outbox[0].body
    # No more email to that address.
    with django_capture_on_commit_callbacks(execute=True):
        later = message_send_for_case(case=card_case, purpose=Purpose.FINAL_NOTICE, at=T0)
    assert later[0].status == Message.Status.SKIPPED and "suppressed" in later[0].status_reason
    assert len(mail.outbox) == 1


def test_a_spam_complaint_opts_the_customer_out_of_email(client, sent, card_case):
    email = sent["email"]
    postmark_post(
        client,
        {
            "RecordType": "SpamComplaint",
            "Email": "alice@example.com",
            "MessageID": "pm-3",
            "Metadata": {"recoup_message": str(email.pk)},
        },
    )
    assert Customer.objects.get(pk=card_case.customer_id).email_opt_out is True
    assert ConsentEvent.objects.filter(action="opt_out", source="postmark").count() == 1


def test_a_forged_postmark_callback_changes_nothing(client, sent, card_case):
    email = sent["email"]
    bounce = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "Inactive": True,
        "Email": "alice@example.com",
        "Metadata": {"recoup_message": str(email.pk)},
    }
    assert postmark_post(client, bounce, secret="guess").status_code == 401
    no_auth = client.post(
        "/webhooks/postmark/", json.dumps(bounce), content_type="application/json"
    )
    assert no_auth.status_code == 401
    assert (
        client.post(
            "/webhooks/postmark/",
            json.dumps(bounce),
            content_type="application/json",
            HTTP_X_RECOUP_WEBHOOK_SECRET="guess",
        ).status_code
        == 401
    )
    email.refresh_from_db()
    assert email.status == Message.Status.SENT
    assert not Suppression.objects.exists() and not MessageEvent.objects.exists()
    assert Customer.objects.get(pk=card_case.customer_id).email_opt_out is False


# ------------------------------------------------------------------ hostile bodies


def _postmark_raw(client, body: str, *, secret: str = "test-postmark-webhook-secret"):
    auth = base64.b64encode(f"recoup:{secret}".encode()).decode()
    return client.post(
        "/webhooks/postmark/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {auth}",
    )


@pytest.mark.parametrize("ours", ["²", "٣", "1" * 5000, "-1", "1e3", " 7", True, 3.5])
def test_a_postmark_message_id_that_is_no_id_of_ours_matches_nothing(client, sent, ours):
    email = sent["email"]
    record = {"RecordType": "Open", "MessageID": "pm-x", "Metadata": {"recoup_message": ours}}
    response = postmark_post(client, record)
    if isinstance(ours, bool | float):
        assert response.status_code == 400
        assert MessageEvent.objects.count() == 0
    else:
        assert response.status_code == 200 and response.json()["matched"] is False
    email.refresh_from_db()
    assert email.opened_at is None


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"RecordType": "x" * 10_000}, "RecordType is longer"),
        ({"RecordType": ["Bounce"]}, "RecordType must be a string"),
        ({"RecordType": "Bounce", "MessageID": {"a": 1}}, "MessageID must be a string"),
        ({"RecordType": "Bounce", "Email": "a@" + "b" * 300}, "Email is longer"),
        ({"RecordType": "Bounce", "Metadata": ["x"]}, "Metadata must be an object"),
        ({"RecordType": "Bounce", "Inactive": "yes"}, "Inactive must be true or false"),
    ],
)
def test_a_postmark_record_not_shaped_as_postmark_sends_is_a_400(client, sent, record, problem):
    response = postmark_post(client, record)
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]
    assert not MessageEvent.objects.exists() and not Suppression.objects.exists()


@pytest.mark.parametrize("body", ["[" * 50_000 + "]" * 50_000, '{"a":' * 100 + "1" + "}" * 100])
def test_a_postmark_body_nested_deep_is_a_400(client, sent, body):
    response = _postmark_raw(client, body)
    assert response.status_code == 400
    assert "nested deeper" in response.json()["error"]["message"]
    assert not MessageEvent.objects.exists()


def test_a_postmark_body_over_the_limit_is_a_413(client, sent):
    response = _postmark_raw(client, json.dumps({"RecordType": "Open", "x": "y" * 600_000}))
    assert response.status_code == 413
    assert not MessageEvent.objects.exists()


@pytest.mark.parametrize(
    "path, params",
    [
        ("/webhooks/twilio/status/", {"MessageSid": "SM" + "1" * 5000, "MessageStatus": "sent"}),
        ("/webhooks/twilio/status/", {"MessageSid": "SM1", "MessageStatus": "x" * 1000}),
        ("/webhooks/twilio/inbound/", {"From": "+1" * 100, "Body": "STOP"}),
    ],
)
def test_a_twilio_callback_with_fields_longer_than_twilio_sends_is_a_400(
    client, sent, path, params
):
    response = twilio_post(client, path, params)
    assert response.status_code == 400
    assert "longer than" in response.content.decode()
    assert not MessageEvent.objects.exists() and not ConsentEvent.objects.exists()


def test_a_twilio_body_over_the_limit_is_a_413_before_the_signature_is_read(client, sent):
    response = client.post(
        "/webhooks/twilio/inbound/", {"Body": "x" * 70_000}, HTTP_X_TWILIO_SIGNATURE="forged"
    )
    assert response.status_code == 413
    assert not MessageEvent.objects.exists()


def test_provider_callbacks_with_a_nul_are_a_400(client, sent):
    response = _postmark_raw(client, json.dumps({"RecordType": "Open", "Email": "a\u0000@b.c"}))
    assert response.status_code == 400 and "NUL" in response.json()["error"]["message"]
    params = {"From": "+15005550006", "Body": "ST\x00OP"}
    assert twilio_post(client, "/webhooks/twilio/inbound/", params).status_code == 400
    assert not MessageEvent.objects.exists() and not ConsentEvent.objects.exists()
