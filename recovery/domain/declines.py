"""Decline classification: the first decision on every failed payment.

One table maps each Stripe decline code (and the `failure_code`s that stand in for
one) to a recovery track; the issuer's `advice_code` and the network's advice and
decline codes then adjust that verdict. Everything is data plus one pure function,
so the rules can be read — and tested — against the domain brief line by line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta

# The tracks (recovery.models.Track is the database's list of these values).
SOFT = "soft"
CARD_UPDATE = "card_update"
HARD = "hard"
FRAUD = "fraud"
AUTHENTICATION = "authentication"
TRACKS = (SOFT, CARD_UPDATE, HARD, FRAUD, AUTHENTICATION)


@dataclass(frozen=True)
class Classification:
    track: str  # a Track value
    reason: str  # one line a merchant understands
    code: str  # the decline code that decided it ('' when none)
    retry_same_card: bool  # may we retry off-session on the same card at all?
    # An explicit network/issuer do-not-retry signal: advice do_not_try_again, Mastercard
    # 03/21, Visa category 1, or a code on Stripe's "never without a new payment method" list.
    do_not_retry: bool
    retry_after: timedelta | None  # minimum wait (Mastercard advice 24-30), or None
    fraud_review: bool  # lost/stolen/fraudulent: flag for a person
    # Coarse group for learned retry statistics: insufficient_funds, do_not_honor,
    # try_again, velocity, other_soft, unknown, or the track name for non-soft tracks.
    decline_group: str


# code -> (track, short reason). Stripe's "Decline codes" list, Radar's
# highest_risk_level, and the failure_codes that appear without a decline_code. The
# reason says what happened; classify() adds what to do, which advice codes can change.
DECLINE_CODES: dict[str, tuple[str, str]] = {
    # --- soft: the card is fine, the moment was not
    "insufficient_funds": (SOFT, "not enough money on the card"),
    "do_not_honor": (SOFT, "the issuer declined without saying why"),
    "generic_decline": (SOFT, "the issuer declined without saying why"),
    "card_declined": (SOFT, "generic decline, no reason given"),
    "call_issuer": (SOFT, "the issuer declined without saying why"),
    "no_action_taken": (SOFT, "the issuer declined without saying why"),
    "approve_with_id": (SOFT, "the issuer could not authorise this attempt"),
    "try_again_later": (SOFT, "the issuer asks to try again later"),
    "processing_error": (SOFT, "a processing error on the card network"),
    "issuer_not_available": (SOFT, "the card issuer could not be reached"),
    "reenter_transaction": (SOFT, "the issuer asks for the payment to be sent again"),
    "card_velocity_exceeded": (SOFT, "the card's spending limit is used up for now"),
    "withdrawal_count_limit_exceeded": (SOFT, "the card's limit on payments is reached for now"),
    # Stripe blocks a card declined too often in 24 h; it may pass once the day is over.
    "card_decline_rate_limit_exceeded": (SOFT, "too many declines on this card in 24 hours"),
    # A retry could charge twice if the earlier attempt went through; read it back first.
    "duplicate_transaction": (SOFT, "an identical payment was just made; check it first"),
    # --- card update: this card, as stored, cannot be charged; ask for new details now
    "expired_card": (CARD_UPDATE, "the card has expired"),
    "incorrect_number": (CARD_UPDATE, "the card number is wrong"),
    "invalid_number": (CARD_UPDATE, "the card number is invalid"),
    "incorrect_cvc": (CARD_UPDATE, "the security code is wrong"),
    "invalid_cvc": (CARD_UPDATE, "the security code is invalid"),
    "invalid_expiry_month": (CARD_UPDATE, "the expiry month is invalid"),
    "invalid_expiry_year": (CARD_UPDATE, "the expiry year is invalid"),
    "incorrect_zip": (CARD_UPDATE, "the postal code does not match the card"),
    "card_not_supported": (CARD_UPDATE, "the card does not support this kind of purchase"),
    "currency_not_supported": (CARD_UPDATE, "the card does not support this currency"),
    "invalid_account": (CARD_UPDATE, "the card or its account is no longer valid"),
    "new_account_information_available": (CARD_UPDATE, "the issuer has new details for this card"),
    # The issuer caps what this card may pay; another card can pay the same amount.
    "invalid_amount": (CARD_UPDATE, "the amount is more than this card allows"),
    # Visa category 1 ("not permitted to cardholder"): retrying the same card never works.
    "not_permitted": (CARD_UPDATE, "the card may not be used for this payment"),
    "service_not_allowed": (CARD_UPDATE, "the card may not be used for this payment"),
    "transaction_not_allowed": (CARD_UPDATE, "the card may not be used for this payment"),
    # PIN codes come from card-present payments; off-session only another card helps.
    "incorrect_pin": (CARD_UPDATE, "the PIN was wrong"),
    "invalid_pin": (CARD_UPDATE, "the PIN was invalid"),
    "offline_pin_required": (CARD_UPDATE, "the card needs a PIN"),
    "online_or_offline_pin_required": (CARD_UPDATE, "the card needs a PIN"),
    "pin_try_exceeded": (CARD_UPDATE, "too many wrong PIN attempts"),
    "testmode_decline": (CARD_UPDATE, "a Stripe test card was used for a live payment"),
    # --- hard: never charge this card again
    "lost_card": (HARD, "the card was reported lost"),
    "stolen_card": (HARD, "the card was reported stolen"),
    "pickup_card": (HARD, "the issuer has taken the card out of use"),
    "restricted_card": (HARD, "the card is restricted by its issuer"),
    "revocation_of_authorization": (HARD, "the cardholder revoked this payment"),
    "revocation_of_all_authorizations": (HARD, "the cardholder revoked all payments to you"),
    "stop_payment_order": (HARD, "the cardholder told the issuer to stop this payment"),
    "security_violation": (HARD, "the issuer flagged a security violation"),
    "do_not_try_again": (HARD, "the issuer says never to try this card again"),
    "highest_risk_level": (HARD, "Stripe Radar blocked the payment as highest risk"),
    # --- fraud / dispute risk: no retry, no dunning, a person decides
    "fraudulent": (FRAUD, "the issuer suspects fraud"),
    "merchant_blacklist": (FRAUD, "the card or customer is on your block list"),
    # --- authentication: only the customer, on-session, can pass
    "authentication_required": (AUTHENTICATION, "the bank wants the customer to confirm it"),
    "payment_intent_authentication_failure": (
        AUTHENTICATION,
        "the customer did not complete the bank's check",
    ),
}

# Stripe: these "never execute without a new payment method" (DOMAIN.md).
NEVER_WITHOUT_NEW_PAYMENT_METHOD: frozenset[str] = frozenset(
    {
        "incorrect_number",
        "lost_card",
        "pickup_card",
        "stolen_card",
        "revocation_of_authorization",
        "revocation_of_all_authorizations",
        "authentication_required",
        "highest_risk_level",
    }
)

# Mastercard merchant advice codes 24–30: retry no sooner than this.
MASTERCARD_RETRY_AFTER: dict[str, timedelta] = {
    "24": timedelta(hours=1),
    "25": timedelta(hours=24),
    "26": timedelta(days=2),
    "27": timedelta(days=4),
    "28": timedelta(days=6),
    "29": timedelta(days=8),
    "30": timedelta(days=10),
}

# Mastercard merchant advice codes 03 ("do not try again") and 21 ("payment cancelled").
MASTERCARD_NEVER_RETRY: frozenset[str] = frozenset({"03", "21"})

# Mastercard 01 (new account information) and 04 (token requirements not met): the
# stored credential must change before a charge can succeed.
_MASTERCARD_NEEDS_CARD_UPDATE = frozenset({"01", "04"})
# Mastercard 02: cannot approve now, try again later.
_MASTERCARD_TRY_LATER = frozenset({"02"})

# Visa category 1 response codes: "the issuer will never approve"; a reattempt costs a
# fee and counts against the merchant (DOMAIN.md, card-network limits).
_VISA_NEVER_RETRY = frozenset(
    {"04", "07", "12", "14", "15", "41", "43", "46", "57", "R0", "R1", "R3"}
)

# Codes that are themselves the issuer saying "stop": explicit, like advice do_not_try_again.
_ISSUER_STOP_CODES = frozenset({"do_not_try_again", "stop_payment_order"})

# Lost, stolen or confiscated cards, and Radar's highest-risk block, mean someone other
# than the cardholder may be paying: a person should look, not only the dunning flow.
_FRAUD_REVIEW_CODES = frozenset({"lost_card", "stolen_card", "pickup_card", "highest_risk_level"})

# Minimum waits Stripe itself enforces for a code.
_CODE_RETRY_AFTER: dict[str, timedelta] = {
    "card_decline_rate_limit_exceeded": timedelta(hours=24),
}

# Coarse groups for learned retry statistics (soft codes only; others use the track name).
_SOFT_GROUPS: dict[str, str] = {
    "insufficient_funds": "insufficient_funds",
    "do_not_honor": "do_not_honor",
    "generic_decline": "do_not_honor",
    "card_declined": "do_not_honor",
    "call_issuer": "do_not_honor",
    "no_action_taken": "do_not_honor",
    "approve_with_id": "do_not_honor",
    "try_again_later": "try_again",
    "processing_error": "try_again",
    "issuer_not_available": "try_again",
    "reenter_transaction": "try_again",
    "card_velocity_exceeded": "velocity",
    "withdrawal_count_limit_exceeded": "velocity",
    "card_decline_rate_limit_exceeded": "velocity",
}

# What to do, by soft group or by track.
_ACTION = {
    "insufficient_funds": "retry near payday",
    "do_not_honor": "retry later",
    "try_again": "retry soon",
    "velocity": "retry once the limit resets",
    "other_soft": "retry later",
    "unknown": "a limited number of soft retries, then a card update",
    CARD_UPDATE: "ask the customer for a new card now",
    HARD: "never retry this card; ask for a new one",
    FRAUD: "no retry, no dunning; a person reviews it",
    AUTHENTICATION: "send the customer a link to confirm the payment",
}

_TRACK_PHRASE = {
    SOFT: "soft decline",
    CARD_UPDATE: "card update needed",
    HARD: "hard decline",
    FRAUD: "fraud risk",
    AUTHENTICATION: "customer authentication needed",
}


def _norm(value: str | None) -> str:
    return (value or "").strip().lower()


def _norm_network(value: str | None) -> str:
    value = (value or "").strip().upper()
    # Some integrations drop the leading zero ("3" for "03").
    return value.zfill(2) if value.isdigit() and len(value) == 1 else value


@functools.lru_cache(maxsize=4096)
def classify(
    *,
    decline_code: str | None = "",
    failure_code: str | None = "",
    advice_code: str | None = "",
    network_advice_code: str | None = "",
    network_decline_code: str | None = "",
    card_brand: str | None = "",
) -> Classification:
    """Route one failed payment to a recovery track, per DOMAIN.md "Decline classification".

    The decline code (else the failure code) sets the track; the issuer's advice code,
    then the network's advice and decline codes, may only make the verdict stricter.
    A pure function of its arguments (remembered: the engine asks it many times for the
    same few codes)."""
    code = _norm(decline_code) or _norm(failure_code)
    advice = _norm(advice_code)
    mc_advice = _norm_network(network_advice_code)
    network_decline = _norm_network(network_decline_code)
    brand = _norm(card_brand)

    known = code in DECLINE_CODES
    if known:
        track, short = DECLINE_CODES[code]
        group = _SOFT_GROUPS.get(code, "other_soft")
    else:
        track, short, group = SOFT, "", "unknown"
    do_not_retry = code in NEVER_WITHOUT_NEW_PAYMENT_METHOD or code in _ISSUER_STOP_CODES
    fraud_review = code in _FRAUD_REVIEW_CODES
    retry_after = _CODE_RETRY_AFTER.get(code)
    notes: list[str] = []

    if advice == "do_not_try_again":
        do_not_retry = True
        if track != FRAUD:
            track = HARD
        notes.append("the issuer advises never to try again")
    elif advice == "confirm_card_data":
        if track == SOFT:
            track = CARD_UPDATE
        notes.append("the issuer asks for the card details to be confirmed")
    elif advice == "try_again_later":
        if not known:
            group = "try_again"
        notes.append("the issuer advises trying again later")

    if mc_advice in MASTERCARD_NEVER_RETRY:
        do_not_retry = True
        if track not in (CARD_UPDATE, FRAUD, AUTHENTICATION):
            track = HARD
        notes.append(f"Mastercard advice {mc_advice}: do not try again")
    elif mc_advice in MASTERCARD_RETRY_AFTER:
        wait = MASTERCARD_RETRY_AFTER[mc_advice]
        retry_after = max(retry_after or wait, wait)
        notes.append(f"Mastercard advice {mc_advice}: wait {_human(wait)} before retrying")
    elif mc_advice in _MASTERCARD_NEEDS_CARD_UPDATE:
        if track == SOFT:
            track = CARD_UPDATE
        notes.append(f"Mastercard advice {mc_advice}: the card details must be updated")
    elif mc_advice in _MASTERCARD_TRY_LATER:
        if not known:
            group = "try_again"
        notes.append(f"Mastercard advice {mc_advice}: try again later")

    if brand == "visa" and network_decline in _VISA_NEVER_RETRY:
        do_not_retry = True
        if track not in (CARD_UPDATE, FRAUD, AUTHENTICATION):
            track = HARD
        notes.append(f"Visa code {network_decline}: the issuer will never approve")

    if track == FRAUD:
        fraud_review = True
    if track != SOFT:
        group = track
    retry_same_card = track == SOFT and not do_not_retry

    label = code if known else f"unknown code {code or '(none)'}"
    if not known and track == SOFT:
        # The conservative default, whatever the advice added.
        reason = "; ".join([f"{label}: {_ACTION['unknown']}", *notes])
    else:
        reason = f"{label}: {_TRACK_PHRASE[track]} — " + "; ".join(
            filter(None, [short, *notes, _ACTION[group]])
        )

    return Classification(
        track=track,
        reason=reason,
        code=code,
        retry_same_card=retry_same_card,
        do_not_retry=do_not_retry,
        retry_after=retry_after,
        fraud_review=fraud_review,
        decline_group=group,
    )


def _human(wait: timedelta) -> str:
    hours = int(wait.total_seconds() // 3600)
    if hours < 48:
        return f"{hours} hour" + ("s" if hours != 1 else "")
    return f"{wait.days} days"
