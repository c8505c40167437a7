import dataclasses
from datetime import timedelta

import pytest

from recovery.domain.declines import (
    DECLINE_CODES,
    MASTERCARD_NEVER_RETRY,
    MASTERCARD_RETRY_AFTER,
    NEVER_WITHOUT_NEW_PAYMENT_METHOD,
    classify,
)
from recovery.models import Track

# Stripe's "Decline codes" page, copied by hand so a code missing from the module's
# table fails here rather than falling silently into the unknown default.
STRIPE_DECLINE_CODES = """
    authentication_required approve_with_id call_issuer card_not_supported
    card_velocity_exceeded currency_not_supported do_not_honor do_not_try_again
    duplicate_transaction expired_card fraudulent generic_decline incorrect_number
    incorrect_cvc incorrect_pin incorrect_zip insufficient_funds invalid_account
    invalid_amount invalid_cvc invalid_expiry_month invalid_expiry_year invalid_number
    invalid_pin issuer_not_available lost_card merchant_blacklist
    new_account_information_available no_action_taken not_permitted offline_pin_required
    online_or_offline_pin_required pickup_card pin_try_exceeded processing_error
    reenter_transaction restricted_card revocation_of_all_authorizations
    revocation_of_authorization security_violation service_not_allowed stolen_card
    stop_payment_order testmode_decline transaction_not_allowed try_again_later
    withdrawal_count_limit_exceeded highest_risk_level
""".split()

# Written from the track table in DOMAIN.md "Decline classification", independently of
# the module, so its table is checked against the domain document and not itself.
DOMAIN_TRACKS = [
    ("insufficient_funds", "soft"),
    ("do_not_honor", "soft"),
    ("generic_decline", "soft"),
    ("try_again_later", "soft"),
    ("processing_error", "soft"),
    ("issuer_not_available", "soft"),
    ("reenter_transaction", "soft"),
    ("approve_with_id", "soft"),
    ("card_velocity_exceeded", "soft"),
    ("withdrawal_count_limit_exceeded", "soft"),
    ("expired_card", "card_update"),
    ("incorrect_number", "card_update"),
    ("invalid_number", "card_update"),
    ("incorrect_cvc", "card_update"),
    ("invalid_cvc", "card_update"),
    ("invalid_expiry_month", "card_update"),
    ("invalid_expiry_year", "card_update"),
    ("incorrect_zip", "card_update"),
    ("card_not_supported", "card_update"),
    ("currency_not_supported", "card_update"),
    ("invalid_account", "card_update"),
    ("new_account_information_available", "card_update"),
    ("lost_card", "hard"),
    ("stolen_card", "hard"),
    ("pickup_card", "hard"),
    ("restricted_card", "hard"),
    ("revocation_of_authorization", "hard"),
    ("revocation_of_all_authorizations", "hard"),
    ("stop_payment_order", "hard"),
    ("security_violation", "hard"),
    ("do_not_try_again", "hard"),
    ("highest_risk_level", "hard"),
    ("fraudulent", "fraud"),
    ("merchant_blacklist", "fraud"),
    ("authentication_required", "authentication"),
]

# DOMAIN.md: Stripe's "never executes without a new payment method" list.
DOMAIN_NEVER_LIST = {
    "incorrect_number",
    "lost_card",
    "pickup_card",
    "stolen_card",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "authentication_required",
    "highest_risk_level",
}


@pytest.mark.parametrize(("code", "entry"), DECLINE_CODES.items())
def test_every_table_code_classifies_to_its_track(code, entry):
    track, _short = entry
    result = classify(decline_code=code)
    assert result.track == track
    assert result.code == code
    assert code in result.reason


@pytest.mark.parametrize(("code", "expected"), DOMAIN_TRACKS)
def test_table_agrees_with_domain_document(code, expected):
    assert classify(decline_code=code).track == expected


def test_table_covers_every_stripe_decline_code():
    assert set(STRIPE_DECLINE_CODES) - set(DECLINE_CODES) == set()


def test_table_uses_only_track_values():
    assert {track for track, _ in DECLINE_CODES.values()} <= set(Track.values)


def test_table_reasons_are_one_line():
    for code, (_track, short) in DECLINE_CODES.items():
        assert short and "\n" not in short, code
        assert "\n" not in classify(decline_code=code).reason


def test_classification_is_frozen():
    result = classify(decline_code="insufficient_funds")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.track = Track.HARD


# --- advice_code


@pytest.mark.parametrize("code", ["insufficient_funds", "do_not_honor", "generic_decline"])
def test_do_not_try_again_advice_overrides_soft_code(code):
    result = classify(decline_code=code, advice_code="do_not_try_again")
    assert result.track == Track.HARD
    assert result.do_not_retry is True
    assert result.retry_same_card is False
    assert result.decline_group == "hard"


def test_do_not_try_again_advice_overrides_card_update_code():
    result = classify(decline_code="expired_card", advice_code="do_not_try_again")
    assert result.track == Track.HARD
    assert result.do_not_retry is True


def test_do_not_try_again_advice_keeps_fraud_as_fraud():
    result = classify(decline_code="fraudulent", advice_code="do_not_try_again")
    assert result.track == Track.FRAUD
    assert result.do_not_retry is True
    assert result.fraud_review is True
    assert result.retry_same_card is False


def test_do_not_try_again_advice_on_unknown_code_is_hard():
    result = classify(decline_code="brand_new_code", advice_code="do_not_try_again")
    assert result.track == Track.HARD
    assert result.do_not_retry is True
    assert "brand_new_code" in result.reason


@pytest.mark.parametrize("code", ["insufficient_funds", "generic_decline", "brand_new_code", ""])
def test_confirm_card_data_advice_asks_for_card_update(code):
    result = classify(decline_code=code, advice_code="confirm_card_data")
    assert result.track == Track.CARD_UPDATE
    assert result.retry_same_card is False


def test_confirm_card_data_advice_does_not_soften_a_hard_code():
    result = classify(decline_code="lost_card", advice_code="confirm_card_data")
    assert result.track == Track.HARD
    assert result.fraud_review is True


def test_try_again_later_advice_on_unknown_code_is_soft():
    result = classify(decline_code="brand_new_code", advice_code="try_again_later")
    assert result.track == Track.SOFT
    assert result.retry_same_card is True
    assert result.do_not_retry is False
    assert result.decline_group == "try_again"


def test_try_again_later_advice_does_not_soften_a_card_update_code():
    result = classify(decline_code="expired_card", advice_code="try_again_later")
    assert result.track == Track.CARD_UPDATE


# --- Mastercard merchant advice codes


@pytest.mark.parametrize("mac", ["03", "3", " 03 ", "21"])
def test_mastercard_advice_03_forbids_retry(mac):
    result = classify(decline_code="insufficient_funds", network_advice_code=mac)
    assert result.track == Track.HARD
    assert result.do_not_retry is True
    assert result.retry_same_card is False


@pytest.mark.parametrize(
    ("code", "track"),
    [
        ("expired_card", Track.CARD_UPDATE),
        ("fraudulent", Track.FRAUD),
        ("authentication_required", Track.AUTHENTICATION),
    ],
)
def test_mastercard_never_retry_keeps_customer_action_tracks(code, track):
    result = classify(decline_code=code, network_advice_code="21", card_brand="mastercard")
    assert result.track == track
    assert result.do_not_retry is True
    assert result.retry_same_card is False


def test_mastercard_advice_26_waits_two_days():
    result = classify(decline_code="insufficient_funds", network_advice_code="26")
    assert result.track == Track.SOFT
    assert result.retry_same_card is True
    assert result.do_not_retry is False
    assert result.retry_after == timedelta(days=2)


@pytest.mark.parametrize(
    ("mac", "wait"),
    [
        ("24", timedelta(hours=1)),
        ("25", timedelta(hours=24)),
        ("26", timedelta(days=2)),
        ("27", timedelta(days=4)),
        ("28", timedelta(days=6)),
        ("29", timedelta(days=8)),
        ("30", timedelta(days=10)),
    ],
)
def test_mastercard_advice_24_to_30_sets_minimum_wait(mac, wait):
    result = classify(decline_code="do_not_honor", network_advice_code=mac)
    assert result.track == Track.SOFT
    assert result.retry_after == wait
    assert MASTERCARD_RETRY_AFTER[mac] == wait


def test_mastercard_wait_keeps_the_codes_track():
    result = classify(decline_code="expired_card", network_advice_code="25")
    assert result.track == Track.CARD_UPDATE
    assert result.retry_after == timedelta(hours=24)


def test_mastercard_never_retry_codes_are_03_and_21():
    assert MASTERCARD_NEVER_RETRY == {"03", "21"}


def test_mastercard_advice_01_asks_for_card_update():
    result = classify(decline_code="do_not_honor", network_advice_code="01")
    assert result.track == Track.CARD_UPDATE


def test_no_wait_without_advice():
    assert classify(decline_code="insufficient_funds").retry_after is None


# --- Visa category 1 network decline codes


def test_visa_category_1_network_code_forbids_retry():
    result = classify(decline_code="do_not_honor", network_decline_code="46", card_brand="visa")
    assert result.track == Track.HARD
    assert result.do_not_retry is True
    assert result.retry_same_card is False


def test_visa_category_1_code_is_ignored_for_other_brands():
    result = classify(
        decline_code="do_not_honor", network_decline_code="46", card_brand="mastercard"
    )
    assert result.track == Track.SOFT
    assert result.do_not_retry is False


# --- unknown and missing codes


def test_unknown_code_is_conservative_soft():
    result = classify(decline_code="brand_new_code")
    assert result.track == Track.SOFT
    assert result.retry_same_card is True
    assert result.do_not_retry is False
    assert result.decline_group == "unknown"
    assert result.code == "brand_new_code"
    assert result.reason == (
        "unknown code brand_new_code: a limited number of soft retries, then a card update"
    )


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_codes_are_conservative_soft(value):
    result = classify(decline_code=value, failure_code=value, advice_code=value)
    assert result.track == Track.SOFT
    assert result.code == ""
    assert result.decline_group == "unknown"
    assert "unknown code" in result.reason


def test_no_arguments_at_all_is_conservative_soft():
    assert classify().track == Track.SOFT


# --- Stripe's never list and the per-track rules


@pytest.mark.parametrize("code", sorted(DOMAIN_NEVER_LIST))
def test_stripe_never_list_never_retries_same_card(code):
    result = classify(decline_code=code)
    assert result.retry_same_card is False
    assert result.do_not_retry is True


def test_stripe_never_list_matches_domain_document():
    assert NEVER_WITHOUT_NEW_PAYMENT_METHOD == DOMAIN_NEVER_LIST


@pytest.mark.parametrize("code", ["lost_card", "stolen_card", "pickup_card"])
def test_lost_card_flags_fraud_review(code):
    result = classify(decline_code=code)
    assert result.track == Track.HARD
    assert result.fraud_review is True
    assert result.retry_same_card is False


@pytest.mark.parametrize("code", ["fraudulent", "merchant_blacklist"])
def test_fraudulent_goes_to_a_person(code):
    result = classify(decline_code=code)
    assert result.track == Track.FRAUD
    assert result.fraud_review is True
    assert result.retry_same_card is False
    assert result.decline_group == "fraud"


def test_ordinary_declines_do_not_flag_fraud_review():
    for code in ("insufficient_funds", "expired_card", "restricted_card", "do_not_try_again"):
        assert classify(decline_code=code).fraud_review is False, code


def test_authentication_required_is_not_retried_off_session():
    result = classify(decline_code="authentication_required")
    assert result.track == Track.AUTHENTICATION
    assert result.retry_same_card is False
    assert result.decline_group == "authentication"


@pytest.mark.parametrize(
    "code", [code for code, (track, _) in DECLINE_CODES.items() if track == Track.SOFT]
)
def test_soft_codes_may_retry_same_card(code):
    result = classify(decline_code=code)
    assert result.retry_same_card is True
    assert result.do_not_retry is False
    assert result.fraud_review is False


@pytest.mark.parametrize(
    "code", [code for code, (track, _) in DECLINE_CODES.items() if track != Track.SOFT]
)
def test_non_soft_codes_never_retry_same_card(code):
    result = classify(decline_code=code)
    assert result.retry_same_card is False
    assert result.decline_group == result.track


def test_hard_decline_code_do_not_try_again_is_an_explicit_stop():
    assert classify(decline_code="do_not_try_again").do_not_retry is True


# --- decline groups


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("insufficient_funds", "insufficient_funds"),
        ("do_not_honor", "do_not_honor"),
        ("generic_decline", "do_not_honor"),
        ("call_issuer", "do_not_honor"),
        ("no_action_taken", "do_not_honor"),
        ("try_again_later", "try_again"),
        ("processing_error", "try_again"),
        ("issuer_not_available", "try_again"),
        ("reenter_transaction", "try_again"),
        ("card_velocity_exceeded", "velocity"),
        ("withdrawal_count_limit_exceeded", "velocity"),
        ("duplicate_transaction", "other_soft"),
        ("expired_card", "card_update"),
        ("stolen_card", "hard"),
    ],
)
def test_decline_group(code, group):
    assert classify(decline_code=code).decline_group == group


# --- inputs


def test_decline_code_takes_precedence_over_failure_code():
    result = classify(decline_code="insufficient_funds", failure_code="card_declined")
    assert result.code == "insufficient_funds"
    assert result.decline_group == "insufficient_funds"


@pytest.mark.parametrize(
    ("failure_code", "track"),
    [
        ("expired_card", Track.CARD_UPDATE),
        ("incorrect_cvc", Track.CARD_UPDATE),
        ("processing_error", Track.SOFT),
        ("authentication_required", Track.AUTHENTICATION),
    ],
)
def test_failure_code_decides_when_no_decline_code(failure_code, track):
    result = classify(decline_code=None, failure_code=failure_code)
    assert result.track == track
    assert result.code == failure_code


def test_card_declined_alone_is_generic():
    result = classify(failure_code="card_declined")
    assert result.track == Track.SOFT
    assert result.decline_group == "do_not_honor"
    assert result.retry_same_card is True
    assert "card_declined" in result.reason


def test_codes_match_case_insensitively_after_strip():
    result = classify(decline_code="  Lost_Card ", advice_code=" DO_NOT_TRY_AGAIN")
    assert result.code == "lost_card"
    assert result.track == Track.HARD
    assert result.fraud_review is True
    assert result.do_not_retry is True


def test_reason_reads_as_one_merchant_line():
    reason = classify(decline_code="insufficient_funds").reason
    assert reason.startswith("insufficient_funds: soft decline — ")
    assert "payday" in reason
