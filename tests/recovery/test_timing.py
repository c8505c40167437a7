"""When retries happen: the customer's local daytime, paydays, and what the store learnt."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
import time_machine

from recovery import engine
from recovery.domain import timing
from recovery.models import RecoveryCase, RetryPolicy, RetryStat
from subscriptions.models import Customer
from tests.recovery.test_engine import DAY, HOUR, T0, issuer, open_case, ours, passes

DAYTIME = range(timing.DAYTIME_HOURS[0], timing.DAYTIME_HOURS[-1] + 1)


@pytest.mark.parametrize(
    "customer_zone, failed_at, within",
    [
        # 08:30 in New York (14:30 in the store's Berlin): the same afternoon, New York time.
        ("America/New_York", dt.datetime(2026, 3, 4, 13, 30, tzinfo=dt.UTC), 9 * HOUR),
        # No zone known for the customer: the store's. 07:30 in Berlin.
        ("", dt.datetime(2026, 3, 4, 6, 30, tzinfo=dt.UTC), 6 * HOUR),
        # 22:00 in Tokyo: the next local morning, not the middle of the night.
        ("Asia/Tokyo", dt.datetime(2026, 3, 4, 13, 0, tzinfo=dt.UTC), 15 * HOUR),
    ],
)
def test_first_soft_retry_is_within_hours_in_local_daytime(
    webhooks, store, customer_zone, failed_at, within
):
    zone = zoneinfo.ZoneInfo(customer_zone or store.timezone)
    with time_machine.travel(failed_at, tick=False) as traveller:
        for i in range(8):  # eight customers, eight independent draws of the slot
            Customer.objects.create(
                store=store,
                stripe_id=f"cus_tz_{i}",
                time_zone=customer_zone,
                first_seen_at=failed_at,
            )
            open_case(
                webhooks,
                customer=f"cus_tz_{i}",
                subscription=f"sub_tz_{i}",
                fingerprint=f"fp_tz_{i}",
                decline_code="insufficient_funds",
            )
        cases = list(RecoveryCase.objects.all())
        for case in cases:
            planned = case.retry_at.astimezone(zone)
            assert planned.hour in DAYTIME and planned.minute == 0
            assert case.retry_at - failed_at <= within, case.retry_reason
        passes(traveller, start=failed_at, end=failed_at + DAY)

    same_day = failed_at.astimezone(zone).hour < timing.DAYTIME_HOURS[-1] - 1
    for case in cases:
        first = ours(case).first()
        assert first is not None, case.next_action_reason
        local = first.attempted_at.astimezone(zone)
        assert local.hour in DAYTIME
        assert HOUR <= first.attempted_at - failed_at <= within + HOUR
        if same_day:
            assert local.date() == failed_at.astimezone(zone).date()


def test_insufficient_funds_later_retries_fall_on_payday_slots(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds")
        gateways = issuer(case, *[False] * 5)
        passes(traveller, start=T0, end=T0 + 22 * DAY, gateways=gateways)

    made = list(ours(case))
    assert len(made) == 4  # the policy's default
    assert made[0].attempted_at - T0 < 12 * HOUR  # the first one soon, whatever the day
    for attempt in made[1:]:
        local = attempt.attempted_at.astimezone(store.tzinfo)
        assert timing.is_payday(local), f"{local:%a %d %b} is no payday"
        assert local.hour in DAYTIME
        assert "payday slot" in attempt.reason


def test_paydays_are_the_1st_15th_month_end_and_fridays():
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    paydays = [
        d
        for d in range(1, 32)
        if timing.is_payday(dt.datetime(2026, 3, d, 12, tzinfo=berlin))  # March 2026
    ]
    assert paydays == [1, 6, 13, 15, 20, 27, 31]


@pytest.mark.parametrize("learned", [True, False])
def test_learned_stats_shift_choice(webhooks, store, learned):
    RetryPolicy.objects.create(store=store, version=1, learned_timing=learned)
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="do_not_honor")
        first_slot = case.retry_at
        passes(traveller, start=T0, end=first_slot + HOUR, gateways=issuer(case, False, False))
        case = RecoveryCase.objects.get(pk=case.pk)
        assert ours(case).count() == 1
        now = first_slot.replace(minute=17)
        baseline = case.retry_at
        baseline_slot = timing.slot_of(baseline.astimezone(store.tzinfo))

        # The store's own results: one kind of slot keeps working, every other keeps failing.
        target = "weekend" if baseline_slot != "weekend" else "weekday"
        for bucket in ("h0", "h1", "h2", "h3"):
            for slot in ("payday", "weekday", "weekend"):
                RetryStat.objects.update_or_create(
                    store=store,
                    decline_group="do_not_honor",
                    hours_bucket=bucket,
                    slot=slot,
                    defaults={"successes": 400, "failures": 0}
                    if slot == target
                    else {"successes": 0, "failures": 400},
                )
        engine.case_plan(case, now=now)
        case.refresh_from_db()

        if not learned:
            assert case.retry_at == baseline
            return
        chosen = case.retry_at.astimezone(store.tzinfo)
        assert timing.slot_of(chosen) == target != baseline_slot
        assert "400 prior attempts" in case.retry_reason
        passes(
            traveller,
            start=now + HOUR,
            end=case.retry_at + HOUR,
            gateways=issuer(case, False, False),
        )

    second = ours(case).last()
    assert timing.slot_of(second.attempted_at.astimezone(store.tzinfo)) == target


def test_a_retry_outcome_is_learnt(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds")
        passes(traveller, start=T0, end=case.retry_at + HOUR, gateways=issuer(case, False))
    attempt = ours(case).get()
    local = attempt.attempted_at.astimezone(store.tzinfo)
    stat = RetryStat.objects.get(store=store, decline_group="insufficient_funds")
    assert (stat.hours_bucket, stat.slot) == (
        timing.hours_bucket((attempt.attempted_at - T0).total_seconds() / 3600),
        timing.slot_of(local),
    )
    assert (stat.successes, stat.failures) == (0, 1)
