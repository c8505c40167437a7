"""Many orders racing for the last units, on a real PostgreSQL with real threads.

Each thread has its own connection, as each worker process would; all are released at
once by a barrier. The SKU row lock decides who gets the stock: never more than there is.
The webhook only stores an event; intake workers (`stripe_events_work`), many at once,
apply them.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import time_machine
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.utils import timezone

from orders.models import InventoryHold, OrderLine
from orders.services import (
    InsufficientStock,
    LineInput,
    SkuInput,
    inventory_hold_place,
    inventory_holds_expire,
    order_payment_succeeded,
    order_upsert,
    skus_upsert,
)
from recovery.intake import stripe_events_work
from recovery.models import CaseEvent, RecoveryCase, StripeEvent
from tests import stripe_factory as sf
from tests.conftest import WEBHOOK_SECRET, requires_postgres

from .conftest import CUSTOMER, payment_intent

pytestmark = [requires_postgres(), pytest.mark.django_db(transaction=True)]


def all_at_once(count: int, work) -> list:
    """Run work(i) for i in range(count), each in its own thread and connection."""
    barrier = threading.Barrier(count)

    def run(i: int):
        try:
            barrier.wait(timeout=30)
            return work(i)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def live_units(sku) -> int:
    return (
        InventoryHold.objects.filter(sku=sku, status__in=["held", "committed"]).aggregate(
            n=Sum("quantity")
        )["n"]
        or 0
    )


def test_fifty_orders_racing_for_the_last_ten_units_get_ten_holds_and_forty_clear_errors(store):
    (hot,) = skus_upsert(store=store, items=[SkuInput(sku="HOT", on_hand=30, title="Hot item")])
    # Twenty units already sold: ten are left.
    paid, _ = order_upsert(store=store, number="paid", lines=[LineInput(sku="HOT", quantity=20)])

    order_payment_succeeded(order=paid, at=timezone.now())
    assert live_units(hot) == 20
    lines = [
        order_upsert(store=store, number=f"race-{i}", lines=[LineInput(sku="HOT", quantity=1)])[
            0
        ].lines.get()
        for i in range(50)
    ]

    def place(i: int):
        try:
            return inventory_hold_place(
                line=OrderLine.objects.get(pk=lines[i].pk), at=timezone.now()
            )
        except InsufficientStock as exc:
            return exc

    results = all_at_once(50, place)

    holds = [r for r in results if isinstance(r, InventoryHold)]
    errors = [r for r in results if isinstance(r, InsufficientStock)]
    assert len(holds) == 10 and len(errors) == 40
    assert {e.message for e in errors} == {
        "Not enough stock of HOT (Hot item): 1 wanted, 0 available."
    }
    assert InventoryHold.objects.filter(status="held").count() == 10
    assert live_units(hot) == 30 <= hot.on_hand


def test_fifty_failed_payments_delivered_at_once_hold_the_last_ten_units_once_each(store):
    skus_upsert(
        store=store,
        items=[
            SkuInput(sku="A", on_hand=10, low_stock_threshold=0),
            SkuInput(sku="B", on_hand=10, low_stock_threshold=0),
        ],
    )
    orders = []
    for i in range(50):
        # Half list their lines A, B and half B, A: the lock order is the SKU's, not the line's.
        pair = [LineInput("A", 1), LineInput("B", 1)]
        order, _ = order_upsert(
            store=store, number=f"o{i}", lines=pair if i % 2 else pair[::-1], customer=CUSTOMER
        )
        orders.append(order)
    bodies = [
        json.dumps(sf.event("payment_intent.payment_failed", payment_intent(o))) for o in orders
    ]
    headers = [sf.sign(body, WEBHOOK_SECRET) for body in bodies]

    def deliver(i: int) -> int:
        return (
            Client()
            .post(
                store.webhook_path,
                data=bodies[i],
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=headers[i],
            )
            .status_code
        )

    statuses = all_at_once(50, deliver)
    # Fifty intake workers at once, each taking one stored event at a time.
    applied = all_at_once(50, lambda i: stripe_events_work(until_idle=True, limit=1))

    assert statuses == [200] * 50
    assert sum(applied) == 50
    assert RecoveryCase.objects.filter(order__isnull=False).count() == 50
    held = InventoryHold.objects.filter(status="held")
    assert held.filter(sku__sku="A").count() == 10 and held.filter(sku__sku="B").count() == 10
    # Whole orders won: each of the ten holds both of its SKUs.
    assert held.values("order_line__order").distinct().count() == 10
    assert CaseEvent.objects.filter(kind="items_unavailable").count() == 80
    assert CaseEvent.objects.filter(kind="items_held").count() == 20


def test_two_sweepers_release_each_expired_hold_once(store):
    skus_upsert(store=store, items=[SkuInput(sku="S", on_hand=100, low_stock_threshold=0)])
    now = timezone.now()
    for i in range(30):
        order, _ = order_upsert(store=store, number=f"s{i}", lines=[LineInput("S", 1)])
        inventory_hold_place(line=order.lines.get(), at=now)
    later = max(InventoryHold.objects.values_list("held_until", flat=True)) + dt.timedelta(
        minutes=1
    )

    with time_machine.travel(later, tick=False):
        released = all_at_once(2, lambda i: inventory_holds_expire(now=later))

    assert sum(released) == 30
    assert InventoryHold.objects.filter(status="released").count() == 30


def test_payments_and_sweepers_racing_over_lapsed_holds_never_deadlock_or_oversell(store):
    skus_upsert(store=store, items=[SkuInput(sku="C", on_hand=40, low_stock_threshold=50)])
    orders = [
        order_upsert(store=store, number=f"p{i}", lines=[LineInput("C", 2)], customer=CUSTOMER)[0]
        for i in range(20)
    ]
    client = Client()
    for order in orders:
        body = json.dumps(sf.event("payment_intent.payment_failed", payment_intent(order)))
        response = client.post(
            store.webhook_path,
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sf.sign(body, WEBHOOK_SECRET),
        )
        assert response.status_code == 200
    stripe_events_work(until_idle=True)  # the intake worker applies the stored events
    assert InventoryHold.objects.filter(status="held", rule="constrained").count() == 20
    later = max(InventoryHold.objects.values_list("held_until", flat=True)) + dt.timedelta(
        minutes=1
    )

    with time_machine.travel(later, tick=False):
        paid = []
        for order in orders[::2]:
            pi = payment_intent(order)
            pi.update(status="succeeded", amount_received=order.amount, last_payment_error=None)
            paid.append(json.dumps(sf.event("payment_intent.succeeded", pi)))

        def act(i: int):
            if i >= len(paid):
                return inventory_holds_expire(now=later)
            status = (
                Client()
                .post(
                    store.webhook_path,
                    data=paid[i],
                    content_type="application/json",
                    HTTP_STRIPE_SIGNATURE=sf.sign(paid[i], WEBHOOK_SECRET),
                )
                .status_code
            )
            # An intake worker per delivery, racing the sweepers over the same holds.
            stripe_events_work(until_idle=True, limit=1)
            return status

        results = all_at_once(len(paid) + 3, act)
        stripe_events_work(until_idle=True)  # any event its worker missed, still applied
        inventory_holds_expire(now=later)

    assert results[: len(paid)] == [200] * len(paid)
    assert not StripeEvent.objects.exclude(outcome="processed").exists()
    assert not InventoryHold.objects.filter(status="held").exists()
    committed = InventoryHold.objects.filter(status="committed")
    assert committed.count() == 10 and live_units(committed.first().sku) == 20 <= 40
    # Each lapsed hold was released once, by a sweeper or by its own payment getting there
    # first (then nobody needs telling); every unpaid customer is to be told, once.
    assert InventoryHold.objects.filter(status="released").count() == 20
    released = CaseEvent.objects.filter(kind="items_released")
    unpaid = [o.number for o in orders[1::2]]
    assert released.filter(case__order__number__in=unpaid).count() == 10
    assert released.values("case").distinct().count() == released.count() <= 20
