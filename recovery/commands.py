"""Recovery's commands: the one entry the other apps (messaging, orders, support,
subscriptions, stores) call; an import-linter contract holds that they call nothing else
of recovery's services (they may read its models and selectors, and use its gateways).

What a person can do to a case from the dashboard: retry now, pause or resume dunning,
extend the window, cancel, mark paid outside Stripe. What the pay page does: the retry a
customer's new card asks for, and a payment the customer confirmed on the page. What
the other apps tell recovery: a customer's card or zone changed, a case needs planning
again, a line for a case's timeline, a case closed by a person.

Each action checks the case is open, changes it through the engine and services (one
way to write), and leaves an event on the timeline naming the person. Writes happen in
`transaction.atomic` with the case row locked; a retry's network call happens outside
any transaction (engine.case_retry claims the case, calls the gateway, records the
truth).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from common.errors import ApplicationError
from stores.models import Store
from subscriptions.services import invoice_mark

from . import budgets, engine, ports, services
from .domain import events
from .gateways import gateway_for
from .models import PaymentAttempt, RecoveryCase, Track
from .services import open_cases_for_customer, payment_attempt_record, recovery_case_close
from .stripe_payloads import DeclineInfo

# The other apps call these from here, as the engine and the services define them.
case_event_build = services.case_event_build
case_event_record = services.case_event_record
retry_policy_update = services.retry_policy_update
case_plan = engine.case_plan
customer_card_changed = engine.customer_card_changed
customer_zone_changed = engine.customer_zone_changed

logger = logging.getLogger(__name__)

MAX_WINDOW_DAYS = 90  # the longest a recovery window may ever run, from its start
MAX_EXTEND_DAYS = 30


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    message: str


def _locked(case: RecoveryCase) -> RecoveryCase:
    """The case row, locked for this transaction, with what planning reads."""
    return (
        RecoveryCase.objects.select_for_update(of=("self",))
        .select_related("store", "customer", "customer__default_payment_method", "invoice")
        .get(pk=case.pk)
    )


def _require_open(case: RecoveryCase) -> None:
    if not case.is_open:
        raise ApplicationError(f"This case is already {case.status}; nothing to change.")


def case_retry_refusal(*, case: RecoveryCase, at: dt.datetime) -> str:
    """Why a retry may not be sent now ("" when it may). Read-only: the same rules the
    scheduler applies (track, card, network budgets, Stripe's own retry)."""
    if not case.is_open:
        return f"the case is {case.status}"
    if case.inflight_key:
        return "a retry is already on its way; its outcome is being read back"
    if case.track == Track.FRAUD:
        return "fraud or dispute risk: this case is never retried automatically or by hand"
    if not engine._may_retry_same_card(case):
        return (
            f"{case.get_track_display()}: the same card will not be retried; "
            "wait for the customer to update their payment method"
        )
    brand, fingerprint, pm_id = engine._card_for(case)
    verdict = budgets.budget_check(
        store_id=case.store_id,
        brand=brand,
        fingerprint=fingerprint,
        payment_method_id=pm_id,
        customer_id=case.customer_id,
        at=at,
        since_card_change=case.card_changed_at,
        stripe_next_attempt=case.invoice.next_payment_attempt if case.invoice_id else None,
    )
    return "" if verdict.allowed else verdict.reason


def case_retry_now(
    *, case: RecoveryCase, actor: str, at: dt.datetime, gateway=None
) -> ActionResult:
    """One retry now, by a person, within the network budgets. Never inside a transaction:
    the engine records the attempt, calls the gateway and records the outcome."""
    case = (
        RecoveryCase.objects.select_related(
            "store", "customer", "customer__default_payment_method", "invoice"
        )
        .filter(pk=case.pk)
        .first()
    )
    refusal = case_retry_refusal(case=case, at=at)
    if refusal:
        case_event_record(
            case=case,
            kind="retry_refused",
            at=at,
            actor=actor,
            message=f"Retry now refused: {refusal}",
        )
        return ActionResult(False, f"Not retried: {refusal}.")
    attempt = engine.case_retry(
        case,
        now=at,
        gateway=gateway or gateway_for(case.store),
        source=PaymentAttempt.Source.AGENT,
        actor=actor,
        reason=f"retry now, asked for by {actor}",
    )
    if attempt is None:
        return ActionResult(False, "Not retried: another retry of this case is on its way.")
    attempt.refresh_from_db()
    if attempt.outcome == PaymentAttempt.Outcome.SUCCEEDED:
        return ActionResult(True, "The retry succeeded: the case is recovered.")
    if attempt.outcome == PaymentAttempt.Outcome.UNKNOWN:
        return ActionResult(
            False, "The payment provider did not answer; Recoup reads the outcome back shortly."
        )
    if attempt.outcome == PaymentAttempt.Outcome.NOT_SENT:
        return ActionResult(False, "The retry was not sent; see the timeline for why.")
    code = attempt.decline_code or attempt.failure_code or "no code"
    return ActionResult(False, f"The retry was declined ({code}).")


NOTE_MAX = 500


@transaction.atomic
def case_note_add(*, case: RecoveryCase, actor: str, body: str, at: dt.datetime) -> None:
    """A person's note on the case timeline (append-only, like every event); the support
    queue counts it as the item's first response (events.CaseNoted)."""
    body = (body or "").strip()
    if not body:
        raise ApplicationError("Write something in the note first.")
    if len(body) > NOTE_MAX:
        raise ApplicationError("Keep a note under 500 characters; add a second one if needed.")
    case_event_record(case=case, kind="note", at=at, actor=actor, message=body)
    ports.publish(events.CaseNoted(case=case, at=at))


@transaction.atomic
def case_dunning_pause(*, case: RecoveryCase, actor: str, at: dt.datetime, why: str = "") -> bool:
    """Stop automated retries and messages for this case. False if already paused."""
    case = _locked(case)
    _require_open(case)
    if case.dunning_paused:
        return False
    case.dunning_paused = True
    RecoveryCase.objects.filter(pk=case.pk).update(dunning_paused=True)
    engine.case_plan(case, now=at, record=False)
    case_event_record(
        case=case,
        kind="dunning_paused",
        at=at,
        actor=actor,
        message=f"Automated retries and messages paused by {actor}" + (f": {why}" if why else ""),
    )
    return True


@transaction.atomic
def case_dunning_resume(*, case: RecoveryCase, actor: str, at: dt.datetime, why: str = "") -> bool:
    """Let the engine retry and message again. False if it was not paused."""
    case = _locked(case)
    _require_open(case)
    if case.track == Track.FRAUD:
        raise ApplicationError(
            "Fraud and dispute cases are never dunned: retrying a payment the customer "
            "disputes invites a chargeback."
        )
    if not case.dunning_paused:
        return False
    case.dunning_paused = False
    RecoveryCase.objects.filter(pk=case.pk).update(dunning_paused=False)
    engine.case_plan(case, now=at)
    case_event_record(
        case=case,
        kind="dunning_resumed",
        at=at,
        actor=actor,
        message=f"Automated retries and messages resumed by {actor}" + (f": {why}" if why else ""),
    )
    return True


@transaction.atomic
def case_window_extend(
    *, case: RecoveryCase, actor: str, at: dt.datetime, days: int, why: str = ""
) -> dt.datetime:
    """Give the case more time before it is closed as lost. Returns the new window end."""
    case = _locked(case)
    _require_open(case)
    if not 1 <= days <= MAX_EXTEND_DAYS:
        raise ApplicationError(f"Extend by 1 to {MAX_EXTEND_DAYS} days.")
    new_end = max(case.window_end, at) + dt.timedelta(days=days)
    if new_end - case.window_start > dt.timedelta(days=MAX_WINDOW_DAYS):
        raise ApplicationError(
            f"A recovery window can run at most {MAX_WINDOW_DAYS} days from the failure; "
            f"this one would end {new_end:%b %-d}."
        )
    old_end = case.window_end
    case.window_end = new_end
    RecoveryCase.objects.filter(pk=case.pk).update(window_end=new_end)
    engine.case_plan(case, now=at, record=False)
    case_event_record(
        case=case,
        kind="window_extended",
        at=at,
        actor=actor,
        message=f"Window extended by {days} days by {actor}: ends {new_end:%Y-%m-%d %H:%M} UTC"
        + (f" ({why})" if why else ""),
        data={"from": old_end.isoformat(), "to": new_end.isoformat()},
    )
    return new_end


def case_cancel(*, case: RecoveryCase, actor: str, at: dt.datetime, why: str) -> bool:
    """Stop recovering this payment (e.g. the merchant forgave it). Nothing more is sent."""
    _require_open(case)
    why = (why or "").strip() or "no reason given"
    return recovery_case_close(
        case=case,
        status=RecoveryCase.Status.CANCELLED,
        reason=f"cancelled by {actor}: {why}",
        at=at,
        actor=actor,
    )


def case_mark_paid_outside(
    *, case: RecoveryCase, actor: str, at: dt.datetime, note: str = ""
) -> bool:
    """The customer paid another way (bank transfer, cash). For a Stripe invoice, Stripe is
    told first (`paid_out_of_band`) so that it stops retrying too; then the case closes as
    recovered outside Stripe."""
    case = RecoveryCase.objects.select_related("store", "invoice").get(pk=case.pk)
    _require_open(case)
    if case.invoice_id and case.store.gateway == Store.Gateway.STRIPE:
        _stripe_invoice_paid_out_of_band(case)  # network: outside any transaction
    with transaction.atomic():
        closed = recovery_case_close(
            case=case,
            status=RecoveryCase.Status.RECOVERED,
            reason=f"marked paid outside Stripe by {actor}" + (f": {note}" if note else ""),
            at=at,
            via=RecoveryCase.RecoveredVia.OUTSIDE,
            amount=case.amount,
            actor=actor,
        )
        if closed and case.invoice_id:
            invoice_mark(invoice=case.invoice, status="paid", at=at, amount_paid=case.amount)
    return closed


def _stripe_invoice_paid_out_of_band(case: RecoveryCase) -> None:
    import stripe

    from .gateways.stripe import stripe_client

    try:
        stripe_client(case.store).v1.invoices.pay(
            case.invoice.stripe_id,
            {"paid_out_of_band": True},
            {"idempotency_key": f"recoup-case-{case.pk}-paid-out-of-band"},
        )
    except stripe.StripeError as exc:
        message = getattr(exc, "user_message", None) or str(exc)
        raise ApplicationError(
            f"Stripe refused to mark invoice {case.invoice.stripe_id} paid: {message}"
        ) from exc


# ------------------------------------------------------------------ the pay page


def customer_new_card_retry(*, customer, at: dt.datetime, gateway, message: str) -> None:
    """The customer saved a new default card on the pay page: every open case of theirs
    (fraud aside) is planned again, and those whose retry that makes due now, within the
    network budgets, are retried at once on it. A card out of budget waits for its
    planned time."""
    engine.customer_card_changed(customer=customer, at=at, source="customer", message=message)
    cases = (
        open_cases_for_customer(customer=customer)
        .exclude(track=Track.FRAUD)
        .select_related("store", "invoice", "customer", "customer__default_payment_method")
        .order_by("window_end")
    )
    for case in cases:
        acting = max(at, timezone.now())
        if case.retry_at is not None and case.retry_at <= acting and not case.inflight_key:
            engine.case_retry(
                case,
                now=acting,
                gateway=gateway,
                actor="customer",
                reason="the customer added a new card on the pay page",
            )


@transaction.atomic
def case_paid_on_session(
    *, case: RecoveryCase, at: dt.datetime, amount: int, charge_id: str
) -> None:
    """The customer confirmed the payment on the pay page: record it and close the case."""
    case = (
        RecoveryCase.objects.select_for_update(of=("self",))
        .select_related("invoice", "customer", "store")
        .get(pk=case.pk)
    )
    if not case.is_open:
        return
    payment_attempt_record(
        store=case.store,
        case=case,
        customer=case.customer,
        source=PaymentAttempt.Source.CUSTOMER,
        outcome=PaymentAttempt.Outcome.SUCCEEDED,
        amount=amount,
        currency=case.currency,
        at=at,
        decline=DeclineInfo(charge_id=charge_id, payment_intent_id=case.payment_intent_id),
        invoice_stripe_id=case.invoice.stripe_id if case.invoice_id else "",
        reason="the customer confirmed the payment on the pay page",
    )
    if case.invoice_id:
        invoice_mark(invoice=case.invoice, status="paid", at=at, amount_paid=amount)
    recovery_case_close(
        case=case,
        status=RecoveryCase.Status.RECOVERED,
        reason="the customer confirmed the payment on the pay page",
        at=at,
        via=RecoveryCase.RecoveredVia.CUSTOMER,
        amount=amount,
        actor="customer",
    )
