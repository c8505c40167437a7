"""Writes for the escalation queue: routing cases to a person, claims, notes, outcomes,
churn signals, and the support pass that keeps the queue in step with the cases.

While a case is with a person (its queue item is waiting, claimed or promised) automated
dunning is paused (RecoveryCase.dunning_paused) unless the agent resumes it.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from common.errors import ApplicationError
from recovery import commands
from recovery.commands import case_event_record, recovery_case_close
from recovery.models import RecoveryCase, Track
from stores.models import Store
from subscriptions.models import Customer

from .models import CustomerSignal, QueueItem, SupportPolicy
from .routing import case_routing, value_at_risk

logger = logging.getLogger(__name__)

ACTIVE = [QueueItem.Status.WAITING, QueueItem.Status.CLAIMED, QueueItem.Status.PROMISED]
PROMISE_MAX_DAYS = 30
PROMISE_WINDOW_MARGIN = dt.timedelta(days=2)


# ------------------------------------------------------------------ routing


def _case_for_routing(case_id: int) -> RecoveryCase:
    return RecoveryCase.objects.select_related("store", "customer", "subscription").get(pk=case_id)


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    codes = {r["code"] for r in new}
    return new + [r for r in old if r["code"] not in codes]


@transaction.atomic
def case_route(
    *, case: RecoveryCase, at: dt.datetime, extra_reasons: list[dict] | None = None
) -> QueueItem | None:
    """Evaluate the routing policy for one case and put it in the queue if it qualifies
    (or refresh its reasons if it is there). Returns the active queue item, if any."""
    case = _case_for_routing(case.pk)
    if not case.is_open:
        return None
    routing = case_routing(case=case, at=at)
    reasons = _merge(routing.reasons, extra_reasons or [])
    item = QueueItem.objects.select_for_update().filter(case=case).first()
    if not reasons:
        if item is not None and item.status in ACTIVE:
            # Still with a person; only the score moves.
            QueueItem.objects.filter(pk=item.pk).update(
                churn_score=routing.churn.score, churn_reasons=routing.churn.as_list()
            )
        return item if item is not None and item.status in ACTIVE else None
    fields = {
        "reasons": reasons if item is None else _merge(item.reasons, reasons),
        "churn_score": routing.churn.score,
        "churn_reasons": routing.churn.as_list(),
        "value_at_risk": value_at_risk(case=case),
        "currency": case.currency,
        "window_end": case.window_end,
    }
    new_codes = {r["code"] for r in reasons} - {r["code"] for r in (item.reasons if item else [])}
    if item is None:
        try:
            with transaction.atomic():
                item = QueueItem.objects.create(
                    store_id=case.store_id, case=case, entered_at=at, **fields
                )
        except IntegrityError:  # routed by a concurrent event: refresh that one instead
            item = QueueItem.objects.select_for_update().get(case=case)
            QueueItem.objects.filter(pk=item.pk).update(**fields)
            return item
        entering = True
    else:
        entering = item.status == QueueItem.Status.DONE
        if entering:
            fields.update(
                status=QueueItem.Status.WAITING,
                entered_at=at,
                first_response_at=None,
                claimed_by=None,
                claimed_at=None,
                resolved_at=None,
            )
        QueueItem.objects.filter(pk=item.pk).update(**fields)
        item.refresh_from_db()
    if entering or new_codes:
        labels = "; ".join(r["label"] for r in reasons)
        RecoveryCase.objects.filter(pk=case.pk).update(
            escalated=True, escalation_reason=labels[:300]
        )
        case.escalated, case.escalation_reason = True, labels[:300]
        case_event_record(
            case=case,
            kind="queued",
            at=at,
            message=f"Sent to the escalation queue: {labels}",
            data={"reasons": reasons, "churn_score": routing.churn.score},
        )
    if entering and not case.dunning_paused:
        RecoveryCase.objects.filter(pk=case.pk).update(dunning_paused=True)
        case.dunning_paused = True
        commands.case_plan(case, now=at, record=False)
        case_event_record(
            case=case,
            kind="dunning_paused",
            at=at,
            message="Automated retries and messages paused while the case is with a person",
        )
    return item


def case_route_if_needed(*, case: RecoveryCase, at: dt.datetime) -> QueueItem | None:
    """The hook for a newly opened case (recovery.services.recovery_case_open). The
    caller's instance is refreshed: the engine keeps planning with it, and must see that
    a person has the case."""
    item = case_route(case=case, at=at)
    if item is not None:
        case.refresh_from_db(
            fields=[
                "escalated",
                "escalation_reason",
                "dunning_paused",
                "retry_at",
                "retry_reason",
                "message_at",
                "next_action",
                "next_action_at",
                "next_action_reason",
            ]
        )
    return item


def case_customer_replied(
    *, customer: Customer, at: dt.datetime, channel: str = "", excerpt: str = ""
) -> list[QueueItem]:
    """A customer answered one of our messages: a person should read it. Routes every open
    case of the customer (when the store's policy says so)."""
    policy = SupportPolicy.objects.filter(store_id=customer.store_id).first()
    if policy is not None and not policy.route_on_reply:
        return []
    label = "The customer replied" + (f" by {channel}" if channel else "")
    if excerpt:
        label += f': "{excerpt[:120]}"'
    items = []
    for case in RecoveryCase.objects.filter(customer=customer, status=RecoveryCase.Status.OPEN):
        item = case_route(case=case, at=at, extra_reasons=[{"code": "replied", "label": label}])
        if item is not None:
            items.append(item)
    return items


# ------------------------------------------------------------------ signals


def customer_signal_record(
    *,
    store: Store,
    customer: Customer,
    kind: str,
    at: dt.datetime,
    label: str = "",
    weight: int | None = None,
    external_id: str = "",
    data: dict | None = None,
) -> tuple[CustomerSignal, bool]:
    """Record a churn signal (idempotent by the merchant's id) and re-route the
    customer's open cases: a new signal may push them over the churn threshold."""
    if kind not in CustomerSignal.Kind.values:
        raise ApplicationError(
            f"Unknown signal kind {kind!r}; use one of: {', '.join(CustomerSignal.Kind.values)}.",
            code="bad_signal",
        )
    if kind == CustomerSignal.Kind.CUSTOM and not (label or "").strip():
        raise ApplicationError(
            "A custom signal needs a label saying what happened.", code="bad_signal"
        )
    if weight is not None and not 0 <= weight <= 50:
        raise ApplicationError("weight must be between 0 and 50.", code="bad_signal")
    if at > timezone.now() + dt.timedelta(minutes=5):
        raise ApplicationError("A signal cannot be in the future.", code="bad_signal")
    with transaction.atomic():
        if external_id:
            existing = CustomerSignal.objects.filter(
                customer=customer, external_id=external_id
            ).first()
            if existing is not None:
                return existing, False
        try:
            with transaction.atomic():
                signal = CustomerSignal.objects.create(
                    store=store,
                    customer=customer,
                    kind=kind,
                    label=(label or "")[:200],
                    weight=weight,
                    at=at,
                    external_id=external_id[:100],
                    data=data or {},
                )
        except IntegrityError:
            return CustomerSignal.objects.get(customer=customer, external_id=external_id), False
        now = timezone.now()
        for case in RecoveryCase.objects.filter(customer=customer, status=RecoveryCase.Status.OPEN):
            case_route(case=case, at=now)
    return signal, True


# ------------------------------------------------------------------ the agent's work


def _item_locked(item: QueueItem) -> QueueItem:
    return QueueItem.objects.select_for_update().select_related("case").get(pk=item.pk)


def _responded(item: QueueItem, at: dt.datetime) -> None:
    QueueItem.objects.filter(pk=item.pk, first_response_at__isnull=True).update(
        first_response_at=at
    )


def queue_item_claim(*, item: QueueItem, user, at: dt.datetime) -> QueueItem:
    """Take an item. Refused when someone else has it: two agents never work one case."""
    with transaction.atomic():
        updated = QueueItem.objects.filter(
            pk=item.pk, claimed_by__isnull=True, status__in=ACTIVE
        ).update(
            claimed_by=user,
            claimed_at=at,
            status=QueueItem.Status.CLAIMED,
        )
        item = _item_locked(item)
        if updated != 1:
            if item.claimed_by_id == user.pk:
                return item
            if item.status == QueueItem.Status.DONE:
                raise ApplicationError("This item is already done.")
            raise ApplicationError(
                f"{item.claimed_by} has already claimed this item; ask them or pick another."
            )
        if item.promise_until:  # a claim keeps the promise's state
            QueueItem.objects.filter(pk=item.pk).update(status=QueueItem.Status.PROMISED)
        _responded(item, at)
        case_event_record(
            case=item.case, kind="claimed", at=at, actor=user.username, message="Claimed"
        )
    item.refresh_from_db()
    return item


def queue_item_release(*, item: QueueItem, user, at: dt.datetime, is_operator: bool) -> QueueItem:
    """Give an item back to the queue (its claimer, or an operator)."""
    with transaction.atomic():
        item = _item_locked(item)
        if item.claimed_by_id is None:
            return item
        if item.claimed_by_id != user.pk and not is_operator:
            raise ApplicationError(
                "Only the agent who claimed this item (or an operator) can release it."
            )
        previous = item.claimed_by
        QueueItem.objects.filter(pk=item.pk).update(
            claimed_by=None,
            claimed_at=None,
            status=QueueItem.Status.PROMISED if item.promise_until else QueueItem.Status.WAITING,
        )
        case_event_record(
            case=item.case,
            kind="released",
            at=at,
            actor=user.username,
            message=f"Released back to the queue (was with {previous})",
        )
    item.refresh_from_db()
    return item


def case_noted(*, case: RecoveryCase, at: dt.datetime) -> None:
    """A note on a queued case (recovery.commands.case_note_add) is the item's response."""
    item = QueueItem.objects.filter(case=case).first()
    if item is not None:
        _responded(item, at)


def _outcome(item: QueueItem, *, outcome: str, at: dt.datetime, note: str = "", **extra) -> None:
    QueueItem.objects.filter(pk=item.pk).update(
        outcome=outcome, outcome_at=at, outcome_note=note[:500], **extra
    )
    _responded(item, at)


def queue_outcome_promise(
    *, item: QueueItem, user, pay_by: dt.date, at: dt.datetime, note: str = ""
) -> QueueItem:
    """The customer promised to pay by a date: dunning stays paused until then, and the
    window is extended when the date falls after it."""
    today = at.astimezone(item.case.store.tzinfo).date()
    if pay_by < today:
        raise ApplicationError("The promised date is in the past; pick today or a later day.")
    if pay_by > today + dt.timedelta(days=PROMISE_MAX_DAYS):
        raise ApplicationError(
            f"Record promises up to {PROMISE_MAX_DAYS} days ahead; a later one is a payment plan."
        )
    case = item.case
    if not case.is_open:
        raise ApplicationError(f"The case is already {case.status}.")
    pay_by_end = dt.datetime.combine(
        pay_by + dt.timedelta(days=1), dt.time(), tzinfo=case.store.tzinfo
    )
    if pay_by_end + PROMISE_WINDOW_MARGIN > case.window_end:
        days = (pay_by_end + PROMISE_WINDOW_MARGIN - case.window_end).days + 1
        commands.case_window_extend(
            case=case,
            actor=user.username,
            at=at,
            days=min(days, commands.MAX_EXTEND_DAYS),
            why=f"promise to pay by {pay_by:%b %-d}",
        )
    with transaction.atomic():
        item = _item_locked(item)
        if not item.case.dunning_paused:
            commands.case_dunning_pause(
                case=item.case, actor=user.username, at=at, why=f"promise to pay by {pay_by}"
            )
        item.case.refresh_from_db(fields=["window_end"])
        _outcome(
            item,
            outcome=QueueItem.Outcome.PROMISE,
            at=at,
            note=note,
            status=QueueItem.Status.PROMISED,
            promise_until=pay_by,
            window_end=item.case.window_end,
        )
        case_event_record(
            case=item.case,
            kind="promise_to_pay",
            at=at,
            actor=user.username,
            message=f"Promise to pay by {pay_by:%a %b %-d}; dunning paused until then"
            + (f". {note}" if note else ""),
            data={"pay_by": pay_by.isoformat()},
        )
    item.refresh_from_db()
    return item


def queue_outcome_offer(
    *,
    item: QueueItem,
    user,
    kind: str,
    at: dt.datetime,
    coupon: str = "",
    pause_days: int = 0,
    note: str = "",
) -> QueueItem:
    """A discount or a pause, applied to the subscription through Stripe (network first,
    outside any transaction), then recorded."""
    from .offers import subscription_offer_apply

    case = item.case
    if not case.subscription_id:
        raise ApplicationError("Offers apply to subscriptions; this case is an order payment.")
    description = subscription_offer_apply(
        store=case.store,
        subscription=case.subscription,
        kind=kind,
        coupon=coupon,
        pause_days=pause_days,
        idempotency_key=f"recoup-queue-{item.pk}-offer-{kind}-{coupon or pause_days}",
    )
    with transaction.atomic():
        item = _item_locked(item)
        _outcome(item, outcome=QueueItem.Outcome.OFFER, at=at, note=note or description)
        case_event_record(
            case=item.case,
            kind="offer_applied",
            at=at,
            actor=user.username,
            message=f"Offer applied: {description}" + (f". {note}" if note else ""),
            data={"kind": kind, "coupon": coupon, "pause_days": pause_days},
        )
    item.refresh_from_db()
    return item


def queue_outcome_email(
    *, item: QueueItem, user, note: str, at: dt.datetime, idempotency_key: str
) -> QueueItem:
    """A personal email from the agent, sent through the messaging service and logged."""
    from .mail import personal_email_send

    note = (note or "").strip()
    if not note:
        raise ApplicationError("Write the message for the customer first.")
    case = item.case
    if not case.customer.email:
        raise ApplicationError("This customer has no email address on file.")
    reference = personal_email_send(
        case=case, user=user, note=note, at=at, idempotency_key=f"{item.pk}:{idempotency_key}"
    )
    with transaction.atomic():
        item = _item_locked(item)
        _outcome(item, outcome=QueueItem.Outcome.EMAIL, at=at, note=note[:120])
        case_event_record(
            case=item.case,
            kind="personal_email",
            at=at,
            actor=user.username,
            message=f"Personal email sent to {case.customer.email}: {note[:200]}",
            data={"reference": reference},
        )
    item.refresh_from_db()
    return item


def queue_outcome_recovered(*, item: QueueItem, user, at: dt.datetime, gateway=None) -> str:
    """The customer agreed to pay now: charge them (as the agent, within budgets). Returns
    what happened. A payment made outside Stripe is the case's "Mark paid" action."""
    result = commands.case_retry_now(case=item.case, actor=user.username, at=at, gateway=gateway)
    case = RecoveryCase.objects.get(pk=item.case_id)
    if case.status == RecoveryCase.Status.RECOVERED:
        queue_item_settle(item=item, at=at, actor=user.username)
    return result.message


def queue_outcome_lost(*, item: QueueItem, user, at: dt.datetime, why: str) -> None:
    why = (why or "").strip()
    if not why:
        raise ApplicationError("Say briefly why the payment is lost; it helps the next agent.")
    recovery_case_close(
        case=item.case,
        status=RecoveryCase.Status.LOST,
        reason=f"lost, recorded by {user.username}: {why}",
        at=at,
        actor=user.username,
    )
    queue_item_settle(item=item, at=at, actor=user.username)


def queue_item_return_to_automation(*, item: QueueItem, user, at: dt.datetime) -> None:
    """Done with a person, the case still open: automated recovery takes over again."""
    with transaction.atomic():
        item = _item_locked(item)
        if item.status == QueueItem.Status.DONE:
            return
        QueueItem.objects.filter(pk=item.pk).update(
            status=QueueItem.Status.DONE, resolved_at=at, promise_until=None
        )
        _responded(item, at)
        case_event_record(
            case=item.case,
            kind="returned_to_automation",
            at=at,
            actor=user.username,
            message="Handed back to automated recovery",
        )
        if item.case.is_open and item.case.dunning_paused and item.case.track != "fraud":
            commands.case_dunning_resume(
                case=item.case, actor=user.username, at=at, why="handed back to automation"
            )


def queue_item_settle(*, item: QueueItem, at: dt.datetime, actor: str = "system") -> bool:
    """The case closed (recovered, lost, cancelled): the item leaves the queue with the
    case's result as its outcome, unless an agent recorded one already."""
    case = RecoveryCase.objects.get(pk=item.case_id)
    if case.is_open:
        return False
    outcome = {
        RecoveryCase.Status.RECOVERED: QueueItem.Outcome.RECOVERED,
        RecoveryCase.Status.LOST: QueueItem.Outcome.LOST,
    }.get(case.status, "")
    updated = QueueItem.objects.filter(pk=item.pk).exclude(status=QueueItem.Status.DONE)
    fields = {"status": QueueItem.Status.DONE, "resolved_at": at, "promise_until": None}
    if outcome:
        fields.update(outcome=outcome, outcome_at=case.closed_at or at)
    return updated.update(**fields) == 1


def queue_item_settle_for_case(*, case: RecoveryCase, at: dt.datetime) -> bool:
    """`queue_item_settle` for a case just closed, if it is in the queue."""
    item = QueueItem.objects.filter(case=case).exclude(status=QueueItem.Status.DONE).first()
    return item is not None and queue_item_settle(item=item, at=at)


# ------------------------------------------------------------------ the support pass


def promises_due(*, now: dt.datetime) -> int:
    """Promises whose date has come: dunning resumes (a retry can collect what was
    promised) and the item goes back to its agent, or the queue."""
    done = 0
    items = QueueItem.objects.filter(
        status=QueueItem.Status.PROMISED, promise_until__lte=now.date()
    ).select_related("case", "case__store")
    for item in items:
        local_today = now.astimezone(item.case.store.tzinfo).date()
        if item.promise_until > local_today:
            continue
        with transaction.atomic():
            if (
                QueueItem.objects.filter(pk=item.pk, status=QueueItem.Status.PROMISED).update(
                    status=QueueItem.Status.CLAIMED
                    if item.claimed_by_id
                    else QueueItem.Status.WAITING
                )
                != 1
            ):
                continue  # another worker got there first
            case = item.case
            if not case.is_open:
                queue_item_settle(item=item, at=now)
                continue
            case_event_record(
                case=case,
                kind="promise_due",
                at=now,
                message=f"Promised date {item.promise_until:%b %-d} reached without payment: "
                "automated recovery resumes",
            )
            if case.dunning_paused and case.track != "fraud":
                commands.case_dunning_resume(case=case, actor="system", at=now, why="promise date")
        done += 1
    return done


def queue_settle_closed(*, now: dt.datetime) -> int:
    """Items still active whose case has closed by other means (paid, window ended)."""
    n = 0
    for item in QueueItem.objects.filter(status__in=ACTIVE).exclude(
        case__status=RecoveryCase.Status.OPEN
    ):
        n += queue_item_settle(item=item, at=now)
    return n


def queue_route_escalated(*, now: dt.datetime, limit: int = 200) -> int:
    """Open cases the engine moved to the fraud track on its own (a dispute opened on an
    open case) that are not in the queue yet."""
    rows = list(
        RecoveryCase.objects.filter(
            status=RecoveryCase.Status.OPEN,
            escalated=True,
            track=Track.FRAUD,
            queue_item__isnull=True,
        ).values_list("pk", flat=True)[:limit]
    )
    for case_id in rows:
        try:
            case_route(case=RecoveryCase(pk=case_id), at=now)
        except Exception:
            logger.exception("routing case %s failed", case_id)
    return len(rows)


def support_pass(*, now: dt.datetime | None = None) -> dict:
    now = now or timezone.now()
    return {
        "promises_due": promises_due(now=now),
        "settled": queue_settle_closed(now=now),
        "routed": queue_route_escalated(now=now),
    }
