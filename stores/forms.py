"""Forms behind the operators' settings pages: they check input; services write it."""

from __future__ import annotations

from django import forms


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
