from __future__ import annotations

import pytest

from orders.models import SKU, InventoryHold, Order
from orders.services import LineInput, SkuInput, order_upsert, skus_upsert
from tests import stripe_factory as sf

CUSTOMER = "cus_shop"


@pytest.fixture
def shelf(store):
    """Put a SKU on the store's shelf: shelf("MUG", on_hand=20, low_stock_threshold=0)."""

    def put(sku: str = "MUG", *, on_hand: int, title: str = "", **fields) -> SKU:
        return skus_upsert(
            store=store,
            items=[SkuInput(sku=sku, on_hand=on_hand, title=title or f"{sku} title", **fields)],
        )[0]

    return put


@pytest.fixture
def order_for(store):
    """An order through the same service the API uses: order_for("1001", MUG=2)."""

    def make(number: str, *, payment_intent: str = "", **quantities: int) -> Order:
        order, _ = order_upsert(
            store=store,
            number=number,
            lines=[LineInput(sku=s, quantity=q, unit_amount=1500) for s, q in quantities.items()],
            customer=CUSTOMER,
            payment_intent=payment_intent,
        )
        return order

    return make


def payment_intent(order: Order, *, decline_code: str = "insufficient_funds", **fields) -> dict:
    """The order's PaymentIntent after a declined charge, linked by metadata.order_id."""
    return sf.stripe_object(
        "payment_intent",
        **{
            "id": f"pi_order_{order.number}",
            "amount": order.amount,
            "currency": "usd",
            "customer": CUSTOMER,
            "status": "requires_payment_method",
            "metadata": {"order_id": order.number},
            "last_payment_error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
            },
            **fields,
        },
    )


@pytest.fixture
def fail_payment(webhooks):
    """Deliver payment_intent.payment_failed for the order through the real intake."""

    def fail(order: Order, **kwargs) -> dict:
        pi = payment_intent(order, **kwargs)
        webhooks.deliver("payment_intent.payment_failed", pi)
        return pi

    return fail


@pytest.fixture
def pay(webhooks):
    """Deliver payment_intent.succeeded for the order through the real intake."""

    def succeed(order: Order) -> None:
        pi = payment_intent(order)
        pi.update(status="succeeded", amount_received=order.amount, last_payment_error=None)
        webhooks.deliver("payment_intent.succeeded", pi)

    return succeed


def hold_of(order: Order) -> InventoryHold:
    return InventoryHold.objects.get(order_line__order=order)
