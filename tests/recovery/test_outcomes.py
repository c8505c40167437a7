"""`recovery.domain.outcomes.resolve`: what an answer to one of our attempts does to its case.

Table-driven, no database: the same function decides for one case (`engine.attempt_resolve`)
and for a scheduler batch (`recovery.batch`).
"""

from __future__ import annotations

import datetime as dt

import pytest

from recovery.domain import outcomes
from recovery.domain.outcomes import Answer, Sent, credit, resolve, told_decline_code

AT = dt.datetime(2026, 3, 10, 14, 0, tzinfo=dt.UTC)
SENT_AT = AT - dt.timedelta(seconds=2)


def sent(**kw) -> Sent:
    base = dict(
        source="recoup_retry",
        source_label="Recoup retry",
        attempted_at=SENT_AT,
        case_amount=2500,
        case_decline_code="insufficient_funds",
    )
    return Sent(**(base | kw))


@pytest.mark.parametrize(
    "source, updater, via",
    [
        ("recoup_retry", "", "recoup_retry"),
        ("agent", "", "agent"),
        ("customer", "", "customer"),
        ("stripe_auto", "", "stripe_retry"),
        ("card_update", "updated", "card_updater"),
        ("card_update", "", "customer"),
        ("card_update", "expired", "customer"),
    ],
)
def test_credit_goes_to_who_made_the_payment_possible(source, updater, via):
    assert credit(source, card_updater_result=updater) == via


def test_a_payment_closes_the_case_with_the_answers_amount_else_the_cases():
    paid = resolve(sent(), Answer(outcome="succeeded", amount=2400), at=AT)
    assert (paid.paid, paid.counted, paid.amount, paid.via) == (True, True, 2400, "recoup_retry")
    assert paid.close_reason == "Recoup retry succeeded"
    assert paid.timeline == () and paid.learn
    assert resolve(sent(), Answer(outcome="succeeded"), at=AT).amount == 2500


def test_a_payment_after_a_card_update_credits_the_updater_and_teaches_no_statistics():
    paid = resolve(
        sent(
            source="card_update", source_label="After a card update", card_updater_result="updated"
        ),
        Answer(outcome="succeeded"),
        at=AT,
    )
    assert (paid.via, paid.learn, paid.close_reason) == (
        "card_updater",
        False,
        "After a card update succeeded",
    )


@pytest.mark.parametrize(
    "outcome, code, failure, case_code, told",
    [
        ("failed", "do_not_honor", "card_declined", "insufficient_funds", "do_not_honor"),
        ("failed", "", "card_declined", "insufficient_funds", ""),  # the failure code speaks
        ("failed", "", "", "insufficient_funds", "insufficient_funds"),  # nothing said: the case's
        ("requires_action", "", "", "insufficient_funds", "authentication_required"),
        ("requires_action", "card_velocity_exceeded", "", "", "card_velocity_exceeded"),
    ],
)
def test_the_decline_the_case_is_told(outcome, code, failure, case_code, told):
    assert (
        told_decline_code(
            outcome, decline_code=code, failure_code=failure, case_decline_code=case_code
        )
        == told
    )
    declined = resolve(
        sent(case_decline_code=case_code),
        Answer(outcome=outcome, decline_code=code, failure_code=failure),
        at=AT,
    )
    assert declined.told_decline_code == told
    assert declined.counted and not declined.paid
    assert declined.timeline == (
        ("retry_failed", f"Retry declined: {told or failure or 'no code'}"),
    )


@pytest.mark.parametrize(
    "changed_at, spent",
    [
        (None, True),
        (SENT_AT - dt.timedelta(hours=1), True),  # the change this retry used
        (SENT_AT, True),
        (SENT_AT + dt.timedelta(seconds=1), False),  # a new card while the call was out
    ],
)
def test_a_decline_spends_the_card_change_that_allowed_it_not_a_later_one(changed_at, spent):
    declined = resolve(sent(card_changed_at=changed_at), Answer(outcome="failed"), at=AT)
    assert declined.card_change_spent is spent


@pytest.mark.parametrize(
    "source, learn",
    [("recoup_retry", True), ("card_update", False), ("agent", False), ("customer", False)],
)
def test_only_our_scheduled_retries_teach_the_timing_statistics(source, learn):
    for outcome in ("succeeded", "failed"):
        assert resolve(sent(source=source), Answer(outcome=outcome), at=AT).learn is learn


def test_an_unknown_outcome_is_read_back_before_anything_else():
    unknown = resolve(sent(), Answer(outcome="unknown", message="timeout"), at=AT)
    assert unknown.timeline == (
        ("attempt_unknown", "Outcome unknown (timeout); reading it back before anything else"),
    )
    assert not (unknown.counted or unknown.paid or unknown.learn or unknown.card_change_spent)
    assert unknown.replan_at == AT and unknown.next_action_at is None


def test_a_retry_not_sent_waits_as_long_as_the_gateway_asked():
    wait = dt.timedelta(seconds=90)
    paused = resolve(
        sent(), Answer(outcome="not_sent", message="rate limited", retry_after=wait), at=AT
    )
    assert paused.timeline == (("attempt_not_sent", "Retry not sent: rate limited"),)
    assert (paused.next_action_at, paused.replan_at) == (AT + wait, AT + wait)
    assert not (paused.counted or paused.learn)
    plain = resolve(sent(), Answer(outcome="not_sent", message="no card"), at=AT)
    assert (plain.next_action_at, plain.replan_at) == (None, AT)


def test_an_outcome_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not an attempt outcome"):
        resolve(sent(), Answer(outcome="maybe"), at=AT)


def test_the_outcome_names_are_the_models():
    from recovery.models import PaymentAttempt, RecoveryCase

    assert {
        outcomes.SUCCEEDED,
        outcomes.FAILED,
        outcomes.REQUIRES_ACTION,
        outcomes.NOT_SENT,
        outcomes.UNKNOWN,
    } == set(PaymentAttempt.Outcome.values)
    assert set(outcomes.CREDIT) | {"card_update"} == set(PaymentAttempt.Source.values)
    assert set(outcomes.CREDIT.values()) | {"card_updater"} <= set(RecoveryCase.RecoveredVia.values)
