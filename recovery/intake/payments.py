"""PaymentIntent, Charge and dispute events."""

from __future__ import annotations

from subscriptions import services as subs
from subscriptions.models import Invoice

from .. import engine, ports
from ..domain import events
from ..models import PaymentAttempt, RecoveryCase, StripeEvent, Track
from ..services import (
    open_cases_for_customer,
    payment_attempt_record,
    recovered_via_for_success,
    recovery_case_close,
    recovery_case_open,
)
from ..stripe_payloads import (
    decline_from_charge,
    decline_from_payment_intent,
    minor,
    obj,
    ref,
)
from .invoices import _invoice_for_payment_intent, _is_invoice_payment
from .processing import _at, _customer, handles


@handles("payment_intent.payment_failed")
def _payment_intent_failed(event: StripeEvent, data: dict) -> str:
    at = _at(event)
    decline = decline_from_payment_intent(data)
    customer = _customer(event, data.get("customer"))
    invoice = _invoice_for_payment_intent(event.store, data)
    if invoice is not None and invoice.status in (Invoice.Status.PAID, Invoice.Status.VOID):
        # A failure reported after the invoice was settled (its invoice.paid came first):
        # counted, and it opens nothing.
        payment_attempt_record(
            store=event.store,
            case=getattr(invoice, "case", None),
            customer=invoice.customer,
            source=PaymentAttempt.Source.STRIPE_AUTO,
            outcome=PaymentAttempt.Outcome.FAILED,
            amount=minor(data.get("amount")),
            currency=invoice.currency,
            at=at,
            decline=decline,
            invoice_stripe_id=invoice.stripe_id,
            stripe_event_id=event.pk,
            reason="reported after the invoice was settled",
        )
        return f"recorded: invoice already {invoice.status}"
    if invoice is not None:
        case, _ = recovery_case_open(
            store=event.store,
            customer=invoice.customer,
            amount=invoice.amount_due,
            currency=invoice.currency,
            decline=decline,
            at=at,
            invoice=invoice,
            subscription=invoice.subscription,
            payment_intent_ids=[decline.payment_intent_id],
            replan_unchanged=False,
        )
    else:
        order = ports.payment_order(event.store, data)
        if customer is None and order is not None:
            customer = order.customer

        def attempt_without_case(customer, source: str) -> None:
            payment_attempt_record(
                store=event.store,
                case=None,
                customer=customer,
                source=source,
                outcome=PaymentAttempt.Outcome.FAILED,
                amount=minor(data.get("amount")),
                currency=str(data.get("currency") or event.store.currency),
                at=at,
                decline=decline,
                stripe_event_id=event.pk,
            )

        if customer is None:
            attempt_without_case(None, PaymentAttempt.Source.CUSTOMER)
            return "ignored: PaymentIntent has no customer to recover from"
        if order is None and _is_invoice_payment(data):
            # The invoice's own failure event will open the case; count the attempt now.
            attempt_without_case(customer, PaymentAttempt.Source.STRIPE_AUTO)
            return "processed: invoice payment, waiting for the invoice event"
        case, _ = recovery_case_open(
            store=event.store,
            customer=customer,
            amount=minor(data.get("amount")),
            currency=str(data.get("currency") or event.store.currency).lower(),
            decline=decline,
            at=at,
            order=order,
            payment_intent_ids=[decline.payment_intent_id],
            replan_unchanged=False,
        )
    attempt, created = payment_attempt_record(
        store=event.store,
        case=case,
        customer=case.customer,
        source=PaymentAttempt.Source.STRIPE_AUTO if invoice else PaymentAttempt.Source.CUSTOMER,
        outcome=PaymentAttempt.Outcome.FAILED,
        amount=minor(data.get("amount")),
        currency=case.currency,
        at=at,
        decline=decline,
        invoice_stripe_id=invoice.stripe_id if invoice else "",
        stripe_event_id=event.pk,
    )
    engine.case_attempt_seen(case=case, attempt=attempt, created=created, at=at)
    # After the attempt is counted: the holds follow the case's final plan.
    ports.publish(events.PaymentFailed(case=case, at=at))
    return "processed"


@handles("payment_intent.succeeded")
def _payment_intent_succeeded(event: StripeEvent, data: dict) -> str:
    pi_id = str(data.get("id") or "")
    at = _at(event)
    case = (
        RecoveryCase.objects.filter(
            store=event.store, payment_intent_id=pi_id, kind=RecoveryCase.Kind.PAYMENT
        ).first()
        if pi_id
        else None
    )
    order = ports.payment_order(event.store, data)
    if order is not None:
        ports.publish(events.OrderPaid(order=order, at=at))
    if case is None:
        return "processed: no open case for this payment"
    if case.is_open and case.inflight_key:
        if engine.case_settle_inflight_success(
            case=case, at=at, amount=minor(data.get("amount_received"))
        ):
            return "processed: our retry in flight succeeded"
        case.refresh_from_db()  # our own answer was recorded first: closed on it as usual
    if case.is_open:
        via = recovered_via_for_success(case=case, at=at)
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.RECOVERED,
            reason=f"payment {pi_id} succeeded",
            at=at,
            via=via,
            amount=minor(data.get("amount_received")) or case.amount,
        )
    return "processed"


@handles("charge.failed")
def _charge_failed(event: StripeEvent, data: dict) -> str:
    at = _at(event)
    decline = decline_from_charge(data)
    customer = _customer(event, data.get("customer"), obj(data.get("billing_details")))
    case = None
    invoice = None
    inv_ref = ref(data.get("invoice"))
    if inv_ref:
        invoice = Invoice.objects.filter(store=event.store, stripe_id=inv_ref).first()
    if invoice is None and decline.payment_intent_id:
        invoice = Invoice.objects.filter(
            store=event.store, payment_intent_id=decline.payment_intent_id
        ).first()
    if invoice is not None:
        case = RecoveryCase.objects.filter(invoice=invoice).first()
    elif decline.payment_intent_id:
        case = RecoveryCase.objects.filter(
            store=event.store, payment_intent_id=decline.payment_intent_id
        ).first()
    if case is not None and case.is_open and decline.has_code:
        recovery_case_open(
            store=event.store,
            customer=case.customer,
            amount=case.amount,
            currency=case.currency,
            decline=decline,
            at=at,
            invoice=invoice,
            payment_intent_ids=[decline.payment_intent_id],
            replan_unchanged=False,
        )
    attempt, created = payment_attempt_record(
        store=event.store,
        case=case,
        customer=customer or (case.customer if case else None),
        source=PaymentAttempt.Source.STRIPE_AUTO if invoice else PaymentAttempt.Source.CUSTOMER,
        outcome=PaymentAttempt.Outcome.FAILED,
        amount=minor(data.get("amount")),
        currency=str(data.get("currency") or event.store.currency).lower(),
        at=at,
        decline=decline,
        invoice_stripe_id=invoice.stripe_id if invoice else "",
        stripe_event_id=event.pk,
    )
    if case is not None:
        engine.case_attempt_seen(case=case, attempt=attempt, created=created, at=at)
    return "processed"


@handles("charge.dispute.created")
def _dispute_created(event: StripeEvent, data: dict) -> str:
    at = _at(event)
    charge_id = ref(data.get("charge"))
    pi_id = ref(data.get("payment_intent"))
    attempt = (
        PaymentAttempt.objects.filter(store=event.store, charge_id=charge_id)
        .select_related("customer")
        .first()
        if charge_id
        else None
    )
    customer = attempt.customer if attempt else None
    if customer is None and pi_id:
        case = RecoveryCase.objects.filter(store=event.store, payment_intent_id=pi_id).first()
        customer = case.customer if case else None
    if customer is None:
        return "ignored: dispute on a charge we do not know"
    subs.customer_mark_disputed(customer=customer, at=at)
    for case in open_cases_for_customer(customer=customer).select_for_update():
        engine.case_route_to_person(
            case=case,
            at=at,
            track=Track.FRAUD,
            reason=f"dispute {data.get('id', '')} opened ({data.get('reason') or 'no reason given'}): no retries, no dunning",
        )
    return "processed"
