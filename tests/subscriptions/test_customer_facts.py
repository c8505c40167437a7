"""Customer facts as Stripe reports them (customer.created / customer.updated through the
signed webhook) and as the merchant sets them through the API: time zone and its source,
phone, locale, card country; a zone that changes re-plans the customer's open cases."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.test import Client

from recovery.domain import timing
from recovery.models import RecoveryCase, StripeEvent
from stores.services import api_token_create
from subscriptions.models import Customer, PaymentMethod
from tests import stripe_factory as sf

# A Wednesday, 10:00 in the store's zone (Europe/Berlin, UTC+1).
T0 = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
LA = zoneinfo.ZoneInfo("America/Los_Angeles")
NO_ADDRESS = {
    "city": None,
    "country": None,
    "line1": None,
    "line2": None,
    "postal_code": None,
    "state": None,
}


@pytest.fixture(autouse=True)
def _frozen(time_machine):
    time_machine.move_to(T0, tick=False)
    return time_machine


def stripe_customer(stripe_id: str = "cus_test_alice", *, address=None, **fields) -> dict:
    fields = {"email": "alice@example.com", "name": "Alice Example", **fields}
    return sf.stripe_object(
        "customer", id=stripe_id, address={**NO_ADDRESS, **(address or {})}, **fields
    )


def customer_event(webhooks, type_: str, data: dict, *, at: dt.datetime, previous=None):
    return webhooks.deliver(type_, data, created=int(at.timestamp()), previous_attributes=previous)


def get(stripe_id: str = "cus_test_alice") -> Customer:
    return Customer.objects.get(stripe_id=stripe_id)


def open_case(webhooks, **fields) -> RecoveryCase:
    invoice = sf.failed_invoice(**fields)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])


# ------------------------------------------------------------------ from Stripe


def test_customer_created_brings_address_zone_phone_and_locale(webhooks, store):
    event = customer_event(
        webhooks,
        "customer.created",
        stripe_customer(
            address={"country": "US", "state": "CA", "postal_code": "94103"},
            phone="(415) 555-2671",
            preferred_locales=["fr-CA", "en"],
        ),
        at=T0,
    )
    assert StripeEvent.objects.get(event_id=event["id"]).outcome == "processed"
    customer = get()
    assert (customer.time_zone, customer.time_zone_source) == ("America/Los_Angeles", "address")
    assert (customer.address_country, customer.address_state, customer.address_postal_code) == (
        "US",
        "CA",
        "94103",
    )
    # Read in the address's country, written in E.164.
    assert customer.phone == "+14155552671"
    assert customer.locale == "fr-CA"
    assert customer.stripe_updated == T0


def test_a_zip_alone_places_a_us_customer(webhooks, store):
    customer_event(
        webhooks,
        "customer.created",
        stripe_customer(address={"country": "US", "postal_code": "79901"}),
        at=T0,
    )
    assert (get().time_zone, get().time_zone_source) == ("America/Denver", "address")  # El Paso


def test_the_merchants_metadata_zone_wins_and_a_bad_one_is_ignored(webhooks, store):
    customer_event(
        webhooks,
        "customer.created",
        stripe_customer(
            address={"country": "US", "state": "NY"}, metadata={"timezone": "asia/tokyo"}
        ),
        at=T0,
    )
    assert (get().time_zone, get().time_zone_source) == ("Asia/Tokyo", "metadata")
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(address={"country": "US", "state": "NY"}, metadata={"timezone": "Tokyo"}),
        at=T0 + MIN,
        previous={"metadata": {"timezone": "asia/tokyo"}},
    )
    assert (get().time_zone, get().time_zone_source) == ("America/New_York", "address")


def test_the_store_setting_names_the_metadata_key(webhooks, store):
    store.customer_timezone_key = "tz"
    store.save(update_fields=["customer_timezone_key"])
    customer_event(
        webhooks,
        "customer.created",
        stripe_customer(metadata={"timezone": "Asia/Tokyo", "tz": "Europe/Lisbon"}),
        at=T0,
    )
    assert (get().time_zone, get().time_zone_source) == ("Europe/Lisbon", "metadata")


def test_without_an_address_a_one_zone_card_country_places_the_customer(webhooks, store):
    customer_event(webhooks, "customer.created", stripe_customer(), at=T0)
    assert (get().time_zone, get().time_zone_source) == ("", "store")
    card = sf.stripe_object("payment_method", id="pm_test_fr", customer="cus_test_alice")
    card["card"] = {**card["card"], "country": "FR"}
    setup = sf.stripe_object(
        "setup_intent", id=sf.uid("seti"), customer="cus_test_alice", payment_method=card
    )
    webhooks.deliver("setup_intent.succeeded", setup)
    assert PaymentMethod.objects.get(stripe_id="pm_test_fr").country == "FR"
    assert (get().time_zone, get().time_zone_source) == ("Europe/Paris", "card_country")


def test_a_card_from_a_large_country_leaves_the_store_zone(webhooks, store):
    customer_event(webhooks, "customer.created", stripe_customer(), at=T0)
    card = sf.stripe_object("payment_method", id="pm_test_us", customer="cus_test_alice")
    webhooks.deliver("payment_method.automatically_updated", card)
    assert PaymentMethod.objects.get(stripe_id="pm_test_us").country == "US"
    assert (get().time_zone, get().time_zone_source) == ("", "store")


def test_an_invalid_phone_is_kept_for_no_one_and_nothing_breaks(webhooks, store):
    customer_event(webhooks, "customer.created", stripe_customer(phone="call me maybe"), at=T0)
    assert get().phone == ""
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(phone="0151 12345678"),  # national: read in the store's country
        at=T0 + MIN,
        previous={"phone": "call me maybe"},
    )
    assert get().phone == "+4915112345678"


def test_an_older_snapshot_arriving_late_changes_nothing(webhooks, store):
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(address={"country": "US", "state": "NY"}, preferred_locales=["en-US"]),
        at=T0,
        previous={"address": NO_ADDRESS},
    )
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(address={"country": "US", "state": "CA"}, preferred_locales=["es"]),
        at=T0 - dt.timedelta(hours=1),
        previous={"address": NO_ADDRESS},
    )
    customer = get()
    assert (customer.time_zone, customer.address_state, customer.locale) == (
        "America/New_York",
        "NY",
        "en-US",
    )


def test_a_zone_learned_after_the_case_opened_moves_its_retry(webhooks, store):
    case = open_case(webhooks)
    before = case.retry_at
    assert before is not None and before.astimezone(store.tzinfo).hour in timing.DAYTIME_HOURS
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(metadata={"timezone": "America/Los_Angeles"}),
        at=T0 + 10 * MIN,
        previous={"metadata": {"timezone": None}},
    )
    case.refresh_from_db()
    assert case.retry_at != before
    assert case.retry_at.astimezone(LA).hour in timing.DAYTIME_HOURS
    assert case.next_action_at <= case.retry_at
    assert case.events.filter(kind="retry_scheduled").count() == 2


def test_an_update_that_leaves_the_zone_leaves_the_plan(webhooks, store):
    case = open_case(webhooks)
    before = (case.retry_at, case.retry_reason, case.next_action_at)
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(name="Alice Liddell"),
        at=T0 + 10 * MIN,
        previous={"name": "Alice Example"},
    )
    case.refresh_from_db()
    assert (case.retry_at, case.retry_reason, case.next_action_at) == before
    assert get().name == "Alice Liddell"


# ------------------------------------------------------------------ from the merchant


def test_the_api_reads_and_sets_the_zone(api, webhooks, store):
    case = open_case(webhooks)
    before = case.retry_at
    url = "/api/v1/customers/cus_test_alice/"
    body = api.get(url).json()
    assert (body["time_zone"], body["time_zone_source"]) == ("Europe/Berlin", "store")
    response = api.patch(url, {"time_zone": "america/los_angeles"}, content_type="application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["customer"], body["time_zone"], body["time_zone_source"]) == (
        "cus_test_alice",
        "America/Los_Angeles",
        "api",
    )
    case.refresh_from_db()
    assert case.retry_at != before and case.retry_at.astimezone(LA).hour in timing.DAYTIME_HOURS


def test_a_bad_zone_is_refused_with_a_message(api, webhooks, store):
    open_case(webhooks)
    url = "/api/v1/customers/cus_test_alice/"
    response = api.patch(url, {"time_zone": "Mars/Olympus"}, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "Mars/Olympus" in str(error) and "IANA" in str(error)
    assert api.patch(url, {}, content_type="application/json").status_code == 400
    assert get().time_zone_source == "store"


def test_the_merchants_zone_beats_later_guesses_but_not_a_later_metadata_change(
    api, webhooks, store
):
    customer_event(webhooks, "customer.created", stripe_customer(), at=T0)
    url = "/api/v1/customers/cus_test_alice/"
    api.patch(url, {"time_zone": "Europe/Paris"}, content_type="application/json")
    # A new address (a derived guess) leaves it.
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(address={"country": "US", "state": "NY"}),
        at=T0 + MIN,
        previous={"address": NO_ADDRESS},
    )
    assert (get().time_zone, get().time_zone_source) == ("Europe/Paris", "api")
    # The merchant then writes a zone into the customer's metadata: that is newer.
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(
            address={"country": "US", "state": "NY"}, metadata={"timezone": "Asia/Tokyo"}
        ),
        at=T0 + 2 * MIN,
        previous={"metadata": {"timezone": None}},
    )
    assert (get().time_zone, get().time_zone_source) == ("Asia/Tokyo", "metadata")


def test_a_blank_zone_hands_the_choice_back_to_stripes_facts(api, webhooks, store):
    customer_event(
        webhooks,
        "customer.created",
        stripe_customer(address={"country": "AU", "state": "WA"}),
        at=T0,
    )
    url = "/api/v1/customers/cus_test_alice/"
    api.patch(url, {"time_zone": "Europe/Paris"}, content_type="application/json")
    body = api.patch(url, {"time_zone": ""}, content_type="application/json").json()
    assert (body["time_zone"], body["time_zone_source"]) == ("Australia/Perth", "address")


def test_another_stores_customer_is_404(webhooks, store, other_store):
    customer_event(webhooks, "customer.created", stripe_customer(), at=T0)
    other = Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(store=other_store)[1]}")
    url = "/api/v1/customers/cus_test_alice/"
    assert other.get(url).status_code == 404
    response = other.patch(url, {"time_zone": "Asia/Tokyo"}, content_type="application/json")
    assert response.status_code == 404
    assert get().time_zone_source == "store"


# ------------------------------------------------------------------ where it shows


def test_the_cases_api_and_the_case_page_show_the_zone_and_its_source(
    api, webhooks, store, operator
):
    case = open_case(webhooks)
    customer_event(
        webhooks,
        "customer.updated",
        stripe_customer(address={"country": "US", "state": "TX", "postal_code": "79901"}),
        at=T0 + MIN,
        previous={"address": NO_ADDRESS},
    )
    listed = api.get("/api/v1/cases/").json()["results"][0]
    detail = api.get(f"/api/v1/cases/{case.pk}/").json()
    for body in (listed, detail):
        assert body["customer"] == "cus_test_alice"
        facts = body["customer_facts"]
        assert (facts["time_zone"], facts["time_zone_source"]) == ("America/Denver", "address")
    client = Client()
    assert client.login(username="olivia", password="pw-olivia-123")
    page = client.get(f"/s/{store.id}/cases/{case.pk}/").content.decode()
    assert "America/Denver" in page and "the billing address" in page


def test_the_case_page_says_when_the_stores_zone_stands_in(webhooks, store, operator):
    case = open_case(webhooks)
    client = Client()
    assert client.login(username="olivia", password="pw-olivia-123")
    page = client.get(f"/s/{store.id}/cases/{case.pk}/").content.decode()
    assert "Europe/Berlin" in page and "the store&#x27;s zone" in page


def test_an_update_with_a_new_address_and_a_new_default_card_keeps_the_addresss_zone(
    webhooks, store
):
    customer_event(webhooks, "customer.created", stripe_customer(), at=T0)
    data = stripe_customer(address={"country": "US", "state": "NY"})
    data["invoice_settings"] = {**data["invoice_settings"], "default_payment_method": "pm_new"}
    customer_event(
        webhooks,
        "customer.updated",
        data,
        at=T0 + MIN,
        previous={"address": NO_ADDRESS, "invoice_settings": {"default_payment_method": None}},
    )
    customer = get()
    assert customer.default_payment_method.stripe_id == "pm_new"
    assert (customer.time_zone, customer.time_zone_source) == ("America/New_York", "address")
