"""The home page's figures, checked against a calculation done here in Python over the
same rows, and its query count, which must not grow with the data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import statistics

import pytest
import time_machine

from analytics import selectors
from recovery.models import ExpiryWarning, RecoveryCase
from subscriptions.models import PaymentMethod
from tests.dashboard.conftest import (
    count_queries,
    make_case,
    make_customer,
    make_subscription,
    queries_text,
)

S = RecoveryCase.Status
NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def seed(store, *, n: int, rng: random.Random) -> list[RecoveryCase]:
    """Cases over the last 70 days in every status, on subscriptions and orders."""
    cases = []
    for _ in range(n):
        opened = NOW - dt.timedelta(hours=rng.randint(1, 70 * 24))
        status = rng.choice([S.RECOVERED, S.RECOVERED, S.LOST, S.OPEN, S.CANCELLED])
        if status == S.OPEN and opened < NOW - 20 * DAY:
            status = S.LOST
        closed = None
        if status != S.OPEN:
            closed = min(
                opened + dt.timedelta(hours=rng.randint(1, 20 * 24)), NOW - dt.timedelta(minutes=5)
            )
        customer = make_customer(store)
        sub = None
        if rng.random() < 0.7:
            sub = make_subscription(
                store,
                customer,
                mrr=rng.choice([1500, 2900, 9900]),
                product=rng.choice(["Coffee club", "Tea box"]),
            )
        cases.append(
            make_case(
                store,
                opened_at=opened,
                amount=rng.choice([1500, 2900, 9900, 12000]),
                status=status,
                closed_at=closed,
                track=rng.choice(["soft", "soft", "card_update", "hard"]),
                decline_code=rng.choice(["insufficient_funds", "expired_card", "do_not_honor"]),
                via=rng.choice(
                    ["recoup_retry", "stripe_retry", "customer", "card_updater", "agent"]
                ),
                attempts=rng.randint(1, 4),
                customer=customer,
                subscription=sub,
            )
        )
    return cases


def expected(cases, store, period):
    """The metric definitions, applied row by row."""
    cohort = [c for c in cases if period.start <= c.opened_at < period.end]
    recovered = [c for c in cohort if c.status == S.RECOVERED]
    lost = [c for c in cohort if c.status == S.LOST]
    closed_rec = [
        c for c in cases if c.status == S.RECOVERED and period.start <= c.closed_at < period.end
    ]
    return {
        "failed": len(cohort),
        "in_progress": sum(c.status == S.OPEN for c in cohort),
        "recovery_rate": len(recovered) / (len(recovered) + len(lost))
        if recovered or lost
        else None,
        "recovered_revenue": sum(c.recovered_amount for c in closed_rec),
        "recovered_mrr": sum(
            {c.subscription_id: c.subscription.mrr for c in closed_rec if c.subscription}.values()
        ),
        "median_days": statistics.median(
            (c.closed_at - c.opened_at).total_seconds() / 86400 for c in closed_rec
        )
        if closed_rec
        else None,
        "attempts_per_recovery": sum(c.attempt_count for c in closed_rec) / len(closed_rec)
        if closed_rec
        else None,
        "at_risk": sum(c.amount for c in cases if c.status == S.OPEN),
        "churned": len(
            {
                c.subscription_id
                for c in cases
                if c.status == S.LOST
                and c.subscription_id
                and period.start <= c.closed_at < period.end
            }
        ),
    }


@pytest.fixture
def seeded(store):
    with time_machine.travel(NOW, tick=False):
        return seed(store, n=120, rng=random.Random(6))


def test_home_figures_match_the_definitions_computed_independently(store, seeded):
    period = selectors.period_for(store=store, now=NOW)
    data = selectors.home(store=store, period=period)
    want = expected(seeded, store, period)
    want_prev = expected(seeded, store, period.previous)
    f, p = data.figures, data.previous

    assert period.days == 30
    assert f.failed == want["failed"] and f.in_progress == want["in_progress"]
    assert f.recovery_rate == pytest.approx(want["recovery_rate"])
    assert p.recovery_rate == pytest.approx(want_prev["recovery_rate"])
    assert f.recovered_revenue == want["recovered_revenue"]
    assert f.recovered_mrr == want["recovered_mrr"]
    assert f.median_days_to_recovery == pytest.approx(want["median_days"], abs=1e-6)
    assert f.attempts_per_recovery == pytest.approx(want["attempts_per_recovery"])
    assert data.at_risk_amount == want["at_risk"]
    assert f.churned_subscriptions == want["churned"]
    # Breakdowns add up to the headline figures.
    assert sum(r["failed"] for r in data.by_track) == f.failed
    assert sum(r["failed"] for r in data.by_decline) == f.failed
    assert sum(r["failed"] for r in data.by_product) == f.failed
    assert sum(r["recovered"] for r in data.by_source) == f.recoveries_closed
    assert sum(r["failed_amount"] for r in data.trend) == f.failed_amount
    assert len(data.trend) == 30
    # In-progress cases are never counted as won or lost.
    assert f.recovered + f.lost + f.in_progress + f.cancelled == f.failed


def test_involuntary_churn_and_predunning_save_rate(store):
    active = [make_subscription(store, make_customer(store)) for _ in range(8)]
    for sub in active:
        type(sub).objects.filter(pk=sub.pk).update(created_at=NOW - 90 * DAY)
    lost = make_case(
        store,
        opened_at=NOW - 25 * DAY,
        status=S.LOST,
        closed_at=NOW - 4 * DAY,
        customer=active[0].customer,
        subscription=active[0],
    )
    type(active[0]).objects.filter(pk=active[0].pk).update(canceled_at=lost.closed_at)
    for i in range(4):
        customer = make_customer(store)
        pm = PaymentMethod.objects.create(store=store, customer=customer, stripe_id=f"pm_x{i}")
        ExpiryWarning.objects.create(
            store=store,
            customer=customer,
            payment_method=pm,
            expires_on=(NOW + 20 * DAY).date(),
            warned_at=NOW - (3 + i) * DAY,
            saved_at=NOW - DAY if i < 3 else None,
        )
    period = selectors.period_for(store=store, now=NOW)
    f = selectors.home(store=store, period=period).figures
    assert (f.churned_subscriptions, f.active_subscriptions) == (1, 8)
    assert f.involuntary_churn_rate == pytest.approx(1 / 8)
    assert (f.warnings_saved, f.warnings_sent) == (3, 4)
    assert f.predunning_save_rate == pytest.approx(0.75)


def _home(client, store):
    with count_queries() as ctx:
        response = client.get(f"/s/{store.id}/")
    assert response.status_code == 200
    return response, ctx


def test_home_page_shows_the_figures_in_a_fixed_number_of_queries(store, operator_client):
    """As many queries with 15 cases as with 75, whether cases changed since the last
    read (the rollup recomputes their days first) or not; never more than 15."""
    rng = random.Random(1)
    counts = []
    with time_machine.travel(NOW, tick=False):
        seed(store, n=10, rng=rng)
        _home(operator_client, store)  # warm-up: sessions, content types, the first build
        for more in (5, 60):
            seed(store, n=more, rng=rng)
            _, changed = _home(operator_client, store)
            response, clean = _home(operator_client, store)
            counts.append((len(changed.captured_queries), len(clean.captured_queries)))
    assert counts[0] == counts[1], queries_text(changed)
    assert counts[0][0] <= 15, queries_text(changed)
    assert counts[0][1] < counts[0][0], queries_text(clean)
    period = selectors.period_for(store=store, now=NOW)
    f = selectors.home(store=store, period=period).figures
    body = response.content.decode()
    assert f'data-metric="recovery_rate">{f.recovery_rate * 100:.1f}%<' in body
    assert f'data-metric="recovered_revenue">${f.recovered_revenue / 100:,.2f}<' in body
    assert "<svg" in body and 'role="img"' in body  # the trend chart, server-side
    assert "cdn" not in body.lower()


def test_every_home_table_exports_to_csv(store, operator_client, seeded):
    period = selectors.period_for(store=store, now=NOW)
    data = selectors.home(store=store, period=period)
    with time_machine.travel(NOW, tick=False):
        for table in (
            "summary",
            "by_track",
            "by_decline",
            "by_source",
            "by_channel",
            "by_product",
            "trend",
        ):
            response = operator_client.get(f"/s/{store.id}/export/{table}.csv")
            assert response.status_code == 200, table
            assert response["Content-Type"].startswith("text/csv")
            rows = list(csv.reader(io.StringIO(response.content.decode())))
            assert len(rows) >= 2, table
        trend = list(
            csv.DictReader(
                io.StringIO(operator_client.get(f"/s/{store.id}/export/trend.csv").content.decode())
            )
        )
    assert len(trend) == 30
    assert (
        sum(round(float(r["Failed amount (USD)"]) * 100) for r in trend)
        == data.figures.failed_amount
    )
    tracks = list(
        csv.DictReader(
            io.StringIO(
                operator_client.get(
                    f"/s/{store.id}/export/by_track.csv?start=2026-02-19&end=2026-03-20"
                ).content.decode()
            )
        )
    )
    assert {r["Track"] for r in tracks} <= {"Retry (soft decline)", "Card update", "Hard decline"}


def test_a_new_store_is_told_how_to_connect_stripe(store, operator_client):
    body = operator_client.get(f"/s/{store.id}/").content.decode()
    assert "No failed payments yet" in body
    assert f"/webhooks/stripe/{store.id}/" in body
    assert "Settings → Connections" in body


def test_period_choice_changes_the_window(store, operator_client):
    with time_machine.travel(NOW, tick=False):
        make_case(
            store,
            opened_at=NOW - 50 * DAY,
            status=S.RECOVERED,
            closed_at=NOW - 45 * DAY,
            via="recoup_retry",
        )
        body30 = operator_client.get(f"/s/{store.id}/").content.decode()
        body90 = operator_client.get(f"/s/{store.id}/?days=90").content.decode()
    assert 'data-metric="recovery_rate">—<' in body30
    assert 'data-metric="recovery_rate">100.0%<' in body90
