"""Writes to recovery state: opening, updating and closing cases, the timeline, attempts.

Every change to a case goes through here, inside a transaction, and leaves a CaseEvent.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from common.errors import ApplicationError
from stores.models import Store
from subscriptions.models import Customer, Invoice, Subscription

from . import ports
from .domain import declines, events
from .domain.events import EventKind
from .models import CaseEvent, PaymentAttempt, RecoveryCase, Track
from .selectors import retry_policy_current
from .stripe_payloads import DeclineInfo

if TYPE_CHECKING:  # recovery never imports orders at run time (ports)
    from orders.models import Order

# How close in time two reports of one payment attempt must be to be the same attempt
# (an invoice event and a charge event describing one charge).
SAME_ATTEMPT_WINDOW = dt.timedelta(minutes=30)


def invoice_serialize(*, store_id, invoice_id: str) -> None:
    """One at a time per invoice, until the transaction ends: the events of one invoice,
    and the recording of its read-back. The first events of an invoice find no case to
    lock yet (it is being opened), so they would otherwise lock the invoice before the
    case, against the order everything else takes (case, then invoice), and two workers
    could wait on each other in a circle. A transaction-level advisory lock on PostgreSQL
    (SQLite writes one transaction at a time anyway)."""
    if invoice_id and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                [f"recoup-invoice:{store_id}:{invoice_id}"],
            )


def case_event_build(
    *,
    case: RecoveryCase,
    kind: str,
    message: str,
    at: dt.datetime | None = None,
    data: dict | None = None,
    actor: str = "system",
) -> CaseEvent:
    """A timeline entry, not yet saved (a scheduler batch saves its entries together).
    `kind` is one of `EventKind` (ValueError otherwise)."""
    return CaseEvent(
        store_id=case.store_id,
        case=case,
        kind=EventKind(kind).value,
        at=at or timezone.now(),
        message=message[:500],
        data=data or {},
        actor=actor[:150],
    )


def case_event_record(
    *,
    case: RecoveryCase,
    kind: str,
    message: str,
    at: dt.datetime | None = None,
    data: dict | None = None,
    actor: str = "system",
) -> CaseEvent:
    event = case_event_build(case=case, kind=kind, message=message, at=at, data=data, actor=actor)
    event.save(force_insert=True)
    return event


def decline_classification(decline: DeclineInfo) -> declines.Classification:
    return declines.classify(
        decline_code=decline.decline_code,
        failure_code=decline.failure_code,
        advice_code=decline.advice_code,
        network_advice_code=decline.network_advice_code,
        network_decline_code=decline.network_decline_code,
        card_brand=decline.card_brand,
    )


def payment_attempt_record(**report) -> tuple[PaymentAttempt, bool]:
    """Record an attempt reported by Stripe (`_attempt_record`'s arguments), merging
    reports that describe the same charge. Two workers may record one charge at once
    (a charge.failed, and a read-back's answer): the unique index on the charge lets one
    INSERT through, and the other report, run again once that row is committed, merges
    into it."""
    try:
        with transaction.atomic():  # a savepoint: the lost race leaves the rest intact
            return _attempt_record(**report)
    except IntegrityError:
        return _attempt_record(**report)


def _attempt_record(
    *,
    store: Store,
    case: RecoveryCase | None,
    customer: Customer | None,
    source: str,
    outcome: str,
    amount: int,
    currency: str,
    at: dt.datetime,
    decline: DeclineInfo | None = None,
    invoice_stripe_id: str = "",
    invoice_attempt_number: int | None = None,
    stripe_event_id: int | None = None,
    reason: str = "",
) -> tuple[PaymentAttempt, bool]:
    """Record an attempt reported by Stripe, merging reports that describe the same charge.

    One charge is often reported several times (invoice.payment_failed, charge.failed,
    payment_intent.payment_failed), in any order. They are one attempt when they share a
    charge id, or an invoice attempt number, or when one lacks what the other has and
    they are close in time on the same invoice or PaymentIntent.
    """
    decline = decline or DeclineInfo()
    existing = None
    if decline.charge_id:
        existing = PaymentAttempt.objects.filter(store=store, charge_id=decline.charge_id).first()
    if existing is None and invoice_stripe_id and invoice_attempt_number:
        existing = PaymentAttempt.objects.filter(
            store=store,
            invoice_stripe_id=invoice_stripe_id,
            invoice_attempt_number=invoice_attempt_number,
        ).first()
    if existing is None and (invoice_stripe_id or decline.payment_intent_id):
        # The store in each arm of the OR: each is then one index's.
        same_payment = Q()
        if invoice_stripe_id:
            same_payment |= Q(store=store, invoice_stripe_id=invoice_stripe_id)
        if decline.payment_intent_id:
            same_payment |= Q(store=store, payment_intent_id=decline.payment_intent_id)
        incomplete = Q()
        if decline.charge_id:
            incomplete &= Q(charge_id="")
        if invoice_attempt_number:
            incomplete &= Q(invoice_attempt_number__isnull=True)
        if incomplete:
            existing = (
                PaymentAttempt.objects.filter(
                    same_payment, incomplete, store=store, outcome=outcome
                )
                .filter(attempted_at__range=(at - SAME_ATTEMPT_WINDOW, at + SAME_ATTEMPT_WINDOW))
                .order_by("-attempted_at")
                .first()
            )
    if existing is not None:
        # Fill in what this report adds; never overwrite what is known.
        changed = []
        for field, value in (
            ("charge_id", decline.charge_id),
            ("payment_intent_id", decline.payment_intent_id),
            ("decline_code", decline.decline_code),
            ("failure_code", decline.failure_code),
            ("failure_message", decline.failure_message),
            ("advice_code", decline.advice_code),
            ("network_decline_code", decline.network_decline_code),
            ("network_advice_code", decline.network_advice_code),
            ("card_brand", decline.card_brand),
            ("card_fingerprint", decline.card_fingerprint),
            ("card_last4", decline.card_last4),
            ("card_exp_month", decline.card_exp_month),
            ("card_exp_year", decline.card_exp_year),
            ("card_country", decline.card_country),
            ("payment_method_id", decline.payment_method_id),
            ("invoice_stripe_id", invoice_stripe_id),
            ("invoice_attempt_number", invoice_attempt_number),
        ):
            if value and not getattr(existing, field):
                setattr(existing, field, value)
                changed.append(field)
        if case is not None and existing.case_id is None:
            existing.case = case
            changed.append("case")
        if changed:
            existing.save(update_fields=changed)
        return existing, False
    attempt = PaymentAttempt.objects.create(
        store=store,
        case=case,
        customer=customer,
        invoice_stripe_id=invoice_stripe_id,
        invoice_attempt_number=invoice_attempt_number,
        payment_intent_id=decline.payment_intent_id,
        charge_id=decline.charge_id,
        source=source,
        outcome=outcome,
        amount=amount,
        currency=currency,
        attempted_at=at,
        decline_code=decline.decline_code,
        failure_code=decline.failure_code,
        failure_message=decline.failure_message,
        advice_code=decline.advice_code,
        network_decline_code=decline.network_decline_code,
        network_advice_code=decline.network_advice_code,
        card_brand=decline.card_brand,
        card_fingerprint=decline.card_fingerprint,
        card_last4=decline.card_last4,
        card_exp_month=decline.card_exp_month,
        card_exp_year=decline.card_exp_year,
        card_country=decline.card_country,
        payment_method_id=decline.payment_method_id,
        stripe_event_id=stripe_event_id,
        reason=reason,
    )
    return attempt, True


def _find_case(
    *, store: Store, invoice: Invoice | None, payment_intent_ids: list[str]
) -> RecoveryCase | None:
    qs = RecoveryCase.objects.select_for_update()
    if invoice is not None:
        case = qs.filter(invoice=invoice).first()
        if case:
            return case
    if payment_intent_ids:
        # A PaymentIntent failure can arrive before its invoice's failure.
        return (
            qs.filter(store=store, payment_intent_id__in=payment_intent_ids).order_by("id").first()
        )
    return None


@transaction.atomic
def recovery_case_open(
    *,
    store: Store,
    customer: Customer,
    amount: int,
    currency: str,
    decline: DeclineInfo,
    at: dt.datetime,
    invoice: Invoice | None = None,
    subscription: Subscription | None = None,
    order: Order | None = None,
    payment_intent_ids: list[str] | None = None,
    decline_awaited_until: dt.datetime | None = None,
    replan_unchanged: bool = True,
    case: RecoveryCase | None = None,
    plan: bool = True,
) -> tuple[RecoveryCase, bool]:
    """Open the one case for a failed invoice or order payment, or update the open one.

    Returns (case, changed). A closed case is never reopened by a late failure.
    decline_awaited_until: the report did not say why the payment failed; a new case
    waits (no retry, no message) until Stripe says or until then.
    replan_unchanged=False: a report that changes nothing on the open case (a Stripe
    event telling a failure the case already has) writes and plans nothing; the intake
    plans a new attempt when it records it.
    case: the invoice's case, its row already locked by the caller (a read-back's
    answer): updated in place.
    plan=False: the caller records the failed attempt next and plans the case once that
    is counted (`engine.case_attempt_seen(..., replan=changed)`), not twice.
    """
    from . import engine

    payment_intent_ids = [p for p in (payment_intent_ids or [decline.payment_intent_id]) if p]
    classification = decline_classification(decline)
    if case is None:
        case = _find_case(store=store, invoice=invoice, payment_intent_ids=payment_intent_ids)
    if case is None:
        policy = retry_policy_current(store=store)
        interval = subscription.interval if subscription else None
        window_end = at + dt.timedelta(days=policy.window_days(interval))
        case = RecoveryCase.objects.create(
            store=store,
            customer=customer,
            kind=RecoveryCase.Kind.INVOICE if invoice else RecoveryCase.Kind.PAYMENT,
            invoice=invoice,
            subscription=subscription,
            order=order,
            payment_intent_id=payment_intent_ids[-1] if payment_intent_ids else "",
            amount=amount,
            currency=currency,
            track=classification.track,
            track_reason=classification.reason,
            opened_at=at,
            window_start=at,
            window_end=window_end,
            decline_code=classification.code,
            advice_code=decline.advice_code,
            policy_version=policy.version,
            decline_awaited_until=None if decline.has_code else decline_awaited_until,
            **case_card_fields(decline),
        )
        if not policy.version:
            case.__dict__["_current_policy"] = policy  # engine._policy: asked once per case
        case_event_record(
            case=case,
            kind="opened",
            at=at,
            message=f"Payment of {amount} {currency.upper()} failed: "
            + (
                "Stripe's event does not say why; reading it back from Stripe before "
                "anything is retried or sent"
                if case.decline_awaited_until
                else classification.reason
            ),
            data={"track": case.track, "window_end": window_end.isoformat()},
        )
        engine.case_after_failure(case=case, classification=classification, at=at, plan=plan)
        if case.decline_awaited_until is None:  # else once it is classified
            ports.publish(events.CaseClassified(case=case, at=at))  # the escalation queue
        return case, True

    if not case.is_open:
        case_event_record(
            case=case,
            kind="late_failure_ignored",
            at=at,
            message=f"A failure reported after the case was {case.status} changes nothing.",
            data={"decline_code": classification.code},
        )
        return case, False

    was_awaited = case.decline_awaited_until is not None
    updates, event = case_failure_changes(
        case=case,
        decline=decline,
        classification=classification,
        at=at,
        amount=amount,
        invoice=invoice,
        subscription=subscription,
        order=order,
    )
    if (
        not replan_unchanged
        and event is None
        and not any(
            # invoice, subscription and order are only in `updates` when the case had none
            field in ("invoice", "subscription", "order") or getattr(case, field) != value
            for field, value in updates.items()
        )
    ):
        # The same failure told again (its charge.failed, its payment_intent.payment_failed,
        # a redelivery): nothing to write and nothing to plan again.
        return case, False
    if event is not None:
        event.save(force_insert=True)
    for field, value in updates.items():
        setattr(case, field, value)
    case.save(update_fields=[*updates.keys(), "updated_at"])
    engine.case_after_failure(case=case, classification=classification, at=at, plan=plan)
    if was_awaited and case.decline_awaited_until is None:
        case_classified(case=case, at=at)
    return case, True


def case_classified(*, case: RecoveryCase, at: dt.datetime) -> None:
    """A case that waited for Stripe's decline now has its track (from Stripe, or the
    conservative default): what waited for it is decided now: the escalation queue's
    routing, and the renewal order's holds (held until now, then for the plan)."""
    ports.publish(events.CaseClassified(case=case, at=at))
    if case.is_open:
        ports.publish(events.PaymentFailed(case=case, at=at))


def case_failure_changes(
    *,
    case: RecoveryCase,
    decline: DeclineInfo,
    classification: declines.Classification,
    at: dt.datetime,
    amount: int = 0,
    invoice: Invoice | None = None,
    subscription: Subscription | None = None,
    order: Order | None = None,
) -> tuple[dict, CaseEvent | None]:
    """What one more failure changes on an open case: its fields, and the unsaved
    track_changed entry when the track moves. Writes nothing."""
    updates = {"amount": amount or case.amount}
    if invoice is not None and case.invoice_id is None:
        updates.update(invoice=invoice, kind=RecoveryCase.Kind.INVOICE)
    if subscription is not None and case.subscription_id is None:
        updates["subscription"] = subscription
    if order is not None and case.order_id is None:
        updates["order"] = order
    event = None
    # A report with no decline details never downgrades what a richer report said.
    if decline.payment_intent_id and not case.payment_intent_id:
        updates["payment_intent_id"] = decline.payment_intent_id  # disputes find it by this
    if decline.has_code or not case.decline_code:
        if case.track == Track.FRAUD and classification.track != Track.FRAUD:
            pass  # a dispute or fraud signal is sticky
        elif classification.track != case.track or classification.code != case.decline_code:
            if classification.track != case.track:
                event = case_event_build(
                    case=case,
                    kind="track_changed",
                    at=at,
                    message=f"Track {case.track} → {classification.track}: {classification.reason}",
                )
            updates.update(
                track=classification.track,
                track_reason=classification.reason,
                decline_code=classification.code,
                advice_code=decline.advice_code,
            )
        if decline.has_code:
            updates.update(case_card_fields(decline), decline_awaited_until=None)
    return updates, event


def case_card_fields(decline: DeclineInfo) -> dict:
    """The failed attempt's network codes and card, as the case keeps them (what the
    report leaves out is left as it was)."""
    fields = {
        "network_decline_code": decline.network_decline_code[:16],
        "network_advice_code": decline.network_advice_code[:16],
        "card_brand": decline.card_brand[:32],
        "card_last4": decline.card_last4[:4],
        "card_fingerprint": decline.card_fingerprint[:64],
        "card_exp_month": decline.card_exp_month,
        "card_exp_year": decline.card_exp_year,
        "card_country": decline.card_country[:2],
    }
    return {name: value for name, value in fields.items() if value}


def case_close_fields(
    case: RecoveryCase, *, status: str, reason: str, via: str = "", amount: int | None = None
) -> dict:
    """The fields that close an open case (nothing stays scheduled on it)."""
    recovered = status == RecoveryCase.Status.RECOVERED
    return {
        "status": status,
        "closed_reason": reason[:300],
        "recovered_via": via if recovered else "",
        "recovered_amount": (case.amount if amount is None else amount) if recovered else 0,
        "next_action": "",
        "next_action_at": None,
        "next_action_reason": "",
        "retry_at": None,
        "message_at": None,
        # Saved now, whatever moment the close is dated: the analytics rollup finds the
        # cases that changed since its last read by this.
        "updated_at": timezone.now(),
    }


def case_close_event(case: RecoveryCase, *, at: dt.datetime, reason: str, actor: str) -> CaseEvent:
    """The timeline entry of a close, built from the closed case (not yet saved)."""
    days = (at - case.opened_at).total_seconds() / 86400
    return case_event_build(
        case=case,
        kind=case.status,
        at=at,
        actor=actor,
        message=(
            f"Recovered via {case.get_recovered_via_display()} after {days:.1f} days: {reason}"
            if case.status == RecoveryCase.Status.RECOVERED
            else f"Case {case.status}: {reason}"
        ),
        data={"days_to_close": round(days, 2), "recovered_amount": case.recovered_amount},
    )


@transaction.atomic
def recovery_case_close(
    *,
    case: RecoveryCase,
    status: str,
    reason: str,
    at: dt.datetime | None = None,
    via: str = "",
    amount: int | None = None,
    actor: str = "system",
) -> bool:
    """Close an open case. Returns False if it was already closed (nothing changes)."""
    from . import engine

    at = at or timezone.now()
    fields = case_close_fields(case, status=status, reason=reason, via=via, amount=amount)
    updated = RecoveryCase.objects.filter(pk=case.pk, status=RecoveryCase.Status.OPEN).update(
        closed_at=at, **fields
    )
    if updated != 1:
        return False  # already closed, by another event or worker
    case.refresh_from_db()
    case_close_event(case, at=at, reason=reason, actor=actor).save(force_insert=True)
    engine.case_after_close(case=case, at=at)
    return True


def recovered_via_for_success(*, case: RecoveryCase, at: dt.datetime) -> str:
    """Who brought the money back, judged from the attempts and events just before."""
    last = case.attempts.order_by("-attempted_at", "-id").first()
    if last is not None and last.outcome == PaymentAttempt.Outcome.SUCCEEDED:
        return case.credit_for(last)
    if case.card_updater_result == "updated":
        return RecoveryCase.RecoveredVia.CARD_UPDATER
    return RecoveryCase.RecoveredVia.STRIPE_RETRY


def open_cases_for_customer(*, customer: Customer):
    return RecoveryCase.objects.filter(customer=customer, status=RecoveryCase.Status.OPEN)


POLICY_FIELDS = (
    "max_retries",
    "window_days_day",
    "window_days_week",
    "window_days_month",
    "window_days_year",
    "window_days_order",
    "grace_fraction",
    "end_action",
    "first_retry_hours",
    "generic_retries_before_card_update",
    "predunning_days",
    "learned_timing",
)


@transaction.atomic
def retry_policy_update(*, store: Store, changes: dict, actor: str = "system"):
    """Save a new version of the store's policy. Cases keep the version that planned them."""
    from .models import RetryPolicy

    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise ApplicationError(f"Unknown policy settings: {', '.join(sorted(unknown))}.")
    current = retry_policy_current(store=store)
    values = {f: getattr(current, f) for f in POLICY_FIELDS} | changes
    if not 0 <= int(values["max_retries"]) <= 8:
        raise ApplicationError(
            "max_retries must be between 0 and 8: more reads as harassment and costs network fees."
        )
    for name in (
        "window_days_day",
        "window_days_week",
        "window_days_month",
        "window_days_year",
        "window_days_order",
    ):
        if not 1 <= int(values[name]) <= 90:
            raise ApplicationError(f"{name} must be between 1 and 90 days.")
    if not 0.0 <= float(values["grace_fraction"]) <= 1.0:
        raise ApplicationError("grace_fraction must be between 0 and 1.")
    if values["end_action"] not in RetryPolicy.EndAction.values:
        raise ApplicationError(
            f"end_action must be one of {', '.join(RetryPolicy.EndAction.values)}."
        )
    last = RetryPolicy.objects.select_for_update().filter(store=store).order_by("-version").first()
    return RetryPolicy.objects.create(
        store=store, version=(last.version if last else 0) + 1, created_by=actor[:150], **values
    )
