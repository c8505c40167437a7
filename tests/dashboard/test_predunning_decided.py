"""Pre-dunning save rate over decided warnings only (issue 18, item 2): a warning whose
card has not expired yet is in progress, shown apart, never counted as lost."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools

import pytest
import time_machine

from analytics import selectors
from recovery.models import ExpiryWarning, RecoveryCase
from subscriptions.models import PaymentMethod
from tests.dashboard.conftest import make_case, make_customer

NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
_n = itertools.count(1)


def warn(store, *, warned_at, expires_on, saved_at=None):
    customer = make_customer(store)
    pm = PaymentMethod.objects.create(
        store=store, customer=customer, stripe_id=f"pm_pre{next(_n):05d}"
    )
    return ExpiryWarning.objects.create(
        store=store,
        customer=customer,
        payment_method=pm,
        expires_on=expires_on,
        warned_at=warned_at,
        saved_at=saved_at,
    )


@pytest.fixture
def seeded(store):
    # A case in the period, so the home page shows its figures.
    make_case(store, opened_at=NOW - 2 * DAY)
    # Previous period (days -60..-30): 3 saved, 2 lost (cards expired unreplaced).
    for i in range(5):
        warn(
            store,
            warned_at=NOW - (45 + i) * DAY,
            expires_on=(NOW - 10 * DAY).date(),
            saved_at=NOW - 40 * DAY if i < 3 else None,
        )
    # This period: 4 warnings, every card still valid and none replaced yet.
    for i in range(4):
        warn(store, warned_at=NOW - (2 + i) * DAY, expires_on=(NOW + 25 * DAY).date())


def test_undecided_warnings_are_in_progress_not_lost(store, seeded):
    period = selectors.period_for(store=store, now=NOW)
    with time_machine.travel(NOW, tick=False):
        for data in (
            selectors.home(store=store, period=period),
            selectors.home_direct(store=store, period=period),
        ):
            f, p = data.figures, data.previous
            assert (f.warnings_sent, f.warnings_saved, f.warnings_lost) == (4, 0, 0)
            assert f.warnings_in_progress == 4
            assert f.predunning_save_rate is None  # nothing decided: no rate, no drop
            assert (p.warnings_saved, p.warnings_lost, p.warnings_in_progress) == (3, 2, 0)
            assert p.predunning_save_rate == pytest.approx(3 / 5)


def test_rate_is_from_decided_warnings_only(store, seeded):
    # One more of this period saved, one whose card expired yesterday unreplaced.
    warn(store, warned_at=NOW - 8 * DAY, expires_on=(NOW + 5 * DAY).date(), saved_at=NOW - DAY)
    warn(store, warned_at=NOW - 9 * DAY, expires_on=(NOW - DAY).date())
    # A card expiring today is still good today: in progress.
    warn(store, warned_at=NOW - 10 * DAY, expires_on=NOW.date())
    period = selectors.period_for(store=store, now=NOW)
    with time_machine.travel(NOW, tick=False):
        f = selectors.home(store=store, period=period).figures
        d = selectors.home_direct(store=store, period=period).figures
    for fig in (f, d):
        assert (fig.warnings_sent, fig.warnings_saved, fig.warnings_lost) == (7, 1, 1)
        assert fig.warnings_in_progress == 5
        assert fig.predunning_save_rate == pytest.approx(0.5)


def test_home_page_shows_no_drop_from_in_progress_warnings(store, seeded, operator_client):
    with time_machine.travel(NOW, tick=False):
        body = operator_client.get(f"/s/{store.id}/").content.decode()
        rows = list(
            csv.reader(
                io.StringIO(
                    operator_client.get(f"/s/{store.id}/export/summary.csv").content.decode()
                )
            )
        )
    kpi = body.split('data-metric="predunning_save_rate"')[1].split('<div class="kpi">')[0]
    assert "▼" not in kpi and "▲" not in kpi
    assert "no comparison" in kpi
    assert 'data-metric="warnings_in_progress">4<' in kpi
    assert "0 of 0 decided" in kpi
    assert "in progress: shown apart and never counted as lost" in body  # the definition
    table = {r[0]: r[1:] for r in rows}
    assert table["Pre-dunning save rate (decided warnings)"] == ["", "60.0"]
    assert table["Expiry warnings in progress (not counted)"] == ["4", "0"]
    assert table["Expiry warnings lost (card expired unreplaced)"] == ["0", "2"]


def test_a_case_status_does_not_matter_to_warnings(store):
    """Warnings and cases are counted apart: an open case never makes a warning lost."""
    customer = make_customer(store)
    make_case(store, opened_at=NOW - DAY, customer=customer, status=RecoveryCase.Status.OPEN)
    warn(store, warned_at=NOW - 3 * DAY, expires_on=(NOW + 3 * DAY).date())
    period = selectors.period_for(store=store, now=NOW)
    with time_machine.travel(NOW, tick=False):
        f = selectors.home(store=store, period=period).figures
    assert (f.warnings_in_progress, f.warnings_lost, f.predunning_save_rate) == (1, 0, None)
