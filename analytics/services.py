"""Writes of the analytics rollup (`CaseDay`): whole days recomputed from the cases.

`rollup_refresh` runs before every read of the home page (so what the page shows is never
older than the request) and from the scheduler pass every minute. It first *checks*, in one
statement and without a lock, whether anything changed since the last refresh; usually
nothing did, and the page reads the rollup as it is. Otherwise it takes the lock on the
store's `RollupState` row (two refreshes of a store never interleave), deletes the rows of
the days whose figures may have changed and inserts them again from one grouped
INSERT … SELECT, and remembers what it counted.

The check reads
- the cases saved since the watermark, less `LAG` (a transaction that stamped updated_at
  before the last refresh read may have committed after it): each save the last refresh
  had not counted changes its opened and closed days;
- the open cases per opened day: a day whose count changed by more or less than those
  saves account for had a case closed or reopened unseen (a late Stripe event closes a
  case with the event's time, back-dating `updated_at` too); its closing day is unknown,
  so every closing day from its opening day to today is recomputed (see `_plan`).
Whatever is recomputed is recomputed whole, so a refresh can run any number of times.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    DateField,
    DateTimeField,
    F,
    FloatField,
    Max,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, TruncDate
from django.utils import timezone

from recovery.models import RecoveryCase
from stores.models import Store

from .metrics import DurationSeconds
from .models import CaseDay, RollupState
from .sql import as_date, fetch

S = RecoveryCase.Status
B = CaseDay.Basis
DAY = dt.timedelta(days=1)
# Re-read cases saved this long before the watermark: a transaction that stamped
# updated_at before the last refresh may have committed after it.
LAG = dt.timedelta(minutes=2)
# A range no case falls in: an empty set of days still issues its statement, so a
# refresh costs the same number of queries whatever changed.
NEVER = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
# The saves a refresh remembers having counted (the next check's window holds the last
# few minutes' saves; beyond this many, the rest are simply counted again).
SEEN_MAX = 5000

COLUMNS = [
    "store_id",
    "day",
    "basis",
    "track",
    "decline_code",
    "product",
    "status",
    "currency",
    "recovered_via",
    "channel",
    "acted_channel",
    "duration",
    "cases",
    "amount",
    "recovered_amount",
    "attempts",
]


@dataclass
class Refresh:
    """What a refresh did, and the open cases it read (the home page's revenue at risk)."""

    full: bool = False
    wrote: bool = False  # False: nothing had changed, nothing was written
    opened_days: set[dt.date] = field(default_factory=set)
    closed_days: set[dt.date] = field(default_factory=set)
    at_risk_amount: int = 0
    at_risk_cases: int = 0
    at_risk_with_person: int = 0


def product_expression():
    return Case(
        When(kind=RecoveryCase.Kind.PAYMENT, then=Value("One-off orders")),
        default=Coalesce(F("subscription__product_name"), Value(""), output_field=CharField()),
        output_field=CharField(),
    )


def channel_expression(*, acted: bool = False):
    """The channel a recovered case's recovery is credited to ("" if none, or when the
    messaging app is not migrated). Last touch: the last message sent before the case
    closed. Acted on (`acted`): the last message whose own pay link the customer visited
    before it closed (`Message.visited_at`)."""
    from .selectors import message_model

    Message = message_model()
    if Message is None:
        return Value("")
    at = "visited_at" if acted else "sent_at"
    last = (
        Message.objects.filter(
            case=OuterRef("pk"),
            **{f"{at}__isnull": False, f"{at}__lte": OuterRef("closed_at")},
        )
        .order_by(f"-{at}", "-pk")
        .values("channel")[:1]
    )
    return Case(
        When(
            status=S.RECOVERED,
            then=Coalesce(Subquery(last, output_field=CharField()), Value("")),
        ),
        default=Value(""),
        output_field=CharField(),
    )


def _days_q(field_name: str, days: set[dt.date] | None, tz) -> Q:
    """`field_name` falls on one of `days` (local), as ranges an index can use; None means
    every day."""
    if days is None:
        return Q()
    if not days:
        return Q(**{f"{field_name}__lt": NEVER})
    q = Q()
    run: list[dt.date] = []
    for day in sorted(days) + [None]:
        if run and (day is None or day != run[-1] + DAY):
            q |= Q(
                **{
                    f"{field_name}__gte": dt.datetime.combine(run[0], dt.time(), tzinfo=tz),
                    f"{field_name}__lt": dt.datetime.combine(run[-1] + DAY, dt.time(), tzinfo=tz),
                }
            )
            run = []
        if day is not None:
            run.append(day)
    return q


def _row(qs, basis: str, *, attempts: bool = True, **dims):
    """One basis of the rollup as a grouped SELECT whose columns are COLUMNS, in order.

    Without `attempts` (the bases by opened day, which the page reads no attempts from)
    every column it reads is in recovery's case_store_opened_idx, and PostgreSQL answers
    it from the index alone (COUNT(*), not COUNT(id): the id is not in that index)."""
    blank = Value("", output_field=CharField())
    exprs = {
        "r_store": F("store_id"),
        "r_day": dims.pop("day"),
        "r_basis": Value(basis, output_field=CharField()),
        "r_track": dims.pop("track", blank),
        "r_decline": dims.pop("decline_code", blank),
        "r_product": dims.pop("product", blank),
        "r_status": dims.pop("status", blank),
        "r_currency": dims.pop("currency", blank),
        "r_via": dims.pop("recovered_via", blank),
        "r_channel": dims.pop("channel", blank),
        "r_acted": dims.pop("acted_channel", blank),
        # Typed, so that PostgreSQL can match the UNION's columns.
        "r_duration": Cast(dims.pop("duration", Value(None)), FloatField()),
    }
    assert not dims, dims
    return (
        qs.annotate(**exprs)
        .values(*exprs)
        .annotate(
            r_cases=Count("*"),
            r_amount=Coalesce(Sum("amount"), 0),
            r_recovered_amount=Coalesce(Sum("recovered_amount"), 0),
            r_attempts=Coalesce(Sum("attempt_count"), 0)
            if attempts
            else Value(0, output_field=BigIntegerField()),
        )
        .order_by()
    )


def _insert_days(
    *, store: Store, tz, opened: set[dt.date] | None, closed: set[dt.date] | None
) -> None:
    """INSERT … SELECT the rows of the given days (None: all days), every basis at once."""
    cases = RecoveryCase.objects.filter(store=store)
    by_opened = cases.filter(_days_q("opened_at", opened, tz))
    by_closed = cases.filter(closed_at__isnull=False).filter(_days_q("closed_at", closed, tz))
    opened_day = TruncDate("opened_at", tzinfo=tz)
    closed_day = TruncDate("closed_at", tzinfo=tz)
    parts = [
        _row(
            by_opened,
            B.COHORT,
            attempts=False,
            day=opened_day,
            track=F("track"),
            decline_code=F("decline_code"),
            status=F("status"),
            currency=F("currency"),
        ),
        _row(
            by_opened,
            B.PRODUCT,
            attempts=False,
            day=opened_day,
            product=product_expression(),
            status=F("status"),
            currency=F("currency"),
        ),
        _row(
            by_opened,
            B.DAY,
            attempts=False,
            day=opened_day,
            status=F("status"),
            currency=F("currency"),
        ),
        _row(
            by_closed,
            B.CLOSED,
            day=closed_day,
            status=F("status"),
            currency=F("currency"),
            recovered_via=F("recovered_via"),
            channel=channel_expression(),
            acted_channel=channel_expression(acted=True),
        ),
        _row(
            by_closed.filter(status=S.RECOVERED),
            B.DURATION,
            day=closed_day,
            duration=DurationSeconds(F("closed_at"), F("opened_at")),
        ),
    ]
    sql, params = parts[0].union(*parts[1:], all=True).query.sql_with_params()
    table = connection.ops.quote_name(CaseDay._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(c) for c in COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({cols}) {sql}", params)


@dataclass
class Check:
    """One read of what may have changed: the cases saved in the look-back window (and
    those the last refresh saw there), and the open cases per opened day."""

    # id, updated_at, opened day, closed day, open now
    saved: list[tuple[int, dt.datetime, dt.date, dt.date | None, bool]]
    open_days: dict[str, int]
    at_risk_amount: int = 0
    at_risk_cases: int = 0
    at_risk_with_person: int = 0


_CHECKS: dict = {}  # store id -> (what the check depends on, its SQL and parameters)


def _check(*, store: Store, tz, since: dt.datetime, seen_ids: list[int]) -> Check:
    """One statement: the cases saved since `since` or seen before (one row each), and the
    open cases per opened day with their amount at risk."""

    def build():
        money = Q(currency=store.currency)
        person = Q(escalated=True, dunning_paused=True)
        cases = RecoveryCase.objects.filter(store=store)
        # Index: recovery case_store_updated_idx (store, updated_at), and the primary key.
        saved = (
            cases.filter(Q(updated_at__gte=since) | Q(pk__in=seen_ids))
            .annotate(
                k=Value("saved", output_field=CharField()),
                i=F("pk"),
                u=F("updated_at"),
                o=TruncDate("opened_at", tzinfo=tz),
                c=TruncDate("closed_at", tzinfo=tz),
                s=F("status"),
            )
            .values("k", "i", "u", "o", "c", "s")
            .annotate(n=Count("pk"), amount=Value(0), person=Value(0))
            .order_by()
        )
        # Index: recovery case_due_idx or case_store_status_idx (status = open).
        open_ = (
            cases.filter(status=S.OPEN)
            .annotate(
                k=Value("open", output_field=CharField()),
                i=Value(None, output_field=BigIntegerField()),
                u=Value(None, output_field=DateTimeField()),
                o=TruncDate("opened_at", tzinfo=tz),
                c=Value(None, output_field=DateField()),
                s=Value(S.OPEN, output_field=CharField()),
            )
            .values("k", "i", "u", "o", "c", "s")
            .annotate(
                n=Count("pk"),
                amount=Coalesce(Sum("amount", filter=money), 0),
                person=Count("pk", filter=person),
            )
            .order_by()
        )
        return saved.union(open_, all=True)

    # Compiled once per store and watermark (the home page asks again and again while
    # nothing changes); one per store is kept: a scheduler's pass refreshes with a new
    # watermark every time, and each statement names up to SEEN_MAX ids.
    key = (connection.settings_dict["NAME"], store.currency, store.timezone, since, tuple(seen_ids))
    kept = _CHECKS.get(store.pk)
    if kept is None or kept[0] != key:
        if len(_CHECKS) >= 512:
            _CHECKS.clear()
        kept = _CHECKS[store.pk] = (key, build().query.sql_with_params())
    out = Check(saved=[], open_days={})
    for k, i, u, o, c, status, n, amount, person in fetch(*kept[1]):
        if k == "saved":
            out.saved.append((i, _aware(u), as_date(o), as_date(c), status == S.OPEN))
        else:
            out.open_days[as_date(o).isoformat()] = n
            out.at_risk_cases += n
            out.at_risk_amount += int(amount)
            out.at_risk_with_person += person
    return out


def _aware(value) -> dt.datetime:
    """A timestamp as a raw cursor returns it, aware (SQLite: naive UTC text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if timezone.is_naive(value) else value


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


@dataclass
class Plan:
    opened_days: set[dt.date] = field(default_factory=set)
    closed_days: set[dt.date] = field(default_factory=set)
    changed: bool = False


def _plan(*, state: RollupState, check: Check, today: dt.date) -> Plan:
    """The days to recompute, from what the last refresh saw and what the check read.

    Each save not seen before changes its opened day and its closed day (and the days
    the last refresh counted it on, if it saw it). Each also accounts for a change in its
    opened day's open cases: +1 for a new case that is open; for a case the last refresh
    saw, what it was then against what it is now; any other case is taken to have been
    open then (so a case closed now accounts for -1). A day whose open cases changed by
    anything else had a case closed or reopened unseen (a back-dated time), or a guess
    above was wrong (a closed case saved again): its opened day and every closing day
    since are recomputed, which covers wherever that case was or is counted."""
    plan = Plan()
    seen: dict[str, list] = state.seen or {}
    explained: dict[str, int] = {}

    def count(day: str, delta: int) -> None:
        explained[day] = explained.get(day, 0) + delta

    live = set()
    for case_id, updated, opened, closed, is_open in check.saved:
        key = str(case_id)
        live.add(key)
        before = seen.get(key)
        if before and before[0] == _iso(updated):
            continue  # the last refresh counted this very save
        plan.changed = True
        plan.opened_days.add(opened)
        if closed is not None:
            plan.closed_days.add(closed)
        if before:  # saved again since: where the last refresh counted it
            _add_days(plan, before[1], before[2])
            count(before[1], -int(before[3]))
            count(opened.isoformat(), int(is_open))
        elif case_id > state.last_case_id:  # new since the last refresh
            count(opened.isoformat(), int(is_open))
        else:  # an older case, taken to have been open (the day's count checks it)
            count(opened.isoformat(), int(is_open) - 1)
    for key in seen.keys() - live:  # gone (deleted): where it was counted
        plan.changed = True
        _add_days(plan, seen[key][1], seen[key][2])
        count(seen[key][1], -int(seen[key][3]))
    for key in check.open_days.keys() | state.open_days.keys():
        was, now_open = state.open_days.get(key, 0), check.open_days.get(key, 0)
        if now_open - was == explained.get(key, 0):
            continue
        plan.changed = True
        day = dt.date.fromisoformat(key)
        plan.opened_days.add(day)
        while day <= today:  # closed or reopened, when unknown: any day since
            plan.closed_days.add(day)
            day += DAY
    return plan


def _add_days(plan: Plan, opened: str, closed: str | None) -> None:
    plan.opened_days.add(dt.date.fromisoformat(opened))
    if closed:
        plan.closed_days.add(dt.date.fromisoformat(closed))


def _seen(check: Check, *, since: dt.datetime) -> dict[str, list]:
    """What the next refresh's check will find already counted: the saves in its window."""
    rows = sorted((r for r in check.saved if r[1] >= since), key=lambda r: r[1])[-SEEN_MAX:]
    return {
        str(i): [_iso(u), o.isoformat(), c.isoformat() if c else None, is_open]
        for i, u, o, c, is_open in rows
    }


def rollup_refresh(*, store: Store, now: dt.datetime | None = None, full: bool = False) -> Refresh:
    """Bring a store's rollup up to date: the days that changed since the last refresh,
    or every day when `full`, the first time, or after the store's time zone changed.
    Idempotent. Two statements when nothing changed, eight when something did (nine if
    another refresh wrote meanwhile), whatever the data size."""
    now = now or timezone.now()
    tz = store.tzinfo
    today = now.astimezone(tz).date()
    before = check = None
    if not full:
        before = RollupState.objects.filter(store=store).first()
        if before and before.watermark and before.timezone == store.timezone:
            check = _check(store=store, tz=tz, since=before.watermark - LAG, seen_ids=_ids(before))
            if not _plan(state=before, check=check, today=today).changed:
                return _with_risk(Refresh(), check)
    with transaction.atomic():
        state, _ = RollupState.objects.select_for_update().get_or_create(store=store)
        full = full or state.watermark is None or state.timezone != store.timezone
        last_case_id = state.last_case_id
        if full:
            check = _check(store=store, tz=tz, since=now - LAG, seen_ids=[])
            plan = Plan(changed=True)
            last_case_id = RecoveryCase.objects.filter(store=store).aggregate(m=Max("pk"))["m"]
        else:
            if check is None or state.refreshed_at != before.refreshed_at:
                # Another refresh wrote since the check: check again against what it saw.
                check = _check(
                    store=store, tz=tz, since=state.watermark - LAG, seen_ids=_ids(state)
                )
            plan = _plan(state=state, check=check, today=today)
        out = _with_risk(Refresh(full=full, wrote=True), check)
        if not full:
            out.opened_days, out.closed_days = plan.opened_days, plan.closed_days
        stale = CaseDay.objects.filter(store=store)
        if not full:
            stale = stale.filter(
                Q(basis__in=[B.COHORT, B.PRODUCT, B.DAY], day__in=out.opened_days or [NEVER.date()])
                | Q(basis__in=[B.CLOSED, B.DURATION], day__in=out.closed_days or [NEVER.date()])
            )
        stale.delete()
        _insert_days(
            store=store,
            tz=tz,
            opened=None if full else out.opened_days,
            closed=None if full else out.closed_days,
        )
        RollupState.objects.filter(pk=state.pk).update(
            watermark=now,
            timezone=store.timezone,
            open_days=check.open_days,
            seen=_seen(check, since=now - LAG),
            last_case_id=max([last_case_id or 0, *(r[0] for r in check.saved)]),
            refreshed_at=now,
        )
    return out


def _ids(state: RollupState) -> list[int]:
    return [int(k) for k in (state.seen or {})]


def _with_risk(out: Refresh, check: Check) -> Refresh:
    out.at_risk_amount = check.at_risk_amount
    out.at_risk_cases = check.at_risk_cases
    out.at_risk_with_person = check.at_risk_with_person
    return out


def rollups_refresh(*, now: dt.datetime | None = None) -> int:
    """The scheduler's sweep: refresh the rollup of every store that has cases."""
    stores = Store.objects.filter(pk__in=RecoveryCase.objects.values("store_id"))
    n = 0
    for store in stores:
        rollup_refresh(store=store, now=now)
        n += 1
    return n
