"""Reads of orders and stock. Availability is computed here, from the holds themselves.

Availability of a SKU = on hand − committed − held and not yet expired. An expired hold
stops counting the moment its deadline passes: the scheduler's sweep that marks it
released is housekeeping, never a condition for correctness.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.db import connections
from django.db.models import (
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce

from common.errors import NotFound
from stores.models import Store

from .models import SKU, HoldPolicy, InventoryHold, Order, OrderLine


def hold_policy_for(*, store_id) -> HoldPolicy:
    """The store's hold policy, or the defaults (unsaved) if it never set one."""
    return HoldPolicy.objects.filter(store_id=store_id).first() or HoldPolicy(store_id=store_id)


def hold_policy_for_sku(*, sku_id: int) -> HoldPolicy:
    """The hold policy of the store that sells this SKU (defaults if it never set one)."""
    return HoldPolicy.objects.filter(store__skus=sku_id).first() or HoldPolicy()


def holds_live(*, now: dt.datetime) -> Q:
    """Holds that count against availability at `now`: committed, or held and unexpired."""
    return Q(status=InventoryHold.Status.COMMITTED) | Q(
        status=InventoryHold.Status.HELD, held_until__gt=now
    )


def sku_units_promised(
    *, sku_ids: Iterable[int], now: dt.datetime, exclude_line_id: int | None = None
) -> dict[int, int]:
    """Units committed or held (unexpired) per SKU; `exclude_line_id` leaves one line out."""
    qs = InventoryHold.objects.filter(holds_live(now=now), sku_id__in=list(sku_ids))
    if exclude_line_id is not None:
        qs = qs.exclude(order_line_id=exclude_line_id)
    rows = qs.values("sku_id").annotate(units=Sum("quantity")).order_by()
    return {row["sku_id"]: row["units"] for row in rows}


def sku_available(*, sku: SKU, now: dt.datetime, exclude_line_id: int | None = None) -> int:
    promised = sku_units_promised(sku_ids=[sku.pk], now=now, exclude_line_id=exclude_line_id)
    return max(sku.on_hand - promised.get(sku.pk, 0), 0)


def _line_unserved(*, now: dt.datetime) -> Exists:
    """A line with no live hold or commitment: it wants stock it does not have."""
    return ~Exists(InventoryHold.objects.filter(holds_live(now=now), order_line=OuterRef("pk")))


def _waiting_lines(*, now: dt.datetime) -> QuerySet[OrderLine]:
    """Lines of orders that want their SKU and hold none of it: paid but backordered, or
    still awaiting their payment after their hold was refused or released."""
    return OrderLine.objects.filter(
        _line_unserved(now=now),
        order__fulfillment_status__in=[
            Order.FulfillmentStatus.AWAITING_PAYMENT,
            Order.FulfillmentStatus.BACKORDERED,
        ],
    ).exclude(order__status=Order.Status.CANCELLED)


def sku_orders_waiting(*, sku: SKU, now: dt.datetime, exclude_order_id: int | None = None) -> int:
    qs = _waiting_lines(now=now).filter(sku=sku)
    if exclude_order_id is not None:
        qs = qs.exclude(order_id=exclude_order_id)
    return qs.count()  # one line per SKU and order: lines are orders


@dataclass(frozen=True)
class StockState:
    """What a hold decision for one line needs, read in one statement."""

    store_id: object
    on_hand: int
    promised: int  # committed + unexpired held units of the SKU's other lines
    waiting: int  # other orders waiting for the SKU
    live_hold_id: int | None  # this line's held or committed hold, expired or not

    @property
    def available(self) -> int:
        return max(self.on_hand - self.promised, 0)


def _lines_count(qs: QuerySet[OrderLine]) -> Coalesce:
    """COUNT of lines as a scalar subquery (they share one SKU: group by it)."""
    rows = qs.order_by().values("sku_id").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))


def sku_stock_state_reader(
    *, sku_id: int, line: OrderLine, now: dt.datetime
) -> Callable[[], StockState]:
    """Availability, waiting demand and the line's own live hold, read in one statement.

    The statement is compiled here and run by the returned function: compile it before
    taking the SKU lock, run it after, so the lock is held for the round trip only. Run
    it as a statement of its own after the lock is granted: a subquery inside the
    locking statement would read the snapshot taken before the wait, and miss the holds
    of the transaction that held the lock.
    """
    live = InventoryHold.objects.filter(
        order_line_id=line.pk,
        status__in=[InventoryHold.Status.HELD, InventoryHold.Status.COMMITTED],
    ).values("pk")[:1]
    qs = (
        SKU.objects.filter(pk=sku_id)
        .annotate(
            promised=_units(holds_live(now=now) & ~Q(order_line_id=line.pk)),
            waiting=_lines_count(
                _waiting_lines(now=now)
                .filter(sku_id=OuterRef("pk"))
                .exclude(order_id=line.order_id)
            ),
            live=Subquery(live),
        )
        .values_list("store_id", "on_hand", "promised", "waiting", "live")
    )
    sql, params = qs.query.sql_with_params()

    def read() -> StockState:
        with connections[qs.db].cursor() as cursor:
            cursor.execute(sql, params)
            return StockState(*cursor.fetchone())

    return read


def sku_stock_state(*, sku_id: int, line: OrderLine, now: dt.datetime) -> StockState:
    return sku_stock_state_reader(sku_id=sku_id, line=line, now=now)()


def _units(filter_q: Q) -> Coalesce:
    rows = (
        InventoryHold.objects.filter(filter_q, sku=OuterRef("pk"))
        .order_by()
        .values("sku")
        .annotate(units=Sum("quantity"))
        .values("units")
    )
    return Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))


def inventory_list(*, store: Store, now: dt.datetime, sku: str = "") -> QuerySet[SKU]:
    """Per SKU, in one query: on hand, committed, held for failed payments, available,
    units released early from orders still awaiting payment, orders awaiting payment."""
    awaiting = Q(order_line__order__fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT)
    qs = SKU.objects.filter(store=store)
    if sku:
        qs = qs.filter(sku=sku)
    awaiting_orders = (
        OrderLine.objects.filter(
            sku=OuterRef("pk"), order__fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT
        )
        .order_by()
        .values("sku")
        .annotate(n=Count("order_id", distinct=True))
        .values("n")
    )
    return (
        qs.annotate(
            units_committed=_units(Q(status=InventoryHold.Status.COMMITTED)),
            units_held=_units(Q(status=InventoryHold.Status.HELD, held_until__gt=now)),
            # Early releases that still matter for planning: those customers may yet pay.
            # An expired hold of an order still awaiting payment has been released early
            # already, whether or not the sweep has marked it yet.
            units_released_early=_units(
                awaiting
                & (
                    Q(status=InventoryHold.Status.RELEASED, released_early=True)
                    | Q(status=InventoryHold.Status.HELD, held_until__lte=now)
                )
            ),
            orders_awaiting_payment=Coalesce(
                Subquery(awaiting_orders, output_field=IntegerField()), Value(0)
            ),
        )
        .annotate(units_available=F("on_hand") - F("units_committed") - F("units_held"))
        .order_by("sku")
    )


def order_get(*, store: Store, number: str) -> Order:
    order = Order.objects.filter(store=store, number=number).first()
    if order is None:
        raise NotFound(f"No order #{number} in this store.", code="not_found")
    return order


def order_holds(*, order: Order) -> QuerySet[InventoryHold]:
    """The order's holds, newest first per line: what the case page shows."""
    return (
        InventoryHold.objects.filter(order_line__order=order)
        .select_related("sku", "order_line")
        .order_by("order_line_id", "-created_at", "-id")
    )


def case_order_summary(*, case, now: dt.datetime) -> dict | None:
    """The order behind a case, its lines and the state of their stock, for the case page."""
    if not case.order_id:
        return None
    order = case.order
    lines = list(order.lines.select_related("sku").order_by("id"))
    holds: dict[int, InventoryHold] = {}
    for hold in order_holds(order=order):
        holds.setdefault(hold.order_line_id, hold)  # the newest per line
    out = []
    for line in lines:
        hold = holds.get(line.pk)
        state, early = "not held", False
        if hold is not None:
            state, early = hold.status, hold.released_early
            if hold.status == InventoryHold.Status.HELD and hold.held_until <= now:
                # Run out, not yet swept: released already as far as stock is concerned.
                state = InventoryHold.Status.RELEASED
                early = case.is_open and now < case.window_end
        out.append(
            {
                "sku": line.sku.sku,
                "title": line.sku.title,
                "quantity": line.quantity,
                "unit_amount": line.unit_amount,
                "hold": state,
                "held_until": hold.held_until if state == InventoryHold.Status.HELD else None,
                "reason": hold.reason if hold else "",
                "released_early": early,
            }
        )
    return {
        "number": order.number,
        "status": order.status,
        "payment_status": order.payment_status,
        "fulfillment_status": order.fulfillment_status,
        "lines": out,
    }
