"""GET/POST /api/v1/inventory/: stock per SKU, and what failed payments do to it."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import time_machine
from django.test import Client

from orders.models import SKU
from orders.services import SkuInput, skus_upsert

from .conftest import hold_of

pytestmark = pytest.mark.django_db

URL = "/api/v1/inventory/"


def test_inventory_shows_held_committed_released_early_and_waiting_orders(
    api, shelf, order_for, fail_payment, pay
):
    shelf("MUG", on_hand=20, low_stock_threshold=0)
    shelf("CUP", on_hand=8, low_stock_threshold=5)
    held = order_for("1001", MUG=2)
    brief = order_for("1002", MUG=1, CUP=4)  # 4 left of the cups: under the threshold
    paid = order_for("1003", MUG=3)
    fail_payment(held, decline_code="expired_card")  # held through the window
    fail_payment(brief, decline_code="expired_card")
    pay(paid)
    cup_hold = brief.lines.get(sku__sku="CUP").holds.get()
    assert cup_hold.rule == "constrained"

    with time_machine.travel(cup_hold.held_until + dt.timedelta(minutes=1), tick=False):
        # Before any sweep: the brief hold has stopped counting on its own.
        rows = {row["sku"]: row for row in api.get(URL).json()["results"]}

    assert rows["MUG"] == {
        "sku": "MUG",
        "title": "MUG title",
        "preorder": False,
        "low_stock_threshold": 0,
        "on_hand": 20,
        "committed": 3,
        "available": 14,
        "held_for_failed_payments": 3,
        "released_early": 0,
        "orders_awaiting_payment": 2,
    }
    assert {k: rows["CUP"][k] for k in rows["CUP"] if k != "title"} == {
        "sku": "CUP",
        "preorder": False,
        "low_stock_threshold": 5,
        "on_hand": 8,
        "committed": 0,
        "available": 8,
        "held_for_failed_payments": 0,
        "released_early": 4,
        "orders_awaiting_payment": 1,
    }


def test_inventory_is_the_stores_own(api, other_store, shelf):
    shelf("MUG", on_hand=5)
    skus_upsert(store=other_store, items=[SkuInput(sku="THEIRS", on_hand=9)])

    rows = api.get(URL).json()["results"]

    assert [row["sku"] for row in rows] == ["MUG"]
    assert api.get(URL, {"sku": "THEIRS"}).json()["results"] == []
    assert [row["sku"] for row in api.get(URL, {"sku": "MUG"}).json()["results"]] == ["MUG"]


def test_inventory_costs_the_same_queries_for_one_sku_or_many(
    api, shelf, order_for, fail_payment, django_assert_num_queries
):
    shelf("MUG", on_hand=5)
    fail_payment(order_for("1001", MUG=1))
    with django_assert_num_queries(3):  # the token, the count, the page
        api.get(URL)
    for n in range(1, 21):
        shelf(f"SKU{n:02d}", on_hand=n)
        fail_payment(order_for(f"2{n:03d}", **{f"SKU{n:02d}": 1}))

    with django_assert_num_queries(3):
        response = api.get(URL)
    assert response.json()["count"] == 21


def test_stock_counts_are_posted_by_sku(api, store):
    response = api.post(
        URL,
        data=json.dumps(
            {
                "skus": [
                    {"sku": "MUG", "on_hand": 12, "title": "Blue mug", "low_stock_threshold": 3},
                    {"sku": "BOOK", "on_hand": 0, "preorder": True},
                ]
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert [(r["sku"], r["on_hand"], r["available"]) for r in response.json()] == [
        ("BOOK", 0, 0),
        ("MUG", 12, 12),
    ]

    again = api.post(
        URL,
        data=json.dumps({"skus": [{"sku": "MUG", "on_hand": 7}]}),
        content_type="application/json",
    )

    mug = SKU.objects.get(store=store, sku="MUG")
    assert again.status_code == 200
    assert (mug.on_hand, mug.title, mug.low_stock_threshold) == (7, "Blue mug", 3)
    assert SKU.objects.count() == 2


def test_invalid_stock_counts_are_refused_and_nothing_written(api):
    response = api.post(
        URL,
        data=json.dumps({"skus": [{"sku": "MUG", "on_hand": 3}, {"sku": "CUP", "on_hand": -1}]}),
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["fields"]["skus"]["1"] == {
        "on_hand": ["Ensure this value is greater than or equal to 0."]
    }
    assert not SKU.objects.exists()


def test_the_inventory_api_needs_a_store_token(client, store):
    assert client.get(URL).status_code in (401, 403)
    bad = Client(HTTP_AUTHORIZATION="Bearer rk_not_a_token")
    assert bad.get(URL).status_code == 401


def test_a_hold_is_shown_on_the_order(api, shelf, order_for, fail_payment):
    shelf("MUG", on_hand=100)
    order = order_for("1001", MUG=2)
    fail_payment(order, decline_code="expired_card")
    hold = hold_of(order)

    line = api.get(f"/api/v1/orders/{order.number}/").json()["lines"][0]

    assert line["hold"]["status"] == "held" and line["hold"]["rule"] == "ample"
    assert line["hold"]["reason"] == hold.reason
