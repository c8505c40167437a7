from __future__ import annotations

import datetime as dt

import pytest
from django.core.cache import cache

from messaging import sms
from recovery.models import RecoveryCase
from subscriptions.models import Customer
from tests import stripe_factory as sf

# A Wednesday, 10:00 in the store's zone (Europe/Berlin, UTC+1).
T0 = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _clean_outboxes():
    sms.outbox.clear()
    cache.clear()  # rate-limit counters
    yield
    sms.outbox.clear()


def open_case(webhooks, **invoice_fields) -> RecoveryCase:
    """Deliver a failed renewal invoice through the signed intake; return its case."""
    invoice = sf.failed_invoice(**invoice_fields)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.select_related("customer", "store").get(
        invoice__stripe_id=invoice["id"]
    )


@pytest.fixture
def case(webhooks, time_machine) -> RecoveryCase:
    """An insufficient-funds renewal failure of Alice's Coffee Club, opened at T0."""
    time_machine.move_to(T0, tick=False)
    return open_case(webhooks)


@pytest.fixture
def card_case(webhooks, time_machine) -> RecoveryCase:
    """An expired card: the card-update track, where the customer must act."""
    time_machine.move_to(T0, tick=False)
    return open_case(webhooks, decline_code="expired_card")


def sms_customer(customer: Customer, *, phone: str = "+4915112345678") -> Customer:
    Customer.objects.filter(pk=customer.pk).update(
        sms_opt_in=True, phone=phone, name="Alice Liddell"
    )
    customer.refresh_from_db()
    return customer
