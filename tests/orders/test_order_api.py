"""POST /api/v1/orders/: create or update an order and its lines by number, idempotently."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from orders.models import InventoryHold, Order, OrderLine
from orders.services import SkuInput, skus_upsert
from recovery.models import RecoveryCase
from stores.services import api_token_create
from subscriptions.models import Customer

from .conftest import payment_intent

pytestmark = pytest.mark.django_db

URL = "/api/v1/orders/"


def post(client: Client, body: dict):
    return client.post(URL, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def other_api(other_store) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(store=other_store)[1]}")


@pytest.fixture
def stocked(shelf):
    shelf("MUG", on_hand=50, title="Blue mug")
    shelf("CUP", on_hand=50, title="Cup")


BODY = {
    "number": "1001",
    "customer": "cus_shop",
    "customer_email": "sam@example.com",
    "currency": "usd",
    "lines": [
        {"sku": "MUG", "quantity": 2, "unit_amount": 1500},
        {"sku": "CUP", "quantity": 1, "unit_amount": 900},
    ],
}


def test_an_order_is_created_with_its_lines(api, store, stocked):
    response = post(api, BODY)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == "1001" and body["customer"] == "cus_shop"
    assert (body["status"], body["payment_status"], body["fulfillment_status"]) == (
        "pending",
        "pending",
        "unfulfilled",
    )
    assert body["amount"] == 3900 and body["currency"] == "usd"
    assert [(line["sku"], line["quantity"], line["hold"]) for line in body["lines"]] == [
        ("MUG", 2, None),
        ("CUP", 1, None),
    ]
    order = Order.objects.get(store=store, number="1001")
    assert order.customer.email == "sam@example.com"


def test_the_same_order_sent_twice_is_one_order_with_the_same_lines(api, stocked):
    first = post(api, BODY)
    order = Order.objects.get()
    updated_at = order.updated_at

    second = post(api, BODY)

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    assert Order.objects.count() == 1 and OrderLine.objects.count() == 2
    order.refresh_from_db()
    assert order.updated_at == updated_at  # nothing was rewritten


def test_sending_an_order_again_updates_its_lines(api, stocked):
    post(api, BODY)

    response = post(
        api,
        {**BODY, "lines": [{"sku": "CUP", "quantity": 3, "unit_amount": 900}], "amount": 2500},
    )

    assert response.status_code == 200, response.content
    assert [(line["sku"], line["quantity"]) for line in response.json()["lines"]] == [("CUP", 3)]
    assert response.json()["amount"] == 2500
    assert list(OrderLine.objects.values_list("sku__sku", "quantity")) == [("CUP", 3)]


@pytest.mark.parametrize(
    "body, fields",
    [
        ({"lines": []}, {"number"}),
        ({**BODY, "lines": [{"sku": "MUG", "quantity": 0}]}, {"lines"}),
        ({**BODY, "lines": "MUG"}, {"lines"}),
        ({**BODY, "customer_email": "not-an-email"}, {"customer_email"}),
        ({**BODY, "currency": "dollars"}, {"currency"}),
        ({**BODY, "amount": -1}, {"amount"}),
        (
            {
                **BODY,
                "lines": [{"sku": "MUG", "quantity": 1}, {"sku": "MUG", "quantity": 2}],
            },
            {"lines"},
        ),
    ],
)
def test_invalid_orders_are_refused_with_field_messages_and_nothing_written(
    api, stocked, body, fields
):
    response = post(api, body)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert set(error["fields"]) == fields
    assert not Order.objects.exists() and not OrderLine.objects.exists()
    assert not Customer.objects.exists()


def test_an_unknown_sku_is_refused_naming_the_line_and_nothing_written(api, stocked):
    body = {**BODY, "lines": [*BODY["lines"], {"sku": "TEAPOT", "quantity": 1}]}

    response = post(api, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert list(error["fields"]["lines"]) == ["2"]  # the third line
    assert error["fields"]["lines"]["2"]["sku"][0].startswith("Unknown SKU 'TEAPOT' in this store")
    assert not Order.objects.exists() and not Customer.objects.exists()


def test_a_sku_of_another_store_is_unknown_here(api, other_store, stocked):
    skus_upsert(store=other_store, items=[SkuInput(sku="THEIRS", on_hand=5)])

    response = post(api, {**BODY, "lines": [{"sku": "THEIRS", "quantity": 1}]})

    assert response.status_code == 400
    assert not Order.objects.exists()


def test_another_store_cannot_touch_this_stores_order(api, other_api, store, other_store, shelf):
    shelf("MUG", on_hand=10)
    skus_upsert(store=other_store, items=[SkuInput(sku="MUG", on_hand=10)])
    post(api, {"number": "1001", "lines": [{"sku": "MUG", "quantity": 2}]})

    response = post(other_api, {"number": "1001", "lines": [{"sku": "MUG", "quantity": 9}]})

    assert response.status_code == 201  # its own order #1001, not ours
    ours = Order.objects.get(store=store, number="1001")
    assert list(ours.lines.values_list("quantity", flat=True)) == [2]
    assert Order.objects.get(store=other_store).lines.get().quantity == 9
    assert other_api.get(f"{URL}1001/").json()["lines"][0]["quantity"] == 9
    assert api.get(f"{URL}1001/").json()["lines"][0]["quantity"] == 2


def test_an_order_of_another_store_is_not_found(api, other_api, stocked):
    post(api, BODY)

    assert other_api.get(f"{URL}1001/").status_code == 404
    assert api.get(f"{URL}9999/").status_code == 404


def test_the_orders_api_needs_a_store_token(client, stocked):
    assert post(client, BODY).status_code in (401, 403)
    assert not Order.objects.exists()


def test_held_lines_cannot_change_but_the_same_order_can_be_sent_again(api, stocked, fail_payment):
    post(api, BODY)
    order = Order.objects.get()
    fail_payment(order)
    assert InventoryHold.objects.filter(status="held").count() == 2

    again = post(api, BODY)
    changed = post(api, {**BODY, "lines": [{"sku": "MUG", "quantity": 5, "unit_amount": 1500}]})

    assert again.status_code == 200
    assert [line["hold"]["status"] for line in again.json()["lines"]] == ["held", "held"]
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "order_locked"
    assert "stock of CUP, MUG is held or committed" in changed.json()["error"]["message"]
    assert list(OrderLine.objects.order_by("id").values_list("sku__sku", "quantity")) == [
        ("MUG", 2),
        ("CUP", 1),
    ]


def test_an_order_posted_with_its_payment_intent_is_linked_by_that_id(api, webhooks, stocked):
    post(api, {**BODY, "payment_intent": "pi_checkout_1"})
    order = Order.objects.get()
    pi = payment_intent(order, id="pi_checkout_1", metadata={})  # no order_id in metadata

    webhooks.deliver("payment_intent.payment_failed", pi)

    assert RecoveryCase.objects.get().order == order
    assert InventoryHold.objects.filter(order_line__order=order).count() == 2
    conflict = post(api, {**BODY, "payment_intent": "pi_other"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["fields"] == {
        "payment_intent": ["Already linked to another payment."]
    }
