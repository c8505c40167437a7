"""The store's learned retry statistics (RetryStat): read for planning, added to by outcomes.

The choosing itself is pure and lives in `recovery.domain.timing`; this module is its
storage: `stats_for` / `stats_for_stores` read the counts that `choose` takes as an
argument, `record_outcome(s)` and `success_withdrawn` add to them.
"""

from __future__ import annotations

import datetime as dt

from .domain.timing import outcome_key
from .models import RetryStat


def stats_for(*, store_id, group: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (s.hours_bucket, s.slot): (s.successes, s.failures)
        for s in RetryStat.objects.filter(store_id=store_id, decline_group=group)
    }


def record_outcome(
    *, store_id, group: str, failed_at: dt.datetime, at: dt.datetime, tz: str, success: bool
) -> None:
    key = outcome_key(store_id=store_id, group=group, failed_at=failed_at, at=at, tz=tz)
    record_outcomes({key: (1, 0) if success else (0, 1)})


def record_outcomes(counts: dict[tuple, tuple[int, int]]) -> None:
    """Add (successes, failures) to each RetryStat row, creating the missing ones: one
    upsert statement, so that workers adding to the same rows never lose a count and hold
    each row's lock only for the statement."""
    from django.db import connection

    # In one order for every worker: two upserts of overlapping rows wait, not deadlock.
    rows = sorted(((k, v) for k, v in counts.items() if v[0] or v[1]), key=lambda r: str(r[0]))
    if not rows:
        return
    q = connection.ops.quote_name
    table = q(RetryStat._meta.db_table)
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
    store_field = RetryStat._meta.get_field("store")
    params = [
        p
        for (store_id, group, bucket, slot), (s, f) in rows
        for p in (store_field.get_db_prep_save(store_id, connection), group, bucket, slot, s, f)
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({q('store_id')}, {q('decline_group')}, {q('hours_bucket')}, "
            f"{q('slot')}, {q('successes')}, {q('failures')}) VALUES {values} "
            f"ON CONFLICT ({q('store_id')}, {q('decline_group')}, {q('hours_bucket')}, {q('slot')}) "
            f"DO UPDATE SET {q('successes')} = {table}.{q('successes')} + excluded.{q('successes')}, "
            f"{q('failures')} = {table}.{q('failures')} + excluded.{q('failures')}",
            params,
        )


def success_withdrawn(key: tuple, *, failed: bool) -> None:
    """An attempt counted as a success in the RetryStat row `key` (see `outcome_key`) was
    not one: take it back, and count it as a failure if it `failed`."""
    from django.db.models import F

    store_id, group, bucket, slot = key
    RetryStat.objects.filter(
        store_id=store_id, decline_group=group, hours_bucket=bucket, slot=slot, successes__gt=0
    ).update(successes=F("successes") - 1, failures=F("failures") + int(failed))


def stats_for_stores(store_ids) -> dict[tuple, dict[tuple[str, str], tuple[int, int]]]:
    """stats_for of every decline group of these stores, by (store_id, group): one query."""
    out: dict[tuple, dict] = {}
    for s in RetryStat.objects.filter(store_id__in=list(store_ids)):
        out.setdefault((s.store_id, s.decline_group), {})[(s.hours_bucket, s.slot)] = (
            s.successes,
            s.failures,
        )
    return out
