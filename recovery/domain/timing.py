"""Choosing when to retry: allowed slots, scored by expected success.

Candidates are the customer's local daytime hours: soon after the failure, and on
payday slots (1st, 15th, month end, Fridays). Candidates fall into arms: the
hours-since-failure bucket and the slot. Each arm's chance is a Beta posterior: the
default prior below plus the store's own results (RetryStat) for the same decline group,
bucket and slot, which the caller reads and passes in. The engine draws once from each arm's posterior (Thompson sampling) so
that it keeps learning, discounts later slots a little, takes the best arm's earliest
candidate, and records why it chose what it chose.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import functools
import random
import zoneinfo
from dataclasses import dataclass

PRIOR_WEIGHT = 10.0  # the defaults count as this many observations
DAYTIME_HOURS = (9, 13, 17)  # local hours issuers approve best at
DISCOUNT_PER_DAY = 0.96

# Default chance of success by decline group and hours since failure (seeded from the
# public figures in DOMAIN.md: ~38% within 24 h for soft declines, ~19% after 3 days).
PRIOR = {
    "insufficient_funds": {"h0": 0.20, "h1": 0.16, "h2": 0.14, "h3": 0.12},
    "do_not_honor": {"h0": 0.30, "h1": 0.22, "h2": 0.15, "h3": 0.10},
    "try_again": {"h0": 0.55, "h1": 0.40, "h2": 0.25, "h3": 0.18},
    "velocity": {"h0": 0.10, "h1": 0.35, "h2": 0.35, "h3": 0.25},
    "other_soft": {"h0": 0.35, "h1": 0.25, "h2": 0.18, "h3": 0.12},
    "unknown": {"h0": 0.30, "h1": 0.20, "h2": 0.15, "h3": 0.10},
}
PAYDAY_PRIOR_BOOST = {"insufficient_funds": 2.2}


def hours_bucket(hours: float) -> str:
    if hours < 12:
        return "h0"
    if hours < 48:
        return "h1"
    if hours < 120:
        return "h2"
    return "h3"


@functools.lru_cache(maxsize=512)
def _last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def is_payday(local: dt.datetime) -> bool:
    return local.day in (1, 15, _last_day(local.year, local.month)) or local.weekday() == 4


def slot_of(local: dt.datetime) -> str:
    if is_payday(local):
        return "payday"
    return "weekend" if local.weekday() >= 5 else "weekday"


@dataclass(frozen=True)
class Choice:
    at: dt.datetime
    estimate: float
    prior_attempts: int
    slot: str
    reason: str


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def candidates(
    *,
    now: dt.datetime,
    failed_at: dt.datetime,
    not_before: dt.datetime,
    until: dt.datetime,
    tz: str,
    group: str,
    first: bool,
    first_within: dt.timedelta = dt.timedelta(hours=4),
) -> list[dt.datetime]:
    """Allowed retry times: local daytime, within [not_before, until].

    The first retry comes at the earliest allowed slot or within `first_within` of it;
    later retries for insufficient funds only on payday slots, while there are any."""
    tz = tz or "UTC"
    start = max(now, not_before)
    days = _daytimes_from(tz, start.astimezone(_zone(tz)).date())
    out = list(days[bisect.bisect_left(days, start) : bisect.bisect_right(days, until)])
    if group == "try_again":
        # Transient network trouble: within hours, whatever the local time.
        soon = [failed_at + dt.timedelta(hours=h) for h in (1, 2, 4, 8)]
        out = sorted(set(out).union(c for c in soon if start <= c <= until))
    if not out:
        return out
    if first:
        # The first retry comes soon: hours, not days.
        return [c for c in out if c - out[0] <= first_within]
    if group == "insufficient_funds":
        # Money arrives on paydays; other days only if no payday is left in the window.
        paydays = [c for c in out if _local_slot(tz, c)[1] == "payday"]
        out = paydays or out
    return out


@functools.lru_cache(maxsize=4096)
def _daytimes_from(tz: str, first_day: dt.date) -> tuple[dt.datetime, ...]:
    """Daytime hours in `tz`, in UTC, from `first_day` on for three weeks: sorted."""
    out = set()
    for day in range(0, 21):
        out.update(_daytime_utc(tz, first_day + dt.timedelta(days=day)))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=8192)
def _daytime_utc(tz: str, date: dt.date) -> tuple[dt.datetime, ...]:
    """The day's daytime hours in the zone `tz`, in UTC."""
    zone = _zone(tz)
    return tuple(
        dt.datetime(date.year, date.month, date.day, hour, tzinfo=zone).astimezone(dt.UTC)
        for hour in DAYTIME_HOURS
    )


@functools.lru_cache(maxsize=16384)
def _local_slot(tz: str, at: dt.datetime) -> tuple[dt.datetime, str]:
    """(`at` in the zone `tz`, its slot)."""
    local = at.astimezone(_zone(tz))
    return local, slot_of(local)


def choose(
    *,
    group: str,
    failed_at: dt.datetime,
    options: list[dt.datetime],
    tz: str,
    rng: random.Random,
    stats: dict[tuple[str, str], tuple[int, int]],
    learned: bool = True,
) -> Choice | None:
    """The retry time among `options` (ascending) with the best sampled chance.

    Thompson sampling over arms, an arm being (hours since the failure, kind of day):
    each arm's success rate is drawn once from its Beta posterior (the group's prior,
    worth PRIOR_WEIGHT attempts, plus the store's own results), discounted for each day
    of waiting; an arm's earliest option is its best, so it is the one scored. `stats`:
    the store's (successes, failures) by arm for this group (`recovery.retry_stats.stats_for`);
    ignored when the policy does not learn."""
    if not options:
        return None
    if not learned:
        stats = {}
    tz = tz or "UTC"
    arms: dict[tuple[str, str], tuple[dt.datetime, dt.datetime]] = {}
    for at in options:
        local, slot = _local_slot(tz, at)
        arm = (hours_bucket((at - failed_at).total_seconds() / 3600), slot)
        if arm not in arms:
            arms[arm] = (at, local)
    prior_table = PRIOR.get(group, PRIOR["unknown"])
    boost = PAYDAY_PRIOR_BOOST.get(group, 1.0)
    now = options[0]
    best = None
    for (bucket, slot), (at, local) in arms.items():
        p0 = min(prior_table[bucket] * (boost if slot == "payday" else 1.0), 0.9)
        s, f = stats.get((bucket, slot), (0, 0))
        alpha, beta = p0 * PRIOR_WEIGHT + s, (1 - p0) * PRIOR_WEIGHT + f
        score = rng.betavariate(alpha, beta) * DISCOUNT_PER_DAY ** (
            (at - now).total_seconds() / 86400
        )
        if best is None or score > best[0]:
            best = (score, at, local, slot, alpha / (alpha + beta), s + f)
    _, at, local, slot, estimate, prior = best
    label = {"payday": "payday slot", "weekend": "weekend slot", "weekday": "weekday slot"}[slot]
    return Choice(
        at=at,
        estimate=estimate,
        prior_attempts=prior,
        slot=slot,
        reason=f"{label} {local:%a %d %b %H:%M} local, est. {estimate:.0%}, {prior} prior attempts",
    )


def outcome_key(
    *, store_id, group: str, failed_at: dt.datetime, at: dt.datetime, tz: str
) -> tuple[object, str, str, str]:
    """The RetryStat row an attempt at `at` counts in."""
    return (
        store_id,
        group,
        hours_bucket((at - failed_at).total_seconds() / 3600),
        slot_of(at.astimezone(_zone(tz))),
    )
