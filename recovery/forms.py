"""The case list's filters, checked before any of them reaches a query: a link someone
edited by hand gets a message on the page, never a server error."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator

from stores.forms import MAX_MAJOR, MoneyField

from .models import RecoveryCase, Track
from .selectors_dashboard import SORTS

FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(9000, 12, 31)


class DayField(forms.DateField):
    """A calendar day (YYYY-MM-DD, what a date input sends) from 2000 to 9000: the pages
    add days and whole periods to it, which overflows near Python's years 1 and 9999."""

    def __init__(self, *, label: str, **kwargs):
        bounds = f"{label}: pick a day from {FIRST_DAY} to {LAST_DAY}."
        super().__init__(
            label=label,
            required=False,
            input_formats=["%Y-%m-%d"],
            validators=[
                MinValueValidator(FIRST_DAY, message=bounds),
                MaxValueValidator(LAST_DAY, message=bounds),
            ],
            error_messages={"invalid": f"{label}: enter a date as YYYY-MM-DD."},
            **kwargs,
        )


def _text(label: str, max_length: int) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        max_length=max_length,
        error_messages={
            "max_length": f"{label}: at most {max_length} characters.",
            "null_characters_not_allowed": f"{label}: no null characters.",
        },
    )


def _choice(label: str, choices, **kwargs) -> forms.ChoiceField:
    return forms.ChoiceField(
        label=label,
        required=False,
        choices=[("", "Any"), *choices],
        error_messages={"invalid_choice": f"{label}: pick one from the list."},
        **kwargs,
    )


class CaseFilterForm(forms.Form):
    """The case list's query string. Cleaned values are what cases_filtered takes."""

    status = _choice("Status", RecoveryCase.Status.choices)
    track = _choice("Track", Track.choices)
    # Text, not a choice: Stripe adds decline codes, and a case keeps the one it was sent.
    decline_code = _text("Decline code", 64)
    escalated = forms.TypedChoiceField(
        label="With a person",
        required=False,
        choices=[("", "Any"), ("yes", "Escalated"), ("no", "Not escalated")],
        coerce=lambda value: value == "yes",
        empty_value=None,
        error_messages={"invalid_choice": "With a person: pick one from the list."},
    )
    amount_min = MoneyField(label="Amount from", max_major=MAX_MAJOR, required=False)
    amount_max = MoneyField(label="Amount to", max_major=MAX_MAJOR, required=False)
    opened_from = DayField(label="Failed from")
    opened_to = DayField(label="Failed to")
    q = _text("Search", 200)
    sort = _choice("Sort", [(key, key) for key in SORTS])

    def filters(self) -> dict:
        """The filters given (blank ones left out), once the form is valid."""
        return {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}

    def error_list(self) -> list[str]:
        """Every message of an invalid form; each names its field."""
        return [error for errors in self.errors.values() for error in errors]


class CustomerSearchForm(forms.Form):
    """The customer list's search box."""

    q = _text("Search", 200)
