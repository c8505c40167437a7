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
from subscriptions.models import Subscription
from tests.dashboard.conftest import (
    count_queries,
    make_case,
    make_customer,
    make_subscription,
    queries_text,
)
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


@pytest.mark.parametrize("late", [False, True], ids=["closed-now", "late-event"])
def test_a_close_recomputes_its_opened_day_and_the_day_it_is_dated(store, late):
    """A close is saved with the time it was saved (updated_at), whatever moment it is
    dated: a late event's close is seen at once and counted on its own day."""
    opened = NOW - 10 * DAY
    with time_machine.travel(NOW - DAY, tick=False):  # saved long before the refresh
        case = make_case(store, opened_at=opened)
    with time_machine.travel(NOW, tick=False):
        rollup_refresh(store=store)
    later = NOW + dt.timedelta(hours=1)
    at = NOW - 3 * DAY if late else later
    with time_machine.travel(later, tick=False):
        assert recovery_case_close(case=case, status=S.LOST, reason="window", at=at)
        refresh = rollup_refresh(store=store)
    local = lambda t: t.astimezone(store.tzinfo).date()  # noqa: E731
    assert refresh.opened_days == {local(opened)}
    assert refresh.closed_days == {local(at)}
    assert CaseDay.objects.get(store=store, basis="closed", status=S.LOST).day == local(at)


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
                    status=rng.choice([S.RECOVERED, S.LOST, S.CANCELLED]),
                    reason="test",
                    at=max(at, case.opened_at + dt.timedelta(minutes=1)),
                    via="customer",
                )
            elif case.status != S.OPEN and rng.random() < 0.15:
                # Reopened, saved now or with a back-dated time.
                _reopen(case, at=rng.choice([NOW, case.opened_at + dt.timedelta(hours=1)]))
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
    incremental = rows(store)
    with time_machine.travel(NOW + dt.timedelta(minutes=2), tick=False):
        rollup_refresh(store=store, full=True)
    assert rows(store) == incremental  # the same rows as a rebuild from scratch


WRITES = ("INSERT", "UPDATE", "DELETE", "SAVEPOINT")


def test_home_queries_do_not_grow_with_the_data_clean_or_after_changes(store):
    period = selectors.period_for(store=store, now=NOW)
    rng = random.Random(9)
    counts: dict[str, list[int]] = {"changed": [], "clean": []}
    with time_machine.travel(NOW, tick=False):
        seed(store, n=10, rng=rng)
        selectors.home(store=store, period=period)  # the first, full build
    for hours, more in ((1, 5), (2, 60)):
        with time_machine.travel(NOW + dt.timedelta(hours=hours), tick=False):
            seed(store, n=more, rng=rng)
            with count_queries() as changed:
                selectors.home(store=store, period=period)
            with count_queries() as clean:
                selectors.home(store=store, period=period)
        counts["changed"].append(len(changed.captured_queries))
        counts["clean"].append(len(clean.captured_queries))
        # Nothing changed since the last read: it checks, reads, and writes nothing.
        assert not [q for q in clean.captured_queries if q["sql"].lstrip().startswith(WRITES)]
    assert counts["changed"] == [10, 10], queries_text(changed)
    assert counts["clean"] == [4, 4], queries_text(clean)


def test_a_refresh_with_nothing_new_reads_two_statements_and_writes_nothing(store):
    with time_machine.travel(NOW, tick=False):
        make_case(store, opened_at=NOW - 3 * DAY)
        assert rollup_refresh(store=store).wrote
        built = rows(store)
        # The case was saved moments ago: it is still in the look-back window, but this
        # very save was counted already.
        with count_queries() as ctx:
            again = rollup_refresh(store=store)
    assert not again.wrote and again.at_risk_cases == 1
    assert len(ctx.captured_queries) == 2, queries_text(ctx)
    assert rows(store) == built


def _reopen(case, *, at):
    """A closed case opened again (no service does this yet; the rollup must cope)."""
    RecoveryCase.objects.filter(pk=case.pk).update(
        status=S.OPEN, closed_at=None, recovered_amount=0, recovered_via="", updated_at=at
    )


@pytest.mark.parametrize("back_dated", [False, True], ids=["saved-now", "back-dated"])
@pytest.mark.parametrize("seen", [False, True], ids=["saved-long-ago", "saved-just-before"])
def test_a_reopened_case_leaves_the_day_it_had_closed_on(store, back_dated, seen):
    """Found by the save (the last refresh remembers where it counted a case saved just
    before it) or else by its opened day's count of open cases."""
    opened = NOW - 10 * DAY
    closed_at = NOW - 6 * DAY
    with time_machine.travel(NOW - (dt.timedelta(0) if seen else DAY), tick=False):
        case = make_case(
            store, opened_at=opened, status=S.RECOVERED, closed_at=closed_at, via="customer"
        )
        make_case(store, opened_at=opened + dt.timedelta(hours=1))  # open, same day
    with time_machine.travel(NOW, tick=False):
        rollup_refresh(store=store)
    closed_day = closed_at.astimezone(store.tzinfo).date()
    assert CaseDay.objects.filter(store=store, day=closed_day, basis="closed").exists()
    later = NOW + dt.timedelta(hours=3)
    with time_machine.travel(later, tick=False):
        _reopen(case, at=opened + DAY if back_dated else later)
        rollup_refresh(store=store)
        period = selectors.period_for(store=store, now=later)
        data = asdict(selectors.home(store=store, period=period))
    assert not CaseDay.objects.filter(store=store, day=closed_day, basis="closed").exists()
    assert not CaseDay.objects.filter(store=store, day=closed_day, basis="duration").exists()
    assert _cohort_row(store, opened.astimezone(store.tzinfo).date(), S.OPEN) == 2
    direct = asdict(selectors.home_direct(store=store, period=period))
    assert not [k for k in data if not same(data[k], direct[k])]


def test_a_case_closed_again_within_minutes_moves_to_its_new_day(store):
    """Saved twice inside the look-back window: the first save's day is remembered."""
    opened = NOW - 8 * DAY
    with time_machine.travel(NOW, tick=False):
        case = make_case(store, opened_at=opened)
        rollup_refresh(store=store)
        assert recovery_case_close(
            case=case, status=S.RECOVERED, reason="paid", at=NOW, via="stripe_retry"
        )
        rollup_refresh(store=store)
    first_day = NOW.astimezone(store.tzinfo).date()
    assert CaseDay.objects.filter(store=store, day=first_day, basis="closed").exists()
    soon = NOW + dt.timedelta(seconds=30)
    with time_machine.travel(soon, tick=False):
        # Corrected to the time the money really arrived, two days earlier.
        RecoveryCase.objects.filter(pk=case.pk).update(closed_at=NOW - 2 * DAY, updated_at=soon)
        rollup_refresh(store=store)
    assert not CaseDay.objects.filter(store=store, day=first_day, basis="closed").exists()
    assert CaseDay.objects.filter(
        store=store, day=(NOW - 2 * DAY).astimezone(store.tzinfo).date(), basis="closed"
    ).exists()
    with time_machine.travel(soon, tick=False):
        incremental = rows(store)
        rollup_refresh(store=store, full=True)
    assert rows(store) == incremental


def test_subscription_changes_show_at_once(store):
    """Active subscriptions and recovered MRR are read live: a cancellation back-dated
    before the period, or a new price, shows on the next read with nothing to refresh."""
    subs = [make_subscription(store, make_customer(store), mrr=2900) for _ in range(4)]
    Subscription.objects.filter(pk__in=[s.pk for s in subs]).update(created_at=NOW - 90 * DAY)
    make_case(
        store,
        opened_at=NOW - 5 * DAY,
        status=S.RECOVERED,
        closed_at=NOW - 4 * DAY,
        via="customer",
        customer=subs[0].customer,
        subscription=subs[0],
    )
    period = selectors.period_for(store=store, now=NOW)
    with time_machine.travel(NOW, tick=False):
        f = selectors.home(store=store, period=period).figures
        assert (f.active_subscriptions, f.recovered_mrr) == (4, 2900)
        Subscription.objects.filter(pk=subs[1].pk).update(canceled_at=NOW - 40 * DAY)
        Subscription.objects.filter(pk=subs[0].pk).update(mrr=4900)
        f = selectors.home(store=store, period=period).figures
    assert (f.active_subscriptions, f.recovered_mrr) == (3, 4900)


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
