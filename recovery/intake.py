"""Stripe intake: verify and store events once, then apply them to our records.

Storing is one INSERT guarded by a unique constraint, so the webhook answers at once;
intake workers (`stripe_events_work`, a django-q2 schedule) claim stored events from the
table and apply them. An authentic event whose fields are not what Stripe sends is kept,
marked failed with the reason, and writes nothing (`recovery.event_shapes`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import stripe
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, F, Q, When
from django.utils import timezone

from common.bodies import BodyRejected, json_loads_bounded
from common.bulk import binding_cursor
from common.errors import ApplicationError
from messaging.services import consent_sms_from_stripe
from orders.models import Order
from stores.models import Store
from subscriptions import services as subs
from subscriptions.models import Customer, Invoice, Subscription

from . import engine, event_shapes, lookups
from .models import PaymentAttempt, RecoveryCase, StripeEvent, Track
from .services import (
    invoice_serialize,
    open_cases_for_customer,
    payment_attempt_record,
    recovered_via_for_success,
    recovery_case_close,
    recovery_case_open,
)
from .stripe_payloads import (
    DeclineInfo,
    decline_from_charge,
    decline_from_invoice,
    decline_from_payment_intent,
    invoice_payment_intent_ids,
    minor,
    obj,
    ref,
    ts,
)

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # Stripe events are well under this
MALFORMED = "malformed: "  # the error of an event not shaped as Stripe sends it


class WebhookRejected(ApplicationError):
    """A delivery we refuse: the message is the one-line reason sent back."""


def stripe_event_verify(*, store: Store, body: bytes, signature: str) -> dict:
    """Check the Stripe-Signature header against the store's secret; return the event."""
    if not store.stripe_webhook_secret:
        raise WebhookRejected(
            "This store has no webhook signing secret configured.", code="no_secret"
        )
    if not signature:
        raise WebhookRejected("Missing Stripe-Signature header.", code="no_signature")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("Body is not UTF-8 JSON.", code="bad_body") from exc
    try:
        stripe.WebhookSignature.verify_header(
            text,
            signature,
            store.stripe_webhook_secret,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE,
        )
    except stripe.SignatureVerificationError as exc:
        reason = str(exc.user_message or exc).split("\n")[0]
        raise WebhookRejected(
            f"Signature verification failed: {reason}", code="bad_signature"
        ) from exc
    except (TypeError, ValueError) as exc:
        # A header the SDK cannot even compare (`v1=ü`: compare_digest takes ASCII only).
        raise WebhookRejected(
            "Signature verification failed: malformed Stripe-Signature header.",
            code="bad_signature",
        ) from exc
    try:
        event = json_loads_bounded(text, max_bytes=MAX_BODY)
    except BodyRejected as exc:
        raise WebhookRejected(str(exc), code="bad_body") from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookRejected("Body is not a Stripe event (needs id and type).", code="bad_body")
    if event_shapes.stripe_id(event["id"]) or event_shapes.text(100)(event["type"]):
        raise WebhookRejected(
            "Body is not a Stripe event (id must be a Stripe id, type a string).", code="bad_body"
        )
    if not isinstance(event.get("data"), dict) or not isinstance(event["data"].get("object"), dict):
        raise WebhookRejected("Event has no data.object.", code="bad_body")
    return event


def stripe_event_store(
    *, store: Store, event: dict, body: str | None = None
) -> tuple[StripeEvent | None, bool]:
    """Store an event exactly once. Returns (event, created); (None, False) for a duplicate.

    The unique constraint on (store, event_id) decides under concurrency: of fifty
    simultaneous deliveries exactly one INSERT succeeds.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return None, _event_insert(store=store, event=event, body=body)
    # Outside a transaction (the webhook view) the INSERT is its own statement: no
    # BEGIN/COMMIT round trips. Inside one, a savepoint keeps a duplicate harmless.
    guard = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with guard:
            row = StripeEvent.objects.create(
                store=store,
                event_id=str(event["id"])[:255],
                type=str(event["type"])[:100],
                payload=event,
                stripe_created=ts(event.get("created")),
                received_at=timezone.now(),
            )
    except IntegrityError:
        return None, False
    return row, True


_INSERT = (
    "INSERT INTO recovery_stripeevent (store_id, event_id, type, payload, stripe_created,"
    " received_at, outcome, error, attempts) VALUES (%s, %s, %s, %s::jsonb, %s, %s,"
    " 'pending', '', 0) ON CONFLICT (store_id, event_id) DO NOTHING RETURNING id"
)


def _event_insert(*, store: Store, event: dict, body: str | None) -> bool:
    """The webhook's one statement on PostgreSQL: the verified body itself as the JSONB
    payload (not the parsed event serialised again), a duplicate answered by the
    unique index without an error. True when the row is new.

    One round trip per event. Django's connection health check (CONN_HEALTH_CHECKS)
    would add a `SELECT 1` before it on every request; here the INSERT is the check:
    on a connection that turns out dead it is sent once more on a new one. That is
    safe because the statement is idempotent (a row stored before the connection died
    is found by the unique index, and the second answer says duplicate).
    """
    params = [
        store.pk,
        event["id"],
        event["type"],
        body if body is not None else json.dumps(event),
        ts(event.get("created")),
        timezone.now(),
    ]
    try:
        return _insert_once(params)
    except (OperationalError, InterfaceError):
        raw = connection.connection
        if raw is not None and not raw.closed and not raw.broken:
            raise  # the database answered (a timeout, a lock): not a dropped connection
        connection.close()
        return _insert_once(params)


def _insert_once(params: list) -> bool:
    # Parameters bound by the server, not spliced into the SQL: PostgreSQL does not parse
    # the body twice (once as a quoted literal, once as JSON).
    with binding_cursor(check_health=False) as cursor:
        cursor.execute(_INSERT, params)
        return cursor.fetchone() is not None


# ---------------------------------------------------------------- processing

Handler = Callable[[StripeEvent, dict], str]
HANDLERS: dict[str, Handler] = {}


def handles(*types: str):
    def register(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[t] = fn
        return fn

    return register


def stripe_event_process(*, event_pk: int) -> str:
    """Apply one stored event. Safe to run twice or concurrently: the row lock decides.

    An error rolls back everything the handler did and leaves the event FAILED with its
    error, for the scheduler's sweep to try again. An event not shaped as Stripe sends
    it is FAILED as malformed, and not tried again: it would fail the same way.
    """
    try:
        with transaction.atomic():
            event = (
                StripeEvent.objects.select_for_update(of=("self",))
                .select_related("store")
                .get(pk=event_pk)
            )
            if event.outcome in (StripeEvent.Outcome.PROCESSED, StripeEvent.Outcome.IGNORED):
                return event.outcome
            handler = HANDLERS.get(event.type)
            problem = event_shapes.event_problem(event.payload) if handler else ""
            if handler is None:
                outcome, note = StripeEvent.Outcome.IGNORED, f"no handler for {event.type}"
            elif problem:
                # Authentic but not what Stripe sends: kept, with the reason, writing nothing.
                outcome, note = StripeEvent.Outcome.FAILED, f"{MALFORMED}{problem}"[:2000]
            else:
                data = obj(obj(event.payload.get("data")).get("object"))
                if event.type.startswith("invoice."):
                    invoice_serialize(store_id=event.store_id, invoice_id=ref(data.get("id")))
                _cases_lock(event, data)
                note = handler(event, data)
                outcome = (
                    StripeEvent.Outcome.IGNORED
                    if note.startswith("ignored")
                    else StripeEvent.Outcome.PROCESSED
                )
            event.outcome = outcome
            event.processed_at = timezone.now()
            event.error = "" if outcome == StripeEvent.Outcome.PROCESSED else note
            event.attempts += 1
            event.save(update_fields=["outcome", "processed_at", "error", "attempts"])
            return outcome
    except StripeEvent.DoesNotExist:
        return "missing"
    except Exception as exc:  # kept with the event for a later retry, never lost
        logger.exception("Stripe event %s failed", event_pk)
        StripeEvent.objects.filter(pk=event_pk).exclude(
            outcome__in=[StripeEvent.Outcome.PROCESSED, StripeEvent.Outcome.IGNORED]
        ).update(
            outcome=StripeEvent.Outcome.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            attempts=F("attempts") + 1,
        )
        return StripeEvent.Outcome.FAILED


# Events that may re-plan every open case of a customer (zone, card).
CUSTOMER_EVENTS = frozenset(
    {
        "customer.created",
        "customer.updated",
        "payment_method.automatically_updated",
        "payment_method.attached",
        "payment_method.updated",
        "customer.source.updated",
        "setup_intent.succeeded",
    }
)


def _cases_lock(event: StripeEvent, data: dict) -> None:
    """Lock the rows of the cases the event is about (by its invoice or PaymentIntent)
    before the handler writes anything: the scheduler records a batch's answers holding
    its cases' rows (locked in id order) and then writes their invoices and
    subscriptions, so a handler that wrote an invoice before locking its case could
    deadlock with it."""
    kind = event.type.split(".", 1)[0]
    invoices = {ref(data.get("id")) if kind == "invoice" else ref(data.get("invoice"))}
    intents = {ref(data.get("id")) if kind == "payment_intent" else ref(data.get("payment_intent"))}
    invoices.discard("")
    intents.discard("")
    # Each condition on the case's own columns, with the ids looked up first: an OR
    # across a join would read every case of the store, for every event.
    invoice_ids = (
        list(
            Invoice.objects.filter(store=event.store)
            .filter(Q(stripe_id__in=invoices) | Q(payment_intent_id__in=intents))
            .values_list("pk", flat=True)
        )
        if invoices or intents
        else []
    )
    match = Q(invoice_id__in=invoice_ids) | Q(payment_intent_id__in=intents)
    if event.type in CUSTOMER_EVENTS:
        # A customer's facts and cards re-plan all their open cases after writing the
        # customer's row; an invoice event locks its case and then writes that row. The
        # cases come first here too, so the two wait for each other instead of deadlocking.
        is_customer = event.type in ("customer.created", "customer.updated")
        stripe_id = ref(data.get("id") if is_customer else data.get("customer"))
        customer_pk = (
            Customer.objects.filter(store=event.store, stripe_id=stripe_id)
            .values_list("pk", flat=True)
            .first()
            if stripe_id
            else None
        )
        if customer_pk is not None:
            match |= Q(customer_id=customer_pk, status=RecoveryCase.Status.OPEN)
    elif not invoice_ids and not intents:
        return
    cases = RecoveryCase.objects.filter(store=event.store).filter(match)
    list(cases.select_for_update(of=("self",)).order_by("pk").values_list("pk", flat=True))


def _at(event: StripeEvent) -> dt.datetime:
    return event.stripe_created or event.received_at


def _customer(event: StripeEvent, customer_ref, fallback: dict | None = None) -> Customer | None:
    cid = ref(customer_ref)
    if not cid:
        return None
    details = obj(customer_ref) or {}
    fallback = fallback or {}
    return subs.customer_upsert(
        store=event.store,
        stripe_id=cid,
        email=details.get("email") or fallback.get("email") or "",
        name=details.get("name") or fallback.get("name") or "",
        phone=details.get("phone") or fallback.get("phone") or "",
        seen_at=_at(event),
    )


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
    case, _ = recovery_case_open(
        store=event.store,
        customer=customer,
        amount=minor(data.get("amount_remaining", data.get("amount_due"))) or invoice.amount_due,
        currency=invoice.currency,
        decline=decline,
        at=at,
        invoice=invoice,
        subscription=subscription,
        order=_renewal_order(event.store, subscription, data),
        payment_intent_ids=invoice_payment_intent_ids(data),
        decline_awaited_until=lookups.decline_lookup_deadline(now=timezone.now()),
        replan_unchanged=False,
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
    engine.case_attempt_seen(case=case, attempt=attempt, created=created, at=at)
    if case.is_open and not decline.has_code and (created or case.decline_awaited_until):
        # The event does not say why (no current-API webhook does): read it back from
        # Stripe once this transaction has committed.
        lookups.decline_lookup_request(case=case, now=timezone.now())
    if subscription is not None:
        subs.subscription_mark_past_due(subscription=subscription, at=at)
    if case.order_id:
        # The renewal order waits for the money: pause its shipment, hold its stock.
        from orders.services import order_payment_failed

        order_payment_failed(order=Order.objects.get(pk=case.order_id), case=case, at=at)
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


@handles("invoice.voided")
def _invoice_voided(event: StripeEvent, data: dict) -> str:
    _, _, invoice = _invoice_records(event, data)
    if invoice is None:
        return "ignored: invoice has no customer"
    subs.invoice_mark(invoice=invoice, status=Invoice.Status.VOID, at=_at(event))
    case = RecoveryCase.objects.filter(invoice=invoice).first()
    if case and case.is_open:
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.CANCELLED,
            reason="invoice voided in Stripe",
            at=_at(event),
        )
    return "processed"


@handles("invoice.marked_uncollectible")
def _invoice_uncollectible(event: StripeEvent, data: dict) -> str:
    _, _, invoice = _invoice_records(event, data)
    if invoice is None:
        return "ignored: invoice has no customer"
    subs.invoice_mark(invoice=invoice, status=Invoice.Status.UNCOLLECTIBLE, at=_at(event))
    case = RecoveryCase.objects.filter(invoice=invoice).first()
    if case and case.is_open:
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.LOST,
            reason="invoice marked uncollectible in Stripe",
            at=_at(event),
        )
    return "processed"


def _renewal_order(store: Store, subscription, data: dict) -> Order | None:
    """The order a failed invoice pays for: named in the invoice's metadata, or the
    subscription's renewal order still waiting for its payment."""
    ref = str(obj(data.get("metadata")).get("order_id") or "")
    if ref:
        order = Order.objects.filter(store=store, number=ref).first()
        if order is not None:
            return order
    if subscription is None:
        return None
    return (
        Order.objects.filter(
            store=store,
            subscription=subscription,
            payment_status__in=(Order.PaymentStatus.PENDING, Order.PaymentStatus.FAILED),
        )
        .exclude(status=Order.Status.CANCELLED)
        .order_by("-created_at", "-pk")
        .first()
    )


def _order_for_payment_intent(store: Store, data: dict) -> Order | None:
    pi_id = str(data.get("id") or "")
    order = (
        Order.objects.filter(store=store, stripe_payment_intent_id=pi_id).first() if pi_id else None
    )
    order_ref = str(obj(data.get("metadata")).get("order_id") or "")
    if order is None and order_ref:
        order = Order.objects.filter(store=store, number=order_ref).first()
        if order and not order.stripe_payment_intent_id:
            order.stripe_payment_intent_id = pi_id
            order.save(update_fields=["stripe_payment_intent_id", "updated_at"])
    return order


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
        order = _order_for_payment_intent(event.store, data)
        if customer is None and order is not None:
            customer = order.customer
        if customer is None:
            payment_attempt_record(
                store=event.store,
                case=None,
                customer=None,
                source=PaymentAttempt.Source.CUSTOMER,
                outcome=PaymentAttempt.Outcome.FAILED,
                amount=minor(data.get("amount")),
                currency=str(data.get("currency") or event.store.currency),
                at=at,
                decline=decline,
                stripe_event_id=event.pk,
            )
            return "ignored: PaymentIntent has no customer to recover from"
        if order is None and _is_invoice_payment(data):
            # The invoice's own failure event will open the case; count the attempt now.
            payment_attempt_record(
                store=event.store,
                case=None,
                customer=customer,
                source=PaymentAttempt.Source.STRIPE_AUTO,
                outcome=PaymentAttempt.Outcome.FAILED,
                amount=minor(data.get("amount")),
                currency=str(data.get("currency") or event.store.currency),
                at=at,
                decline=decline,
                stripe_event_id=event.pk,
            )
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
    if case.order_id:
        # After the attempt is counted: the holds follow the case's final plan.
        from orders.services import order_payment_failed

        order_payment_failed(order=Order.objects.get(pk=case.order_id), case=case, at=at)
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
    order = _order_for_payment_intent(event.store, data)
    if order is not None:
        from orders.services import order_payment_succeeded

        order_payment_succeeded(order=order, at=at)
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


@handles("customer.subscription.updated", "customer.subscription.created")
def _subscription_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: subscription has no customer"
    subs.subscription_upsert(store=event.store, customer=customer, data=data, at=_at(event))
    return "processed"


@handles("customer.subscription.deleted")
def _subscription_deleted(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: subscription has no customer"
    subscription = subs.subscription_upsert(
        store=event.store, customer=customer, data=data, at=_at(event)
    )
    for case in RecoveryCase.objects.filter(
        subscription=subscription, status=RecoveryCase.Status.OPEN
    ):
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.CANCELLED,
            reason="subscription cancelled in Stripe",
            at=_at(event),
        )
    return "processed"


def _card_changed(event: StripeEvent, customer: Customer, *, source: str, message: str) -> None:
    engine.customer_card_changed(customer=customer, at=_at(event), source=source, message=message)


@handles("payment_method.automatically_updated")
def _pm_auto_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: payment method has no customer"
    # The updater refreshes a card in place. A customer with no default on record pays with
    # the refreshed card from now on: our retries use the default.
    pm = subs.payment_method_upsert(
        store=event.store,
        customer=customer,
        data=data,
        make_default=customer.default_payment_method_id is None,
    )
    _card_changed(event, customer, source="card_updater", message=f"Card updater refreshed {pm}")
    return "processed"


@handles("payment_method.attached", "payment_method.updated")
def _pm_attached(event: StripeEvent, data: dict) -> str:
    """A card's details (fingerprint, expiry, country), kept for when it becomes the
    default: a `customer.updated` names the new default by id only. Attaching a card is
    not changing the default, so nothing is retried for it."""
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: payment method has no customer"
    subs.payment_method_upsert(store=event.store, customer=customer, data=data)
    return "processed"


@handles("customer.source.updated")
def _source_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: source has no customer"
    pm = subs.payment_method_upsert(store=event.store, customer=customer, data=data)
    previous = obj(obj(event.payload.get("data")).get("previous_attributes"))
    if previous and not ({"exp_month", "exp_year", "last4", "number"} & set(previous)):
        return "processed: no card detail changed"
    _card_changed(event, customer, source="card_updater", message=f"Card source updated: {pm}")
    return "processed"


@handles("setup_intent.succeeded")
def _setup_intent_succeeded(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: setup intent has no customer"
    pm_ref = data.get("payment_method")
    if isinstance(pm_ref, dict):
        subs.payment_method_upsert(
            store=event.store, customer=customer, data=pm_ref, make_default=True
        )
    elif pm_ref:
        subs.payment_method_upsert(
            store=event.store,
            customer=customer,
            data={"id": pm_ref, "customer": customer.stripe_id},
            make_default=True,
        )
    _card_changed(event, customer, source="customer", message="Customer saved a new payment method")
    return "processed"


def _customer_facts(event: StripeEvent, customer: Customer, data: dict) -> Customer:
    """What a customer snapshot says of the customer (address, zone, locale, phone, SMS
    consent in the metadata); a changed zone re-plans their open cases from now on.
    Returns the customer as updated."""
    at = _at(event)
    previous = obj(event.payload.get("data")).get("previous_attributes")
    if event.type != "customer.updated" or not isinstance(previous, dict):
        previous = None  # everything in the snapshot is news
    facts = subs.customer_update_from_stripe(customer=customer, data=data, at=at, previous=previous)
    if facts.stale:
        return facts.customer
    consent_sms_from_stripe(
        customer=facts.customer,
        opt_in=facts.sms_consent,
        news=facts.sms_consent_news,
        at=at,
        key=event.store.sms_consent_key,
    )
    if facts.zone_changed:
        engine.customer_zone_changed(customer=facts.customer, at=at)
    return facts.customer


@handles("customer.created", "customer.updated")
def _customer_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data)
    if customer is None:
        return "ignored: no customer id"
    customer = _customer_facts(event, customer, data)
    previous = obj(obj(event.payload.get("data")).get("previous_attributes"))
    new_default = ref(obj(data.get("invoice_settings")).get("default_payment_method")) or ref(
        data.get("default_source")
    )
    old_default = (
        ref(obj(previous.get("invoice_settings")).get("default_payment_method"))
        if "invoice_settings" in previous
        else None
    )
    if "default_source" in previous:
        old_default = ref(previous.get("default_source"))
    if new_default and old_default is not None and new_default != old_default:
        subs.payment_method_upsert(
            store=event.store,
            customer=customer,
            data={"id": new_default, "customer": customer.stripe_id},
            make_default=True,
        )
        _card_changed(event, customer, source="customer", message="Default payment method changed")
    return "processed"


EVENT_LEASE = dt.timedelta(minutes=2)


# Events that open or close a case come first when events queue up: each opening one
# starts a decline read, and those reads (paced at the account's rate limit) are what a
# burst waits for. The rest (PaymentIntent, Charge, customer events) follow; their order
# does not change a case's outcome (tests/recovery/test_decline_lookup.py).
FIRST = ("invoice.payment_failed", "invoice.payment_action_required", "invoice.paid")


def stripe_events_claim(*, now: dt.datetime, limit: int = 100) -> list[int]:
    """Claim stored events not processed yet for this worker, those that open or close
    a case first, then oldest first: rows locked and skipped if another worker holds
    them, then leased."""
    with transaction.atomic():
        qs = (
            StripeEvent.objects.filter(outcome=StripeEvent.Outcome.PENDING)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .annotate(later=Case(When(type__in=FIRST, then=0), default=1))
            .order_by("later", "received_at", "pk")
        )
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("pk", flat=True)[:limit])
        if ids:
            StripeEvent.objects.filter(pk__in=ids).update(claimed_until=now + EVENT_LEASE)
    return ids


def stripe_events_work(
    *,
    max_seconds: float | None = None,
    until_idle: bool = False,
    idle_sleep: float = 0.1,
    limit: int = 100,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """The intake worker: process stored events as they arrive, and read back the
    declines they did not carry. Claims straight from the table (the webhook only
    verifies and inserts), so any number of workers on any machines share the work.

    On PostgreSQL the reads run in a thread of their own beside the events (a read waits
    on Stripe, and on the store's rate limit, not on this process), so a backlog of
    events never holds the reads back, nor the reads the events. `until_idle`: one
    thread, returning once nothing is left (tests, the demo). `should_stop`: checked
    between batches. Returns how many events it processed."""
    started, done = time.monotonic(), 0

    def running() -> bool:
        if should_stop is not None and should_stop():
            return False
        return max_seconds is None or time.monotonic() - started < max_seconds

    reader, stopped = None, threading.Event()
    if not until_idle and connection.vendor == "postgresql":
        reader = threading.Thread(
            target=_lookups_loop,
            args=(lambda: not stopped.is_set() and running(), idle_sleep),
            name="recoup-lookups",
            daemon=True,
        )
        reader.start()
    try:
        while running():
            ids = stripe_events_claim(now=timezone.now(), limit=limit)
            for pk in ids:
                stripe_event_process(event_pk=pk)
            done += len(ids)
            read = 0 if reader else lookups.decline_lookups_run(now=timezone.now())
            if not ids and not read:
                if until_idle:
                    break
                time.sleep(idle_sleep)
    finally:
        stopped.set()  # the reader ends with this loop, however it ended
        if reader is not None:
            reader.join()
    return done


def _lookups_loop(running: Callable[[], bool], idle_sleep: float) -> None:
    """The intake worker's read-back thread: small batches (twice the read concurrency),
    so each answer is recorded soon after Stripe gives it."""
    batch = max(2, 2 * int(settings.RECOUP_LOOKUP_CONCURRENCY))
    try:
        while running():
            try:
                read = lookups.decline_lookups_run(now=timezone.now(), limit=batch)
            except Exception:  # kept on the lookups; the next batch goes on
                logger.exception("decline read-backs failed")
                read = 0
            if not read:
                time.sleep(idle_sleep)
    finally:
        connection.close()


def stripe_event_reprocess_pending(
    *, older_than: dt.timedelta = dt.timedelta(minutes=2), limit: int = 500
) -> int:
    """The sweep: events not processed yet (lost task, earlier error) get another go."""
    cutoff = timezone.now() - older_than
    pks = list(
        StripeEvent.objects.filter(
            outcome__in=[StripeEvent.Outcome.PENDING, StripeEvent.Outcome.FAILED],
            received_at__lt=cutoff,
            attempts__lt=10,
        )
        .exclude(error__startswith=MALFORMED)
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in pks:
        stripe_event_process(event_pk=pk)
    return len(pks)
