"""Failed payments hold, shorten or release stock; recovery commits it, loss gives it back.

Failures arrive through the real intake (signed payment_intent.payment_failed webhooks
whose metadata.order_id is the order number); time moves with time_machine.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from orders.models import HoldPolicy, InventoryHold, Order
from orders.selectors import case_order_summary, sku_available
from orders.services import (
    InsufficientStock,
    inventory_hold_place,
    inventory_holds_expire,
    inventory_holds_release_for_case,
    order_shipment_pause,
)
from recovery import engine
from recovery.models import RecoveryCase
from recovery.scheduler import run_due
from tests import stripe_factory as sf

from .conftest import hold_of

pytestmark = pytest.mark.django_db


def kinds(case: RecoveryCase) -> list[str]:
    return list(case.events.values_list("kind", flat=True))


@time_machine.travel(dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC), tick=False)
def test_ample_stock_is_held_through_the_next_retry(shelf, order_for, fail_payment):
    mug = shelf("MUG", on_hand=100, low_stock_threshold=5)
    order = order_for("1001", MUG=2)

    fail_payment(order, decline_code="insufficient_funds")

    case = RecoveryCase.objects.get()
    hold = hold_of(order)
    order.refresh_from_db()
    assert case.order == order and case.retry_at is not None
    assert hold.status == "held" and hold.rule == "ample" and hold.case == case
    assert hold.held_until == case.retry_at + dt.timedelta(hours=2)
    assert hold.held_until <= case.window_end
    assert "ample stock (98 left after this hold): held through the next retry" in hold.reason
    assert sku_available(sku=mug, now=timezone.now()) == 98
    assert order.payment_status == "failed" and order.fulfillment_status == "awaiting_payment"
    held = case.events.get(kind="items_held")
    assert held.message.startswith("Holding 2 × MUG title (MUG) until ")
    assert hold.reason in held.message
    assert "shipment_paused" in kinds(case)


def test_ample_stock_without_a_planned_retry_is_held_through_the_window(
    shelf, order_for, fail_payment
):
    shelf("MUG", on_hand=100)
    order = order_for("1001", MUG=2)

    fail_payment(order, decline_code="expired_card")  # card update: no retry on this card

    case = RecoveryCase.objects.get()
    hold = hold_of(order)
    assert case.track == "card_update" and case.retry_at is None
    assert hold.rule == "ample" and hold.held_until == case.window_end
    assert "held through the recovery window" in hold.reason


def test_constrained_stock_is_held_briefly_then_released_and_the_customer_is_to_be_told(
    shelf, order_for, fail_payment
):
    mug = shelf("MUG", on_hand=6, low_stock_threshold=5)
    order = order_for("1001", MUG=2)

    fail_payment(order)

    case = RecoveryCase.objects.get()
    hold = hold_of(order)
    assert hold.rule == "constrained"
    assert hold.held_until == hold.created_at + dt.timedelta(hours=48)
    assert "4 left after this hold, under the low-stock threshold of 5" in hold.reason
    assert sku_available(sku=mug, now=timezone.now()) == 4

    with time_machine.travel(hold.held_until + dt.timedelta(minutes=1), tick=False):
        now = timezone.now()
        # Reads ignore the expired hold before any sweep has run.
        assert InventoryHold.objects.get().status == "held"
        assert sku_available(sku=mug, now=now) == 6

        assert inventory_holds_expire(now=now) == 1
        assert inventory_holds_expire(now=now) == 0  # the second pass does nothing

    hold.refresh_from_db()
    assert hold.status == "released" and hold.released_early and hold.released_at is not None
    released = case.events.get(kind="items_released")
    assert "Released 2 × MUG title (MUG) to other customers" in released.message
    assert "The customer should be told their items are no longer reserved." in released.message
    assert released.data["notify_customer"] is True
    assert "no longer reserved" in released.data["customer_message"]
    # The order still waits for its payment; only the stock went back.
    order.refresh_from_db()
    assert order.fulfillment_status == "awaiting_payment"


def test_other_orders_waiting_for_the_sku_make_the_hold_brief(shelf, order_for, fail_payment):
    shelf("MUG", on_hand=10, low_stock_threshold=0)
    big = order_for("1001", MUG=20)
    fail_payment(big)  # cannot be held: this order now waits for stock
    small = order_for("1002", MUG=2)

    fail_payment(small)

    hold = hold_of(small)
    assert hold.rule == "constrained"
    assert "1 other order waiting for it" in hold.reason
    assert not InventoryHold.objects.filter(order_line__order=big).exists()


def test_a_preorder_is_held_until_the_window_ends(shelf, order_for, fail_payment):
    shelf("BOOK", on_hand=3, low_stock_threshold=5, preorder=True)
    order = order_for("1001", BOOK=3)

    fail_payment(order)

    case = RecoveryCase.objects.get()
    hold = hold_of(order)
    assert hold.rule == "preorder" and hold.held_until == case.window_end
    assert hold.reason.startswith("preorder: held until the recovery window ends")


def test_missing_stock_is_recorded_and_the_failure_still_opens_its_case(
    shelf, order_for, fail_payment
):
    mug = shelf("MUG", on_hand=1)
    shelf("CUP", on_hand=50, low_stock_threshold=0)
    order = order_for("1001", MUG=3, CUP=1)

    fail_payment(order)

    case = RecoveryCase.objects.get()
    assert case.order == order and case.status == "open"
    # Per line: the cup is held, the mug could not be.
    assert list(InventoryHold.objects.values_list("sku__sku", flat=True)) == ["CUP"]
    missing = case.events.get(kind="items_unavailable")
    assert "Not enough stock of MUG (MUG title): 3 wanted, 1 available." in missing.message
    assert missing.data == {"sku": "MUG", "wanted": 3, "available": 1, "notify_customer": True}
    assert sku_available(sku=mug, now=timezone.now()) == 1

    fail_payment(order)  # the next failure: still short, and already said
    assert kinds(case).count("items_unavailable") == 1


def test_placing_a_hold_without_the_stock_names_the_sku_and_what_is_available(shelf, order_for):
    shelf("MUG", on_hand=1, title="Blue mug")
    line = order_for("1001", MUG=3).lines.get()

    with pytest.raises(InsufficientStock) as caught:
        inventory_hold_place(line=line, at=timezone.now())

    assert caught.value.message == "Not enough stock of MUG (Blue mug): 3 wanted, 1 available."
    assert caught.value.extra == {"sku": "MUG", "wanted": 3, "available": 1}
    assert not InventoryHold.objects.exists()


def test_recovery_commits_the_hold_and_releases_the_order(shelf, order_for, fail_payment, pay):
    mug = shelf("MUG", on_hand=10, low_stock_threshold=0)
    order = order_for("1001", MUG=2)
    fail_payment(order)
    hold = hold_of(order)

    pay(order)

    case = RecoveryCase.objects.get()
    order.refresh_from_db()
    hold.refresh_from_db()
    assert case.status == "recovered"
    assert hold.status == "committed" and hold.committed_at is not None
    assert InventoryHold.objects.count() == 1
    assert (order.status, order.payment_status, order.fulfillment_status) == (
        "confirmed",
        "paid",
        "released",
    )
    assert sku_available(sku=mug, now=timezone.now()) == 8
    # Intake and the case close both report the payment: one transition on the timeline.
    assert kinds(case).count("order_released") == 1
    assert case.events.get(kind="order_released").message == (
        "Order #1001 paid: 1 line(s) committed (2 units), released to fulfillment."
    )
    # Committed stock stays committed long after any hold deadline.
    with time_machine.travel(case.window_end + dt.timedelta(days=30), tick=False):
        assert inventory_holds_expire(now=timezone.now()) == 0
        assert sku_available(sku=mug, now=timezone.now()) == 8


def test_payment_after_the_hold_ran_out_commits_only_stock_that_is_still_there(
    shelf, order_for, fail_payment, pay
):
    mug = shelf("MUG", on_hand=6, low_stock_threshold=5)
    late = order_for("1001", MUG=2)
    fail_payment(late)
    hold = hold_of(late)

    with time_machine.travel(hold.held_until + dt.timedelta(hours=1), tick=False):
        quick = order_for("1002", MUG=5)
        pay(quick)  # paid at once: takes what the lapsed hold gave back
        pay(late)
        now = timezone.now()

        late.refresh_from_db()
        assert late.payment_status == "paid" and late.fulfillment_status == "backordered"
        case = RecoveryCase.objects.get(order=late)
        short = case.events.get(kind="items_short")
        assert "2 × MUG title (MUG) could not be committed: 1 available" in short.message
        assert "order_backordered" in kinds(case)
        # Never oversold: what is committed fits on the shelf.
        committed = sum(
            InventoryHold.objects.filter(sku=mug, status="committed").values_list(
                "quantity", flat=True
            )
        )
        assert committed == 5 <= mug.on_hand
        assert sku_available(sku=mug, now=now) == 1


def test_payment_after_the_hold_ran_out_commits_when_the_stock_is_still_free(
    shelf, order_for, fail_payment, pay
):
    mug = shelf("MUG", on_hand=6, low_stock_threshold=5)
    order = order_for("1001", MUG=2)
    fail_payment(order)
    hold = hold_of(order)

    with time_machine.travel(hold.held_until + dt.timedelta(hours=1), tick=False):
        pay(order)
        order.refresh_from_db()
        hold.refresh_from_db()
        assert order.fulfillment_status == "released"
        assert hold.status == "released" and hold.released_early
        commit = InventoryHold.objects.get(status="committed")
        assert commit.rule == "paid" and commit.quantity == 2
        assert sku_available(sku=mug, now=timezone.now()) == 4


def test_loss_at_the_window_end_releases_the_holds_and_cancels_the_order(
    shelf, order_for, fail_payment
):
    mug = shelf("MUG", on_hand=10, low_stock_threshold=0)
    order = order_for("1001", MUG=2)
    fail_payment(order, decline_code="expired_card")
    case = RecoveryCase.objects.get()

    with time_machine.travel(case.window_end + dt.timedelta(minutes=1), tick=False):
        run_due(now=timezone.now())

    case.refresh_from_db()
    order.refresh_from_db()
    hold = hold_of(order)
    assert case.status == "lost"
    assert order.status == "cancelled" and order.fulfillment_status == "cancelled"
    assert hold.status == "released" and not hold.released_early
    assert sku_available(sku=mug, now=timezone.now()) == 10
    cancelled = case.events.get(kind="order_cancelled")
    assert cancelled.message == (
        "Order #1001 cancelled, unpaid; stock back on sale: 2 × MUG title (MUG)."
    )
    assert "items_released" not in kinds(case)  # not early: the loss itself is the news


def test_a_repeated_failure_keeps_one_hold(shelf, order_for, fail_payment):
    shelf("MUG", on_hand=100)
    order = order_for("1001", MUG=2)
    fail_payment(order)
    first = hold_of(order)

    fail_payment(order)  # a second failure event for the same PaymentIntent

    case = RecoveryCase.objects.get()
    hold = hold_of(order)
    assert hold.pk == first.pk and hold.status == "held"
    assert hold.held_until >= first.held_until
    assert kinds(case).count("items_held") == 1
    assert kinds(case).count("shipment_paused") == 1


def test_a_hold_through_the_retry_is_kept_by_the_sweep_while_stock_is_ample(
    shelf, order_for, fail_payment
):
    shelf("MUG", on_hand=100, low_stock_threshold=5)
    order = order_for("1001", MUG=2)
    fail_payment(order)
    case = RecoveryCase.objects.get()
    hold = hold_of(order)
    RecoveryCase.objects.filter(pk=case.pk).update(retry_at=None)  # no further retry planned

    with time_machine.travel(hold.held_until + dt.timedelta(minutes=1), tick=False):
        assert inventory_holds_expire(now=timezone.now()) == 0

    hold.refresh_from_db()
    assert hold.status == "held" and hold.held_until == case.window_end
    assert case.events.get(kind="hold_extended").message.startswith(
        "Hold on 2 × MUG title (MUG) extended to "
    )


def test_a_hold_that_ran_out_is_released_when_others_took_the_stock(shelf, order_for, fail_payment):
    mug = shelf("MUG", on_hand=10, low_stock_threshold=0)
    first = order_for("1001", MUG=4)
    fail_payment(first)
    hold = hold_of(first)

    with time_machine.travel(hold.held_until + dt.timedelta(minutes=1), tick=False):
        second = order_for("1002", MUG=9)
        fail_payment(second)  # the lapsed units count as free: 9 of 10 are held now
        assert hold_of(second).quantity == 9

        assert inventory_holds_expire(now=timezone.now()) == 1

        hold.refresh_from_db()
        assert hold.status == "released" and hold.released_early
        case = RecoveryCase.objects.get(order=first)
        released = case.events.get(kind="items_released")
        assert "(only 1 left when its hold ran out)" in released.message
        assert sku_available(sku=mug, now=timezone.now()) == 1


def test_holds_of_a_cancelled_case_are_released(shelf, order_for, fail_payment):
    mug = shelf("MUG", on_hand=10, low_stock_threshold=0)
    order = order_for("1001", MUG=2)
    fail_payment(order, decline_code="expired_card")
    case = RecoveryCase.objects.get()

    # Closed by whatever path, without telling orders (the sweep is the safety net).
    RecoveryCase.objects.filter(pk=case.pk).update(status=RecoveryCase.Status.CANCELLED)

    assert hold_of(order).status == "held"
    assert inventory_holds_expire(now=timezone.now()) == 1
    hold = hold_of(order)
    assert hold.status == "released" and not hold.released_early
    assert sku_available(sku=mug, now=timezone.now()) == 10


def test_releasing_a_closed_cases_holds_directly(shelf, order_for, fail_payment):
    shelf("MUG", on_hand=10, low_stock_threshold=0)
    order = order_for("1001", MUG=2)
    fail_payment(order, decline_code="expired_card")
    RecoveryCase.objects.filter(pk=RecoveryCase.objects.get().pk).update(status="cancelled")
    case = RecoveryCase.objects.get()

    assert inventory_holds_release_for_case(case=case, at=timezone.now()) == 1
    assert inventory_holds_release_for_case(case=case, at=timezone.now()) == 0
    assert hold_of(order).status == "released"


def test_a_failure_after_the_case_closed_holds_nothing(shelf, order_for, fail_payment, pay):
    shelf("MUG", on_hand=10, low_stock_threshold=0)
    order = order_for("1001", MUG=2)
    fail_payment(order)
    pay(order)

    fail_payment(order)  # late, out of order

    assert list(InventoryHold.objects.values_list("status", flat=True)) == ["committed"]
    order.refresh_from_db()
    assert order.payment_status == "paid" and order.fulfillment_status == "released"


def test_a_failed_renewal_pauses_the_shipment_and_says_so(webhooks, store, shelf):
    from orders.services import LineInput, order_upsert
    from subscriptions.models import Subscription

    shelf("BEANS", on_hand=50)
    invoice = sf.failed_invoice()
    webhooks.deliver("invoice.payment_failed", invoice)
    subscription = Subscription.objects.get(
        stripe_id=invoice["parent"]["subscription_details"]["subscription"]
    )
    order, _ = order_upsert(
        store=store,
        number="R-1",
        lines=[LineInput(sku="BEANS", quantity=1)],
        customer="cus_test_alice",
        subscription=subscription.stripe_id,
    )
    # The next report of the invoice's failure links the renewal order to its case.
    webhooks.deliver(
        "invoice.payment_failed", sf.failed_invoice(invoice_id=invoice["id"], attempt_count=2)
    )
    case = RecoveryCase.objects.get()
    assert case.order == order

    engine.case_step_down(case, now=case.step_down_at)

    order.refresh_from_db()
    assert order.fulfillment_status == "awaiting_payment"
    paused = case.events.get(kind="shipment_paused")
    assert "shipment paused until the payment succeeds" in paused.message
    assert paused.data["notify_customer"] is True
    order_shipment_pause(order=order, at=timezone.now())  # again: nothing new
    assert kinds(case).count("shipment_paused") == 1


def test_paid_orders_commit_their_stock_without_any_failure(shelf, order_for, pay):
    mug = shelf("MUG", on_hand=3)
    first, second = order_for("1001", MUG=2), order_for("1002", MUG=2)

    pay(first)
    pay(second)

    assert list(Order.objects.order_by("number").values_list("number", "fulfillment_status")) == [
        ("1001", "released"),
        ("1002", "backordered"),
    ]
    assert sku_available(sku=mug, now=timezone.now()) == 1


def test_the_store_sets_how_brief_a_brief_hold_is(store, shelf, order_for, fail_payment):
    HoldPolicy.objects.create(store=store, brief_hold_hours=12)
    shelf("MUG", on_hand=3, low_stock_threshold=5)
    order = order_for("1001", MUG=1)

    fail_payment(order)

    hold = hold_of(order)
    assert hold.rule == "constrained"
    assert hold.held_until == hold.created_at + dt.timedelta(hours=12)
    assert "held 12 h, then released to other customers" in hold.reason


def test_the_case_page_summary_shows_the_order_its_lines_and_their_stock(
    shelf, order_for, fail_payment
):
    shelf("MUG", on_hand=6, low_stock_threshold=5)
    shelf("CUP", on_hand=100, low_stock_threshold=5)
    order = order_for("1001", MUG=2, CUP=1)
    fail_payment(order, decline_code="expired_card")
    case = RecoveryCase.objects.get()
    mug_hold = InventoryHold.objects.get(sku__sku="MUG")

    with time_machine.travel(mug_hold.held_until + dt.timedelta(minutes=1), tick=False):
        summary = case_order_summary(case=case, now=timezone.now())

    assert summary["number"] == "1001" and summary["fulfillment_status"] == "awaiting_payment"
    lines = {line["sku"]: line for line in summary["lines"]}
    assert lines["MUG"]["hold"] == "released" and lines["MUG"]["released_early"] is True
    assert lines["MUG"]["held_until"] is None
    assert lines["CUP"]["hold"] == "held" and lines["CUP"]["held_until"] == case.window_end
    assert lines["CUP"]["reason"].startswith("ample stock")
