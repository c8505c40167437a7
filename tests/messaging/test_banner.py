"""GET /api/v1/customers/<stripe_customer_id>/banner: what the merchant's storefront
shows a customer with a failed payment, scoped to the token's store."""

from __future__ import annotations

from recovery.models import RecoveryCase
from subscriptions.models import Customer
from subscriptions.services import customer_upsert


def test_a_customer_with_a_failed_payment_gets_a_banner_with_their_link(api, client, card_case):
    response = api.get("/api/v1/customers/cus_test_alice/banner")
    assert response.status_code == 200
    body = response.json()
    assert body["show"] is True
    assert body["severity"] == "warning"
    assert body["text"] == (
        "We couldn't charge your card for Coffee Club ($29.00). "
        "Please add a new card to keep everything running."
    )
    assert (body["amount"], body["currency"], body["open_cases"]) == (2900, "usd", 1)
    assert body["update_url"].startswith("http://127.0.0.1:8000/pay/")
    page = client.get(body["update_url"].replace("http://127.0.0.1:8000", ""))
    assert page.status_code == 200 and "Hi Alice" in page.content.decode()


def test_severity_follows_the_case(api, case, card_case):
    # The soft case is in its grace period: information only, with the date.
    RecoveryCase.objects.filter(pk=card_case.pk).update(status="recovered")
    body = api.get("/api/v1/customers/cus_test_alice/banner").json()
    assert body["severity"] == "info"
    assert "Nothing changes until 14 March" in body["text"]
    RecoveryCase.objects.filter(pk=case.pk).update(stepped_down_at=case.opened_at)
    body = api.get("/api/v1/customers/cus_test_alice/banner").json()
    assert body["severity"] == "critical" and "paused" in body["text"]


def test_no_banner_when_all_is_paid_or_a_dispute_is_open(api, store, card_case):
    customer_upsert(store=store, stripe_id="cus_paid_up", email="p@example.com")
    body = api.get("/api/v1/customers/cus_paid_up/banner").json()
    assert body == {
        "customer": "cus_paid_up",
        "show": False,
        "severity": "none",
        "text": "",
        "update_url": None,
        "amount": None,
        "currency": None,
        "open_cases": 0,
        "expires_at": None,
    }
    Customer.objects.filter(pk=card_case.customer_id).update(disputed_at=card_case.opened_at)
    assert api.get("/api/v1/customers/cus_test_alice/banner").json()["show"] is False


def test_another_stores_customer_is_not_found(api, client, other_store, card_case):
    customer_upsert(store=other_store, stripe_id="cus_elsewhere", email="e@example.com")
    response = api.get("/api/v1/customers/cus_elsewhere/banner")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/customers/cus_test_alice/banner").status_code in (401, 403)
