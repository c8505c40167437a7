"""`customers_import`: a store's existing customers at once, as the one-by-one upserts
would have written them."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from subscriptions import services as subs
from subscriptions.models import Customer, PaymentMethod, Subscription
from tests import stripe_factory as sf

T0 = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)


def _item(n: int, *, months: int = 1) -> subs.CustomerImport:
    card = sf.stripe_object("payment_method", id=f"pm_imp_{n}", customer=f"cus_imp_{n}")
    card["card"].update(brand="visa", last4=f"{n:04d}", exp_month=n % 12 + 1, exp_year=2030)
    card["card"]["fingerprint"] = f"fp_imp_{n}"
    sub = sf.stripe_object(
        "subscription",
        id=f"sub_imp_{n}",
        customer=f"cus_imp_{n}",
        status="active" if n % 3 else "past_due",
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        metadata={"product_name": "Coffee Club"},
    )
    sub["items"] = copy.deepcopy(sub["items"])
    price = sub["items"]["data"][0]["price"]
    price.update(unit_amount=1800 + n, nickname="1 bag", currency="usd")
    price["recurring"].update(interval="month", interval_count=months)
    return subs.CustomerImport(
        stripe_id=f"cus_imp_{n}",
        seen_at=T0 - dt.timedelta(days=100 + n),
        email=f"c{n}@example.com",
        name=f"Customer {n}",
        phone=f"+1555000{n:04d}" if n % 2 else "",
        payment_method=card,
        subscriptions=(sub,),
    )


def _rows(store) -> dict:
    """Everything the services wrote for a store, keyed by Stripe ids (no pks, no store)."""
    skip = {"id", "store_id", "customer_id", "default_payment_method_id"}
    skip |= {"created_at", "updated_at"}

    def values(row) -> dict:
        fields = row._meta.concrete_fields
        return {f.attname: getattr(row, f.attname) for f in fields if f.attname not in skip}

    out = {}
    for c in Customer.objects.filter(store=store).select_related("default_payment_method"):
        out[c.stripe_id] = values(c) | {"default": c.default_payment_method.stripe_id}
    for pm in PaymentMethod.objects.filter(store=store).select_related("customer"):
        out[pm.stripe_id] = values(pm) | {"owner": pm.customer.stripe_id}
    for s in Subscription.objects.filter(store=store).select_related("customer"):
        out[s.stripe_id] = values(s) | {"owner": s.customer.stripe_id}
    return out


def _one_by_one(store, items) -> None:
    for item in items:
        customer = subs.customer_upsert(
            store=store,
            stripe_id=item.stripe_id,
            email=item.email,
            name=item.name,
            phone=item.phone,
            seen_at=item.seen_at,
        )
        subs.payment_method_upsert(
            store=store, customer=customer, data=item.payment_method, make_default=True
        )
        for data in item.subscriptions:
            subs.subscription_upsert(store=store, customer=customer, data=data, at=item.seen_at)


@pytest.mark.django_db
def test_import_writes_the_rows_the_upserts_write(store, other_store):
    items = [_item(n, months=1 + n % 2) for n in range(1, 8)]
    customers = subs.customers_import(store=store, items=items)
    _one_by_one(other_store, items)

    assert [c.stripe_id for c in customers] == [i.stripe_id for i in items]
    assert all(
        c.default_payment_method.stripe_id == f"pm_imp_{n}" for n, c in enumerate(customers, 1)
    )
    imported, upserted = _rows(store), _rows(other_store)
    assert len(imported) == 3 * len(items)
    assert imported == upserted
    assert Subscription.objects.get(store=store, stripe_id="sub_imp_3").status == "past_due"


@pytest.mark.django_db
def test_known_customers_cards_and_subscriptions_go_through_the_upserts(store):
    items = [_item(n) for n in range(1, 6)]
    subs.customers_import(store=store, items=items[:2])
    # A card Recoup already has under customer 3's card id, with an older expiry.
    known = subs.customer_upsert(store=store, stripe_id="cus_other", seen_at=T0)
    subs.payment_method_upsert(
        store=store, customer=known, data={**items[2].payment_method, "card": {"exp_year": 2027}}
    )
    changed = subs.CustomerImport(**{**items[0].__dict__, "name": "Renamed", "email": ""})
    customers = subs.customers_import(store=store, items=[changed, *items[1:], items[4]])

    assert [c.stripe_id for c in customers] == [
        "cus_imp_1", "cus_imp_2", "cus_imp_3", "cus_imp_4", "cus_imp_5", "cus_imp_5"
    ]  # fmt: skip
    assert Customer.objects.filter(store=store).count() == 6
    assert Customer.objects.get(stripe_id="cus_imp_1").name == "Customer 1"  # upsert fills gaps
    card = PaymentMethod.objects.get(stripe_id="pm_imp_3")
    assert (card.customer.stripe_id, card.exp_year, card.is_default) == ("cus_imp_3", 2030, True)
    assert Customer.objects.get(stripe_id="cus_imp_3").default_payment_method == card
    assert Subscription.objects.filter(store=store).count() == 5


@pytest.mark.django_db
def test_import_takes_the_same_statements_for_one_customer_or_many(store, other_store):
    with CaptureQueriesContext(connection) as one:
        subs.customers_import(store=store, items=[_item(1)])
    with CaptureQueriesContext(connection) as many:
        subs.customers_import(store=other_store, items=[_item(n) for n in range(1, 41)])
    assert len(many) == len(one) <= 10, [q["sql"][:80] for q in many]
