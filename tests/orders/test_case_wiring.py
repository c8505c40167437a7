"""The recovery engine and the order behind a case move together: a failed renewal holds
stock at its first failure, a failed retry decides the holds again, a cancelled case gives
its stock back, and the case API shows the order, its holds and what the customer was told."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from orders.models import InventoryHold, Order
from orders.selectors import sku_available
from orders.services import LineInput, order_upsert
from recovery.models import RecoveryCase
from recovery.scheduler import run_due
from recovery.services import recovery_case_close
from tests import stripe_factory as sf
from tests.recovery.test_engine import issuer

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def _renewal(store, shelf, *, on_hand=50, **invoice_fields):
    """A subscription whose renewal order (R-1, 2 bags of beans) waits for its invoice."""
    shelf("BEANS", on_hand=on_hand, low_stock_threshold=0)
    invoice = sf.failed_invoice(**invoice_fields)
    sub_id = invoice["parent"]["subscription_details"]["subscription"]
    order, _ = order_upsert(
        store=store,
        number="R-1",
        lines=[LineInput(sku="BEANS", quantity=2, unit_amount=1800)],
        customer=invoice["customer"],
        subscription=sub_id,
    )
    return invoice, order


def test_a_failed_renewal_invoice_holds_its_orders_stock_at_the_first_failure(
    webhooks, store, shelf
):
    with time_machine.travel(T0, tick=False):
        # The subscription must exist before the order can name it.
        webhooks.deliver("invoice.paid", sf.paid_invoice(sf.failed_invoice(invoice_id="in_prev")))
        invoice, order = _renewal(store, shelf)
        webhooks.deliver("invoice.payment_failed", invoice)

    case = RecoveryCase.objects.get()
    order.refresh_from_db()
    assert case.order == order
    assert order.payment_status == "failed" and order.fulfillment_status == "awaiting_payment"
    hold = InventoryHold.objects.get(order_line__order=order)
    assert hold.status == "held" and hold.quantity == 2 and hold.case == case
    assert sku_available(sku=hold.sku, now=T0) == 48
    assert {"shipment_paused", "items_held"} <= set(case.events.values_list("kind", flat=True))


def test_an_invoice_naming_its_order_in_metadata_links_that_order(webhooks, store, shelf):
    with time_machine.travel(T0, tick=False):
        shelf("BEANS", on_hand=50, low_stock_threshold=0)
        order, _ = order_upsert(
            store=store,
            number="W-77",
            lines=[LineInput(sku="BEANS", quantity=1, unit_amount=1800)],
            customer="cus_test_alice",
        )
        invoice = sf.failed_invoice()
        invoice["metadata"] = {"order_id": "W-77"}
        webhooks.deliver("invoice.payment_failed", invoice)

    case = RecoveryCase.objects.get()
    assert case.order == order
    assert InventoryHold.objects.get().order_line.order == order


def test_a_failed_retry_holds_the_stock_through_the_next_retry(webhooks, store, shelf):
    with time_machine.travel(T0, tick=False) as traveller:
        webhooks.deliver("invoice.paid", sf.paid_invoice(sf.failed_invoice(invoice_id="in_prev")))
        invoice, order = _renewal(store, shelf)
        webhooks.deliver("invoice.payment_failed", invoice)
        case = RecoveryCase.objects.get()
        hold = InventoryHold.objects.get()
        first_retry, first_until = case.retry_at, hold.held_until
        assert hold.rule == "ample" and first_retry < first_until < case.window_end

        traveller.move_to(first_retry)
        run_due(now=first_retry, gateways=issuer(case, False))

    case.refresh_from_db()
    hold.refresh_from_db()
    assert case.attempt_count >= 1 and case.status == "open"
    assert case.retry_at is not None and case.retry_at > first_retry
    # Still held, now through the new retry rather than the old one.
    assert hold.status == "held" and hold.held_until > first_until
    assert hold.held_until >= case.retry_at
    assert case.events.filter(kind="hold_extended").exists()


def test_cancelling_a_case_gives_its_stock_back_at_once(webhooks, store, shelf):
    with time_machine.travel(T0, tick=False):
        webhooks.deliver("invoice.paid", sf.paid_invoice(sf.failed_invoice(invoice_id="in_prev")))
        invoice, order = _renewal(store, shelf, on_hand=10)
        webhooks.deliver("invoice.payment_failed", invoice)
        case = RecoveryCase.objects.get()
        assert sku_available(sku=InventoryHold.objects.get().sku, now=T0) == 8

        recovery_case_close(
            case=case, status=RecoveryCase.Status.CANCELLED, reason="merchant cancelled", at=T0
        )

    hold = InventoryHold.objects.get()
    assert hold.status == "released"
    assert sku_available(sku=hold.sku, now=T0) == 10
    assert Order.objects.get().status != "confirmed"


def test_the_case_api_shows_the_order_its_holds_and_what_the_customer_was_told(
    webhooks, store, shelf, api
):
    with time_machine.travel(T0, tick=False):
        webhooks.deliver("invoice.paid", sf.paid_invoice(sf.failed_invoice(invoice_id="in_prev")))
        invoice, order = _renewal(store, shelf)
        webhooks.deliver("invoice.payment_failed", invoice)
        case = RecoveryCase.objects.get()

        body = api.get(f"/api/v1/cases/{case.pk}/").json()

    detail = body["order_detail"]
    assert detail["number"] == "R-1" and detail["fulfillment_status"] == "awaiting_payment"
    (line,) = detail["lines"]
    assert line["sku"] == "BEANS" and line["quantity"] == 2 and line["hold"] == "held"
    assert line["reason"].startswith("ample stock")
    told = [t["kind"] for t in detail["customer_told"]]
    assert "shipment_paused" in told


def test_a_case_without_an_order_has_no_order_detail(failed_invoice, api):
    case = RecoveryCase.objects.get()
    body = api.get(f"/api/v1/cases/{case.pk}/").json()
    assert body["id"] == case.pk and body["order_detail"] is None
