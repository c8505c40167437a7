"""Deciding, rendering and recording a due message: the one way a message leaves Recoup.

`message_send` renders, checks consent, caps and quiet hours, records a `Message` and
sends it. It is idempotent per (case, purpose, channel): a unique constraint decides,
so the same step run twice — or by two workers at once — sends once. The row is claimed
in a short transaction; the provider is called after it commits (never inside a
transaction, `messaging.delivery`), and the result recorded in another.

The engine (recovery/engine.py) decides *when* a message is due and calls
`message_send_for_case`; a scheduler batch calls `messages_send_for_cases`, which decides
and records a batch's emails together under the batch's row locks and, after the commit,
hands them to the provider in one batch (`messages_deliver`: one Postmark request per
500); pre-dunning calls `message_send_predunning`; the scheduler pass calls
`messages_send_scheduled` for SMS held back by quiet hours.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import IntegrityError, transaction
from django.db.models import Count, Max

from common.bulk import rows_insert
from common.errors import ApplicationError
from recovery.models import ExpiryWarning, RecoveryCase, Track
from stores.models import Store
from subscriptions.models import Customer, PaymentMethod

from . import rendering, selectors
from .delivery import message_deliver, messages_deliver
from .links import pay_url as make_pay_url
from .models import Channel, Message, MessageTemplate, Purpose
from .policy import (
    DUNNING,
    NO_LINK,
    SMS_EARLY,
    SMS_LATE,
    Known,
    _case_event,
    _email_blocked,
    _max_per_case,
    _min_gap,
    _sms_blocked,
    quiet_hours_end,
)

logger = logging.getLogger(__name__)

# A queued message not handed to its provider by then (the process died after the
# claim committed) is picked up by the scheduler's sweep.
LOST_AFTER = dt.timedelta(minutes=5)


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
