"""Customer messaging: the one way a message leaves Recoup, consent, provider reports and
template editing.

`message_send` renders, checks consent, caps and quiet hours, records a `Message` and
sends it. It is idempotent per (case, purpose, channel): a unique constraint decides,
so the same step run twice — or by two workers at once — sends once. The row is claimed
in a short transaction; the provider is called after it commits (never inside a
transaction), and the result recorded in another.

The engine (recovery/engine.py) decides *when* a message is due and calls
`message_send_for_case`; a scheduler batch calls `messages_send_for_cases`, which decides
and records a batch's emails together under the batch's row locks and, after the commit,
hands them to the provider in one batch (`messages_deliver`: one Postmark request per
500); pre-dunning calls `message_send_predunning`; the scheduler pass calls
`messages_send_scheduled` for SMS held back by quiet hours.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import operator
import re
from dataclasses import dataclass
from email.utils import formataddr

from django.conf import settings
from django.core.mail import get_connection
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Max, Q
from django.urls import reverse
from django.utils import timezone
from postmarker.django import PostmarkEmailMultiAlternatives

from common.bulk import rows_insert, rows_update
from common.errors import ApplicationError
from recovery.commands import case_event_build, case_event_record
from recovery.models import ExpiryWarning, RecoveryCase, Track
from stores.models import Store
from subscriptions.models import Customer, PaymentMethod

from . import rendering, selectors
from .links import pay_url as make_pay_url
from .models import (
    Channel,
    ConsentEvent,
    Message,
    MessageEvent,
    MessageTemplate,
    Purpose,
    Suppression,
)

logger = logging.getLogger(__name__)

DUNNING = {
    Purpose.SOFT_FIRST,
    Purpose.SOFT_REMINDER,
    Purpose.SHIPMENT_AT_RISK,
    Purpose.FINAL_NOTICE,
    Purpose.CARD_UPDATE,
    Purpose.AUTHENTICATION,
}
# SMS (opted-in customers only): one concise link message early, one before suspension.
SMS_EARLY = {Purpose.SOFT_FIRST, Purpose.CARD_UPDATE, Purpose.AUTHENTICATION}
SMS_LATE = {Purpose.FINAL_NOTICE}
NO_LINK = {Purpose.RECOVERED}
# A queued message not handed to its provider by then (the process died after the
# claim committed) is picked up by the scheduler's sweep.
LOST_AFTER = dt.timedelta(minutes=5)
# A message stuck "sending" this long has an unknown outcome: it is marked failed,
# never resent, so a customer never gets a duplicate.
SENDING_STALE = dt.timedelta(hours=1)


# ------------------------------------------------------------------ configuration


def _max_per_case(channel: str) -> int:
    if channel == Channel.SMS:
        return int(getattr(settings, "MESSAGING_MAX_SMS_PER_CASE", 2))
    return int(getattr(settings, "MESSAGING_MAX_EMAILS_PER_CASE", 4))


def _min_gap() -> dt.timedelta:
    return dt.timedelta(hours=float(getattr(settings, "MESSAGING_MIN_HOURS_BETWEEN", 48)))


def _quiet_hours() -> tuple[int, int]:
    start, end = getattr(settings, "MESSAGING_SMS_QUIET_HOURS", (21, 8))
    return int(start), int(end)


def quiet_hours_end(*, at: dt.datetime, tz: str) -> dt.datetime | None:
    """When the customer's quiet hours (default 21:00–08:00 local) end, if `at` is in
    them; None if it is daytime for them."""
    start, end = _quiet_hours()
    zone = rendering.zone(tz)
    local = at.astimezone(zone)
    hour = local.hour + local.minute / 60
    quiet = (hour >= start or hour < end) if start > end else (start <= hour < end)
    if not quiet:
        return None
    morning = dt.datetime.combine(local.date(), dt.time(end), tzinfo=zone)
    if morning <= local:
        morning = dt.datetime.combine(
            local.date() + dt.timedelta(days=1), dt.time(end), tzinfo=zone
        )
    return morning.astimezone(dt.UTC)


# ------------------------------------------------------------------ entry points


def message_send_for_case(*, case: RecoveryCase, purpose: str, at: dt.datetime) -> list[Message]:
    """The engine's hook: a message for `purpose` is due on `case`. Chooses the channels
    (email; SMS for opted-in customers with a phone, once early and once for the final
    notice, or when email cannot reach them) and sends each once."""
    case = RecoveryCase.objects.select_related(
        "store", "customer", "customer__default_payment_method", "subscription", "order"
    ).get(pk=case.pk)
    customer = case.customer
    channels = [Channel.EMAIL]
    if _sms_wanted(case=case, customer=customer, purpose=purpose):
        channels.append(Channel.SMS)
    return [
        message_send(
            store=case.store, customer=customer, case=case, purpose=purpose, channel=ch, at=at
        )
        for ch in channels
    ]


def _case_keys(address: str) -> tuple[str, ...]:
    return (address.upper(), address.lower(), address.casefold())


class Known:
    """What deciding, rendering and delivering a batch of emails reads, read once for the
    batch: suppressed addresses, each case's dunning emails so far, and (as they are
    asked for) the stores' settings and templates."""

    def __init__(self, *, customers, case_ids=()) -> None:
        addresses = {c.email for c in customers if c.email}
        self.suppressed: dict[tuple, Suppression] = {}
        if addresses:
            # The database decides what matches, as `address__iexact` does one at a time
            # (its idea of case is not Python's: SQLite folds only ASCII letters); each
            # row found is then known by every spelling of its case.
            match = functools.reduce(
                operator.or_,
                (Q(address__iexact=a) for a in addresses),
                Q(address__in={a.lower() for a in addresses}),  # as email_suppress stores it
            )
            for row in (
                Suppression.objects.filter(
                    store_id__in={c.store_id for c in customers}, channel=Channel.EMAIL
                )
                .filter(match)
                .order_by("pk")
            ):
                for key in _case_keys(row.address):
                    self.suppressed.setdefault((row.store_id, key), row)
        self.history = {
            row["case_id"]: (row["n"], row["last"])
            for row in Message.objects.filter(
                case_id__in=case_ids,
                channel=Channel.EMAIL,
                purpose__in=DUNNING,
                status__in=selectors.ACTIVE_STATUSES,
            )
            .values("case_id")
            .annotate(n=Count("pk"), last=Max("created_at"))
        }
        self._confs: dict = {}
        self._templates: dict = {}

    def suppression(self, customer: Customer) -> Suppression | None:
        for key in _case_keys(customer.email):
            found = self.suppressed.get((customer.store_id, key))
            if found is not None:
                return found
        return None

    def conf(self, store: Store):
        if store.pk not in self._confs:
            self._confs[store.pk] = selectors.messaging_settings(store=store)
        return self._confs[store.pk]

    def template(self, *, store: Store, purpose: str, channel: str, locale: str):
        key = (store.pk, purpose, channel, locale)
        if key not in self._templates:
            self._templates[key] = selectors.template_for(
                store=store, purpose=purpose, channel=channel, locale=locale
            )
        return self._templates[key]


def _email_blocked(customer: Customer, known: Known | None = None) -> str:
    if not customer.email:
        return "no email address on file"
    if customer.email_opt_out:
        return "the customer opted out of email"
    if known is not None:
        suppressed = known.suppression(customer)
    else:
        # Stored lower-cased (email_suppress); iexact for any other spelling. SQLite's
        # iexact folds only ASCII letters, so the lower-cased form is asked for too.
        suppressed = (
            Suppression.objects.filter(store_id=customer.store_id, channel=Channel.EMAIL)
            .filter(Q(address=customer.email.lower()) | Q(address__iexact=customer.email))
            .order_by("pk")
            .first()
        )
    if suppressed:
        return f"the address is suppressed ({suppressed.get_reason_display().lower()})"
    return ""


def _sms_blocked(customer: Customer) -> str:
    if not customer.sms_opt_in:
        return "the customer has not opted in to SMS"
    if not customer.phone:
        return "no phone number on file"
    if Suppression.objects.filter(
        store_id=customer.store_id, channel=Channel.SMS, address=customer.phone
    ).exists():
        return "the number replied STOP"
    if not selectors.messaging_settings(store=customer.store).sms_enabled:
        return "SMS is turned off for this store"
    return ""


def _sms_wanted(*, case: RecoveryCase, customer: Customer, purpose: str) -> bool:
    if _sms_blocked(customer):
        return False
    if purpose in SMS_LATE:
        return True
    if purpose in DUNNING and _email_blocked(customer):
        return True  # email cannot reach them: SMS is the only way
    if purpose in SMS_EARLY:
        return not Message.objects.filter(
            case=case, channel=Channel.SMS, status__in=selectors.ACTIVE_STATUSES
        ).exists()
    return False


def message_send_predunning(
    *, customer: Customer, payment_method: PaymentMethod, purpose: str, at: dt.datetime
) -> Message | None:
    """Pre-dunning's hook: the customer's default card expires soon. One email per
    ExpiryWarning (a unique constraint decides)."""
    warning = ExpiryWarning.objects.filter(payment_method=payment_method).first()
    if warning is None:
        return None
    return message_send(
        store=customer.store,
        customer=customer,
        purpose=Purpose.PREDUNNING,
        channel=Channel.EMAIL,
        at=at,
        expiry_warning=warning,
        payment_method=payment_method,
    )


def message_send_agent_follow_up(
    *,
    case: RecoveryCase,
    agent_name: str,
    note: str,
    at: dt.datetime,
    idempotency_key: str,
    channel: str = Channel.EMAIL,
) -> Message:
    """An agent's personal note to the customer of `case`, wrapped in the store's
    agent_follow_up template. `idempotency_key` (e.g. the form's id) makes a double
    submit send once. Consent applies; caps do not (a person chose to write)."""
    if not note.strip():
        raise ApplicationError("Write a note for the customer first.", code="empty_note")
    return message_send(
        store=case.store,
        customer=case.customer,
        case=case,
        purpose=Purpose.AGENT,
        channel=channel,
        at=at,
        idempotency_key=f"agent:{idempotency_key}"[:120],
        extra={"agent_name": agent_name, "agent_note": note.strip()},
        actor=agent_name,
    )


def message_send(
    *,
    store: Store,
    customer: Customer,
    purpose: str,
    channel: str,
    at: dt.datetime,
    case: RecoveryCase | None = None,
    expiry_warning: ExpiryWarning | None = None,
    payment_method: PaymentMethod | None = None,
    idempotency_key: str = "",
    extra: dict | None = None,
    actor: str = "system",
) -> Message:
    """Render, check consent and limits, record, send. Returns the Message — the one
    already recorded for this step if it was sent before.

    Refusals are recorded too (status "skipped" with the reason). SMS in the customer's
    quiet hours is recorded as "scheduled" and sent by `messages_send_scheduled` in
    their morning."""
    with transaction.atomic():
        if case is not None:
            # One sender at a time per case: caps and gaps are counted under this lock.
            RecoveryCase.objects.select_for_update(of=("self",)).filter(pk=case.pk).first()
            case.refresh_from_db(fields=["status", "track", "dunning_paused", "stepped_down_at"])
        existing = _existing(
            store=store,
            case=case,
            purpose=purpose,
            channel=channel,
            expiry_warning=expiry_warning,
            idempotency_key=idempotency_key,
        )
        if existing is not None:
            return existing
        customer.refresh_from_db()
        message = _message_build(
            store=store,
            customer=customer,
            case=case,
            purpose=purpose,
            channel=channel,
            at=at,
            expiry_warning=expiry_warning,
            payment_method=payment_method,
            idempotency_key=idempotency_key,
            extra=extra,
            actor=actor,
        )
        try:
            with transaction.atomic():
                message.save(force_insert=True)
        except IntegrityError:
            # Another worker recorded this step first: theirs is the one.
            found = _existing(
                store=store,
                case=case,
                purpose=purpose,
                channel=channel,
                expiry_warning=expiry_warning,
                idempotency_key=idempotency_key,
            )
            if found is None:
                raise
            return found
        _message_recorded(message)
        if message.status == Message.Status.QUEUED:
            message_id = message.pk
            transaction.on_commit(lambda: message_deliver(message_id=message_id))
    return message


def messages_send_for_cases(*, cases: list[RecoveryCase], purpose: str, at: dt.datetime) -> None:
    """`message_send_for_case` for a batch of cases whose rows the caller's transaction
    holds locked (the scheduler's batch). Their emails are decided, rendered and recorded
    together and, once the transaction commits, handed to the provider in one batch
    (`messages_deliver`). A case whose customer may also get an SMS, or whose step was
    recorded already, goes through `message_send_for_case`."""
    if not cases:
        return
    done = set(
        Message.objects.filter(
            case_id__in=[c.pk for c in cases],
            purpose=purpose,
            channel=Channel.EMAIL,
            idempotency_key="",
        ).values_list("case_id", flat=True)
    )
    mine = []
    for case in cases:
        if case.pk in done or (case.customer.sms_opt_in and case.customer.phone):
            message_send_for_case(case=case, purpose=purpose, at=at)
        else:
            mine.append(case)
    if not mine:
        return
    known = Known(customers=[c.customer for c in mine], case_ids=[c.pk for c in mine])
    messages = [
        _message_build(
            store=case.store,
            customer=case.customer,
            case=case,
            purpose=purpose,
            channel=Channel.EMAIL,
            at=at,
            known=known,
        )
        for case in mine
    ]
    rows_insert(messages)
    for message in messages:
        _message_recorded(message)
    queued = [m.pk for m in messages if m.status == Message.Status.QUEUED]
    if queued:
        # robust: delivery runs after the commit; a failure there is logged, and must not
        # look to the caller like a failure of what was committed.
        transaction.on_commit(lambda: messages_deliver(message_ids=queued), robust=True)


def _message_build(
    *,
    store: Store,
    customer: Customer,
    case: RecoveryCase | None,
    purpose: str,
    channel: str,
    at: dt.datetime,
    expiry_warning: ExpiryWarning | None = None,
    payment_method: PaymentMethod | None = None,
    idempotency_key: str = "",
    extra: dict | None = None,
    actor: str = "system",
    known: Known | None = None,
) -> Message:
    """A new message, decided and rendered; not saved."""
    status, reason, when = _decide(
        customer=customer, case=case, purpose=purpose, channel=channel, at=at, known=known
    )
    link = ""
    if purpose not in NO_LINK and status != Message.Status.SKIPPED:
        link = make_pay_url(customer=customer, case=case)
    rendered = _render(
        store=store,
        customer=customer,
        case=case,
        purpose=purpose,
        channel=channel,
        pay_url=link,
        payment_method=payment_method,
        at=at,
        extra=extra,
        known=known,
    )
    return Message(
        store=store,
        customer=customer,
        case=case,
        expiry_warning=expiry_warning,
        purpose=purpose,
        channel=channel,
        idempotency_key=idempotency_key,
        to=customer.email if channel == Channel.EMAIL else customer.phone,
        locale=customer.locale or "en",
        pay_url=link,
        status=status,
        status_reason=reason[:300],
        created_at=at,
        scheduled_for=when,
        actor=actor[:150],
        **rendered,
    )


def _message_recorded(message: Message) -> None:
    """The case's timeline learns of a message that was not sent at once."""
    case = message.case
    if case is None:
        return
    label = Purpose(message.purpose).label
    if message.status == Message.Status.SKIPPED:
        _case_event(
            case=case,
            kind="message_skipped",
            at=message.created_at,
            text=f"{label} by {message.channel} not sent: {message.status_reason}",
            message=message,
        )
    elif message.status == Message.Status.SCHEDULED:
        _case_event(
            case=case,
            kind="message_scheduled",
            at=message.created_at,
            text=f"{label} by SMS waits for the customer's morning "
            f"({message.scheduled_for:%Y-%m-%d %H:%M} UTC)",
            message=message,
        )


def _existing(
    *,
    store: Store,
    case: RecoveryCase | None,
    purpose: str,
    channel: str,
    expiry_warning: ExpiryWarning | None,
    idempotency_key: str,
) -> Message | None:
    if idempotency_key:
        return Message.objects.filter(
            store=store, idempotency_key=idempotency_key, channel=channel
        ).first()
    if expiry_warning is not None:
        return Message.objects.filter(expiry_warning=expiry_warning, channel=channel).first()
    if case is not None:
        return Message.objects.filter(
            case=case, purpose=purpose, channel=channel, idempotency_key=""
        ).first()
    return None


def _decide(
    *,
    customer: Customer,
    case: RecoveryCase | None,
    purpose: str,
    channel: str,
    at: dt.datetime,
    known: Known | None = None,
) -> tuple[str, str, dt.datetime | None]:
    """(status, reason, scheduled_for) for a new message."""
    skip = Message.Status.SKIPPED
    if customer.disputed_at:
        return skip, "the customer has an open dispute: no messages", None
    if case is not None:
        if purpose == Purpose.RECOVERED and case.status != RecoveryCase.Status.RECOVERED:
            return skip, f"the case is {case.status}, not recovered", None
        if purpose != Purpose.RECOVERED and not case.is_open:
            return skip, f"the case is {case.status}", None
        if purpose in DUNNING and case.track == Track.FRAUD:
            return skip, "fraud or dispute risk: a person handles this case", None
        if purpose in DUNNING and case.dunning_paused:
            return skip, "dunning is paused on this case", None
    blocked = (
        _email_blocked(customer, known) if channel == Channel.EMAIL else _sms_blocked(customer)
    )
    if blocked:
        return skip, blocked, None
    if case is not None and purpose in DUNNING:
        if known is not None and channel == Channel.EMAIL:
            count, last_at = known.history.get(case.pk, (0, None))
        else:
            sent = Message.objects.filter(
                case=case,
                channel=channel,
                purpose__in=DUNNING,
                status__in=selectors.ACTIVE_STATUSES,
            )
            count, last_at = sent.aggregate(n=Count("pk"), last=Max("created_at")).values()
        cap = _max_per_case(channel)
        if count >= cap:
            return skip, f"at most {cap} {channel} messages per case", None
        if last_at is not None and at - last_at < _min_gap():
            hours = _min_gap().total_seconds() / 3600
            return skip, f"the last {channel} went out less than {hours:g} h ago", None
    if channel == Channel.SMS:
        morning = quiet_hours_end(at=at, tz=customer.time_zone or customer.store.timezone)
        if morning is not None:
            return Message.Status.SCHEDULED, "quiet hours: sent in the customer's morning", morning
    return Message.Status.QUEUED, "", at + LOST_AFTER


def _render(
    *,
    store: Store,
    customer: Customer,
    case: RecoveryCase | None,
    purpose: str,
    channel: str,
    pay_url: str,
    payment_method: PaymentMethod | None,
    at: dt.datetime,
    extra: dict | None,
    known: Known | None = None,
) -> dict:
    context = selectors.message_context(
        store=store,
        customer=customer,
        case=case,
        payment_method=payment_method,
        pay_url=pay_url,
        now=at,
        extra=extra,
        conf=known.conf(store) if known is not None else None,
    )
    if known is not None:
        template = known.template(
            store=store, purpose=purpose, channel=channel, locale=customer.locale
        )
    else:
        template = selectors.template_for(
            store=store, purpose=purpose, channel=channel, locale=customer.locale
        )
    try:
        return _render_template(template, context, store=store)
    except Exception:
        # Saved templates are checked when saved; if one still fails, send the default.
        logger.exception("template %s failed to render; using the default", template.pk)
        default = selectors.template_default(
            purpose=purpose, channel=channel, locale=customer.locale
        )
        return _render_template(default, context, store=store)


def _render_template(template: MessageTemplate, context: dict, *, store: Store) -> dict:
    text = rendering.render(template.body_text, context).strip() + "\n"
    if template.channel == Channel.SMS:
        return {"subject": "", "body_text": text.strip(), "body_html": ""}
    subject = " ".join(rendering.render(template.subject, context).split())
    if template.body_html.strip():
        body_html = rendering.render(template.body_html, context, html_body=True)
    else:
        body_html = rendering.text_to_html(
            text, store_name=store.name, pay_url=context.get("pay_url", "")
        )
    return {"subject": subject[:300], "body_text": text, "body_html": body_html}


def _case_event(
    *, case: RecoveryCase, kind: str, at: dt.datetime, text: str, message: Message
) -> None:
    if not case.is_open:
        # A closed case's timeline ends with its close (the engine's rule); messages
        # sent after it, such as the thank-you, stay on the Message rows.
        return
    case_event_record(
        case=case,
        kind=kind,
        at=at,
        message=text,
        data={"message": message.pk, "channel": message.channel, "purpose": message.purpose},
    )


# ------------------------------------------------------------------ delivery


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


# ------------------------------------------------------------------ consent


def _consent_event(
    *,
    store_id,
    customer: Customer | None,
    channel: str,
    action: str,
    source: str,
    address: str,
    at: dt.datetime,
    detail: str = "",
) -> None:
    ConsentEvent.objects.create(
        store_id=store_id,
        customer=customer,
        channel=channel,
        action=action,
        source=source,
        address=address,
        at=at,
        detail=detail[:300],
    )


@transaction.atomic
def consent_sms_opt_out(*, phone: str, at: dt.datetime, source: str, detail: str = "") -> int:
    """STOP from a number: no more SMS to any customer with that number."""
    customers = list(Customer.objects.select_for_update().filter(phone=phone))
    for customer in customers:
        Customer.objects.filter(pk=customer.pk).update(sms_opt_in=False)
        Suppression.objects.get_or_create(
            store_id=customer.store_id,
            channel=Channel.SMS,
            address=phone,
            defaults={"reason": Suppression.Reason.STOP, "created_at": at},
        )
        _consent_event(
            store_id=customer.store_id,
            customer=customer,
            channel=Channel.SMS,
            action="opt_out",
            source=source,
            address=phone,
            at=at,
            detail=detail,
        )
    return len(customers)


@transaction.atomic
def consent_sms_opt_in(*, phone: str, at: dt.datetime, source: str, detail: str = "") -> int:
    """START from a number that had replied STOP: SMS resumes for those customers (and
    only them: START never opts in someone who never opted in)."""
    stores = list(
        Suppression.objects.filter(
            channel=Channel.SMS, address=phone, reason=Suppression.Reason.STOP
        ).values_list("store_id", flat=True)
    )
    customers = list(Customer.objects.filter(phone=phone, store_id__in=stores))
    for customer in customers:
        Customer.objects.filter(pk=customer.pk).update(sms_opt_in=True)
        _consent_event(
            store_id=customer.store_id,
            customer=customer,
            channel=Channel.SMS,
            action="opt_in",
            source=source,
            address=phone,
            at=at,
            detail=detail,
        )
    Suppression.objects.filter(channel=Channel.SMS, address=phone, store_id__in=stores).delete()
    return len(customers)


class ConsentRefused(ApplicationError):
    """Consent that cannot be given: the number replied STOP, or there is no number."""

    status_code = 409


@dataclass(frozen=True)
class ConsentChange:
    """The outcome of a consent statement: the customer's SMS consent now, whether this
    statement changed it (an event was recorded), and why not when it did not; `refused`:
    an opt-in that cannot be (STOP, no number), as opposed to one already in force or
    superseded."""

    opted_in: bool
    changed: bool
    reason: str = ""
    refused: bool = False


def _sms_consent_known_at(customer: Customer) -> dt.datetime | None:
    """The time of the newest statement of the customer's SMS consent: the last change,
    whoever made it (a STOP too), or a later repeat of the state in force."""
    changed = ConsentEvent.objects.filter(
        customer=customer, channel=Channel.SMS, action__in=("opt_in", "opt_out")
    ).aggregate(at=Max("at"))["at"]
    return max(filter(None, (changed, customer.sms_consent_at)), default=None)


@transaction.atomic
def consent_sms_set(
    *, customer: Customer, opt_in: bool, at: dt.datetime, source: str, detail: str = ""
) -> ConsentChange:
    """A statement of the customer's SMS consent as of `at` (the merchant's checkout box,
    their metadata in Stripe, their systems through our API). Recorded only when it
    changes something; one older than the last change (from any source) changes nothing,
    so statements arriving in any order end in the same state. A number that replied
    STOP stays suppressed whatever is said here: only the customer lifts that, by
    replying START. A customer without a number cannot opt in."""
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    last = _sms_consent_known_at(customer)
    if last is not None and at < last:
        return ConsentChange(
            customer.sms_opt_in,
            False,
            f"superseded: consent was stated later, at {last:%Y-%m-%d %H:%M:%S} UTC",
        )
    if customer.sms_opt_in == opt_in:
        Customer.objects.filter(pk=customer.pk).update(sms_consent_at=at)
        return ConsentChange(opt_in, False, "unchanged")
    if opt_in:
        if not customer.phone:
            return ConsentChange(False, False, "no valid phone number on file", refused=True)
        if Suppression.objects.filter(
            store_id=customer.store_id, channel=Channel.SMS, address=customer.phone
        ).exists():
            return ConsentChange(
                False,
                False,
                "the number replied STOP: only the customer can resume texts, by replying START",
                refused=True,
            )
    Customer.objects.filter(pk=customer.pk).update(sms_opt_in=opt_in, sms_consent_at=at)
    _consent_event(
        store_id=customer.store_id,
        customer=customer,
        channel=Channel.SMS,
        action="opt_in" if opt_in else "opt_out",
        source=source,
        address=customer.phone,
        at=at,
        detail=detail,
    )
    return ConsentChange(opt_in, True)


def consent_sms_signup(
    *, customer: Customer, at: dt.datetime, source: str, detail: str = ""
) -> bool:
    """The customer agreed to texts about their payments when they signed up (a consent
    box at the merchant's checkout): SMS may reach their number from now on, unless the
    number replied STOP or there is none (`consent_sms_set`). Returns whether the
    customer is opted in now."""
    return consent_sms_set(
        customer=customer, opt_in=True, at=at, source=source, detail=detail
    ).opted_in


def consent_sms_from_stripe(
    *, customer: Customer, opt_in: bool | None, news: bool, at: dt.datetime, key: str
) -> ConsentChange | None:
    """SMS consent as the merchant keeps it in the Stripe customer's metadata (`key`), from
    a customer event of `at`. `news`: the event created the customer or changed that key.
    An unchanged value repeated by an unrelated update is read only while nothing is on
    record for the customer: once consent changed (a STOP, our API), only a change of
    the metadata speaks again. None when the metadata says nothing we can read."""
    if opt_in is None:
        return None
    if not news and _sms_consent_known_at(customer) is not None:
        return None
    return consent_sms_set(
        customer=customer,
        opt_in=opt_in,
        at=at,
        source="stripe_metadata",
        detail=f"Stripe customer metadata {key}",
    )


@transaction.atomic
def email_suppress(
    *, store_id, address: str, reason: str, at: dt.datetime, source: str = "postmark"
) -> None:
    """Stop email to an address: a hard bounce (the address is dead) or a spam
    complaint (the person does not want it: their customers also opt out of email)."""
    Suppression.objects.get_or_create(
        store_id=store_id,
        channel=Channel.EMAIL,
        address=address.lower(),
        defaults={"reason": reason, "created_at": at},
    )
    for customer in Customer.objects.filter(store_id=store_id, email__iexact=address):
        if reason == Suppression.Reason.SPAM_COMPLAINT:
            Customer.objects.filter(pk=customer.pk).update(email_opt_out=True)
        _consent_event(
            store_id=store_id,
            customer=customer,
            channel=Channel.EMAIL,
            action="opt_out" if reason == Suppression.Reason.SPAM_COMPLAINT else "suppressed",
            source=source,
            address=address,
            at=at,
            detail=reason,
        )


# ------------------------------------------------------------------ provider reports

TWILIO_FAILED = {"failed", "undelivered"}
TWILIO_OPTED_OUT = "21610"  # "Attempt to send to unsubscribed recipient"


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


# ------------------------------------------------------------------ templates


def message_template_validate(
    *, channel: str, subject: str = "", body_text: str, body_html: str = ""
) -> dict:
    """Check a template before it is saved. Raises ApplicationError naming the field, the
    line and the reason (`extra`: field, line, reason). Returns facts for the editor:
    for SMS, {"sms_length": SmsLength} measured on the sample data."""
    if channel not in Channel.values:
        raise ApplicationError(f"Channel must be one of {', '.join(Channel.values)}.")
    if not body_text.strip():
        raise ApplicationError(
            "The text body is empty.", code="template_invalid", extra={"field": "body_text"}
        )
    if channel == Channel.EMAIL and not subject.strip():
        raise ApplicationError(
            "An email needs a subject.", code="template_invalid", extra={"field": "subject"}
        )
    fields = [("body_text", body_text, False)]
    if channel == Channel.EMAIL:
        fields += [("subject", subject, False), ("body_html", body_html, True)]
    for field, source, html_body in fields:
        if not source:
            continue
        problem = rendering.template_check(source, html_body=html_body)
        if problem is not None:
            raise ApplicationError(
                f"{field.replace('_', ' ').capitalize()}, line {problem.line}: {problem.reason}",
                code="template_invalid",
                extra={"field": field, "line": problem.line, "reason": problem.reason},
            )
    facts: dict = {}
    if channel == Channel.SMS:
        facts["sms_length"] = rendering.sms_length(
            rendering.render(body_text, dict(rendering.SAMPLE)).strip()
        )
    return facts


@transaction.atomic
def message_template_save(
    *,
    store: Store,
    channel: str,
    purpose: str,
    locale: str = "en",
    subject: str = "",
    body_text: str,
    body_html: str = "",
    actor: str = "",
) -> MessageTemplate:
    """Save the store's own wording for (purpose, channel, locale); a template that does
    not render is refused (ApplicationError with field, line and reason)."""
    if purpose not in Purpose.values:
        raise ApplicationError(f"Unknown purpose {purpose!r}.", code="invalid")
    message_template_validate(
        channel=channel, subject=subject, body_text=body_text, body_html=body_html
    )
    template, _ = MessageTemplate.objects.update_or_create(
        store=store,
        channel=channel,
        purpose=purpose,
        locale=(locale or "en").lower(),
        defaults={
            "subject": subject.strip() if channel == Channel.EMAIL else "",
            "body_text": body_text,
            "body_html": body_html if channel == Channel.EMAIL else "",
            "updated_by": actor[:150],
        },
    )
    return template


def message_template_reset(*, store: Store, channel: str, purpose: str, locale: str = "en") -> None:
    """Go back to Recoup's default wording."""
    MessageTemplate.objects.filter(
        store=store, channel=channel, purpose=purpose, locale=(locale or "en").lower()
    ).delete()


def message_template_preview(*, template: MessageTemplate, sample: dict | None = None) -> dict:
    """Render a template (saved or not: build an unsaved MessageTemplate from the editor's
    fields) on sample data, for the live preview.

    Returns {"subject", "body_text", "body_html", "sms_length" (SMS only)}. `sample`
    overrides any of rendering.SAMPLE's values. Raises ApplicationError like
    `message_template_validate` if it does not render."""
    message_template_validate(
        channel=template.channel,
        subject=template.subject,
        body_text=template.body_text,
        body_html=template.body_html,
    )
    context = dict(rendering.SAMPLE)
    if template.store_id:
        context["store_name"] = template.store.name
    context.update({k: str(v) for k, v in (sample or {}).items() if k in rendering.VARIABLES})
    store = template.store if template.store_id else Store(name=context["store_name"])
    out = _render_template(template, context, store=store)
    if template.channel == Channel.SMS:
        out["sms_length"] = rendering.sms_length(out["body_text"])
    return out
