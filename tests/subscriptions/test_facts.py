"""Customer facts read from Stripe and the merchant: pure functions, no database."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from subscriptions import facts
from subscriptions.facts import ZoneGuess

T = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "value, zone",
    [
        ("Europe/Berlin", "Europe/Berlin"),
        (" america/new_york ", "America/New_York"),
        ("UTC", "UTC"),
        ("Berlin", None),
        ("CET+1", None),
        ("localtime", None),
        ("Factory", None),
        ("../../etc/passwd", None),
        ("", None),
        (None, None),
        (3, None),
    ],
)
def test_zone_names_are_checked_against_the_tz_database(value, zone):
    assert facts.zone_valid(value) == zone


@pytest.mark.parametrize(
    "country, zone",
    [
        ("DE", "Europe/Berlin"),  # Büsingen keeps Berlin's time: still one zone
        ("de", "Europe/Berlin"),
        ("JP", "Asia/Tokyo"),
        ("AR", "America/Argentina/Buenos_Aires"),  # many zones, one time
        ("US", None),
        ("BR", None),
        ("ES", None),  # the Canaries
        ("XX", None),
        ("", None),
    ],
)
def test_a_country_maps_to_a_zone_only_when_it_keeps_one_time(country, zone):
    assert facts.country_zone(country) == zone


@pytest.mark.parametrize(
    "country, state, postal_code, zone",
    [
        # One-zone countries map directly, whatever the rest says.
        ("FR", "", "", "Europe/Paris"),
        ("GB", "England", "SW1A 1AA", "Europe/London"),
        # United States: state, then ZIP where the state spans zones.
        ("US", "CA", "", "America/Los_Angeles"),
        ("US", "New York", "", "America/New_York"),
        ("US", "US-AZ", "", "America/Phoenix"),
        ("US", "FL", "33101", "America/New_York"),  # Miami
        ("US", "FL", "32501", "America/Chicago"),  # Pensacola, the panhandle
        ("US", "TX", "75201", "America/Chicago"),  # Dallas
        ("US", "TX", "79901-1234", "America/Denver"),  # El Paso
        ("US", "TN", "37902", "America/New_York"),  # Knoxville
        ("US", "TN", "37203", "America/Chicago"),  # Nashville
        ("US", "ID", "83814", "America/Los_Angeles"),  # Coeur d'Alene
        ("US", "AK", "99546", "America/Adak"),
        ("US", "HI", "", "Pacific/Honolulu"),
        # No state (Stripe's checkout often asks only for the ZIP): the ZIP finds it.
        ("US", "", "94103", "America/Los_Angeles"),
        ("US", "", "10001", "America/New_York"),
        ("US", "", "60601", "America/Chicago"),
        ("US", "", "32501", "America/Chicago"),
        ("US", "", "", None),  # nothing to go on
        ("US", "Atlantis", "", None),
        # Canada: province, then forward sortation area.
        ("CA", "ON", "M5V 2T6", "America/Toronto"),
        ("CA", "Ontario", "P9N 1A1", "America/Winnipeg"),  # Kenora
        ("CA", "Québec", "", "America/Toronto"),
        ("CA", "NU", "X0C 0A0", "America/Rankin_Inlet"),
        ("CA", "", "X0A 0H0", "America/Iqaluit"),
        ("CA", "", "X1A 2P3", "America/Yellowknife"),
        ("CA", "", "V6B 1A1", "America/Vancouver"),
        ("CA", "NL", "A0P 1E0", "America/Goose_Bay"),  # Labrador
        # Australia.
        ("AU", "NSW", "2000", "Australia/Sydney"),
        ("AU", "New South Wales", "2880", "Australia/Broken_Hill"),
        ("AU", "WA", "", "Australia/Perth"),
        ("AU", "", "0800", "Australia/Darwin"),
        ("AU", "", "4000", "Australia/Brisbane"),
        # Brazil: state by code or name (accents or not), or by CEP.
        ("BR", "SP", "", "America/Sao_Paulo"),
        ("BR", "Amazonas", "", "America/Manaus"),
        ("BR", "São Paulo", "", "America/Sao_Paulo"),
        ("BR", "", "69900-000", "America/Rio_Branco"),
        ("BR", "PE", "53990-000", "America/Noronha"),
        ("BR", "PE", "50030-000", "America/Recife"),
        # Mexico: state, then the border cities.
        ("MX", "JAL", "", "America/Mexico_City"),
        ("MX", "Quintana Roo", "", "America/Cancun"),
        ("MX", "CDMX", "", "America/Mexico_City"),
        ("MX", "Chihuahua", "31000", "America/Chihuahua"),
        ("MX", "Chihuahua", "32310", "America/Ciudad_Juarez"),
        ("MX", "Tamaulipas", "88000", "America/Matamoros"),  # Nuevo Laredo
        ("MX", "", "22000", "America/Tijuana"),
        # Russia: federal subjects by ISO code or English name.
        ("RU", "MOW", "", "Europe/Moscow"),
        ("RU", "RU-KGD", "", "Europe/Kaliningrad"),
        ("RU", "Novosibirsk Oblast", "", "Asia/Novosibirsk"),
        ("RU", "Primorsky Krai", "", "Asia/Vladivostok"),
        ("RU", "Sakha (Yakutia)", "", "Asia/Yakutsk"),
        ("RU", "", "", None),
        # A principal zone with remote exceptions.
        ("ES", "Madrid", "28001", "Europe/Madrid"),
        ("ES", "", "35001", "Atlantic/Canary"),
        ("ES", "Santa Cruz de Tenerife", "", "Atlantic/Canary"),
        ("PT", "", "9500-000", "Atlantic/Azores"),
        ("PT", "Lisboa", "1100-148", "Europe/Lisbon"),
        ("CN", "Xinjiang", "", "Asia/Shanghai"),
        # A multi-zone country we have no table for says nothing.
        ("ID", "Bali", "", None),
        ("", "CA", "94103", None),
    ],
)
def test_address_zone(country, state, postal_code, zone):
    assert facts.address_zone(country=country, state=state, postal_code=postal_code) == zone


def test_every_zone_in_the_tables_exists_and_every_split_names_a_state():
    known = zoneinfo.available_timezones()
    for country, regions in facts.REGIONS.items():
        for code, (zone, *_names) in regions.states.items():
            assert zone in known, (country, code, zone)
        for code, table in regions.split.items():
            assert code in regions.states, (country, code)
            assert set(table.values()) <= known, (country, code)
        for _low, _high, code in regions.postal_states:
            assert code in regions.states, (country, code)
        assert regions.principal is None or regions.principal in known


@pytest.mark.parametrize(
    "fields, guess",
    [
        (
            {"metadata": {"timezone": "Asia/Tokyo"}, "country": "US", "state": "CA"},
            ZoneGuess("Asia/Tokyo", facts.METADATA),
        ),
        (
            {"metadata": {"tz": "Asia/Tokyo"}, "key": "tz", "country": "US"},
            ZoneGuess("Asia/Tokyo", facts.METADATA),
        ),
        # An invalid metadata zone is ignored, not trusted.
        (
            {"metadata": {"timezone": "Tokyo"}, "country": "US", "state": "CA"},
            ZoneGuess("America/Los_Angeles", facts.ADDRESS),
        ),
        (
            {"country": "US", "postal_code": "10001", "card_country": "DE"},
            ZoneGuess("America/New_York", facts.ADDRESS),
        ),
        # The address does not place them: a one-zone card country does.
        ({"country": "US", "card_country": "DE"}, ZoneGuess("Europe/Berlin", facts.CARD_COUNTRY)),
        ({"card_country": "fr"}, ZoneGuess("Europe/Paris", facts.CARD_COUNTRY)),
        # A card from a large country says nothing; the store's zone it is.
        ({"card_country": "US"}, ZoneGuess("", facts.STORE)),
        ({}, ZoneGuess("", facts.STORE)),
    ],
)
def test_time_zone_guess_takes_the_best_source(fields, guess):
    args = {"metadata": None, "key": "timezone", **fields}
    assert facts.time_zone_guess(**args) == guess


META = ZoneGuess("Asia/Tokyo", facts.METADATA)
ADDR = ZoneGuess("America/Chicago", facts.ADDRESS)
API_SET = ZoneGuess("Europe/Paris", facts.API)
LATER = T + dt.timedelta(hours=1)


@pytest.mark.parametrize(
    "current, guess, news, at, expected",
    [
        # Derived guesses follow the newest facts.
        (ZoneGuess("", facts.STORE), ADDR, False, LATER, ADDR),
        (ADDR, META, False, LATER, META),
        # Metadata removed: back to what the address says.
        (META, ADDR, True, LATER, ADDR),
        # The merchant's API zone stands against derived guesses...
        (API_SET, ADDR, False, LATER, API_SET),
        (API_SET, ADDR, True, LATER, API_SET),
        # ... and against metadata that did not change ...
        (API_SET, META, False, LATER, API_SET),
        # ... or that changed before the API set it (an event delivered late) ...
        (API_SET, META, True, T - dt.timedelta(hours=1), API_SET),
        # ... but not against a newer change of the metadata.
        (API_SET, META, True, LATER, META),
    ],
)
def test_merchant_set_zone_beats_derived_guesses(current, guess, news, at, expected):
    decided = facts.time_zone_decide(
        current=current, guess=guess, metadata_news=news, at=at, current_at=T
    )
    assert decided == expected


@pytest.mark.parametrize(
    "value, consent",
    [
        ("true", True),
        ("YES", True),
        (" 1 ", True),
        ("Yes", True),
        ("false", False),
        ("No", False),
        ("0", False),
        (True, True),
        (False, False),
        ("", None),
        ("maybe", None),
        ("y", None),
        ("on", None),
        (None, None),
        ({"x": 1}, None),
    ],
)
def test_sms_consent_values(value, consent):
    assert facts.sms_consent_value(value) is consent


@pytest.mark.parametrize(
    "metadata, previous, news",
    [
        ({"sms_opt_in": "yes"}, None, True),  # a new customer (or nothing known of before)
        ({"sms_opt_in": "yes"}, {"metadata": {"sms_opt_in": None}}, True),  # key added
        ({"sms_opt_in": "no"}, {"metadata": {"sms_opt_in": "yes"}}, True),
        ({}, {"metadata": {"sms_opt_in": "yes"}}, True),  # key removed
        ({"sms_opt_in": "yes"}, {"email": "old@example.com"}, False),  # something else
        ({"sms_opt_in": "yes"}, {"metadata": {"plan": "gold"}}, False),
        ({"sms_opt_in": "yes"}, {"metadata": {"sms_opt_in": "yes"}}, False),
    ],
)
def test_metadata_news(metadata, previous, news):
    assert facts.metadata_news(key="sms_opt_in", metadata=metadata, previous=previous) is news


@pytest.mark.parametrize(
    "raw, region, e164",
    [
        ("+49 151 12345678", None, "+4915112345678"),
        ("0151 12345678", "DE", "+4915112345678"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "us", "+14155552671"),
        ("+1 415 555 2671", "DE", "+14155552671"),  # a +code wins over the region
        ("0151 12345678", None, ""),  # national format with no country to read it in
        ("+1 555 555 5555", None, ""),  # no such area code
        ("12", "DE", ""),
        ("n/a", "US", ""),
        ("", "US", ""),
        (None, "US", ""),
    ],
)
def test_phone_numbers_to_e164(raw, region, e164):
    assert facts.phone_e164(raw, region=region) == e164


@pytest.mark.parametrize(
    "locales, locale",
    [
        (["fr-CA", "en"], "fr-CA"),
        (["de"], "de"),
        (["pt_BR"], "pt-BR"),
        (["", "es"], "es"),
        ([], None),
        (None, None),
        ("en", None),
    ],
)
def test_locale_from_preferred_locales(locales, locale):
    assert facts.locale_from_stripe(locales) == locale


def test_zone_country():
    assert facts.zone_country("Europe/Berlin") == "DE"
    assert facts.zone_country("America/Chicago") == "US"
    assert facts.zone_country("UTC") is None
