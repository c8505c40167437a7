"""What the providers report: Twilio's status callbacks and inbound SMS, Postmark's
webhooks (delivery, bounce, open, click, spam complaint, subscription change). The views
that verify them are in `messaging.webhooks`."""

from __future__ import annotations

import datetime as dt
import re

from subscriptions.models import Customer

from .consent import _consent_event, consent_sms_opt_in, consent_sms_opt_out, email_suppress
from .delivery import TWILIO_OPTED_OUT
from .models import Channel, Message, MessageEvent, Suppression
from .policy import DUNNING, _sms_blocked
from .sending import message_send

TWILIO_FAILED = {"failed", "undelivered"}


def twilio_status_record(*, data: dict, at: dt.datetime) -> Message | None:
    """A verified Twilio status callback: sent / delivered / undelivered / failed."""
    sid = str(data.get("MessageSid") or data.get("SmsSid") or "")
    status = str(data.get("MessageStatus") or data.get("SmsStatus") or "").lower()
    message = Message.objects.filter(channel=Channel.SMS, provider_id=sid).first() if sid else None
    MessageEvent.objects.create(
        message=message,
        store_id=message.store_id if message else None,
        provider="twilio",
        kind=status or "unknown",
        at=at,
        payload=dict(data),
    )
    if message is None:
        return None
    if status == "delivered":
        Message.objects.filter(pk=message.pk, delivered_at__isnull=True).update(
            delivered_at=at, status=Message.Status.DELIVERED
        )
    elif status in TWILIO_FAILED:
        code = str(data.get("ErrorCode") or "")
        Message.objects.filter(pk=message.pk).exclude(status=Message.Status.DELIVERED).update(
            status=Message.Status.FAILED,
            failed_at=at,
            status_reason=f"Twilio: {status}" + (f" (error {code})" if code else ""),
        )
        if code == TWILIO_OPTED_OUT:
            consent_sms_opt_out(
                phone=message.to, at=at, source="twilio_status", detail="error 21610"
            )
    elif status == "sent":
        Message.objects.filter(pk=message.pk, sent_at__isnull=True).update(sent_at=at)
    message.refresh_from_db()
    return message


STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
START_WORDS = {"START", "YES", "UNSTOP", "OPTIN"}
HELP_WORDS = {"HELP", "INFO"}


def twilio_inbound_record(*, data: dict, at: dt.datetime) -> tuple[str, list[Customer]]:
    """A verified inbound SMS. Returns (keyword: stop | start | help | other, customers
    with that number). STOP and START change consent; anything else is just recorded."""
    phone = str(data.get("From") or "")
    body = str(data.get("Body") or "").upper()
    # Twilio's rule: the whole message is the keyword (case, spaces, punctuation aside).
    word = re.sub(r"[^A-Z]", "", body)
    MessageEvent.objects.create(provider="twilio", kind="inbound", at=at, payload=dict(data))
    customers = list(Customer.objects.filter(phone=phone).select_related("store")) if phone else []
    if not phone:
        return "other", customers
    if word in STOP_WORDS:
        consent_sms_opt_out(phone=phone, at=at, source="twilio_inbound", detail=body[:50])
        return "stop", customers
    if word in START_WORDS:
        consent_sms_opt_in(phone=phone, at=at, source="twilio_inbound", detail=body[:50])
        return "start", customers
    if word in HELP_WORDS:
        for customer in customers:
            _consent_event(
                store_id=customer.store_id,
                customer=customer,
                channel=Channel.SMS,
                action="help",
                source="twilio_inbound",
                address=phone,
                at=at,
            )
        return "help", customers
    return "other", customers


HARD_BOUNCE_TYPES = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "SpamNotification"}


def _postmark_message(data: dict) -> Message | None:
    metadata = data.get("Metadata") or {}
    provider_id = str(data.get("MessageID") or "")
    ours = str(metadata.get("recoup_message") or "") if isinstance(metadata, dict) else ""
    if re.fullmatch(r"[0-9]{1,18}", ours):  # ASCII digits only: "²".isdigit() is True
        message = Message.objects.filter(pk=int(ours), channel=Channel.EMAIL).first()
        if message is not None and (
            not message.provider_id or not provider_id or message.provider_id == provider_id
        ):
            return message
    if provider_id:
        return Message.objects.filter(channel=Channel.EMAIL, provider_id=provider_id).first()
    return None


def _parse_time(value, default: dt.datetime) -> dt.datetime:
    if not value:
        return default
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return default
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def postmark_event_record(*, data: dict, at: dt.datetime) -> Message | None:
    """A verified Postmark webhook: Delivery, Bounce, SpamComplaint, Open, Click,
    SubscriptionChange. A hard bounce stops email to that address and, when the case is
    still open and the customer allows SMS, sends the same message by SMS; a spam
    complaint stops email for the customer."""
    kind = str(data.get("RecordType") or "")
    message = _postmark_message(data)
    MessageEvent.objects.create(
        message=message,
        store_id=message.store_id if message else None,
        provider="postmark",
        kind=kind or "unknown",
        at=at,
        payload=data,
    )
    if message is None:
        return None
    qs = Message.objects.filter(pk=message.pk)
    if kind == "Delivery":
        when = _parse_time(data.get("DeliveredAt"), at)
        qs.filter(delivered_at__isnull=True).update(delivered_at=when)
        qs.filter(status=Message.Status.SENT).update(status=Message.Status.DELIVERED)
    elif kind == "Open":
        qs.filter(opened_at__isnull=True).update(opened_at=_parse_time(data.get("ReceivedAt"), at))
    elif kind == "Click":
        when = _parse_time(data.get("ReceivedAt"), at)
        qs.filter(clicked_at__isnull=True).update(clicked_at=when)
        qs.filter(opened_at__isnull=True).update(opened_at=when)
    elif kind == "Bounce":
        bounce_type = str(data.get("Type") or "")
        hard = bool(data.get("Inactive")) or bounce_type in HARD_BOUNCE_TYPES
        qs.update(
            status=Message.Status.BOUNCED if hard else message.status,
            failed_at=_parse_time(data.get("BouncedAt"), at),
            status_reason=f"Postmark: {bounce_type or 'bounce'}"[:300],
        )
        if hard:
            email_suppress(
                store_id=message.store_id,
                address=str(data.get("Email") or message.to),
                reason=Suppression.Reason.HARD_BOUNCE,
                at=at,
            )
            _sms_instead(message=message, at=at)
    elif kind == "SpamComplaint":
        qs.update(status_reason="Postmark: spam complaint")
        email_suppress(
            store_id=message.store_id,
            address=str(data.get("Email") or message.to),
            reason=Suppression.Reason.SPAM_COMPLAINT,
            at=at,
        )
    elif kind == "SubscriptionChange" and data.get("SuppressSending"):
        email_suppress(
            store_id=message.store_id,
            address=str(data.get("Recipient") or message.to),
            reason=Suppression.Reason.SPAM_COMPLAINT,
            at=at,
        )
    message.refresh_from_db()
    return message


def _sms_instead(*, message: Message, at: dt.datetime) -> Message | None:
    """The email bounced hard: send the same step by SMS if the customer allows it."""
    case = message.case
    if case is None or message.purpose not in DUNNING or not case.is_open:
        return None
    customer = Customer.objects.get(pk=message.customer_id)
    if _sms_blocked(customer):
        return None
    return message_send(
        store=message.store,
        customer=customer,
        case=case,
        purpose=message.purpose,
        channel=Channel.SMS,
        at=at,
    )
