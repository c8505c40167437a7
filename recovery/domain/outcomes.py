"""What the gateway's answer to one of our attempts does to its case: `resolve`.

Pure: it reads the attempt as it was sent (`Sent`) and the gateway's answer (`Answer`), and
says what changes (`Resolution`): the close of a payment and who is credited, the decline
the case is told, whether the card change that allowed the retry is spent, whether the
retry statistics learn from it, the timeline's entries, and when the case is planned again.
`recovery.engine.attempt_resolve` (one case) and `recovery.batch` (a scheduler batch) both
decide through it, and each writes the Resolution its own way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# Attempt outcomes (recovery.models.PaymentAttempt.Outcome).
SUCCEEDED = "succeeded"
FAILED = "failed"
REQUIRES_ACTION = "requires_action"
NOT_SENT = "not_sent"
UNKNOWN = "unknown"
DECLINED = (FAILED, REQUIRES_ACTION)

# Who is credited with a payment (recovery.models.RecoveryCase.RecoveredVia), by the
# source of the attempt that paid (recovery.models.PaymentAttempt.Source).
CREDIT = {
    "recoup_retry": "recoup_retry",
    "agent": "agent",
    "customer": "customer",
    "stripe_auto": "stripe_retry",
}


def credit(source: str, *, card_updater_result: str) -> str:
    """Who is credited when an attempt from `source` paid: the one rule, whether our own
    answer or Stripe's event closed the case. A retry of a changed card is the card
    updater's when the updater changed it, else the customer's."""
    if source in CREDIT:
        return CREDIT[source]
    return "card_updater" if card_updater_result == "updated" else "customer"


@dataclass(frozen=True, slots=True)
class Sent:
    """One attempt of ours as it was sent, with what of its case resolving it reads."""

    source: str
    source_label: str  # how the timeline names it ("Recoup retry")
    attempted_at: dt.datetime
    case_amount: int
    case_decline_code: str = ""
    card_changed_at: dt.datetime | None = None
    card_updater_result: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """The gateway's answer to the attempt."""

    outcome: str
    decline_code: str = ""
    failure_code: str = ""
    amount: int = 0
    message: str = ""
    retry_after: dt.timedelta | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    outcome: str
    # The timeline's entries, (kind, message), in order.
    timeline: tuple[tuple[str, str], ...] = ()
    # The answer reached the card: the case counts the attempt (attempt_count, last attempt).
    counted: bool = False
    # A payment: the case closes as recovered, crediting `via`, for `amount`.
    paid: bool = False
    via: str = ""
    amount: int = 0
    close_reason: str = ""
    # A decline: the code the case is told (its track is decided from it).
    told_decline_code: str = ""
    # The card change that allowed this retry is used up (a change made while the attempt
    # was out still stands).
    card_change_spent: bool = False
    # The store's retry statistics learn from it (our scheduled retries only).
    learn: bool = False
    # Not sent: the case's next action waits until then (the gateway asked for a pause).
    next_action_at: dt.datetime | None = None
    # When the case is planned again (None: by what the close or the decline records).
    replan_at: dt.datetime | None = None


def told_decline_code(
    outcome: str, *, decline_code: str, failure_code: str, case_decline_code: str
) -> str:
    """The decline a failed attempt of ours reports to the case: an authentication request
    when the bank asked for one, the case's own code when the answer carried none."""
    if outcome == REQUIRES_ACTION and not decline_code:
        return "authentication_required"
    if not decline_code and not failure_code:
        return case_decline_code
    return decline_code


def resolve(sent: Sent, answer: Answer, *, at: dt.datetime) -> Resolution:
    """What the answer does to the case (see the module's docstring)."""
    outcome = answer.outcome
    if outcome == UNKNOWN:
        return Resolution(
            outcome=outcome,
            timeline=(
                (
                    "attempt_unknown",
                    f"Outcome unknown ({answer.message}); reading it back before anything else",
                ),
            ),
            replan_at=at,
        )
    if outcome == NOT_SENT:
        wait = answer.retry_after or dt.timedelta()
        return Resolution(
            outcome=outcome,
            timeline=(("attempt_not_sent", f"Retry not sent: {answer.message}"),),
            next_action_at=at + answer.retry_after if answer.retry_after else None,
            replan_at=at + wait,
        )
    learn = sent.source == "recoup_retry"
    if outcome == SUCCEEDED:
        return Resolution(
            outcome=outcome,
            counted=True,
            paid=True,
            via=credit(sent.source, card_updater_result=sent.card_updater_result),
            amount=answer.amount or sent.case_amount,
            close_reason=f"{sent.source_label} succeeded",
            learn=learn,
        )
    if outcome not in DECLINED:
        raise ValueError(f"not an attempt outcome: {outcome!r}")
    told = told_decline_code(
        outcome,
        decline_code=answer.decline_code,
        failure_code=answer.failure_code,
        case_decline_code=sent.case_decline_code,
    )
    return Resolution(
        outcome=outcome,
        timeline=(("retry_failed", f"Retry declined: {told or answer.failure_code or 'no code'}"),),
        counted=True,
        told_decline_code=told,
        card_change_spent=sent.card_changed_at is None or sent.card_changed_at <= sent.attempted_at,
        learn=learn,
    )
