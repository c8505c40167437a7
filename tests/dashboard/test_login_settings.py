"""Logins (rate-limited), password change and reset, and the operators' settings pages."""

# ruff: noqa: F811 - tests take the imported `billing_stripe` fixture by its name
from __future__ import annotations

import pytest
from django.core import mail
from django.core.cache import cache
from django.test import Client

from orders.models import HoldPolicy
from recovery.models import RetryPolicy
from stores.models import Store
from support.models import SupportPolicy
from tests.dashboard.billing_stripe import billing_stripe  # noqa: F401 - a fixture
from tests.dashboard.conftest import RETRY_FORM


@pytest.fixture(autouse=True)
def clear_cache():
    cache.clear()
    yield
    cache.clear()


def test_login_lands_on_the_users_store(store, operator):
    client = Client()
    response = client.post(
        "/accounts/login/", {"username": "olivia", "password": "pw-olivia-123"}, follow=True
    )
    assert response.redirect_chain[-1][0] == f"/s/{store.id}/"
    assert "Bean Box" in response.content.decode()


def test_login_is_rate_limited_per_username(store, operator):
    client = Client()
    for _ in range(5):
        bad = client.post("/accounts/login/", {"username": "olivia", "password": "nope"})
        assert bad.status_code == 200
    # Even the right password is refused until the window passes.
    blocked = client.post("/accounts/login/", {"username": "olivia", "password": "pw-olivia-123"})
    assert blocked.status_code == 429
    assert "Too many failed attempts" in blocked.content.decode()
    assert "_auth_user_id" not in client.session
    # Another user from elsewhere is not affected.
    other = Client(REMOTE_ADDR="10.0.0.9")
    assert other.post("/accounts/login/", {"username": "arjun", "password": "x"}).status_code == 200


def test_logout_is_a_post(operator_client, store):
    assert operator_client.post("/accounts/logout/")["Location"] == "/accounts/login/"
    assert operator_client.get(f"/s/{store.id}/").status_code == 302


def test_password_change_and_reset(store, operator, operator_client):
    response = operator_client.post(
        "/accounts/password_change/",
        {
            "old_password": "pw-olivia-123",
            "new_password1": "a-much-longer-pass-42",
            "new_password2": "a-much-longer-pass-42",
        },
    )
    assert response.status_code == 302
    assert Client().login(username="olivia", password="a-much-longer-pass-42")

    operator.email = "olivia@beanbox.example"
    operator.save()
    Client().post("/accounts/password_reset/", {"email": "olivia@beanbox.example"})
    assert len(mail.outbox) == 1
    assert "/accounts/reset/" in mail.outbox[0].body


def test_retry_policy_saves_a_new_version(store, operator_client):
    url = f"/s/{store.id}/settings/retry-policy/"
    assert "(defaults)" in operator_client.get(url).content.decode()
    form = dict(RETRY_FORM)
    operator_client.post(url, form)
    policy = RetryPolicy.objects.get(store=store)
    assert (policy.version, policy.max_retries, policy.window_days_month, policy.end_action) == (
        1,
        3,
        28,
        "pause",
    )
    assert policy.grace_fraction == pytest.approx(0.4) and policy.created_by == "olivia"
    refused = operator_client.post(url, {**form, "max_retries": "12"}, follow=True).content.decode()
    assert "max_retries must be between 0 and 8" in refused
    assert RetryPolicy.objects.filter(store=store).count() == 1


def test_escalation_and_hold_settings(store, operator_client):
    operator_client.post(
        f"/s/{store.id}/settings/escalation/",
        {
            "high_value_mrr": "250.00",
            "ltv": "1500",
            "churn_risk_threshold": "70",
            "target_response_hours": "2",
            "route_on_reply": "on",
        },
    )
    store.refresh_from_db()
    assert (store.high_value_mrr_threshold, store.churn_risk_threshold) == (25_000, 70)
    policy = SupportPolicy.objects.get(store=store)
    assert (policy.ltv_threshold, policy.target_response_minutes, policy.route_on_reply) == (
        150_000,
        120,
        True,
    )
    page = operator_client.get(f"/s/{store.id}/settings/escalation/").content.decode()
    assert (
        'value="250.00"' in page and "Visited the cancellation page: <strong>+25</strong>" in page
    )

    operator_client.post(
        f"/s/{store.id}/settings/holds/", {"brief_hold_hours": "24", "retry_margin_hours": "3"}
    )
    hold = HoldPolicy.objects.get(store=store)
    assert (hold.brief_hold_hours, hold.retry_margin_hours) == (24, 3)


def test_message_templates_preview_and_save(store, operator_client):
    from messaging.models import MessageTemplate

    url = f"/s/{store.id}/settings/templates/soft_first_notice/email/"
    listing = operator_client.get(f"/s/{store.id}/settings/templates/").content.decode()
    assert "Payment failed: first notice" in listing
    page = operator_client.get(url).content.decode()
    assert "Recoup's default wording is in force" in page and "data-preview" in page

    preview = operator_client.post(
        url,
        {
            "action": "preview",
            "subject": "Hi {{ first_name }}",
            "body_text": "Hello {{ first_name }}, fix it: {{ pay_url }}",
        },
    ).content.decode()
    assert "Hello " in preview and "{{ first_name }}" not in preview.split("data-preview")[1]
    assert not MessageTemplate.objects.filter(store=store).exists()

    broken = operator_client.post(
        url, {"action": "save", "subject": "x", "body_text": "Hi {{ first_name "}
    ).content.decode()
    assert "line 1" in broken.lower() or "Text" in broken
    assert not MessageTemplate.objects.filter(store=store).exists()

    operator_client.post(
        url,
        {
            "action": "save",
            "subject": "Quick fix",
            "body_text": "Hello {{ first_name }} {{ pay_url }}",
        },
    )
    saved = MessageTemplate.objects.get(store=store, purpose="soft_first_notice", channel="email")
    assert saved.subject == "Quick fix" and saved.updated_by == "olivia"


def test_stripe_connection_check_and_keys(store, operator_client, billing_stripe):
    url = f"/s/{store.id}/settings/connections/"
    page = operator_client.get(url).content.decode()
    assert f"/webhooks/stripe/{store.id}/" in page and "sk_test_…3456" in page or "sk_test" in page
    checked = operator_client.post(f"{url}stripe-check/", follow=True).content.decode()
    assert "Connected to Stripe account Bean Box Coffee (test mode)." in checked
    assert billing_stripe.requests_to("GET", "/v1/account")

    refused = operator_client.post(f"{url}stripe-keys/", {"secret_key": "pk_live_x"}, follow=True)
    assert "starts with sk_" in refused.content.decode()
    operator_client.post(
        f"{url}stripe-keys/", {"secret_key": "sk_live_newkey_987654", "webhook_secret": ""}
    )
    store = Store.objects.get(pk=store.pk)
    assert store.stripe_secret_key == "sk_live_newkey_987654" and store.gateway == "stripe"
    assert store.stripe_webhook_secret.startswith("whsec_")  # blank kept the old one


def test_send_test_email(store, operator_client):
    operator_client.post(
        f"/s/{store.id}/settings/connections/test-email/", {"to": "ops@beanbox.example"}
    )
    assert [m.to for m in mail.outbox] == [["ops@beanbox.example"]]
    from messaging import sms

    bad = operator_client.post(
        f"/s/{store.id}/settings/connections/test-sms/", {"to": "0151"}, follow=True
    )
    assert "international format" in bad.content.decode()
    operator_client.post(f"/s/{store.id}/settings/connections/test-sms/", {"to": "+4915112345678"})
    assert [m.to for m in sms.outbox][-1:] == ["+4915112345678"]
