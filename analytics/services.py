"""Writes of the analytics rollup (`CaseDay`): whole days recomputed from the cases.

`rollup_refresh` finds the days whose figures may have changed since the last refresh,
deletes their rows and inserts them again from one grouped INSERT … SELECT per refresh,
all under a lock on the store's `RollupState` row (two refreshes of a store never
interleave). It runs from the scheduler pass every minute and before every read of the
home page, so what the page shows is never older than the request.

A day is recomputed when
- a case opened or closed on it was saved since the watermark (less `LAG`, for
  transactions that committed after the last refresh read), or
- the number of open cases opened on it changed: a case closed with a back-dated time
  (a late Stripe event stamps `closed_at` and `updated_at` with the event's time) is
  found this way; its closing day is unknown, so every closing day from its opening
  day to today is recomputed.
Whatever is recomputed is recomputed whole, so a refresh can run any number of times.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    FloatField,
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

S = RecoveryCase.Status
B = CaseDay.Basis
DAY = dt.timedelta(days=1)
# Re-read cases saved this long before the watermark: a transaction that stamped
# updated_at before the last refresh may have committed after it.
LAG = dt.timedelta(minutes=2)
# A range no case falls in: an empty set of days still issues its statement, so a
# refresh costs the same number of queries whatever changed.
NEVER = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)

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


def channel_expression():
    """The channel of the last message sent before a recovered case closed ("" if none,
    or when the messaging app is not migrated)."""
    from .selectors import message_model

    Message = message_model()
    if Message is None:
        return Value("")
    last = (
        Message.objects.filter(
            case=OuterRef("pk"), sent_at__isnull=False, sent_at__lte=OuterRef("closed_at")
        )
        .order_by("-sent_at")
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


def _row(qs, basis: str, **dims):
    """One basis of the rollup as a grouped SELECT whose columns are COLUMNS, in order."""
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
        # Typed, so that PostgreSQL can match the UNION's columns.
        "r_duration": Cast(dims.pop("duration", Value(None)), FloatField()),
    }
    assert not dims, dims
    return (
        qs.annotate(**exprs)
        .values(*exprs)
        .annotate(
            r_cases=Count("pk"),
            r_amount=Coalesce(Sum("amount"), 0),
            r_recovered_amount=Coalesce(Sum("recovered_amount"), 0),
            r_attempts=Coalesce(Sum("attempt_count"), 0),
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
            day=opened_day,
            track=F("track"),
            decline_code=F("decline_code"),
            status=F("status"),
            currency=F("currency"),
        ),
        _row(
            by_opened,
            B.PRODUCT,
            day=opened_day,
            product=product_expression(),
            status=F("status"),
            currency=F("currency"),
        ),
        _row(by_opened, B.DAY, day=opened_day, status=F("status"), currency=F("currency")),
        _row(
            by_closed,
            B.CLOSED,
            day=closed_day,
            status=F("status"),
            currency=F("currency"),
            recovered_via=F("recovered_via"),
            channel=channel_expression(),
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


def _changes(*, store: Store, tz, since: dt.datetime | None):
    """One statement: the (opened day, closed day) of cases saved since `since`, and the
    open cases per opened day with their amount at risk."""
    money = Q(currency=store.currency)
    person = Q(escalated=True, dunning_paused=True)

    def part(qs, kind: str):
        return (
            qs.annotate(
                k=Value(kind, output_field=CharField()),
                o=TruncDate("opened_at", tzinfo=tz),
                c=TruncDate("closed_at", tzinfo=tz),
            )
            .values("k", "o", "c")
            .annotate(
                n=Count("pk"),
                amount=Coalesce(Sum("amount", filter=money), 0),
                person=Count("pk", filter=person),
            )
            .order_by()
        )

    cases = RecoveryCase.objects.filter(store=store)
    # Index: recovery case_store_updated_idx (store, updated_at) and case_store_status_idx.
    return list(
        part(
            cases.filter(updated_at__gte=since) if since else cases.filter(updated_at__lt=NEVER),
            "changed",
        ).union(part(cases.filter(status=S.OPEN), "open"), all=True)
    )


def rollup_refresh(*, store: Store, now: dt.datetime | None = None, full: bool = False) -> Refresh:
    """Bring a store's rollup up to date: the days that changed since the last refresh,
    or every day when `full`, the first time, or after the store's time zone changed.
    Idempotent; a fixed number of statements whatever changed."""
    now = now or timezone.now()
    tz = store.tzinfo
    out = Refresh()
    with transaction.atomic():
        state, _ = RollupState.objects.select_for_update().get_or_create(store=store)
        full = full or state.watermark is None or state.timezone != store.timezone
        # A full rebuild needs no list of changes: the cases since NEVER is then empty.
        rows = _changes(store=store, tz=tz, since=None if full else state.watermark - LAG)
        live_open: dict[str, int] = {}
        for r in rows:
            if r["k"] == "changed":
                out.opened_days.add(r["o"])
                if r["c"] is not None:
                    out.closed_days.add(r["c"])
            else:
                live_open[r["o"].isoformat()] = r["n"]
                out.at_risk_cases += r["n"]
                out.at_risk_amount += r["amount"]
                out.at_risk_with_person += r["person"]
        today = now.astimezone(tz).date()
        for key in live_open.keys() | state.open_days.keys():
            was, now_open = state.open_days.get(key, 0), live_open.get(key, 0)
            if was != now_open:
                day = dt.date.fromisoformat(key)
                out.opened_days.add(day)
                while was > now_open and day <= today:  # closed, when unknown: any day since
                    out.closed_days.add(day)
                    day += DAY
        out.full = full
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
            watermark=now, timezone=store.timezone, open_days=live_open, refreshed_at=now
        )
    return out


def rollups_refresh(*, now: dt.datetime | None = None) -> int:
    """The scheduler's sweep: refresh the rollup of every store that has cases."""
    stores = Store.objects.filter(pk__in=RecoveryCase.objects.values("store_id"))
    n = 0
    for store in stores:
        rollup_refresh(store=store, now=now)
        n += 1
    return n
