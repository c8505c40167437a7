"""The store settings that say where customer facts live in Stripe, and the Stripe request
budget: on the Connections settings page, checked by a Django form."""

from __future__ import annotations

import pytest
from django.test import Client

from stores.models import Store


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client()
    assert client.login(username="olivia", password="pw-olivia-123")
    return client


def url(store) -> str:
    return f"/s/{store.id}/settings/connections/"


def test_the_page_shows_the_current_keys(store, operator_client):
    page = operator_client.get(url(store)).content.decode()
    assert 'name="customer_timezone_key"' in page and 'value="timezone"' in page
    assert 'name="sms_consent_key"' in page and 'value="sms_opt_in"' in page
    assert 'name="stripe_requests_per_second"' in page


def test_saving_the_keys_and_the_budget(store, operator_client):
    response = operator_client.post(
        url(store),
        {
            "customer_timezone_key": " tz ",
            "sms_consent_key": "texts_ok",
            "stripe_requests_per_second": "40",
        },
    )
    assert response.status_code == 302
    store.refresh_from_db()
    assert (store.customer_timezone_key, store.sms_consent_key, store.stripe_rate) == (
        "tz",
        "texts_ok",
        40,
    )
    # Blank: Stripe's default for the key's mode (a test key: 25 a second).
    operator_client.post(
        url(store),
        {
            "customer_timezone_key": "tz",
            "sms_consent_key": "texts_ok",
            "stripe_requests_per_second": "",
        },
    )
    store.refresh_from_db()
    assert (store.stripe_requests_per_second, store.stripe_rate) == (None, 25)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("customer_timezone_key", "", "required"),
        ("sms_consent_key", "sms[opt_in]", "[ or ]"),
        ("sms_consent_key", "k" * 41, "at most 40"),
        ("stripe_requests_per_second", "0", "greater than or equal to 1"),
        ("stripe_requests_per_second", "fast", "whole number"),
    ],
)
def test_bad_input_is_shown_and_nothing_is_saved(store, operator_client, field, value, message):
    data = {
        "customer_timezone_key": "timezone",
        "sms_consent_key": "sms_opt_in",
        "stripe_requests_per_second": "",
        field: value,
    }
    response = operator_client.post(url(store), data)
    assert response.status_code == 200
    assert message in response.content.decode()
    fresh = Store.objects.get(pk=store.pk)
    assert (fresh.customer_timezone_key, fresh.sms_consent_key) == ("timezone", "sms_opt_in")
    assert fresh.stripe_requests_per_second is None


def test_agents_and_outsiders_cannot_change_them(store, agent, outsider):
    for user, password in ((agent, "pw-arjun-123"), (outsider, "pw-mallory-1")):
        client = Client()
        assert client.login(username=user.username, password=password)
        response = client.post(url(store), {"customer_timezone_key": "x", "sms_consent_key": "y"})
        assert response.status_code == 404
    assert Store.objects.get(pk=store.pk).customer_timezone_key == "timezone"
