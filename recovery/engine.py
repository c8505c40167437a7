"""What happens, and when, after a payment fails.

The intake and the services call these hooks; the scheduler pass (recovery/scheduler.py)
acts on what they plan.
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from . import declines
from .models import PaymentAttempt, RecoveryCase, Track


def case_after_failure(
    *, case: RecoveryCase, classification: declines.Classification, at: dt.datetime
) -> None:
    """Plan the next step of an open case after a failure was reported."""
    from .services import case_event_record

    if not case.is_open:
        return
    if case.track == Track.FRAUD:
        case_route_to_person(case=case, at=at, track=Track.FRAUD, reason=classification.reason)
        return
    if case.track == Track.SOFT:
        case_schedule(
            case=case,
            action=RecoveryCase.NextAction.RETRY,
            when=at + dt.timedelta(hours=4),
            reason="first retry",
        )
    else:
        case_schedule(
            case=case,
            action=RecoveryCase.NextAction.MESSAGE,
            when=at,
            reason="ask the customer to act",
        )
    _ = case_event_record


def case_schedule(
    *, case: RecoveryCase, action: str, when: dt.datetime | None, reason: str
) -> None:
    case.next_action = action
    case.next_action_at = when
    case.next_action_reason = reason[:300]
    RecoveryCase.objects.filter(pk=case.pk).update(
        next_action=action, next_action_at=when, next_action_reason=reason[:300]
    )


def case_attempt_seen(
    *, case: RecoveryCase, attempt: PaymentAttempt, created: bool, at: dt.datetime
) -> None:
    if not created:
        return
    RecoveryCase.objects.filter(pk=case.pk).update(
        attempt_count=case.attempts.count(), last_attempt_at=max(case.last_attempt_at or at, at)
    )


def case_after_close(*, case: RecoveryCase, at: dt.datetime) -> None:
    pass


def case_route_to_person(*, case: RecoveryCase, at: dt.datetime, track: str, reason: str) -> None:
    from .services import case_event_record

    already = case.escalated and case.track == track
    RecoveryCase.objects.filter(pk=case.pk).update(
        track=track,
        track_reason=reason[:300],
        escalated=True,
        escalation_reason=reason[:300],
        dunning_paused=True,
        next_action="",
        next_action_at=None,
        next_action_reason="",
    )
    case.refresh_from_db()
    if not already:
        case_event_record(
            case=case, kind="escalated", at=at, message=f"Routed to a person: {reason}"
        )


def customer_card_changed(*, customer, at: dt.datetime, source: str, message: str) -> None:
    from .services import case_event_record, open_cases_for_customer

    for case in open_cases_for_customer(customer=customer).exclude(track=Track.FRAUD):
        if source == "card_updater":
            RecoveryCase.objects.filter(pk=case.pk).update(card_updater_result="updated")
        case_event_record(
            case=case, kind="card_changed", at=at, message=message, data={"source": source}
        )
        case_schedule(
            case=case,
            action=RecoveryCase.NextAction.RETRY,
            when=at,
            reason=f"card changed ({source}): retry at once",
        )
    _ = timezone
