"""The domain's names: why a message goes out (Purpose), what a timeline entry records
(EventKind), and the events recovery publishes to the apps above it.

The database's choices (`messaging.models.Purpose`) and the templates take their values
from here, so planning and messaging speak of one list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Purpose(StrEnum):
    """Why a message goes out."""

    PREDUNNING = "predunning_expiry"
    SOFT_FIRST = "soft_first_notice"
    SOFT_REMINDER = "soft_reminder"
    SHIPMENT_AT_RISK = "shipment_at_risk"
    FINAL_NOTICE = "final_notice"
    CARD_UPDATE = "card_update_request"
    AUTHENTICATION = "authentication_request"
    RECOVERED = "recovered_thanks"
    AGENT = "agent_follow_up"
    FRESH_LINK = "fresh_link"


class EventKind(StrEnum):
    """What a case's timeline entry (CaseEvent) records: the one list, whichever app
    writes it. `recovery.services.case_event_build` refuses a kind not in it."""

    # The case
    OPENED = "opened"
    TRACK_CHANGED = "track_changed"
    DECLINE_READ = "decline_read"
    CLASSIFIED_WITHOUT_DECLINE = "classified_without_decline"
    LATE_FAILURE_IGNORED = "late_failure_ignored"
    WINDOW_EXTENDED = "window_extended"
    ACCESS_RESTRICTED = "access_restricted"
    RECOVERED = "recovered"
    LOST = "lost"
    CANCELLED = "cancelled"
    CREDIT_CORRECTED = "credit_corrected"
    SUBSCRIPTION_CANCELED = "subscription_canceled"
    SUBSCRIPTION_PAUSED = "subscription_paused"
    SUBSCRIPTION_UNPAID = "subscription_unpaid"
    # Retries and cards
    RETRY_SCHEDULED = "retry_scheduled"
    RETRY_FAILED = "retry_failed"
    RETRY_REFUSED = "retry_refused"
    ATTEMPT_UNKNOWN = "attempt_unknown"
    ATTEMPT_NOT_SENT = "attempt_not_sent"
    CARD_CHANGED = "card_changed"
    # Messages
    MESSAGE_DUE = "message_due"
    MESSAGE_SCHEDULED = "message_scheduled"
    MESSAGE_SENT = "message_sent"
    MESSAGE_SKIPPED = "message_skipped"
    DUNNING_PAUSED = "dunning_paused"
    DUNNING_RESUMED = "dunning_resumed"
    INBOUND = "inbound"
    # Orders and stock
    ITEMS_HELD = "items_held"
    ITEMS_RELEASED = "items_released"
    ITEMS_SHORT = "items_short"
    ITEMS_UNAVAILABLE = "items_unavailable"
    HOLD_EXTENDED = "hold_extended"
    HOLD_SHORTENED = "hold_shortened"
    SHIPMENT_PAUSED = "shipment_paused"
    ORDER_BACKORDERED = "order_backordered"
    ORDER_RELEASED = "order_released"
    ORDER_CANCELLED = "order_cancelled"
    # A person
    ESCALATED = "escalated"
    QUEUED = "queued"
    CLAIMED = "claimed"
    RELEASED = "released"
    RETURNED_TO_AUTOMATION = "returned_to_automation"
    NOTE = "note"
    PERSONAL_EMAIL = "personal_email"
    OFFER_APPLIED = "offer_applied"
    PROMISE_TO_PAY = "promise_to_pay"
    PROMISE_DUE = "promise_due"


# ------------------------------------------------------------------ what recovery publishes
#
# The events the other apps act on, through `recovery.ports.publish`. Each carries the case
# (the caller's row, with what it has loaded) and the time it happened. The domain does not
# know what a case row is: `case` is whatever the caller holds.


@dataclass(frozen=True, slots=True)
class OnCase:
    """Something that happened to one case, at `at`."""

    case: Any
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class CaseClassified(OnCase):
    """A failed payment's case has its track (at opening, or when a decline that was read
    back from Stripe, or the conservative default, decided it)."""


@dataclass(frozen=True, slots=True)
class PaymentFailed(OnCase):
    """A payment of an open case failed (the first failure, or a retry), or its plan changed:
    the order behind it decides its holds again. `order` is the caller's row when it has one
    loaded, else the order is read afresh."""

    order: Any = None


@dataclass(frozen=True, slots=True)
class AccessRestricted(OnCase):
    """The case's grace period is over: access steps down, shipments pause."""


@dataclass(frozen=True, slots=True)
class CaseRecovered(OnCase):
    """The case's payment came back."""


@dataclass(frozen=True, slots=True)
class CaseLost(OnCase):
    """The case's window ended, or Stripe wrote the invoice off."""


@dataclass(frozen=True, slots=True)
class CaseCancelled(OnCase):
    """An operator cancelled the case."""


@dataclass(frozen=True, slots=True)
class CaseNoted(OnCase):
    """A person wrote a note on the case's timeline (a response, for the support queue)."""


@dataclass(frozen=True, slots=True)
class MessageDue:
    """A message for `purpose` is due on one case."""

    case: Any
    purpose: Purpose
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class MessagesDue:
    """A message for `purpose` is due on each of `cases`, whose rows the publisher's
    transaction holds locked (the scheduler's batch)."""

    cases: tuple
    purpose: Purpose
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class OrderPaid:
    """Stripe says the payment of an order succeeded (with or without a case)."""

    order: Any
    at: dt.datetime


CASE_CLOSED = (CaseRecovered, CaseLost, CaseCancelled)
