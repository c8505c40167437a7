"""Forms behind the operators' settings pages: they check input; services write it."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from recovery.models import RetryPolicy


class MetadataKeyField(forms.CharField):
    """A key of a Stripe customer's metadata: Stripe allows up to 40 characters and no
    square brackets."""

    def __init__(self, **kwargs):
        super().__init__(max_length=40, strip=True, **kwargs)

    def validate(self, value):
        super().validate(value)
        if "[" in value or "]" in value:
            raise forms.ValidationError("Stripe metadata keys cannot contain [ or ].")


class StripeCustomerDataForm(forms.Form):
    """Where the store keeps customer facts in Stripe, and its Stripe request budget."""

    customer_timezone_key = MetadataKeyField(
        label="Time zone metadata key",
        help_text="The key of the Stripe customer's metadata that holds their IANA time zone "
        "(Europe/Berlin). Without it, the zone comes from the billing address, then the "
        "card's country, then the store's zone.",
    )
    sms_consent_key = MetadataKeyField(
        label="SMS consent metadata key",
        help_text="The key that says whether the customer agreed to payment texts: true/yes/1 "
        "or false/no/0. A number that replied STOP stays off until the customer replies START.",
    )
    stripe_requests_per_second = forms.IntegerField(
        label="Stripe requests per second",
        required=False,
        min_value=1,
        max_value=10_000,
        help_text="Shared by every worker. Blank: Stripe's default for the key's mode "
        "(100 in live mode, 25 in test mode); raise it only if Stripe raised your limit.",
    )


def whole(message: str, lo: int, hi: int) -> forms.IntegerField:
    """A required whole number in lo..hi. `message` answers a blank, a non-number (inf,
    nan, 1e400) and an out-of-range value alike: it says what the field takes."""
    return forms.IntegerField(
        min_value=lo,
        max_value=hi,
        error_messages={k: message for k in ("required", "invalid", "min_value", "max_value")},
    )


class MoneyField(forms.DecimalField):
    """An amount typed in major units (250 or 19.99), cleaned to minor units. Finite and at
    most `max_major`, so its cents fit the integer column it is stored in or compared to."""

    def __init__(self, *, label: str, max_major: Decimal, **kwargs):
        message = f"{label} must be an amount from 0 to {max_major:,}, like 250 or 19.99."
        super().__init__(
            label=label,
            min_value=0,
            max_value=max_major,
            decimal_places=2,
            error_messages={
                **{k: message for k in ("required", "invalid", "min_value", "max_value")},
                "max_decimal_places": f"{label} has at most 2 decimals (cents).",
            },
            **kwargs,
        )

    def clean(self, value):
        amount = super().clean(value)
        return None if amount is None else int(amount * 100)


MAX_MAJOR = Decimal(10) ** 10  # money typed on the dashboard; its cents fit a bigint
MAX_MAJOR_INT32 = Decimal(2**31 - 1) / 100  # for amounts kept in a 32-bit column


def _window(name: str) -> forms.IntegerField:
    return whole(f"{name} must be between 1 and 90 days.", 1, 90)


class RetryPolicyForm(forms.Form):
    """A new version of the retry policy, with the bounds recovery.services enforces (and
    the page's own for the fields it leaves to the form). Fields are POLICY_FIELDS."""

    max_retries = whole(
        "max_retries must be between 0 and 8: more reads as harassment and costs network fees.",
        0,
        8,
    )
    first_retry_hours = whole("first_retry_hours must be between 1 and 72 hours.", 1, 72)
    generic_retries_before_card_update = whole(
        "generic_retries_before_card_update must be between 0 and 8.", 0, 8
    )
    window_days_day = _window("window_days_day")
    window_days_week = _window("window_days_week")
    window_days_month = _window("window_days_month")
    window_days_year = _window("window_days_year")
    window_days_order = _window("window_days_order")
    grace_fraction = whole("grace_fraction must be between 0 and 100 percent.", 0, 100)
    end_action = forms.ChoiceField(
        choices=RetryPolicy.EndAction.choices,
        error_messages={
            k: f"end_action must be one of {', '.join(RetryPolicy.EndAction.values)}."
            for k in ("required", "invalid_choice")
        },
    )
    predunning_days = whole("predunning_days must be between 0 and 90 days.", 0, 90)
    learned_timing = forms.BooleanField(required=False)

    def clean_grace_fraction(self) -> float:
        """Typed as a percentage, stored as a fraction."""
        return self.cleaned_data["grace_fraction"] / 100


class EscalationForm(forms.Form):
    """When a case goes to a person, with settings_services.escalation_policy_update's
    bounds; the money is capped by its columns (the MRR threshold's is 32-bit)."""

    high_value_mrr = MoneyField(label="The high-value MRR", max_major=MAX_MAJOR_INT32)
    ltv = MoneyField(label="The high-value lifetime paid", max_major=MAX_MAJOR)
    churn_risk_threshold = whole("The churn-risk threshold is a score from 1 to 100.", 1, 100)
    target_response_hours = forms.DecimalField(
        min_value=0,
        max_value=7 * 24,
        error_messages={
            k: "The target response time must be between 5 minutes and 7 days (168 hours)."
            for k in ("required", "invalid", "min_value", "max_value")
        },
    )
    route_on_reply = forms.BooleanField(required=False)

    def clean_target_response_hours(self) -> int:
        """Typed in hours, kept in whole minutes (at least 5)."""
        minutes = round(self.cleaned_data["target_response_hours"] * 60)
        if minutes < 5:
            raise forms.ValidationError(
                self.fields["target_response_hours"].error_messages["min_value"]
            )
        return minutes

    def policy(self) -> dict:
        """The cleaned values as escalation_policy_update's arguments."""
        data = self.cleaned_data
        return {
            "high_value_mrr_threshold": data["high_value_mrr"],
            "ltv_threshold": data["ltv"],
            "churn_risk_threshold": data["churn_risk_threshold"],
            "target_response_minutes": data["target_response_hours"],
            "route_on_reply": data["route_on_reply"],
        }


class HoldPolicyForm(forms.Form):
    """The stock-hold policy, with settings_services.hold_policy_update's bounds."""

    brief_hold_hours = whole("Hold constrained stock for 1 hour to 14 days (336 hours).", 1, 336)
    retry_margin_hours = whole("The margin after a retry is 0 to 72 hours.", 0, 72)
