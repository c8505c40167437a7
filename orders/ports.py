"""The orders app's side of recovery's ports (`recovery.ports`), plugged in at app start.

Every handler here runs in the publisher's transaction, so stock changes with the case:
rows are locked case, then order, then SKUs by pk, then holds (see `orders.services`).
"""

from __future__ import annotations

from recovery import ports
from recovery.domain import events
from stores.models import Store

from .models import Order
from .services import (
    inventory_holds_expire,
    inventory_holds_release_for_case,
    order_payment_failed,
    order_payment_lost,
    order_payment_succeeded,
    order_shipment_pause,
)


def _payment_failed(event: events.PaymentFailed) -> None:
    case = event.case
    if case.order_id:
        order = event.order or Order.objects.get(pk=case.order_id)
        order_payment_failed(order=order, case=case, at=event.at)


def _access_restricted(event: events.AccessRestricted) -> None:
    if event.case.order_id:
        order_shipment_pause(order=event.case.order, at=event.at)


def _case_recovered(event: events.CaseRecovered) -> None:
    if event.case.order_id:
        order_payment_succeeded(order=event.case.order, at=event.at)


def _case_lost(event: events.CaseLost) -> None:
    if event.case.order_id:
        order_payment_lost(order=event.case.order, at=event.at)


def _case_cancelled(event: events.CaseCancelled) -> None:
    # Cancelled by an operator: the stock goes back at once; the order is theirs to decide.
    if event.case.order_id:
        inventory_holds_release_for_case(case=event.case, at=event.at)


def _order_paid(event: events.OrderPaid) -> None:
    order_payment_succeeded(order=event.order, at=event.at)


def _metadata(data: dict) -> dict:
    metadata = data.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def renewal_order(store: Store, subscription, data: dict) -> Order | None:
    """The order a failed invoice pays for: named in the invoice's metadata, or the
    subscription's renewal order still waiting for its payment."""
    ref = str(_metadata(data).get("order_id") or "")
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


def payment_order(store: Store, data: dict) -> Order | None:
    """The order a PaymentIntent (or its Charge) pays for: by the PaymentIntent's id, else
    by the order number in its metadata (which then learns the PaymentIntent's id)."""
    pi_id = str(data.get("id") or "")
    order = (
        Order.objects.filter(store=store, stripe_payment_intent_id=pi_id).first() if pi_id else None
    )
    order_ref = str(_metadata(data).get("order_id") or "")
    if order is None and order_ref:
        order = Order.objects.filter(store=store, number=order_ref).first()
        if order and not order.stripe_payment_intent_id:
            order.stripe_payment_intent_id = pi_id
            order.save(update_fields=["stripe_payment_intent_id", "updated_at"])
    return order


def connect() -> None:
    ports.subscribe(events.PaymentFailed, _payment_failed)
    ports.subscribe(events.AccessRestricted, _access_restricted)
    ports.subscribe(events.CaseRecovered, _case_recovered)
    ports.subscribe(events.CaseLost, _case_lost)
    ports.subscribe(events.CaseCancelled, _case_cancelled)
    ports.subscribe(events.OrderPaid, _order_paid)
    ports.renewal_order.plug(renewal_order)
    ports.payment_order.plug(payment_order)
    ports.holds_expire.plug(inventory_holds_expire)
