"""The analytics rollup: refreshed by whole days, incrementally and idempotently, and the
home figures read from it equal the direct aggregation over the cases."""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import asdict

import pytest
import time_machine

from analytics import selectors
from analytics.models import CaseDay
from analytics.services import rollup_refresh, rollups_refresh
from recovery.models import RecoveryCase
from recovery.services import recovery_case_close
from tests.dashboard.conftest import count_queries, make_case, queries_text
from tests.dashboard.test_home import seed

S = RecoveryCase.Status
NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def rows(store) -> list[tuple]:
    fields = [f.name for f in CaseDay._meta.concrete_fields if f.name not in ("id", "store")]
    return sorted(
        tuple(str(v) for v in r) for r in CaseDay.objects.filter(store=store).values_list(*fields)
    )


def same(a, b) -> bool:
    """Equal, floats to 1e-9 (a median read from a histogram vs percentile_cont)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_refresh_is_incremental_and_idempotent(store):
    with time_machine.travel(NOW - dt.timedelta(hours=1), tick=False):
        seed(store, n=40, rng=random.Random(3))
    with time_machine.travel(NOW, tick=False):
        first = rollup_refresh(store=store)
        built = rows(store)
    assert first.full and built
    with time_machine.travel(NOW + dt.timedelta(hours=1), tick=False):
        again = rollup_refresh(store=store)
        assert not again.full and again.opened_days == set() and again.closed_days == set()
        assert rows(store) == built
        case = make_case(store, opened_at=NOW - 10 * DAY, amount=4900)
        changed = rollup_refresh(store=store)
    assert changed.opened_days == {(NOW - 10 * DAY).astimezone(store.tzinfo).date()}
    assert changed.closed_days == set()
    incremental = rows(store)
    assert incremental != built
    with time_machine.travel(NOW + dt.timedelta(hours=2), tick=False):
        rollup_refresh(store=store, full=True)
        assert rows(store) == incremental  # the same rows as a rebuild from scratch
        rollup_refresh(store=store)
        assert rows(store) == incremental
    assert case.pk


def _cohort_row(store, day: dt.date, status: str) -> int:
    return sum(
        CaseDay.objects.filter(store=store, day=day, basis="cohort", status=status).values_list(
            "cases", flat=True
        )
    )


@pytest.mark.parametrize("back_dated", [False, True], ids=["closed-now", "late-event"])
def test_a_case_closing_changes_yesterdays_row(store, back_dated):
    yesterday_noon = NOW - DAY
    yesterday = yesterday_noon.astimezone(store.tzinfo).date()
    with time_machine.travel(NOW, tick=False):
        case = make_case(store, opened_at=yesterday_noon)
        rollup_refresh(store=store)
    assert _cohort_row(store, yesterday, S.OPEN) == 1
    later = NOW + dt.timedelta(hours=5)
    with time_machine.travel(later, tick=False):
        # A late Stripe event closes the case at the event's time, hours before now:
        # updated_at is back-dated past the watermark; the open count still finds it.
        at = yesterday_noon + dt.timedelta(hours=6) if back_dated else later
        assert recovery_case_close(
            case=case, status=S.RECOVERED, reason="paid", at=at, via="stripe_retry"
        )
        rollup_refresh(store=store)
        data = selectors.home(store=store, period=selectors.period_for(store=store, now=later))
    assert _cohort_row(store, yesterday, S.OPEN) == 0
    assert _cohort_row(store, yesterday, S.RECOVERED) == 1
    closed_day = at.astimezone(store.tzinfo).date()
    assert CaseDay.objects.get(
        store=store, day=closed_day, basis="closed", status=S.RECOVERED
    ).recovered_amount == (case.amount)
    assert data.figures.recovered == 1 and data.figures.recovered_revenue == case.amount
    assert data.at_risk_cases == 0


@pytest.mark.parametrize("seed_value", [1, 2, 3])
def test_rollup_and_live_equal_the_direct_aggregation_on_random_data(store, seed_value):
    rng = random.Random(seed_value)
    with time_machine.travel(NOW - 5 * DAY, tick=False):
        cases = seed(store, n=60, rng=rng)
        rollup_refresh(store=store)
    with time_machine.travel(NOW, tick=False):
        # Changes after the first refresh: new cases, and some open ones closed (some
        # with back-dated times, as a late event would).
        seed(store, n=40, rng=rng)
        for case in cases:
            if case.status == S.OPEN and rng.random() < 0.5:
                at = NOW - dt.timedelta(hours=rng.randint(0, 72))
                recovery_case_close(
                    case=case,
                    status=rng.choice([S.RECOVERED, S.LOST]),
                    reason="test",
                    at=max(at, case.opened_at + dt.timedelta(minutes=1)),
                    via="customer",
                )
    for kw in (
        {"days": 7},
        {"days": 30},
        {"days": 90},
        {"start": (NOW - 40 * DAY).date(), "end": NOW.date()},
    ):
        period = selectors.period_for(store=store, now=NOW, **kw)
        with time_machine.travel(NOW + dt.timedelta(minutes=1), tick=False):
            rolled = asdict(selectors.home(store=store, period=period))
        direct = asdict(selectors.home_direct(store=store, period=period))
        diff = [k for k in rolled if not same(rolled[k], direct[k])]
        assert not diff, (kw, diff)


def test_home_costs_the_same_queries_clean_or_after_changes_at_any_size(store):
    period = selectors.period_for(store=store, now=NOW)
    rng = random.Random(9)
    counts = []
    with time_machine.travel(NOW, tick=False):
        seed(store, n=10, rng=rng)
        selectors.home(store=store, period=period)  # the first, full build
    for hours, more in ((1, 0), (2, 50), (3, 0)):
        with time_machine.travel(NOW + dt.timedelta(hours=hours), tick=False):
            seed(store, n=more, rng=rng)
            with count_queries() as ctx:
                selectors.home(store=store, period=period)
        counts.append(len(ctx.captured_queries))
    assert len(set(counts)) == 1, queries_text(ctx)


def test_scheduler_sweep_refreshes_every_store_with_cases(store, other_store):
    with time_machine.travel(NOW, tick=False):
        make_case(store, opened_at=NOW - DAY)
        assert rollups_refresh(now=NOW) == 1
    assert CaseDay.objects.filter(store=store).exists()
    assert not CaseDay.objects.filter(store=other_store).exists()


def test_a_time_zone_change_rebuilds_the_days(store):
    late = dt.datetime(2026, 3, 10, 23, 30, tzinfo=dt.UTC)  # 00:30 on the 11th in Berlin
    with time_machine.travel(NOW, tick=False):
        make_case(store, opened_at=late)
        rollup_refresh(store=store)
        assert CaseDay.objects.get(store=store, basis="day").day == dt.date(2026, 3, 11)
        store.timezone = "UTC"
        store.save()
        assert rollup_refresh(store=store).full
    assert CaseDay.objects.get(store=store, basis="day").day == dt.date(2026, 3, 10)
