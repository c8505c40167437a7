"""Handing recorded messages to their provider (Postmark for email, Twilio for SMS)
after the transaction that recorded them commits, and recording the result.

`message_deliver` sends one queued (or due scheduled) message; `messages_deliver` a
batch's emails, in one Postmark request per 500; `messages_send_scheduled` is the
scheduler's sweep for SMS held back by quiet hours and for sends that were lost.
Consent and the case are checked again before anything goes out (`messaging.policy`).
"""

from __future__ import annotations

import datetime as dt
import logging
from email.utils import formataddr

from django.conf import settings
from django.core.mail import get_connection
from django.db import connection
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from postmarker.django import PostmarkEmailMultiAlternatives

from common.bulk import rows_insert, rows_update
from recovery.commands import case_event_build
from recovery.models import RecoveryCase

from . import selectors
from .consent import consent_sms_opt_out
from .models import Channel, Message, Purpose
from .policy import Known, _case_event, _email_blocked, _sms_blocked, quiet_hours_end

logger = logging.getLogger(__name__)

# A message stuck "sending" this long has an unknown outcome: it is marked failed,
# never resent, so a customer never gets a duplicate.
SENDING_STALE = dt.timedelta(hours=1)

TWILIO_OPTED_OUT = "21610"  # "Attempt to send to unsubscribed recipient"


def _still_blocked(message: Message, known: Known | None = None) -> str:
    customer = message.customer
    if customer.disputed_at:
        return "the customer has an open dispute: no messages"
    case = message.case
    if case is not None:
        if message.purpose == Purpose.RECOVERED:
            if case.status != RecoveryCase.Status.RECOVERED:
                return f"the case is {case.status}"
        elif message.purpose != Purpose.AGENT and not case.is_open:
            return f"the case closed ({case.status}) before the message went out"
    if message.channel == Channel.EMAIL:
        return _email_blocked(customer, known)
    return _sms_blocked(customer)


def message_deliver(*, message_id: int, now: dt.datetime | None = None) -> Message | None:
    """Hand one queued (or due scheduled) message to its provider and record the result.

    Claimed by a conditional update, so two workers never both send it. Consent and the
    case are checked again first: a customer may have opted out, or the case closed,
    while an SMS waited for the morning."""
    now = now or timezone.now()
    claimed = Message.objects.filter(
        pk=message_id, status__in=[Message.Status.QUEUED, Message.Status.SCHEDULED]
    ).update(status=Message.Status.SENDING)
    if claimed != 1:
        return None  # another worker got there first, or it was sent already
    message = Message.objects.select_related("store", "customer", "customer__store", "case").get(
        pk=message_id
    )
    blocked = _still_blocked(message)
    if blocked:
        Message.objects.filter(pk=message.pk).update(
            status=Message.Status.SKIPPED, status_reason=blocked[:300]
        )
        return message
    if message.channel == Channel.SMS:
        morning = quiet_hours_end(at=now, tz=message.customer.time_zone or message.store.timezone)
        if morning is not None:
            Message.objects.filter(pk=message.pk).update(
                status=Message.Status.SCHEDULED, scheduled_for=morning
            )
            return message
    try:
        if message.channel == Channel.EMAIL:
            provider, provider_id = _send_email(message)
        else:
            provider, provider_id = _send_sms(message)
    except Exception as exc:
        logger.warning("message %s could not be sent: %s", message.pk, exc)
        Message.objects.filter(pk=message.pk).update(
            status=Message.Status.FAILED,
            status_reason=f"{type(exc).__name__}: {exc}"[:300],
            failed_at=now,
        )
        if getattr(exc, "code", "") == TWILIO_OPTED_OUT:  # the number replied STOP to Twilio
            consent_sms_opt_out(
                phone=message.to, at=now, source="twilio_send", detail="error 21610"
            )
        message.refresh_from_db()
        return message
    Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(
        status=Message.Status.SENT, sent_at=now, provider=provider, provider_id=provider_id
    )
    message.refresh_from_db()
    if message.case_id:
        _case_event(
            case=message.case,
            kind="message_sent",
            at=now,
            text=f"{Purpose(message.purpose).label} sent by {message.channel}",
            message=message,
        )
    return message


def messages_deliver(*, message_ids: list[int], now: dt.datetime | None = None) -> None:
    """`message_deliver` for many: the queued emails among them are claimed together
    (so two workers never both send one), checked again, handed to the provider in one
    batch (Postmark's batch API: one request per 500) and recorded together. Anything
    else goes through `message_deliver`."""

    now = now or timezone.now()
    if not message_ids:
        return
    if None in message_ids or not connection.features.can_return_columns_from_insert:
        # An old SQLite (before 3.35): no RETURNING to claim with, nor ids from
        # bulk_create; the scheduler's sweep sends what has no id here.
        for pk in message_ids:
            if pk is not None:
                message_deliver(message_id=pk, now=now)
        return
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s WHERE id IN ({', '.join(['%s'] * len(message_ids))})"
            " AND channel = %s AND status = %s RETURNING id",
            [Message.Status.SENDING, *message_ids, Channel.EMAIL, Message.Status.QUEUED],
        )
        claimed = {row[0] for row in cursor.fetchall()}
    for pk in message_ids:
        if pk not in claimed:
            message_deliver(message_id=pk, now=now)  # claims it, or finds it taken
    messages = list(
        Message.objects.select_related("store", "customer", "customer__store", "case")
        .filter(pk__in=claimed)
        .order_by("pk")
    )
    if not messages:
        return
    known = Known(customers=[m.customer for m in messages])
    going, done = [], []
    for message in messages:
        blocked = _still_blocked(message, known)
        if blocked:
            message.status, message.status_reason = Message.Status.SKIPPED, blocked[:300]
            done.append(message)
        else:
            going.append(message)
    built = []
    for message in going:
        try:
            built.append((message, _email_build(message, conf=known.conf(message.store))))
        except Exception as exc:  # e.g. a sender address that cannot be encoded
            _failed(message, exc, now=now)
            done.append(message)
    provider = _email_provider()
    sent = []
    for message, email, problem in _emails_send(built, provider=provider):
        if problem:
            logger.warning("message %s could not be sent: %s", message.pk, problem)
            message.status, message.failed_at = Message.Status.FAILED, now
            message.status_reason = problem[:300]
            done.append(message)
        else:
            message.status, message.sent_at = Message.Status.SENT, now
            message.provider = provider
            message.provider_id = getattr(email, "postmark_message_id", "") or ""
            sent.append(message)
    rows_update(
        sent,
        ["status", "sent_at", "provider", "provider_id"],
        where={"status": Message.Status.SENDING},
    )
    rows_update(
        done,
        ["status", "status_reason", "failed_at"],
        where={"status": Message.Status.SENDING},
    )
    events = [
        case_event_build(
            case=m.case,
            kind="message_sent",
            at=now,
            message=f"{Purpose(m.purpose).label} sent by {m.channel}",
            data={"message": m.pk, "channel": m.channel, "purpose": m.purpose},
        )
        for m in sent
        if m.case_id and m.case.is_open
    ]
    if events:
        rows_insert(events)


def _emails_send(built: list, *, provider: str):
    """Hand the emails to the provider; yields (message, email, problem or "") for each.
    Postmark takes them in one batch request per 500 and answers for each; any other
    backend (SMTP, say) is given them one by one on one connection, so that one refused
    address fails only its own message."""
    if not built:
        return
    if provider == "postmark":
        try:
            get_connection(fail_silently=False).send_messages([e for _, e in built])
            error = ""
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        for message, email in built:
            code = getattr(email, "postmark_error_code", None)
            if not error or code == 0:
                yield message, email, ""
            elif code:
                # Postmark's answer for this message alone: the batch's error names
                # every refused address, other customers' (and stores') included.
                own = getattr(email, "postmark_error_message", "")
                yield message, email, f"Postmark error {code}: {own}"
            else:  # no answer at all (the request failed): nothing was sent
                yield message, email, error
        return
    with get_connection(fail_silently=False) as conn:
        for message, email in built:
            try:
                conn.send_messages([email])
            except Exception as exc:
                yield message, email, f"{type(exc).__name__}: {exc}"
            else:
                yield message, email, ""


def _failed(message: Message, exc: Exception, *, now: dt.datetime) -> None:
    logger.warning("message %s could not be sent: %s", message.pk, exc)
    message.status, message.failed_at = Message.Status.FAILED, now
    message.status_reason = f"{type(exc).__name__}: {exc}"[:300]


def _email_provider() -> str:
    return "postmark" if "postmark" in settings.EMAIL_BACKEND.lower() else "django"


def _send_email(message: Message) -> tuple[str, str]:
    email = _email_build(message, conf=selectors.messaging_settings(store=message.store))
    email.send(fail_silently=False)
    return _email_provider(), getattr(email, "postmark_message_id", "") or ""


def _email_build(message: Message, *, conf) -> PostmarkEmailMultiAlternatives:
    from_email = conf.from_email or settings.DEFAULT_FROM_EMAIL
    email = PostmarkEmailMultiAlternatives(
        subject=message.subject,
        body=message.body_text,
        from_email=formataddr((conf.from_name or message.store.name, from_email)),
        to=[message.to],
        reply_to=[conf.reply_to or conf.support_email]
        if (conf.reply_to or conf.support_email)
        else None,
        tag=message.purpose,
        metadata={
            "recoup_message": str(message.pk),
            "case": str(message.case_id or ""),
            "store": str(message.store_id),
        },
        message_stream=getattr(settings, "POSTMARK_MESSAGE_STREAM", "") or None,
        headers={"X-Recoup-Message": str(message.pk)},
    )
    if message.body_html:
        email.attach_alternative(message.body_html, "text/html")
    return email


def _send_sms(message: Message) -> tuple[str, str]:
    from . import sms

    backend = sms.get_backend()
    callback = ""
    if getattr(backend, "name", "") == "twilio":
        callback = selectors.site_url() + reverse("twilio-status")
    result = backend.send(to=message.to, body=message.body_text, status_callback=callback)
    return result.provider, result.provider_id


def messages_send_scheduled(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """The scheduler's sweep: send SMS held back by quiet hours whose morning has come,
    and any queued message whose send was lost. Returns how many went out."""
    now = now or timezone.now()
    Message.objects.filter(
        status=Message.Status.SENDING, created_at__lt=now - SENDING_STALE, sent_at__isnull=True
    ).filter(Q(scheduled_for__isnull=True) | Q(scheduled_for__lt=now - SENDING_STALE)).update(
        status=Message.Status.FAILED,
        status_reason="no answer from the provider was recorded; not resent to avoid a duplicate",
        failed_at=now,
    )
    due = list(
        Message.objects.filter(
            status__in=[Message.Status.SCHEDULED, Message.Status.QUEUED], scheduled_for__lte=now
        )
        .order_by("scheduled_for")
        .values_list("pk", flat=True)[:limit]
    )
    sent = 0
    for pk in due:
        result = message_deliver(message_id=pk, now=now)
        if result is not None and result.status == Message.Status.SENT:
            sent += 1
    return sent
