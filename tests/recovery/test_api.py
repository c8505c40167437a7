import datetime as dt
import json

import pytest
import yaml
from django.test import Client
from django.utils import timezone

from recovery.models import RecoveryCase, StripeEvent
from stores.models import ApiToken
from stores.services import api_token_create
from tests import stripe_factory as sf

LIST_FIELDS = {
    "id",
    "status",
    "track",
    "decline_code",
    "advice_code",
    "amount",
    "currency",
    "customer",
    "invoice",
    "payment_intent",
    "order",
    "opened_at",
    "closed_at",
    "next_action_at",
    "attempt_count",
    "escalated",
    "recovered_via",
}


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.fixture
def other_api(other_store) -> Client:
    return bearer(api_token_create(store=other_store)[1])


@pytest.fixture
def three_cases(webhooks):
    """Alice: an open soft decline; Bob: an open card update; Carol: recovered."""
    alice = sf.failed_invoice(customer="cus_test_alice", decline_code="insufficient_funds")
    bob = sf.failed_invoice(
        customer="cus_test_bob",
        subscription="sub_test_bob",
        decline_code="expired_card",
        email="bob@example.com",
        amount=4900,
    )
    carol = sf.failed_invoice(
        customer="cus_test_carol", subscription="sub_test_carol", email="carol@example.com"
    )
    for invoice in (alice, bob, carol):
        webhooks.deliver("invoice.payment_failed", invoice)
    webhooks.deliver("invoice.paid", sf.paid_invoice(carol))
    return {"alice": alice, "bob": bob, "carol": carol}


# ---------------------------------------------------------------- authentication


def test_list_without_a_token_is_refused_with_a_json_error(client, failed_invoice):
    response = client.get("/api/v1/cases/")

    assert response.status_code in (401, 403)
    error = response.json()["error"]
    assert error["code"] == "not_authenticated"
    assert error["message"]
    assert "invoice" not in response.content.decode()


def test_unknown_token_is_refused(failed_invoice):
    response = bearer("rk_this-token-was-never-issued").get("/api/v1/cases/")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Unknown or revoked API token."


def test_revoked_token_is_refused(api, api_token, failed_invoice):
    assert api.get("/api/v1/cases/").status_code == 200
    ApiToken.objects.update(revoked_at=timezone.now())

    response = api.get("/api/v1/cases/")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Unknown or revoked API token."
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_malformed_authorization_header_says_how_to_send_it(failed_invoice):
    response = Client(HTTP_AUTHORIZATION="Bearer two parts").get("/api/v1/cases/")

    assert response.status_code == 401
    assert "Authorization: Bearer <token>" in response.json()["error"]["message"]


# ---------------------------------------------------------------- tenancy


def test_another_stores_token_never_lists_this_stores_cases(other_api, failed_invoice):
    response = other_api.get("/api/v1/cases/")

    assert response.status_code == 200
    assert response.json()["count"] == 0
    assert response.json()["results"] == []


def test_another_stores_token_gets_404_for_this_stores_case(other_api, failed_invoice):
    case = RecoveryCase.objects.get()

    response = other_api.get(f"/api/v1/cases/{case.pk}/")

    assert response.status_code == 404
    assert "error" in response.json()
    assert failed_invoice["id"] not in response.content.decode()


def test_another_stores_token_filtering_by_this_stores_customer_finds_nothing(
    other_api, failed_invoice
):
    response = other_api.get("/api/v1/cases/", {"customer": "cus_test_alice"})
    assert response.json()["count"] == 0


# ---------------------------------------------------------------- list


def test_list_shows_every_documented_field_with_the_cases_values(api, store, failed_invoice):
    response = api.get("/api/v1/cases/")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    (item,) = body["results"]
    assert LIST_FIELDS <= set(item)

    case = RecoveryCase.objects.get(store=store)
    event_created = StripeEvent.objects.get().payload["created"]
    payment_intent = sf.invoice_payment_intents(failed_invoice["id"])[-1]["id"]
    assert item["id"] == case.pk
    assert item["status"] == "open"
    assert item["track"] == "soft"
    assert item["decline_code"] == "insufficient_funds"
    assert item["advice_code"] == ""
    assert item["amount"] == 2900
    assert item["currency"] == "usd"
    assert item["customer"] == "cus_test_alice"
    assert item["invoice"] == failed_invoice["id"]
    assert item["payment_intent"] == payment_intent
    assert item["order"] is None
    assert parse_time(item["opened_at"]) == dt.datetime.fromtimestamp(event_created, tz=dt.UTC)
    assert item["closed_at"] is None
    assert case.next_action_at is not None
    assert parse_time(item["next_action_at"]) == case.next_action_at
    assert item["attempt_count"] == 1
    assert item["escalated"] is False
    assert item["recovered_via"] == ""


def test_list_shows_a_recovered_case_as_closed(api, three_cases):
    carol = api.get("/api/v1/cases/", {"customer": "cus_test_carol"}).json()["results"][0]

    assert carol["status"] == "recovered"
    assert carol["closed_at"] is not None
    assert carol["recovered_via"] == "stripe_retry"
    assert carol["next_action_at"] is None


def test_list_is_paginated_with_count_and_results(api, three_cases):
    body = api.get("/api/v1/cases/").json()

    assert body["count"] == 3
    assert len(body["results"]) == 3
    assert {c["customer"] for c in body["results"]} == {
        "cus_test_alice",
        "cus_test_bob",
        "cus_test_carol",
    }
    assert body["next"] is None


def test_list_filters_by_stripe_customer_id(api, three_cases):
    body = api.get("/api/v1/cases/", {"customer": "cus_test_bob"}).json()

    assert body["count"] == 1
    assert [c["invoice"] for c in body["results"]] == [three_cases["bob"]["id"]]
    assert api.get("/api/v1/cases/", {"customer": "cus_nobody"}).json()["count"] == 0


def test_list_filters_by_status(api, three_cases):
    open_ = api.get("/api/v1/cases/", {"status": "open"}).json()
    recovered = api.get("/api/v1/cases/", {"status": "recovered"}).json()

    assert {c["customer"] for c in open_["results"]} == {"cus_test_alice", "cus_test_bob"}
    assert open_["count"] == 2
    assert [c["customer"] for c in recovered["results"]] == ["cus_test_carol"]


def test_list_filters_by_track(api, three_cases):
    card_update = api.get("/api/v1/cases/", {"track": "card_update"}).json()

    assert card_update["count"] == 1
    (bob,) = card_update["results"]
    assert (bob["customer"], bob["decline_code"], bob["amount"]) == (
        "cus_test_bob",
        "expired_card",
        4900,
    )


def test_list_combines_filters(api, three_cases):
    body = api.get("/api/v1/cases/", {"status": "open", "track": "soft"}).json()
    assert [c["customer"] for c in body["results"]] == ["cus_test_alice"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"status": "pending"}, "Unknown status 'pending'; use one of: open, recovered"),
        ({"track": "gentle"}, "Unknown track 'gentle'; use one of: soft, card_update"),
    ],
)
def test_an_unknown_filter_value_is_a_400_that_lists_the_allowed_values(
    api, failed_invoice, params, message
):
    response = api.get("/api/v1/cases/", params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_filter"
    assert message in error["message"]


# ---------------------------------------------------------------- detail


def test_detail_has_the_attempts_with_decline_codes_and_the_timeline(api, webhooks):
    invoice = sf.failed_invoice(decline_code="insufficient_funds", advice_code="try_again_later")
    webhooks.deliver("invoice.payment_failed", invoice)
    again = sf.failed_invoice(
        invoice_id=invoice["id"], attempt_count=2, decline_code="expired_card"
    )
    webhooks.deliver("invoice.payment_failed", again)
    case = RecoveryCase.objects.get()

    response = api.get(f"/api/v1/cases/{case.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert LIST_FIELDS <= set(body)
    assert (body["id"], body["invoice"], body["track"]) == (case.pk, invoice["id"], "card_update")
    assert [
        (a["outcome"], a["decline_code"], a["advice_code"], a["card_last4"])
        for a in body["attempts"]
    ] == [
        ("failed", "insufficient_funds", "try_again_later", "4242"),
        ("failed", "expired_card", "", "4242"),
    ]
    kinds = [e["kind"] for e in body["events"]]
    assert kinds[0] == "opened"
    assert "track_changed" in kinds
    assert all(e["message"] for e in body["events"])
    times = [parse_time(e["at"]) for e in body["events"]]
    assert times == sorted(times)


def test_detail_of_a_missing_case_is_404(api, failed_invoice):
    response = api.get("/api/v1/cases/999999/")
    assert response.status_code == 404
    assert response.json()["error"]["message"]


# ---------------------------------------------------------------- schema


def openapi_document(client: Client) -> dict:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_schema_is_an_openapi_document_with_the_cases_endpoints(client, db):
    document = openapi_document(client)

    assert document["openapi"].startswith("3.")
    assert "/api/v1/cases/" in document["paths"]
    assert "/api/v1/cases/{id}/" in document["paths"]
    parameters = {p["name"] for p in document["paths"]["/api/v1/cases/"]["get"]["parameters"]}
    assert {"customer", "status", "track"} <= parameters


def test_schema_json_format_is_served_too(client, db):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    assert "/api/v1/cases/" in json.loads(response.content)["paths"]


def test_schema_documents_the_bearer_token_the_api_requires(client, db):
    document = openapi_document(client)

    schemes = document.get("components", {}).get("securitySchemes", {})
    assert any(
        s.get("type") == "http" and s.get("scheme", "").lower() == "bearer"
        for s in schemes.values()
    ), schemes
    operation = document["paths"]["/api/v1/cases/"]["get"]
    assert operation.get("security"), operation
