"""Postmark and Twilio through their real SDKs — postmarker's Django backend and twilio's
Client — with only the HTTP boundary replaced by a local server standing in for
api.postmarkapp.com and api.twilio.com."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from messaging.models import Message, Purpose
from messaging.sending import message_send_for_case

from .conftest import T0, LocalApi, sms_customer


@pytest.fixture
def twilio(settings):
    api = LocalApi()
    settings.SMS_BACKEND = "messaging.sms.twilio.SmsBackend"
    settings.TWILIO_API_BASE = api.url
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    settings.TWILIO_FROM = "+15005550006"
    yield api
    api.stop()


def test_email_goes_through_postmark_with_tag_metadata_and_stream(
    postmark, card_case, django_capture_on_commit_callbacks
):
    postmark.replies.append(
        (
            200,
            [
                {
                    "ErrorCode": 0,
                    "Message": "OK",
                    "MessageID": "b7bc2f4a-e38e",
                    "To": "alice@example.com",
                }
            ],
        )
    )
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    [request] = postmark.requests
    assert request["path"] == "/email/batch"
    assert request["headers"]["X-Postmark-Server-Token"] == "server-token-123"
    [sent] = json.loads(request["body"])
    assert sent["To"] == "alice@example.com"
    assert sent["From"] == "Bean Box <billing@recoup.localhost>"
    assert sent["Subject"] == "Please update your card for Bean Box"
    assert sent["Tag"] == Purpose.CARD_UPDATE
    assert sent["MessageStream"] == "outbound"
    assert sent["TrackOpens"] is True
    message = Message.objects.get(case=card_case)
    assert sent["Metadata"] == {
        "recoup_message": str(message.pk),
        "case": str(card_case.pk),
        "store": str(card_case.store_id),
    }
    assert "/pay/" in sent["TextBody"] and "Update payment details" in sent["HtmlBody"]
    assert (message.status, message.provider, message.provider_id) == (
        Message.Status.SENT,
        "postmark",
        "b7bc2f4a-e38e",
    )


def test_a_postmark_refusal_marks_the_message_failed(
    postmark, card_case, django_capture_on_commit_callbacks
):
    postmark.replies.append(
        (
            200,
            [
                {
                    "ErrorCode": 406,
                    "Message": "You tried to send to a recipient that has been marked as inactive.",
                }
            ],
        )
    )
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    message = Message.objects.get(case=card_case)
    assert message.status == Message.Status.FAILED
    assert "406" in message.status_reason and message.failed_at == T0


def test_sms_goes_through_twilio_with_a_status_callback(
    twilio, card_case, django_capture_on_commit_callbacks
):
    sms_customer(card_case.customer)
    twilio.replies.append((201, {"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}))
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    [request] = twilio.requests
    assert request["path"] == f"/2010-04-01/Accounts/AC{'0' * 32}/Messages.json"
    assert request["headers"]["Authorization"].startswith("Basic ")
    form = {k: v[0] for k, v in parse_qs(request["body"]).items()}
    assert form["To"] == "+4915112345678" and form["From"] == "+15005550006"
    assert form["StatusCallback"] == "http://127.0.0.1:8000/webhooks/twilio/status/"
    assert form["Body"].startswith("Bean Box: your card couldn't be charged $29.00.")
    text = Message.objects.get(case=card_case, channel="sms")
    assert (text.status, text.provider, text.provider_id) == (
        Message.Status.SENT,
        "twilio",
        "SM0123456789abcdef0123456789abcdef",
    )


def test_a_twilio_refusal_marks_the_sms_failed(
    twilio, settings, card_case, django_capture_on_commit_callbacks
):
    settings.TWILIO_MESSAGING_SERVICE_SID = "MG" + "1" * 32
    sms_customer(card_case.customer)
    twilio.replies.append(
        (
            400,
            {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400},
        )
    )
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    form = {k: v[0] for k, v in parse_qs(twilio.requests[0]["body"]).items()}
    assert form["MessagingServiceSid"] == "MG" + "1" * 32 and "From" not in form
    text = Message.objects.get(case=card_case, channel="sms")
    assert text.status == Message.Status.FAILED
    assert "unsubscribed recipient" in text.status_reason
    # Twilio says the number opted out: we stop too.
    card_case.customer.refresh_from_db()
    assert card_case.customer.sms_opt_in is False
