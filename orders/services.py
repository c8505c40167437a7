"""Writes to orders and their stock: holds for failed payments, commits, releases, the order API.

Locks. Every write that changes what a SKU has promised locks the SKU rows involved
(`select_for_update`, in primary-key order) before it reads availability or touches a
hold, so no availability read under the lock can be overtaken: nothing is oversold.
Rows are always locked in one order: the recovery case, then the order, then SKUs by
pk, then holds. The intake and the engine already hold the case when they call in here
(and a CaseEvent insert needs a share lock on it), so the services below that start on
their own (a payment, a loss, the sweep) lock the case first too; two writers sharing
rows queue in that order and never deadlock. Status changes of a hold are conditional
updates (`status="held"`), so the sweep, a payment and a loss racing for one hold act
on it once.

Time. A hold starts when it is taken (`max(at, now)`): an event processed late must not
produce a hold that is already over.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from common.errors import ApplicationError
from recovery.commands import case_event_record
from recovery.models import RecoveryCase
from stores.models import Store
from subscriptions.models import Subscription
from subscriptions.services import customer_upsert

from .models import SKU, HoldPolicy, InventoryHold, Order, OrderLine
from .selectors import (
    StockState,
    hold_policy_for,
    hold_policy_for_sku,
    sku_available,
    sku_stock_state,
    sku_stock_state_reader,
)

if TYPE_CHECKING:
    from recovery.models import RecoveryCase

logger = logging.getLogger(__name__)

SWEEP_LIMIT = 1000


class Conflict(ApplicationError):
    """The request is valid but clashes with what the order's payment has set in motion."""

    status_code = 409


class InsufficientStock(ApplicationError):
    status_code = 409

    def __init__(self, *, sku: SKU, wanted: int, available: int):
        name = f"{sku.sku} ({sku.title})" if sku.title else sku.sku
        super().__init__(
            f"Not enough stock of {name}: {wanted} wanted, {available} available.",
            code="insufficient_stock",
            extra={"sku": sku.sku, "wanted": wanted, "available": available},
        )
        self.sku, self.wanted, self.available = sku, wanted, available


# ------------------------------------------------------------------ helpers


def _now(at: dt.datetime | None) -> dt.datetime:
    now = timezone.now()
    return max(at, now) if at else now


def _fmt(when: dt.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def _skus_lock(sku_ids: Iterable[int]) -> dict[int, SKU]:
    """Lock SKU rows in primary-key order (the one lock order every stock writer uses)."""
    rows = SKU.objects.select_for_update().filter(pk__in=set(sku_ids)).order_by("pk")
    return {sku.pk: sku for sku in rows}


def _lock_head(*, store_id, case_id: int | None) -> RecoveryCase | None:
    """Take the head of the lock order: the store row (shared), then the case row.
    Returns the case, fresh, or None.

    Every hold and CaseEvent insert takes a KEY SHARE lock on its store row, and the
    Stripe intake holds that row FOR UPDATE while it applies an event. Waiting for it
    here, before any SKU or case lock is held, keeps the intake and these services from
    waiting on each other in a circle.
    """
    if store_id is not None and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT 1 FROM "{Store._meta.db_table}" WHERE "id" = %s FOR KEY SHARE',
                [store_id],
            )
    if case_id is None:
        return None

    return RecoveryCase.objects.select_for_update().filter(pk=case_id).first()


def _record(
    case: RecoveryCase | None, *, kind: str, message: str, at: dt.datetime, data: dict
) -> None:
    if case is None:
        return

    case_event_record(case=case, kind=kind, message=message, at=at, data=data)


def _order_case_lock(order: Order) -> RecoveryCase | None:
    """Lock the case the order's newest payment failure opened (open or just closed)."""

    newest = (
        RecoveryCase.objects.filter(order_id=order.pk)
        .order_by("-opened_at", "-id")
        .values_list("pk", flat=True)
        .first()
    )
    return _lock_head(store_id=order.store_id, case_id=newest)


def _item(line_or_hold: OrderLine | InventoryHold) -> str:
    """'2 × Blue mug (MUG-BLUE)': what a person reads on the case timeline."""
    sku = line_or_hold.sku
    name = f"{sku.title} ({sku.sku})" if sku.title else sku.sku
    return f"{line_or_hold.quantity} × {name}"


def _case_is_open(case: RecoveryCase | None, now: dt.datetime) -> bool:
    return case is not None and case.is_open and now < case.window_end


# ------------------------------------------------------------------ the hold policy


@dataclass(frozen=True)
class HoldPlan:
    rule: str
    held_until: dt.datetime
    reason: str


def hold_plan(
    *,
    sku: SKU,
    quantity: int,
    available: int,
    waiting: int,
    case: RecoveryCase | None,
    policy: HoldPolicy,
    now: dt.datetime,
) -> HoldPlan:
    """Decide how long one line's stock is held. `available` excludes the line itself.

    - preorder: until the recovery window ends;
    - constrained (fewer than the SKU's threshold left after the hold, or other orders
      waiting for it): briefly, then the units go back to availability;
    - ample: through the case's next retry (plus a margin for its outcome to arrive),
      or through the window when no retry is planned.
    Never past the window: a hold does not outlive its case.
    """
    brief = dt.timedelta(hours=policy.brief_hold_hours)
    window_end = case.window_end if case is not None else now + brief
    if sku.preorder:
        return HoldPlan(
            InventoryHold.Rule.PREORDER,
            window_end,
            f"preorder: held until the recovery window ends ({_fmt(window_end)})",
        )
    left = available - quantity
    why = []
    if left < sku.low_stock_threshold:
        why.append(
            f"{left} left after this hold, under the low-stock threshold of {sku.low_stock_threshold}"
        )
    if waiting:
        why.append(f"{waiting} other order{'s' if waiting != 1 else ''} waiting for it")
    if why:
        return HoldPlan(
            InventoryHold.Rule.CONSTRAINED,
            min(now + brief, window_end),
            f"constrained stock ({'; '.join(why)}): held {policy.brief_hold_hours} h, "
            "then released to other customers",
        )
    retry_at = case.retry_at if case is not None else None
    awaited = getattr(case, "decline_awaited_until", None) if case is not None else None
    if retry_at is None and awaited is not None and awaited < window_end:
        # Stripe has not said why it failed yet: held until it is decided, then again.
        until = min(max(awaited, now) + dt.timedelta(hours=policy.retry_margin_hours), window_end)
        return HoldPlan(
            InventoryHold.Rule.AMPLE,
            until,
            f"ample stock ({left} left after this hold): held while the decline is read "
            f"from Stripe (by {_fmt(awaited)})",
        )
    if retry_at is not None and retry_at < window_end:
        until = min(max(retry_at, now) + dt.timedelta(hours=policy.retry_margin_hours), window_end)
        return HoldPlan(
            InventoryHold.Rule.AMPLE,
            until,
            f"ample stock ({left} left after this hold): held through the next retry "
            f"({_fmt(retry_at)})",
        )
    return HoldPlan(
        InventoryHold.Rule.AMPLE,
        window_end,
        f"ample stock ({left} left after this hold): held through the recovery window "
        f"(ends {_fmt(window_end)})",
    )


def _hold_create(
    *,
    line: OrderLine,
    sku: SKU,
    case: RecoveryCase | None,
    policy: HoldPolicy,
    now: dt.datetime,
    state: StockState,
) -> InventoryHold:
    """Caller holds the SKU lock and read `state` under it. Raises InsufficientStock
    before writing anything."""
    if state.available < line.quantity:
        raise InsufficientStock(sku=sku, wanted=line.quantity, available=state.available)
    plan = hold_plan(
        sku=sku,
        quantity=line.quantity,
        available=state.available,
        waiting=state.waiting,
        case=case,
        policy=policy,
        now=now,
    )
    return InventoryHold.objects.create(
        store_id=sku.store_id,
        order_line=line,
        sku=sku,
        case=case,
        quantity=line.quantity,
        status=InventoryHold.Status.HELD,
        rule=plan.rule,
        reason=plan.reason[:300],
        held_until=plan.held_until,
        created_at=now,
    )


def _hold_release(
    hold: InventoryHold, *, now: dt.datetime, case: RecoveryCase | None, why: str
) -> bool:
    """Release a held hold (caller holds its SKU lock). Early while its case is still open:
    then the case records that the customer is to be told. False if already settled."""
    early = _case_is_open(case, now)
    if (
        InventoryHold.objects.filter(pk=hold.pk, status=InventoryHold.Status.HELD).update(
            status=InventoryHold.Status.RELEASED, released_at=now, released_early=early
        )
        != 1
    ):
        return False  # another worker got there first
    hold.status, hold.released_at, hold.released_early = (
        InventoryHold.Status.RELEASED,
        now,
        early,
    )
    if early:
        name = hold.sku.title or hold.sku.sku
        _record(
            case,
            kind="items_released",
            at=now,
            message=(
                f"Released {_item(hold)} to other customers ({why}). The customer should be "
                "told their items are no longer reserved."
            ),
            data={
                "hold": hold.pk,
                "sku": hold.sku.sku,
                "quantity": hold.quantity,
                "rule": hold.rule,
                "notify_customer": True,
                "customer_message": (
                    f"We could no longer keep {hold.quantity} × {name} reserved for you. "
                    "Your items are no longer reserved: complete your payment to order "
                    "them while stock lasts."
                ),
            },
        )
    return True


def _hold_redecide(
    hold: InventoryHold, *, sku: SKU, case: RecoveryCase, policy: HoldPolicy, now: dt.datetime
) -> str:
    """Decide again for a hold through the next retry (caller holds the SKU lock): a new
    failure, or the hold running out while the case goes on. Extends it while stock is
    ample, shortens it when stock became constrained, releases it when the units are gone
    (an expired hold stops counting, so others may have taken them meanwhile).
    Returns "kept", "extended", "shortened" or "released"."""
    state = sku_stock_state(sku_id=sku.pk, line=hold.order_line, now=now)
    if state.available < hold.quantity:
        why = f"only {state.available} left when its hold ran out"
        _hold_release(hold, now=now, case=case, why=why)
        return "released"
    plan = hold_plan(
        sku=sku,
        quantity=hold.quantity,
        available=state.available,
        waiting=state.waiting,
        case=case,
        policy=policy,
        now=now,
    )
    until = plan.held_until
    if hold.held_until > now:  # still live: only ever lengthen ample, only shorten constrained
        if plan.rule == InventoryHold.Rule.CONSTRAINED:
            until = min(until, hold.held_until)
        else:
            until = max(until, hold.held_until)
    if until <= now:
        _hold_release(hold, now=now, case=case, why="the recovery window is over")
        return "released"
    if until == hold.held_until and plan.rule == hold.rule:
        return "kept"
    if (
        InventoryHold.objects.filter(pk=hold.pk, status=InventoryHold.Status.HELD).update(
            held_until=until, rule=plan.rule, reason=plan.reason[:300]
        )
        != 1
    ):
        return "kept"
    what = "extended" if until > hold.held_until else "shortened"
    hold.held_until, hold.rule, hold.reason = until, plan.rule, plan.reason[:300]
    _record(
        case,
        kind=f"hold_{what}",
        at=now,
        message=f"Hold on {_item(hold)} {what} to {_fmt(until)}: {plan.reason}",
        data={"hold": hold.pk, "sku": sku.sku, "held_until": until.isoformat(), "rule": plan.rule},
    )
    return what


# ------------------------------------------------------------------ holds: public services


def inventory_hold_place(
    *,
    line: OrderLine,
    at: dt.datetime,
    case: RecoveryCase | None = None,
    policy: HoldPolicy | None = None,
) -> InventoryHold:
    """Hold stock for one order line by the store's hold policy; returns the hold.

    Takes the line's SKU row lock (a caller holding several SKUs locks them all first,
    in pk order). Raises InsufficientStock, naming the SKU and what is available, and
    writes nothing, when the units are not there. A line already held or committed is
    returned as it is.
    """
    now = _now(at)
    # Everything that does not need the lock happens before it: the policy, compiling the
    # stock read, and refusing when a committed snapshot already shows too little (true
    # at that moment; only a hold about to be written must wait for the lock).
    policy = policy or hold_policy_for_sku(sku_id=line.sku_id)
    read_state = sku_stock_state_reader(sku_id=line.sku_id, line=line, now=now)
    state = read_state()
    if state.live_hold_id is None and state.available < line.quantity:
        sku = SKU.objects.get(pk=line.sku_id)
        raise InsufficientStock(sku=sku, wanted=line.quantity, available=state.available)
    with transaction.atomic():
        _lock_head(store_id=state.store_id, case_id=case.pk if case is not None else None)
        sku = _skus_lock([line.sku_id])[line.sku_id]
        state = read_state()
        if state.live_hold_id is not None:
            live = InventoryHold.objects.select_related("sku").get(pk=state.live_hold_id)
            if live.status == InventoryHold.Status.COMMITTED or live.held_until > now:
                return live
            _hold_release(live, now=now, case=case, why="its hold ran out")
        return _hold_create(line=line, sku=sku, case=case, policy=policy, now=now, state=state)


@transaction.atomic
def inventory_hold_release(*, hold: InventoryHold, at: dt.datetime | None = None, why: str) -> bool:
    """Give a held hold's units back now. False if it was no longer held."""
    now = _now(at)
    case = _lock_head(store_id=hold.store_id, case_id=hold.case_id)
    _skus_lock([hold.sku_id])
    hold = InventoryHold.objects.select_related("sku").get(pk=hold.pk)
    return _hold_release(hold, now=now, case=case, why=why)


def _hold_settle(
    *, pk: int, sku_id: int, case_id, store_id, now: dt.datetime, policies: dict
) -> int:
    """Settle one due hold in its own transaction; returns 1 if it was released."""
    with transaction.atomic():
        case = _lock_head(store_id=store_id, case_id=case_id)
        sku = _skus_lock([sku_id])[sku_id]
        hold = (
            InventoryHold.objects.select_related("sku", "order_line")
            .filter(pk=pk, status=InventoryHold.Status.HELD)
            .first()
        )
        if hold is None:
            return 0  # another worker got there first
        case_open = case is not None and case.is_open
        if case_open and hold.held_until > now:
            return 0  # not due after all
        if case_open and hold.rule == InventoryHold.Rule.AMPLE and now < case.window_end:
            if sku.store_id not in policies:
                policies[sku.store_id] = hold_policy_for(store_id=sku.store_id)
            outcome = _hold_redecide(
                hold, sku=sku, case=case, policy=policies[sku.store_id], now=now
            )
            return int(outcome == "released")
        why = {
            InventoryHold.Rule.CONSTRAINED: "brief hold for constrained stock ended",
            InventoryHold.Rule.PREORDER: "preorder hold ended",
        }.get(hold.rule, "hold ended")
        if case is not None and not case.is_open:
            why = f"case {case.status}"
        return int(_hold_release(hold, now=now, case=case, why=why))


def inventory_holds_expire(*, now: dt.datetime, limit: int = SWEEP_LIMIT) -> int:
    """The scheduler pass's sweep: settle held holds that have run out, and those whose
    case is closed (a hold never outlives its case). Returns how many were released.

    A hold through the next retry whose case goes on is decided again instead (kept while
    stock is ample). Each hold is settled in its own short transaction under its SKU lock;
    with several workers the conditional update decides who acts.
    """

    closed = [s for s in RecoveryCase.Status.values if s != RecoveryCase.Status.OPEN]
    held = InventoryHold.objects.filter(status=InventoryHold.Status.HELD)
    fields = ("pk", "sku_id", "case_id", "store_id")
    due = list(held.filter(held_until__lte=now).order_by("held_until").values_list(*fields)[:limit])
    due += list(held.filter(case__status__in=closed).values_list(*fields)[:limit])
    released = 0
    seen: set[int] = set()
    policies: dict = {}
    for pk, sku_id, case_id, store_id in due:
        if pk in seen:
            continue
        seen.add(pk)
        try:
            released += _hold_settle(
                pk=pk, sku_id=sku_id, case_id=case_id, store_id=store_id, now=now, policies=policies
            )
        except DatabaseError:  # one hold's trouble must not stop the sweep; next pass retries
            logger.exception("inventory hold %s could not be settled", pk)
    return released


@transaction.atomic
def inventory_holds_release_for_case(*, case: RecoveryCase, at: dt.datetime) -> int:
    """A case closed without payment or loss (cancelled): give its held stock back now."""
    now = _now(at)
    case = _lock_head(store_id=case.store_id, case_id=case.pk) or case
    holds = list(
        InventoryHold.objects.filter(case=case, status=InventoryHold.Status.HELD).select_related(
            "sku"
        )
    )
    _skus_lock(h.sku_id for h in holds)
    return sum(_hold_release(h, now=now, case=case, why=f"case {case.status}") for h in holds)


# ------------------------------------------------------------------ order transitions


@transaction.atomic
def order_payment_failed(*, order: Order, case, at: dt.datetime) -> None:
    """The order's payment failed: its shipment waits for the money, and each line's stock
    is held by the hold policy (or refused, recorded, when it is not there).

    Called again on every failure reported for the order: lines already held keep their
    hold (a hold through the next retry is extended while stock is ample); a line whose
    brief hold already went back to others is not held again in the same case.
    Never raises for missing stock: the failure must be recorded whatever the shelves say.
    """
    now = _now(at)
    fresh = _lock_head(store_id=order.store_id, case_id=case.pk if case is not None else None)
    order = Order.objects.select_for_update().filter(pk=order.pk).first()
    if order is None or order.payment_status == Order.PaymentStatus.PAID:
        return
    if order.status == Order.Status.CANCELLED:
        return
    was_waiting = order.fulfillment_status == Order.FulfillmentStatus.AWAITING_PAYMENT
    Order.objects.filter(pk=order.pk).update(
        payment_status=Order.PaymentStatus.FAILED,
        fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT,
        updated_at=now,
    )
    if fresh is None:
        return
    # The plan (next retry, window, status) as stored now: callers may hold an older copy.
    case.status, case.retry_at, case.window_end = fresh.status, fresh.retry_at, fresh.window_end
    case.decline_awaited_until = fresh.decline_awaited_until
    if not _case_is_open(case, now):
        return
    if not was_waiting:
        _record(
            case,
            kind="shipment_paused",
            at=now,
            message=f"Order #{order.number}: shipment paused until the payment succeeds. "
            "The customer should be told their order waits for payment.",
            data={"order": order.number, "notify_customer": True},
        )
    lines = list(order.lines.select_related("sku").order_by("sku_id"))
    skus = _skus_lock(line.sku_id for line in lines)
    policy = hold_policy_for(store_id=order.store_id)
    for line in lines:
        sku = line.sku = skus[line.sku_id]
        state = sku_stock_state(sku_id=sku.pk, line=line, now=now)
        if state.live_hold_id is not None:
            live = InventoryHold.objects.select_related("sku", "order_line").get(
                pk=state.live_hold_id
            )
            if live.status == InventoryHold.Status.COMMITTED:
                continue
            if live.held_until > now:
                if live.rule == InventoryHold.Rule.AMPLE:
                    _hold_redecide(live, sku=sku, case=case, policy=policy, now=now)
                continue
            _hold_release(live, now=now, case=case, why="its hold ran out")
        if InventoryHold.objects.filter(
            order_line=line, case=case, rule=InventoryHold.Rule.CONSTRAINED
        ).exists():
            continue  # its brief hold went back to others; not taken again in this case
        try:
            with transaction.atomic():
                hold = _hold_create(
                    line=line, sku=sku, case=case, policy=policy, now=now, state=state
                )
        except InsufficientStock as exc:
            if case.events.filter(kind="items_unavailable", data__sku=sku.sku).exists():
                continue  # said once per case; the customer is not told twice
            _record(
                case,
                kind="items_unavailable",
                at=now,
                message=f"Not reserved: {exc.message} The customer should be told this item "
                "is not reserved and may not ship when they pay.",
                data={
                    "sku": sku.sku,
                    "wanted": exc.wanted,
                    "available": exc.available,
                    "notify_customer": True,
                },
            )
            continue
        _record(
            case,
            kind="items_held",
            at=now,
            message=f"Holding {_item(hold)} until {_fmt(hold.held_until)}: {hold.reason}",
            data={
                "hold": hold.pk,
                "sku": sku.sku,
                "quantity": hold.quantity,
                "rule": hold.rule,
                "held_until": hold.held_until.isoformat(),
            },
        )


@transaction.atomic
def order_payment_succeeded(*, order: Order, at: dt.datetime) -> None:
    """The order is paid: commit its stock and release it to fulfillment.

    A live hold is committed as it is. A line whose hold ran out (or that never had one)
    is committed only if the units are still available; otherwise the order is
    backordered and the case says which SKU is short. Idempotent.
    """
    now = _now(at)
    case = _order_case_lock(order)
    order = Order.objects.select_for_update().filter(pk=order.pk).first()
    if order is None or order.status == Order.Status.CANCELLED:
        return
    lines = list(order.lines.select_related("sku").order_by("sku_id"))
    skus = _skus_lock(line.sku_id for line in lines)
    committed: list[OrderLine] = []
    short: list[tuple[OrderLine, int]] = []
    for line in lines:
        line.sku = sku = skus[line.sku_id]
        live = InventoryHold.objects.filter(
            order_line=line,
            status__in=[InventoryHold.Status.HELD, InventoryHold.Status.COMMITTED],
        ).first()
        if live is not None and live.status == InventoryHold.Status.COMMITTED:
            continue
        if live is not None and live.held_until > now:
            if (
                InventoryHold.objects.filter(pk=live.pk, status=InventoryHold.Status.HELD).update(
                    status=InventoryHold.Status.COMMITTED, committed_at=now
                )
                == 1
            ):
                committed.append(line)
                continue
        elif live is not None:
            # It lapsed before the money came: its units counted as free since then.
            InventoryHold.objects.filter(pk=live.pk, status=InventoryHold.Status.HELD).update(
                status=InventoryHold.Status.RELEASED, released_at=now, released_early=True
            )
        available = sku_available(sku=sku, now=now, exclude_line_id=line.pk)
        if available < line.quantity:
            short.append((line, available))
            continue
        InventoryHold.objects.create(
            store_id=order.store_id,
            order_line=line,
            sku=sku,
            case=case,
            quantity=line.quantity,
            status=InventoryHold.Status.COMMITTED,
            rule=InventoryHold.Rule.PAID,
            reason="committed on payment: no hold was live",
            created_at=now,
            committed_at=now,
        )
        committed.append(line)
    fulfillment = Order.FulfillmentStatus.BACKORDERED if short else Order.FulfillmentStatus.RELEASED
    updates = {
        "payment_status": Order.PaymentStatus.PAID,
        "status": Order.Status.CONFIRMED,
        "updated_at": now,
    }
    if order.fulfillment_status in (
        Order.FulfillmentStatus.UNFULFILLED,
        Order.FulfillmentStatus.AWAITING_PAYMENT,
        Order.FulfillmentStatus.BACKORDERED,
    ):
        updates["fulfillment_status"] = fulfillment
    # A second report of the same payment (intake, then the case closing) says nothing new.
    changed = (
        committed
        or order.payment_status != Order.PaymentStatus.PAID
        or order.fulfillment_status != updates.get("fulfillment_status", order.fulfillment_status)
    )
    Order.objects.filter(pk=order.pk).update(**updates)
    if not changed:
        return
    for line, available in short:
        _record(
            case,
            kind="items_short",
            at=now,
            message=f"Paid, but {_item(line)} could not be committed: {available} available. "
            f"Order #{order.number} is backordered; the customer should be told it ships "
            "when stock arrives.",
            data={
                "sku": line.sku.sku,
                "wanted": line.quantity,
                "available": available,
                "notify_customer": True,
            },
        )
    units = sum(line.quantity for line in committed)
    _record(
        case,
        kind="order_backordered" if short else "order_released",
        at=now,
        message=(
            f"Order #{order.number} paid: {len(committed)} line(s) committed ({units} units), "
            + (f"{len(short)} short: backordered." if short else "released to fulfillment.")
        ),
        data={"order": order.number, "committed_units": units, "short_lines": len(short)},
    )


@transaction.atomic
def order_payment_lost(*, order: Order, at: dt.datetime) -> None:
    """The window closed unpaid: the order is cancelled and its held stock goes back."""
    now = _now(at)
    case = _order_case_lock(order)
    order = Order.objects.select_for_update().filter(pk=order.pk).first()
    if order is None or order.payment_status == Order.PaymentStatus.PAID:
        return
    holds = list(
        InventoryHold.objects.filter(
            order_line__order=order, status=InventoryHold.Status.HELD
        ).select_related("sku")
    )
    _skus_lock(h.sku_id for h in holds)
    released = [
        h
        for h in holds
        if InventoryHold.objects.filter(pk=h.pk, status=InventoryHold.Status.HELD).update(
            status=InventoryHold.Status.RELEASED, released_at=now, released_early=False
        )
        == 1
    ]
    cancelled = (
        Order.objects.filter(pk=order.pk)
        .exclude(status=Order.Status.CANCELLED)
        .update(
            status=Order.Status.CANCELLED,
            fulfillment_status=Order.FulfillmentStatus.CANCELLED,
            updated_at=now,
        )
    )
    if not cancelled and not released:
        return
    back = ", ".join(_item(h) for h in released) or "nothing was held"
    _record(
        case,
        kind="order_cancelled",
        at=now,
        message=f"Order #{order.number} cancelled, unpaid; stock back on sale: {back}.",
        data={"order": order.number, "released_units": sum(h.quantity for h in released)},
    )


@transaction.atomic
def order_shipment_pause(*, order: Order, at: dt.datetime) -> None:
    """The grace period is over: the order's shipment waits for payment."""
    now = _now(at)
    case = _order_case_lock(order)
    paused = (
        Order.objects.filter(pk=order.pk)
        .exclude(payment_status=Order.PaymentStatus.PAID)
        .exclude(status=Order.Status.CANCELLED)
        .exclude(fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT)
        .update(fulfillment_status=Order.FulfillmentStatus.AWAITING_PAYMENT, updated_at=now)
    )
    if paused:
        _record(
            case,
            kind="shipment_paused",
            at=now,
            message=f"Order #{order.number}: shipment paused until the payment succeeds. "
            "The customer should be told their order waits for payment.",
            data={"order": order.number, "notify_customer": True},
        )


# ------------------------------------------------------------------ the merchant's API


@dataclass(frozen=True)
class LineInput:
    sku: str
    quantity: int
    unit_amount: int = 0


@dataclass(frozen=True)
class SkuInput:
    sku: str
    on_hand: int
    title: str | None = None
    preorder: bool | None = None
    low_stock_threshold: int | None = None


def _fields_error(message: str, fields: dict) -> ApplicationError:
    return ApplicationError(message, code="invalid", extra={"fields": fields})


@transaction.atomic
def order_upsert(
    *,
    store: Store,
    number: str,
    lines: list[LineInput],
    customer: str = "",
    customer_email: str = "",
    subscription: str = "",
    payment_intent: str = "",
    currency: str = "",
    amount: int | None = None,
) -> tuple[Order, bool]:
    """Create or update the store's order `number` with exactly these lines. Idempotent:
    the same input again changes nothing. Returns (order, created).

    Every check runs before the first write; a refused request writes nothing. Lines
    whose stock is held or committed for a payment cannot change.
    """

    codes = [line.sku for line in lines]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise _fields_error(
            "Each SKU may appear in one line only.",
            {
                "lines": [
                    f"SKU {c!r} appears more than once; send one line with the total quantity."
                    for c in dupes
                ]
            },
        )
    skus = {s.sku: s for s in SKU.objects.filter(store=store, sku__in=codes)}
    # Keyed by line index, the way DRF reports errors in a list of objects.
    unknown = {
        i: {
            "sku": [
                f"Unknown SKU {line.sku!r} in this store; add it with POST /api/v1/inventory/ first."
            ]
        }
        for i, line in enumerate(lines)
        if line.sku not in skus
    }
    if unknown:
        raise _fields_error("Some lines name SKUs this store does not have.", {"lines": unknown})
    sub = None
    if subscription:
        sub = Subscription.objects.filter(store=store, stripe_id=subscription).first()
        if sub is None:
            raise _fields_error(
                "Unknown subscription.",
                {"subscription": [f"No subscription {subscription!r} in this store."]},
            )

    order = Order.objects.select_for_update().filter(store=store, number=number).first()
    created = False
    if order is None:
        try:
            with transaction.atomic():
                order = Order.objects.create(
                    store=store, number=number, currency=(currency or store.currency).lower()
                )
                created = True
        except IntegrityError:  # created by a simultaneous request: update that one
            order = Order.objects.select_for_update().get(store=store, number=number)

    if payment_intent and order.stripe_payment_intent_id not in ("", payment_intent):
        raise Conflict(
            f"Order #{number} is already linked to payment {order.stripe_payment_intent_id}; "
            "a payment of an order cannot be replaced by another one.",
            code="payment_intent_conflict",
            extra={"fields": {"payment_intent": ["Already linked to another payment."]}},
        )
    existing = {line.sku_id: line for line in order.lines.all()}
    wanted = {skus[line.sku].pk: line for line in lines}
    touched = [
        line
        for sku_id, line in existing.items()
        if sku_id not in wanted or wanted[sku_id].quantity != line.quantity
    ]
    locked = set(
        InventoryHold.objects.filter(
            order_line__in=touched,
            status__in=[InventoryHold.Status.HELD, InventoryHold.Status.COMMITTED],
        ).values_list("order_line__sku__sku", flat=True)
    )
    if locked:
        raise Conflict(
            f"Order #{number}: stock of {', '.join(sorted(locked))} is held or committed for "
            "its payment, so those lines cannot change. Send them unchanged, or cancel the "
            "order in Stripe and create a new one.",
            code="order_locked",
            extra={"skus": sorted(locked)},
        )

    for sku_id, line in existing.items():
        if sku_id not in wanted:
            line.delete()
    for sku_id, given in wanted.items():
        line = existing.get(sku_id)
        if line is None:
            OrderLine.objects.create(
                order=order, sku_id=sku_id, quantity=given.quantity, unit_amount=given.unit_amount
            )
        elif (line.quantity, line.unit_amount) != (given.quantity, given.unit_amount):
            line.quantity, line.unit_amount = given.quantity, given.unit_amount
            line.save(update_fields=["quantity", "unit_amount"])

    updates: dict = {
        "amount": amount
        if amount is not None
        else sum(line.quantity * line.unit_amount for line in lines),
    }
    if currency:
        updates["currency"] = currency.lower()
    if payment_intent:
        updates["stripe_payment_intent_id"] = payment_intent
    if sub is not None:
        updates["subscription"] = sub
    if customer:
        updates["customer"] = customer_upsert(store=store, stripe_id=customer, email=customer_email)
    changed = [f for f, v in updates.items() if getattr(order, f) != v]
    for field in changed:
        setattr(order, field, updates[field])
    if changed:
        order.save(update_fields=[*changed, "updated_at"])
    return order, created


@transaction.atomic
def skus_upsert(*, store: Store, items: list[SkuInput]) -> list[SKU]:
    """Create or update the store's SKUs by code (stock counts from the merchant's systems).

    A stock count is the merchant's truth and is taken as it is, even below what is
    promised; the inventory view then shows the shortfall as negative availability.
    """
    codes = [i.sku for i in items]
    if len(set(codes)) != len(codes):
        raise _fields_error(
            "Each SKU may appear once.", {"skus": ["A SKU appears more than once."]}
        )
    existing = {
        s.sku: s
        for s in SKU.objects.select_for_update().filter(store=store, sku__in=codes).order_by("pk")
    }
    out = []
    for item in items:
        sku = existing.get(item.sku)
        fields = {"on_hand": item.on_hand}
        for name in ("title", "preorder", "low_stock_threshold"):
            if getattr(item, name) is not None:
                fields[name] = getattr(item, name)
        if sku is None:
            try:
                with transaction.atomic():
                    sku = SKU.objects.create(store=store, sku=item.sku, **fields)
            except IntegrityError as exc:
                raise Conflict(
                    f"SKU {item.sku!r} was created by another request at the same moment; "
                    "send this request again.",
                    code="conflict",
                ) from exc
        else:
            changed = [f for f, v in fields.items() if getattr(sku, f) != v]
            for f in changed:
                setattr(sku, f, fields[f])
            if changed:
                sku.save(update_fields=[*changed, "updated_at"])
        out.append(sku)
    return out
