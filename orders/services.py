from __future__ import annotations

import datetime as dt

from django.db import transaction

from .models import Order


@transaction.atomic
def order_payment_failed(*, order: Order, case, at: dt.datetime) -> None:
    """The order's payment failed: its shipment waits for the money."""
    Order.objects.filter(pk=order.pk).exclude(payment_status=Order.PaymentStatus.PAID).update(
        payment_status=Order.PaymentStatus.FAILED,
        fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT,
        updated_at=at,
    )


@transaction.atomic
def order_payment_succeeded(*, order: Order, at: dt.datetime) -> None:
    Order.objects.filter(pk=order.pk).exclude(status=Order.Status.CANCELLED).update(
        payment_status=Order.PaymentStatus.PAID,
        status=Order.Status.CONFIRMED,
        fulfillment_status=Order.FulfillmentStatus.RELEASED,
        updated_at=at,
    )


@transaction.atomic
def order_payment_lost(*, order: Order, at: dt.datetime) -> None:
    """The window closed unpaid: the order is cancelled."""
    Order.objects.filter(pk=order.pk).exclude(payment_status=Order.PaymentStatus.PAID).update(
        status=Order.Status.CANCELLED,
        fulfillment_status=Order.FulfillmentStatus.CANCELLED,
        updated_at=at,
    )


@transaction.atomic
def order_shipment_pause(*, order: Order, at: dt.datetime) -> None:
    Order.objects.filter(pk=order.pk).exclude(payment_status=Order.PaymentStatus.PAID).update(
        fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT, updated_at=at
    )
