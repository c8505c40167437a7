"""One deadline per message: every default template, for every kind of case (a
subscription, an order whose stock is held, a renewal whose order is held) and every
track, states at most one date, and it is the date the case's policy acts on."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest
import time_machine

from messaging.models import Channel, Purpose
from messaging.sending import _render
from orders.services import LineInput, order_upsert
from recovery.models import RecoveryCase
from tests import stripe_factory as sf

from .conftest import payment_intent

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DATE = re.compile(rf"\b\d{{1,2}} (?:{MONTHS})\b")
TRACKS = {
    "soft": "insufficient_funds",
    "card_update": "expired_card",
    "hard": "lost_card",
}


def _subscription_case(webhooks, store, shelf, code):
    webhooks.deliver("invoice.payment_failed", sf.failed_invoice(decline_code=code))
    return RecoveryCase.objects.get()


def _order_case(webhooks, store, shelf, code):
    shelf("MUG", on_hand=5, low_stock_threshold=0)
    order, _ = order_upsert(
        store=store,
        number="1001",
        lines=[LineInput(sku="MUG", quantity=1, unit_amount=1500)],
        customer="cus_shop",
        payment_intent="pi_order_1001",
    )
    webhooks.deliver("payment_intent.payment_failed", payment_intent(order, decline_code=code))
    return RecoveryCase.objects.get()


def _renewal_case(webhooks, store, shelf, code):
    webhooks.deliver("invoice.paid", sf.paid_invoice(sf.failed_invoice(invoice_id="in_prev")))
    shelf("BEANS", on_hand=50, low_stock_threshold=0)
    invoice = sf.failed_invoice(decline_code=code)
    order_upsert(
        store=store,
        number="R-1",
        lines=[LineInput(sku="BEANS", quantity=2, unit_amount=1800)],
        customer=invoice["customer"],
        subscription=invoice["parent"]["subscription_details"]["subscription"],
    )
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.get()


KINDS = {"subscription": _subscription_case, "order": _order_case, "renewal": _renewal_case}
PURPOSES = [p for p in Purpose.values if p not in (Purpose.PREDUNNING, Purpose.FRESH_LINK)]


@pytest.mark.parametrize("track", TRACKS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_default_message_states_one_deadline(webhooks, store, shelf, kind, track):
    with time_machine.travel(T0, tick=False):
        case = KINDS[kind](webhooks, store, shelf, TRACKS[track])
        assert case.track == track
        if kind != "subscription":
            assert case.order_id and case.order.lines.get().holds.exists()
        seen = set()
        for purpose in PURPOSES:
            for channel in Channel.values:
                out = _render(
                    store=store,
                    customer=case.customer,
                    case=case,
                    purpose=purpose,
                    channel=channel,
                    pay_url="https://example.test/pay/x/",
                    payment_method=None,
                    at=T0,
                    extra={"agent_name": "Arjun", "agent_note": "Call me."},
                )
                text = " ".join(out.values())
                dates = set(DATE.findall(text))
                assert len(dates) <= 1, (purpose, channel, dates, text)
                seen |= dates
    # And that one date is the one the case's policy acts on.
    case.refresh_from_db()
    dates = [h.held_until for h in case.order.lines.get().holds.all()] if case.order_id else []
    if case.subscription_id:
        dates.append(case.step_down_at)
    expected = min(dates)  # the first date the policy acts on
    local = expected.astimezone(ZoneInfo(case.customer.time_zone or store.timezone))
    assert seen == {f"{local.day} {local:%B}"}
