"""What planning a case decides from: frozen values, read once per plan.

`recovery.engine.case_facts` reads them for one case (a handful of queries), and a
scheduler batch (`recovery.batch`) from what it read for all its cases at once; planning
itself (`recovery.domain.planning`) never reads anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

# Attempt sources that are ours (a retry, a retry after a card change, an agent's).
OUR_SOURCES = ("recoup_retry", "card_update", "agent")
# Attempt outcomes.
FAILED = "failed"
NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One charge attempt on the case's payment, whoever made it."""

    source: str
    outcome: str
    at: dt.datetime
    brand: str = ""
    fingerprint: str = ""
    payment_method_id: str = ""
    exp_month: int | None = None
    exp_year: int | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """The customer's default payment method."""

    brand: str = ""
    fingerprint: str = ""
    payment_method_id: str = ""


@dataclass(frozen=True, slots=True)
class Touch:
    """A message that fell due for the case (the cadence counts these)."""

    at: dt.datetime
    purpose: str


@dataclass(frozen=True, slots=True)
class Policy:
    """The retry policy's numbers that planning uses (recovery.models.RetryPolicy)."""

    version: int = 0
    max_retries: int = 4
    generic_retries_before_card_update: int = 2
    first_retry_hours: float = 4
    learned_timing: bool = True


@dataclass(frozen=True, slots=True)
class Cadence:
    """The messaging cadence: the gap between two messages and the cap per case."""

    min_gap: dt.timedelta = dt.timedelta(hours=48)
    max_touches: int = 4


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """A case as planning sees it."""

    track: str
    opened_at: dt.datetime
    window_start: dt.datetime
    window_end: dt.datetime
    customer_since: dt.datetime
    time_zone: str = "UTC"  # the customer's, else the store's
    decline_code: str = ""
    advice_code: str = ""
    network_advice_code: str = ""
    network_decline_code: str = ""
    card_brand: str = ""
    step_down_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    card_changed_at: dt.datetime | None = None
    card_updater_result: str = ""
    escalated: bool = False
    dunning_paused: bool = False
    dunning_stage: int = 0
    retry_reason: str = ""
    ships: bool = False  # an order or a subscription is behind the payment
    default_card: Card | None = None
    stripe_next_attempt: dt.datetime | None = None  # Stripe's own Smart Retry, if any
    earlier_failures: bool = False  # the customer had a case before this one
    attempts: tuple[Attempt, ...] = ()
    touches: tuple[Touch, ...] = ()
    # The next retry's card: its attempts that count in its budgets (domain.budgets rows).
    card_rows: tuple = ()
    # The store's learned retry statistics for this case's decline group, by arm.
    stats: Mapping[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
