"""Hostile bodies at the edges get a clear 4xx and write nothing: a Stripe-Signature the
SDK cannot compare, JSON nested deeper than any payload Recoup reads (the Stripe webhook,
the API), bodies over the size limits, and amounts past what a 64-bit column or Stripe
holds."""

from __future__ import annotations

import json

import pytest

from common.bodies import BodyRejected, json_depth_check, json_loads_bounded
from orders.models import Order
from recovery.models import StripeEvent
from tests import stripe_factory as sf

pytestmark = pytest.mark.django_db


def deep(levels: int, *, opener="[", closer="]", inner="1") -> str:
    return opener * levels + inner + closer * levels


# ------------------------------------------------------------------ the depth check


@pytest.mark.parametrize("levels", [1, 10, 64])
def test_json_within_the_depth_limit_parses(levels):
    assert json_loads_bounded(deep(levels), max_bytes=10**6) is not None


@pytest.mark.parametrize(
    "body",
    [deep(65), deep(50_000), deep(65, opener='{"a":', closer="}"), '{"a":' + deep(70) + "}"],
)
def test_json_deeper_than_the_limit_is_refused_before_parsing(body):
    with pytest.raises(BodyRejected, match="nested deeper than 64"):
        json_loads_bounded(body, max_bytes=10**6)


def test_brackets_inside_strings_are_not_nesting():
    body = json.dumps({"note": "[" * 5000 + "{" * 5000, "list": [[["ok"]]]})
    json_depth_check(body)  # no exception
    assert json_loads_bounded(body, max_bytes=10**6)["list"] == [[["ok"]]]
    escaped = json.dumps({"quote": '\\"[[[[' * 100})
    json_depth_check(escaped)


@pytest.mark.parametrize("body", ["NaN", '{"a": Infinity}', b"\xff\xfe{", "{", ""])
def test_what_is_not_json_is_refused(body):
    with pytest.raises(BodyRejected, match="not valid JSON|not UTF-8"):
        json_loads_bounded(body, max_bytes=10**6)


@pytest.mark.parametrize(
    "escape", ["\\ud800", "\\uDC00", "\\ud83d\\ud83d", "\\ude00\\ud83d", "x\\udbff"]
)
def test_an_unpaired_surrogate_escape_is_refused(escape):
    with pytest.raises(BodyRejected, match="unpaired UTF-16 surrogate"):
        json_loads_bounded('{"name": "' + escape + '"}', max_bytes=10**6)


def test_a_surrogate_pair_is_text_like_any_other():
    assert json_loads_bounded('{"name": "\\ud83d\\ude00"}', max_bytes=100) == {"name": "😀"}


def test_a_body_over_the_size_limit_is_refused():
    with pytest.raises(BodyRejected, match="larger than 1 KiB"):
        json_loads_bounded("[" + "1," * 600 + "1]", max_bytes=1024)


# ------------------------------------------------------------------ the Stripe webhook


@pytest.mark.parametrize(
    "header",
    ["t=1,v1=ü", "t=1,v1=\u00e9\u00e9", "t=ü,v1=abc", "t=,v1=", "v1=" + "a" * 64, ",,,", "t=1"],
)
def test_a_stripe_signature_header_the_sdk_cannot_compare_is_a_400(webhooks, header):
    body = json.dumps(sf.event("invoice.payment_failed", sf.failed_invoice()))
    response = webhooks.client.post(
        f"/webhooks/stripe/{webhooks.store.id}/",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header.encode("utf-8").decode("latin-1"),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_signature"
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize("levels", [100, 50_000])
def test_a_signed_stripe_body_nested_deep_is_a_400(webhooks, levels):
    event = sf.event("invoice.payment_failed", sf.failed_invoice())
    text = json.dumps(event)
    body = text[:-1] + ', "extra": ' + deep(levels) + "}"
    response = webhooks.send(event, raw=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_body" and "nested deeper" in error["message"]
    assert StripeEvent.objects.count() == 0


def test_a_stripe_body_over_a_mebibyte_is_a_413(webhooks):
    event = sf.event("invoice.payment_failed", sf.failed_invoice())
    body = json.dumps({**event, "padding": "x" * (1024 * 1024)})
    response = webhooks.send(event, raw=body)
    assert response.status_code == 413
    assert StripeEvent.objects.count() == 0


# ------------------------------------------------------------------ the API


ORDER = {"number": "1001", "currency": "usd", "lines": [{"sku": "MUG", "quantity": 1}]}


def test_an_api_body_nested_deep_is_a_400_in_the_error_shape(api):
    body = json.dumps(ORDER)[:-1] + ', "x": ' + deep(50_000) + "}"
    response = api.post("/api/v1/orders/", body, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parse_error" and "nested deeper than 64" in error["message"]
    assert Order.objects.count() == 0


def test_an_api_body_over_the_size_limit_is_a_400(api):
    body = json.dumps({**ORDER, "padding": "x" * 300_000})
    response = api.post("/api/v1/orders/", body, content_type="application/json")
    assert response.status_code == 400
    assert "larger than" in response.json()["error"]["message"]
    assert Order.objects.count() == 0


@pytest.mark.parametrize("value", [2**63, 10**30, 2**63 - 1, 10**12])
@pytest.mark.parametrize("field", ["amount", "unit_amount"])
def test_an_amount_past_what_stripe_charges_is_a_400_naming_the_field(api, field, value):
    body = json.loads(json.dumps(ORDER))
    if field == "amount":
        body["amount"] = value
    else:
        body["lines"][0]["unit_amount"] = value
    response = api.post("/api/v1/orders/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    where = fields["amount"] if field == "amount" else fields["lines"]["0"]["unit_amount"]
    assert "less than or equal to 999999999999" in where[0]
    assert Order.objects.count() == 0


def test_lines_that_add_up_past_what_stripe_charges_are_a_400(api):
    body = {**ORDER, "lines": [{"sku": "MUG", "quantity": 1_000_000, "unit_amount": 10**9}]}
    response = api.post("/api/v1/orders/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert "more than 999999999999" in str(response.json()["error"]["fields"]["lines"])
    assert Order.objects.count() == 0


def test_a_signed_stripe_body_with_a_nul_is_a_400(webhooks):
    """PostgreSQL's jsonb cannot hold \\u0000: refused before the INSERT, on both databases."""
    invoice = sf.failed_invoice()
    invoice["customer_name"] = "Alice\u0000Example"
    response = webhooks.send(sf.event("invoice.payment_failed", invoice))
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]
    assert StripeEvent.objects.count() == 0


def test_an_api_body_with_a_nul_is_a_400(api):
    body = {**ORDER, "number": "10\u000001"}
    response = api.post("/api/v1/orders/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert Order.objects.count() == 0


def test_a_duplicate_stripe_delivery_is_stored_once_and_answered_as_one(webhooks):
    event = sf.event("invoice.payment_failed", sf.failed_invoice())
    first, again = webhooks.send(event), webhooks.send(event)
    assert first.json() == {"received": True, "duplicate": False}
    assert again.json() == {"received": True, "duplicate": True}
    row = StripeEvent.objects.get()
    assert row.payload == event and row.event_id == event["id"]


def test_a_signed_stripe_body_with_a_lone_surrogate_is_a_400(webhooks):
    invoice = sf.failed_invoice()
    event = sf.event("invoice.payment_failed", invoice)
    body = json.dumps(event).replace('"Alice Example"', '"Alice \\ud800"')
    assert "\\ud800" in body
    response = webhooks.send(event, raw=body)
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]["message"]
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize(
    "path", ["/api/v1/nope/", "/api/v1/cases/abc/", "/api/v1/customers/a%2Fb/access", "/api/"]
)
def test_an_api_address_no_endpoint_answers_is_a_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_api_address_missing_its_slash_is_redirected_not_refused(api):
    response = api.get("/api/v1/cases?status=open")
    assert response.status_code == 301
    assert response["Location"] == "/api/v1/cases/?status=open"
