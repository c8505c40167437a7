"""recovery.domain.planning from tables: every track, budget rule, cadence and cap, with
no database (the functions take the case's facts as values)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest

from recovery.domain import planning, timing
from recovery.domain.events import Purpose
from recovery.domain.facts import Attempt, Cadence, Card, CaseFacts, Policy, Touch

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
# A Wednesday, 10:00 UTC: the failure every case below starts from.
T0 = dt.datetime(2026, 3, 4, 10, 0, tzinfo=dt.UTC)
POLICY = Policy(version=3, max_retries=4, generic_retries_before_card_update=2)
CADENCE = Cadence(min_gap=48 * H, max_touches=4)
VISA = Card("visa", "fp_new", "pm_new")
FAILED_ON_OLD = Attempt("stripe_auto", "failed", T0, "visa", "fp_old", "pm_old", 8, 2030)


def case(**changes) -> CaseFacts:
    base = CaseFacts(
        track="soft",
        decline_code="insufficient_funds",
        opened_at=T0,
        window_start=T0,
        window_end=T0 + 14 * D,
        step_down_at=T0 + 7 * D,
        customer_since=T0 - 200 * D,
        time_zone="UTC",
        last_attempt_at=T0,
        default_card=Card("visa", "fp_old", "pm_old"),
        attempts=(FAILED_ON_OLD,),
    )
    return replace(base, **changes)


def ours(n: int, *, start: dt.datetime = T0, outcome: str = "failed") -> tuple[Attempt, ...]:
    return tuple(
        Attempt("recoup_retry", outcome, start + (i + 1) * 6 * H, "visa", "fp_old", "pm_old")
        for i in range(n)
    )


def retry(f: CaseFacts, *, now=T0, policy=POLICY, due=None, seed=1):
    return planning.plan_retry(f, now=now, policy=policy, rng=random.Random(seed), due=due)


# ------------------------------------------------------------------ plan_retry: tracks

NEW_CARD = dict(card_changed_at=T0 + H, default_card=VISA)


@pytest.mark.parametrize(
    "changes, retried, why",
    [
        ({"track": "fraud"}, False, "with a person"),
        ({"escalated": True, "dunning_paused": True}, False, "with a person"),
        # A person has it, but the customer saved a new card: that retry still goes out.
        ({"escalated": True, "dunning_paused": True, **NEW_CARD}, True, "payment method changed"),
        ({"track": "card_update", "decline_code": "expired_card"}, False, "until the payment"),
        ({"track": "card_update", "decline_code": "expired_card", **NEW_CARD}, True, "at once"),
        ({"track": "authentication", "decline_code": "authentication_required"}, False, "until"),
        ({"track": "hard", "decline_code": "do_not_honor"}, False, "until the payment method"),
        # The same card number saved again cures an expired date, never a hard decline.
        (
            {
                "track": "hard",
                "card_changed_at": T0 + H,
                "default_card": Card("visa", "fp_old", "pm_2"),
            },
            False,
            "until the payment method",
        ),
        (
            {
                "track": "card_update",
                "decline_code": "expired_card",
                "card_changed_at": T0 + H,
                "default_card": Card("visa", "fp_old", "pm_2"),
            },
            True,
            "at once",
        ),
        # The very payment method that was declined, saved as default again: no change.
        (
            {
                "track": "card_update",
                "card_changed_at": T0 + H,
                "default_card": Card("visa", "fp_x", "pm_old"),
            },
            False,
            "until",
        ),
        # A change before the failure does not count.
        ({"track": "card_update", "card_changed_at": T0 - H, "default_card": VISA}, False, "until"),
        # The card updater refreshes the card in place: that counts.
        (
            {"track": "card_update", "card_changed_at": T0 + H, "card_updater_result": "updated"},
            True,
            "at once",
        ),
    ],
)
def test_each_track_retries_only_when_its_rule_allows(changes, retried, why):
    at, reason = retry(case(**changes), now=T0 + 2 * H)
    assert (at is not None) == retried and why in reason
    if changes.get("card_changed_at", T0) > T0 and retried:
        assert at == T0 + 2 * H  # a new card is retried at once


# ------------------------------------------------------------------ plan_retry: how many


@pytest.mark.parametrize(
    "changes, allowed",
    [
        ({}, 4),  # the policy's
        ({"customer_since": T0 - 400 * D}, 5),  # a loyal customer with a clean history
        ({"customer_since": T0 - 400 * D, "earlier_failures": True}, 4),
        ({"customer_since": T0 - 30 * D, "earlier_failures": True}, 2),  # new, failing again
        ({"customer_since": T0 - 30 * D}, 4),
        ({"decline_code": "do_not_honor"}, 2),  # generic: then a card-update request
        ({"decline_code": "generic_decline"}, 2),
    ],
)
def test_the_retry_allowance(changes, allowed):
    f = case(**changes)
    assert planning.retry_allowance(f, POLICY)[0] == allowed
    assert retry(replace(f, attempts=ours(allowed - 1)), now=T0 + 3 * D)[0] is not None
    at, reason = retry(replace(f, attempts=ours(allowed)), now=T0 + 3 * D)
    assert at is None and f"{allowed} of {allowed} retries used" in reason
    assert planning.retries_used_up(replace(f, attempts=ours(allowed)), POLICY)


def test_retries_that_never_reached_the_network_are_not_counted():
    f = case(attempts=ours(4, outcome="not_sent"))
    assert planning.our_retries(f) == 0 and retry(f)[0] is not None


# ------------------------------------------------------------------ plan_retry: when


def test_the_first_retry_is_an_hour_after_the_failure_at_the_soonest_and_in_daytime():
    f = case(decline_code="do_not_honor", time_zone="America/New_York")
    at, reason = retry(f, now=T0)
    assert at >= T0 + H and at < f.window_end
    local = at.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert 9 <= local.hour <= 17 and "retry 1 of 2" in reason


def test_later_insufficient_funds_retries_fall_on_paydays_in_the_customers_zone():
    f = case(attempts=(FAILED_ON_OLD, *ours(1)), last_attempt_at=T0 + 6 * H)
    tokyo = replace(f, time_zone="Asia/Tokyo")
    for facts in (f, tokyo):
        for seed in range(5):
            at, reason = retry(facts, now=T0 + 7 * H, seed=seed)
            local = at.astimezone(ZoneInfo(facts.time_zone))
            # The 1st, the 15th, the month's end or a Friday, in the customer's zone.
            assert timing.is_payday(local) and "payday slot" in reason, (facts.time_zone, at)


@pytest.mark.parametrize("advice, wait", [("24", H), ("25", D), ("27", 4 * D), ("30", 10 * D)])
def test_a_mastercard_wait_advice_puts_the_retry_after_it(advice, wait):
    f = case(network_advice_code=advice, card_brand="mastercard", decline_code="do_not_honor")
    for seed in range(5):
        at, _ = retry(f, now=T0 + H, seed=seed)
        assert at >= T0 + wait  # from the failure the advice came with


@pytest.mark.parametrize(
    "rows, allowed",
    [
        ([], True),
        ([(T0 - D, "", "")] * 14, True),  # Visa: 15 in 30 days
        ([(T0 - D, "", "")] * 15, False),
        ([(T0 - 31 * D, "", "")] * 20, True),  # older than 30 days: not counted
        ([(T0, "do_not_try_again", "")], False),  # the issuer said never again
        ([(T0, "", "03")], False),  # Mastercard advice 03: never again
    ],
)
def test_the_cards_network_budget(rows, allowed):
    f = case(card_rows=tuple(rows))
    verdict = planning.budget_verdict(f, at=T0 + 2 * H)
    assert verdict.allowed == allowed
    at, reason = retry(f, now=T0 + 2 * H)
    if allowed:
        assert at is not None
    else:  # never again, or not before the 30 days are over: after the window
        assert at is None and verdict.reason in reason


def test_stripes_own_retry_is_kept_24_hours_clear():
    stripe_at = T0 + 2 * D
    f = case(stripe_next_attempt=stripe_at)
    for seed in range(10):
        at, _ = retry(f, now=T0 + H, seed=seed)
        assert at is None or abs(at - stripe_at) >= D


def test_a_pass_acting_on_its_slot_within_the_grace_keeps_it():
    f = case(retry_reason="retry 1 of 4: chosen earlier")
    due = T0 + 5 * H
    assert retry(f, now=due + 30 * dt.timedelta(minutes=1), due=due) == (
        due + 30 * dt.timedelta(minutes=1),
        "retry 1 of 4: chosen earlier",
    )
    _, reason = retry(f, now=due + 2 * H, due=due)  # past the grace: chosen again
    assert reason != "retry 1 of 4: chosen earlier" and "slot" in reason


def test_no_slot_left_in_the_window():
    f = case(window_end=T0 + 30 * dt.timedelta(minutes=1))
    assert retry(f) == (None, "no allowed retry slot left in the window")


def test_the_same_facts_and_seed_plan_the_same_retry():
    f = case()
    assert retry(f, seed=7) == retry(f, seed=7)


# ------------------------------------------------------------------ plan_message


def message(f: CaseFacts, *, now=T0, used_up=False, cadence=CADENCE):
    return planning.plan_message(f, now=now, cadence=cadence, retries_used_up=used_up)


def touches(*days: float) -> tuple[Touch, ...]:
    return tuple(Touch(T0 + d * D, Purpose.SOFT_REMINDER) for d in days)


@pytest.mark.parametrize(
    "changes, expected",
    [
        # Soft: technical recovery first: 24 h after the failure, or when a retry failed.
        ({}, (T0 + D, Purpose.SOFT_FIRST)),
        ({"attempts": (FAILED_ON_OLD, *ours(1))}, (T0, Purpose.SOFT_FIRST)),
        ({"track": "card_update"}, (T0, Purpose.CARD_UPDATE)),
        ({"track": "hard"}, (T0, Purpose.CARD_UPDATE)),
        ({"track": "authentication"}, (T0, Purpose.AUTHENTICATION)),
        ({"track": "fraud"}, (None, "")),
        ({"dunning_paused": True}, (None, "")),
    ],
)
def test_the_first_message_of_each_track(changes, expected):
    assert message(case(**changes)) == expected


def test_reminders_keep_the_gap_and_the_shipment_comes_second_when_something_ships():
    f = case(dunning_stage=1, touches=touches(1), ships=True)
    assert message(f, now=T0 + 1 * D) == (T0 + 3 * D, Purpose.SHIPMENT_AT_RISK)
    assert message(replace(f, ships=False), now=T0 + D) == (T0 + 3 * D, Purpose.SOFT_REMINDER)


def test_the_last_message_is_the_final_notice_a_day_before_the_step_down():
    f = case(dunning_stage=3, touches=touches(0, 2, 4))
    assert message(f, now=T0 + 4 * D) == (T0 + 6 * D, Purpose.FINAL_NOTICE)


def test_the_cap_stops_the_messages():
    f = case(dunning_stage=4, touches=touches(0, 2, 4, 6))
    assert message(f, now=T0 + 7 * D) == (None, "")


def test_retries_used_up_ask_for_a_card_once_but_never_five_in_fourteen_days():
    f = case(dunning_stage=4, touches=touches(0, 2, 4, 6))
    at, purpose = message(f, now=T0 + 7 * D, used_up=True)
    assert purpose == Purpose.CARD_UPDATE and at == T0 + 14 * D  # the first touch + 14 days
    asked = replace(f, touches=(*f.touches, Touch(T0 + 14 * D, Purpose.CARD_UPDATE)))
    assert message(asked, now=T0 + 15 * D, used_up=True) == (None, "")


def test_the_cadence_is_the_callers():
    f = case(dunning_stage=1, touches=touches(1), step_down_at=T0 + 10 * D)
    at, _ = message(f, now=T0 + D, cadence=Cadence(min_gap=72 * H, max_touches=4))
    assert at == T0 + 4 * D
    # A gap that leaves no room for a reminder before the final notice: the final notice.
    assert message(replace(f, step_down_at=T0 + 7 * D), now=T0 + D, cadence=Cadence(72 * H, 4)) == (
        T0 + 6 * D,
        Purpose.FINAL_NOTICE,
    )
    assert message(f, now=T0 + D, cadence=Cadence(min_gap=48 * H, max_touches=1)) == (None, "")


def test_the_database_and_the_templates_use_the_domains_lists():
    from messaging.models import Purpose as StoredPurpose
    from recovery.domain import declines
    from recovery.models import Track

    assert set(StoredPurpose.values) == {p.value for p in Purpose}
    assert set(Track.values) == set(declines.TRACKS)


def test_every_timeline_kind_the_code_writes_is_one_of_the_domains():
    """A literal `kind="..."` handed to any timeline writer, in every product app."""
    import ast
    import pathlib

    from recovery.domain.events import EventKind

    root = pathlib.Path(__file__).resolve().parents[2]
    apps = [
        "analytics",
        "common",
        "messaging",
        "orders",
        "recovery",
        "stores",
        "subscriptions",
        "support",
    ]
    writers = {"case_event_record", "case_event_build", "_record", "_case_event"}
    seen, prefixes = set(), set()
    for app in apps:
        for path in (root / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                for kw in node.keywords:
                    if name not in writers or kw.arg != "kind":
                        continue
                    # Literals, either side of a conditional, and the fixed part of a
                    # prefix (f"hold_{what}", "subscription_" + status).
                    for const in ast.walk(kw.value):
                        if isinstance(const, ast.Constant) and isinstance(const.value, str):
                            if isinstance(kw.value, ast.Constant | ast.IfExp):
                                seen.add(const.value)
                            else:
                                prefixes.add(const.value)
    kinds = {k.value for k in EventKind}
    assert len(seen) > 30 and {"order_released", "order_backordered"} <= seen
    assert seen <= kinds, seen - kinds
    assert prefixes == {"hold_", "subscription_"}
    assert all(any(k.startswith(p) for k in kinds) for p in prefixes)


def test_a_timeline_entry_of_an_unknown_kind_is_refused():
    from recovery.models import RecoveryCase
    from recovery.services import case_event_build

    with pytest.raises(ValueError, match="made_up"):
        case_event_build(case=RecoveryCase(store_id=None), kind="made_up", message="x")


@pytest.mark.parametrize(
    "sources, number",
    [
        ((), 1),
        (("stripe_auto", "customer"), 1),  # Stripe's and the customer's attempts are not ours
        (("recoup_retry",), 2),
        (("recoup_retry", "card_update", "agent", "stripe_auto"), 4),
    ],
)
def test_the_next_attempt_number_counts_every_attempt_of_ours(sources, number):
    """One rule for both paths (`engine.case_retry`, `batch._attempts_record`): an attempt of
    ours not sent still used its key, so it counts."""
    assert planning.attempt_number(sources) == number
