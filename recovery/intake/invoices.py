"""Invoice events: a renewal failed, needs action, was paid, voided or written off."""

from __future__ import annotations

from django.utils import timezone

from stores.models import Store
from subscriptions import services as subs
from subscriptions.models import Customer, Invoice, Subscription

from .. import engine, lookups, ports
from ..domain import events
from ..models import PaymentAttempt, RecoveryCase, StripeEvent
from ..services import (
    payment_attempt_record,
    recovered_via_for_success,
    recovery_case_close,
    recovery_case_open,
)
from ..stripe_payloads import (
    DeclineInfo,
    decline_from_invoice,
    invoice_payment_intent_ids,
    minor,
    ref,
)
from .processing import _at, _customer, handles


def _invoice_records(
    event: StripeEvent, data: dict
) -> tuple[Customer | None, Subscription | None, Invoice | None]:
    customer = _customer(
        event,
        data.get("customer"),
        {
            "email": data.get("customer_email"),
            "name": data.get("customer_name"),
            "phone": data.get("customer_phone"),
        },
    )
    if customer is None:
        return None, None, None
    subscription = subs.subscription_ref(
        store=event.store, customer=customer, invoice=data, at=_at(event)
    )
    invoice = subs.invoice_upsert(
        store=event.store, customer=customer, subscription=subscription, data=data, at=_at(event)
    )
    return customer, subscription, invoice


def _invoice_failure(event: StripeEvent, data: dict, *, outcome: str) -> str:
    customer, subscription, invoice = _invoice_records(event, data)
    if invoice is None:
        return "ignored: invoice has no customer"
    decline = decline_from_invoice(data)
    if outcome == PaymentAttempt.Outcome.REQUIRES_ACTION and not decline.has_code:
        decline.decline_code = "authentication_required"
    at = _at(event)
    if invoice.status in (Invoice.Status.PAID, Invoice.Status.VOID):
        payment_attempt_record(
            store=event.store,
            case=getattr(invoice, "case", None),
            customer=customer,
            source=PaymentAttempt.Source.STRIPE_AUTO,
            outcome=outcome,
            amount=minor(data.get("amount_due")),
            currency=invoice.currency,
            at=at,
            decline=decline,
            invoice_stripe_id=invoice.stripe_id,
            invoice_attempt_number=minor(data.get("attempt_count")) or None,
            stripe_event_id=event.pk,
            reason="reported after the invoice was settled",
        )
        return f"recorded: invoice already {invoice.status}"
    ahead = None
    if outcome == PaymentAttempt.Outcome.FAILED and not decline.has_code:
        # A read made ahead of this event (while it waited to be processed) says why: the
        # case opens classified by it, with its attempt, in one step.
        ahead = lookups.decline_read_ahead_take(
            store_id=event.store_id,
            invoice_stripe_id=invoice.stripe_id,
            read_since=event.received_at,
        )
        if ahead is not None:
            decline = ahead[1].decline
    case, changed = recovery_case_open(
        store=event.store,
        customer=customer,
        amount=minor(data.get("amount_remaining", data.get("amount_due"))) or invoice.amount_due,
        currency=invoice.currency,
        decline=decline,
        at=at,
        invoice=invoice,
        subscription=subscription,
        order=ports.renewal_order(event.store, subscription, data),
        payment_intent_ids=invoice_payment_intent_ids(data)
        or (ahead[1].payment_intent_ids if ahead else []),
        decline_awaited_until=lookups.decline_lookup_deadline(now=timezone.now()),
        replan_unchanged=False,
        plan=False,  # once its attempt is counted, below
    )
    attempt, created = payment_attempt_record(
        store=event.store,
        case=case,
        customer=customer,
        source=PaymentAttempt.Source.STRIPE_AUTO,
        outcome=outcome,
        amount=minor(data.get("amount_due")),
        currency=invoice.currency,
        at=at,
        decline=decline,
        invoice_stripe_id=invoice.stripe_id,
        invoice_attempt_number=minor(data.get("attempt_count")) or None,
        stripe_event_id=event.pk,
    )
    engine.case_attempt_seen(case=case, attempt=attempt, created=created, at=at, replan=changed)
    if ahead is not None and case.is_open:
        lookups.decline_read_ahead_taken(
            lookup=ahead[0], read=ahead[1], case=case, now=timezone.now()
        )
    elif case.is_open and not decline.has_code and (created or case.decline_awaited_until):
        # The event does not say why (no current-API webhook does): read it back from
        # Stripe once this transaction has committed.
        # (A read made ahead of this event and still in the air is answered to the case.)
        lookups.decline_lookup_request(case=case, now=timezone.now(), read_since=event.received_at)
    if subscription is not None:
        subs.subscription_mark_past_due(subscription=subscription, at=at)
    # The renewal order waits for the money: pause its shipment, hold its stock.
    ports.publish(events.PaymentFailed(case=case, at=at))
    return "processed"


@handles("invoice.payment_failed")
def _invoice_payment_failed(event: StripeEvent, data: dict) -> str:
    return _invoice_failure(event, data, outcome=PaymentAttempt.Outcome.FAILED)


@handles("invoice.payment_action_required")
def _invoice_action_required(event: StripeEvent, data: dict) -> str:
    return _invoice_failure(event, data, outcome=PaymentAttempt.Outcome.REQUIRES_ACTION)


@handles("invoice.paid", "invoice.payment_succeeded")
def _invoice_paid(event: StripeEvent, data: dict) -> str:
    customer, subscription, invoice = _invoice_records(event, data)
    if invoice is None:
        return "ignored: invoice has no customer"
    at = _at(event)
    subs.invoice_mark(
        invoice=invoice,
        status=Invoice.Status.PAID,
        at=at,
        amount_paid=minor(data.get("amount_paid")),
    )
    case = RecoveryCase.objects.filter(invoice=invoice).first()
    if case is None:
        return "processed: paid without a failure"
    if case.is_open and case.inflight_key:
        if engine.case_settle_inflight_success(
            case=case, at=at, amount=minor(data.get("amount_paid"))
        ):
            return "processed: our retry in flight succeeded"
        case.refresh_from_db()  # our own answer was recorded first: closed on it as usual
    if case.is_open:
        via = recovered_via_for_success(case=case, at=at)
        if via == RecoveryCase.RecoveredVia.STRIPE_RETRY:
            payment_attempt_record(
                store=event.store,
                case=case,
                customer=customer,
                source=PaymentAttempt.Source.STRIPE_AUTO,
                outcome=PaymentAttempt.Outcome.SUCCEEDED,
                amount=minor(data.get("amount_paid")),
                currency=invoice.currency,
                at=at,
                decline=DeclineInfo(
                    payment_intent_id=(invoice_payment_intent_ids(data) or [""])[-1]
                ),
                invoice_stripe_id=invoice.stripe_id,
                stripe_event_id=event.pk,
            )
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.RECOVERED,
            reason=f"invoice {invoice.stripe_id} paid",
            at=at,
            via=via,
            amount=minor(data.get("amount_paid")) or case.amount,
        )
    return "processed"


def _invoice_ended(event: StripeEvent, data: dict, *, status: str, close: str, why: str) -> str:
    """Stripe ended the invoice without a payment: mark it, and close its open case."""
    _, _, invoice = _invoice_records(event, data)
    if invoice is None:
        return "ignored: invoice has no customer"
    subs.invoice_mark(invoice=invoice, status=status, at=_at(event))
    case = RecoveryCase.objects.filter(invoice=invoice).first()
    if case and case.is_open:
        recovery_case_close(case=case, status=close, reason=why, at=_at(event))
    return "processed"


@handles("invoice.voided")
def _invoice_voided(event: StripeEvent, data: dict) -> str:
    return _invoice_ended(
        event,
        data,
        status=Invoice.Status.VOID,
        close=RecoveryCase.Status.CANCELLED,
        why="invoice voided in Stripe",
    )


@handles("invoice.marked_uncollectible")
def _invoice_uncollectible(event: StripeEvent, data: dict) -> str:
    return _invoice_ended(
        event,
        data,
        status=Invoice.Status.UNCOLLECTIBLE,
        close=RecoveryCase.Status.LOST,
        why="invoice marked uncollectible in Stripe",
    )


def _invoice_for_payment_intent(store: Store, data: dict) -> Invoice | None:
    inv = ref(data.get("invoice"))  # older API versions
    qs = Invoice.objects.filter(store=store)
    if inv:
        found = qs.filter(stripe_id=inv).first()
        if found:
            return found
    pi_id = str(data.get("id") or "")
    return qs.filter(payment_intent_id=pi_id).first() if pi_id else None


def _is_invoice_payment(data: dict) -> bool:
    description = str(data.get("description") or "")
    return bool(ref(data.get("invoice"))) or description.startswith(
        ("Subscription creation", "Subscription update", "Subscription cycle")
    )
