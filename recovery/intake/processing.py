"""Applying one stored event: the handler registry, the row lock, the event's cases
locked first, and the helpers every family of handlers shares."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from subscriptions import services as subs
from subscriptions.models import Customer, Invoice

from .. import event_shapes
from ..models import RecoveryCase, StripeEvent
from ..services import (
    invoice_serialize,
)
from ..stripe_payloads import (
    obj,
    ref,
)
from .inbox import MALFORMED

logger = logging.getLogger(__name__)

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
    # The store in each arm of the OR, so that each is one index's (case_store_intent_idx).
    match = Q(invoice_id__in=invoice_ids) | Q(store=event.store, payment_intent_id__in=intents)
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
