"""`manage.py simulate`: the table, the CSV and the chart, from the demo app."""

from __future__ import annotations

import csv
import io
import struct

import pytest
from django.core.management import call_command

from recovery.models import RecoveryCase, StripeEvent

pytestmark = pytest.mark.django_db(transaction=False)


def test_simulate_prints_the_strategies_side_by_side_and_writes_the_csv_and_chart(tmp_path):
    out = io.StringIO()
    call_command(
        "simulate",
        "--customers",
        "40",
        "--days",
        "10",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
        stdout=out,
    )
    text = out.getvalue()
    header = next(line for line in text.splitlines() if line.split() == ["recoup", "fixed", "none"])
    assert header
    with (tmp_path / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["strategy"] for r in rows] == ["recoup", "fixed", "none"]
    assert {r["seed"] for r in rows} == {"3"} and {r["customers"] for r in rows} == {"40"}
    failed = {int(r["failed"]) for r in rows}
    assert len(failed) == 1 and failed.pop() > 0  # one cohort for every strategy
    # `none` never retries: it recovers only what the customers fix themselves.
    by = {r["strategy"]: r for r in rows}
    assert float(by["none"]["attempts_per_case"]) < float(by["fixed"]["attempts_per_case"])
    png = (tmp_path / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR: matplotlib's 12 x 4.5 in at 100 dpi
    assert (width, height) == (1200, 450)
    # The simulation leaves no rows behind.
    assert not RecoveryCase.objects.exists() and not StripeEvent.objects.exists()


def test_simulate_and_demo_setup_say_what_is_missing_without_the_demo_extra(monkeypatch):
    import sys

    from django.core.management.base import CommandError

    monkeypatch.setitem(sys.modules, "time_machine", None)  # as if not installed
    with pytest.raises(
        CommandError, match=r"time-machine .*demo extra: pip install -e '\.\[demo\]'"
    ):
        call_command("simulate", "--customers", "5", "--days", "2", stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"time-machine replays the demo .*demo extra"):
        call_command("demo_setup", "--customers", "5", "--days", "2", stdout=io.StringIO())
    assert not RecoveryCase.objects.exists()
