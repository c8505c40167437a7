"""Recovery analytics for one store and period, from SQL aggregates only.

Definitions (DOMAIN.md, "Measures"), as computed here:
- the *cohort* of a period is the failed payments (cases) opened in it;
- recovery rate = recovered ÷ (recovered + lost) of the cohort: only cases whose
  recovery has ended count; cases still in progress are shown apart, and cancelled ones
  (voided invoices, forgiven by the merchant) are neither won nor lost;
- recovered revenue, recovered MRR, median days to recovery and attempts per recovery
  are over the cases *recovered* in the period (closed_at in it), whenever they failed;
- revenue at risk = the amount of the cases open now;
- involuntary churn rate = subscriptions whose case was lost in the period ÷
  subscriptions active during it (created before its end, not cancelled before it began);
- pre-dunning save rate = saved ÷ (saved + lost) among the *decided* expiry warnings
  sent in the period: saved = the card was replaced before it expired; lost = the card
  reached its expiry date without being replaced. A warning whose card has not expired
  yet is in progress: shown apart, never counted as lost (as with the recovery rate).
Money sums are in the store's currency (cases in other currencies are counted, not summed).

Each figure is computed for the period and the one before it in the same statement
(conditional aggregates), so a page costs a fixed number of queries at any data size.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.apps import apps
from django.db import connection
from django.db.models import (
    Case,
    CharField,
    Count,
    DateField,
    F,
    IntegerField,
    Q,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, TruncDate

from recovery.models import ExpiryWarning, RecoveryCase, Track
from stores.models import Store
from subscriptions.models import Subscription

from .metrics import DurationSeconds, Median
from .sql import as_date, fetch, statement

S = RecoveryCase.Status
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Period:
    start: dt.datetime
    end: dt.datetime  # exclusive

    @property
    def days(self) -> int:
        return round((self.end - self.start) / DAY)

    @property
    def previous(self) -> Period:
        return Period(self.start - (self.end - self.start), self.start)

    @property
    def last_day(self) -> dt.date:
        return (self.end - DAY).date()


def period_for(
    *,
    store: Store,
    now: dt.datetime,
    days: int | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> Period:
    """Whole days in the store's time zone. Default: the last 30 days, today included."""
    tz = store.tzinfo
    today = now.astimezone(tz).date()
    if start and end and start <= end:
        first, last = start, min(end, today)
        first = min(first, last)
    else:
        n = days if days and 1 <= days <= 366 else 30
        last = today
        first = last - dt.timedelta(days=n - 1)
    return Period(
        dt.datetime.combine(first, dt.time(), tzinfo=tz),
        dt.datetime.combine(last + DAY, dt.time(), tzinfo=tz),
    )


def ratio(num, den) -> float | None:
    return (num / den) if den else None


@dataclass
class Figures:
    """One period's headline figures."""

    failed: int = 0
    failed_amount: int = 0
    recovered: int = 0
    lost: int = 0
    in_progress: int = 0
    cancelled: int = 0
    recovery_rate: float | None = None
    recovered_revenue: int = 0
    recoveries_closed: int = 0
    recovered_mrr: int = 0
    churned_subscriptions: int = 0
    active_subscriptions: int = 0
    involuntary_churn_rate: float | None = None
    warnings_sent: int = 0
    warnings_saved: int = 0
    warnings_lost: int = 0
    warnings_in_progress: int = 0
    predunning_save_rate: float | None = None
    median_days_to_recovery: float | None = None
    attempts_per_recovery: float | None = None


@dataclass
class Home:
    period: Period
    figures: Figures
    previous: Figures
    at_risk_amount: int = 0
    at_risk_cases: int = 0
    at_risk_with_person: int = 0
    by_track: list[dict] = field(default_factory=list)
    by_decline: list[dict] = field(default_factory=list)
    by_source: list[dict] = field(default_factory=list)
    by_channel: list[dict] = field(default_factory=list)
    by_product: list[dict] = field(default_factory=list)
    trend: list[dict] = field(default_factory=list)
    channel_available: bool = True


def _pair(name: str, agg, cur: Q, prev: Q, **kw) -> dict:
    """The same aggregate for the current and the previous period."""
    return {f"c_{name}": agg(filter=cur, **kw), f"p_{name}": agg(filter=prev, **kw)}


def _count(expr="pk"):
    return lambda filter, **kw: Count(expr, filter=filter, **kw)


def _sum(expr):
    return lambda filter, **kw: Sum(expr, filter=filter, **kw)


def _median_days(filter, **kw):
    return Median(Case(When(filter, then=DurationSeconds(F("closed_at"), F("opened_at")))))


def cohort_figures(*, store: Store, period: Period) -> dict:
    """Counts and amounts of the failed payments of the period and the one before."""
    prev = period.previous
    cur_q, prev_q = Q(opened_at__gte=period.start), Q(opened_at__lt=period.start)
    money = Q(currency=store.currency)
    out: dict = {}
    for name, agg, extra in (
        ("failed", _count(), Q()),
        ("failed_amount", _sum("amount"), money),
        ("recovered", _count(), Q(status=S.RECOVERED)),
        ("lost", _count(), Q(status=S.LOST)),
        ("open", _count(), Q(status=S.OPEN)),
        ("cancelled", _count(), Q(status=S.CANCELLED)),
    ):
        out |= _pair(name, agg, cur_q & extra, prev_q & extra)
    # Index: recovery case_store_opened_idx (store, opened_at) — see analytics README note.
    return RecoveryCase.objects.filter(
        store=store, opened_at__gte=prev.start, opened_at__lt=period.end
    ).aggregate(**out)


def closed_figures(*, store: Store, period: Period) -> dict:
    """What was recovered or lost in the period (by closing time), and the one before."""
    prev = period.previous
    cur_q, prev_q = Q(closed_at__gte=period.start), Q(closed_at__lt=period.start)
    rec, lost = Q(status=S.RECOVERED), Q(status=S.LOST)
    out: dict = {}
    for name, agg, extra in (
        ("recovered_revenue", _sum("recovered_amount"), rec & Q(currency=store.currency)),
        ("recoveries", _count(), rec),
        ("attempts", _sum("attempt_count"), rec),
        ("median_seconds", _median_days, rec),
        (
            "churned_subscriptions",
            lambda filter, **kw: Count("subscription_id", filter=filter, distinct=True),
            lost & Q(subscription__isnull=False),
        ),
    ):
        out |= _pair(name, agg, cur_q & extra, prev_q & extra)
    # Index: recovery case_store_closed_idx (store, closed_at) WHERE closed_at IS NOT NULL.
    return RecoveryCase.objects.filter(
        store=store, closed_at__gte=prev.start, closed_at__lt=period.end
    ).aggregate(**out)


def predunning_today(store: Store, now: dt.datetime | None = None) -> dt.date:
    """The store's local date today: a warning whose card expired before it unreplaced is lost."""
    from django.utils import timezone

    return (now or timezone.now()).astimezone(store.tzinfo).date()


def _predunning_aggregates(period: Period, today: dt.date) -> dict:
    """Sent, saved and lost warnings of the period and the one before. Saved: the card
    was replaced (saved_at); lost: not replaced and its card expired before `today`
    (a card is good to the last day of its expiry month, `expires_on`). The rest are in
    progress: sent - saved - lost."""
    cur_q, prev_q = Q(warned_at__gte=period.start), Q(warned_at__lt=period.start)
    saved = Q(saved_at__isnull=False)
    lost = Q(saved_at__isnull=True, expires_on__lt=today)
    return {
        "c_sent": Count("pk", filter=cur_q),
        "p_sent": Count("pk", filter=prev_q),
        "c_saved": Count("pk", filter=cur_q & saved),
        "p_saved": Count("pk", filter=prev_q & saved),
        "c_lost": Count("pk", filter=cur_q & lost),
        "p_lost": Count("pk", filter=prev_q & lost),
    }


def _predunning(*, store: Store, period: Period):
    return ExpiryWarning.objects.filter(
        store=store, warned_at__gte=period.previous.start, warned_at__lt=period.end
    )


def predunning_figures(*, store: Store, period: Period, today: dt.date | None = None) -> dict:
    today = today or predunning_today(store)
    return _predunning(store=store, period=period).aggregate(
        **_predunning_aggregates(period, today)
    )


def _predunning_rate(f: Figures) -> None:
    f.warnings_in_progress = max(f.warnings_sent - f.warnings_saved - f.warnings_lost, 0)
    f.predunning_save_rate = ratio(f.warnings_saved, f.warnings_saved + f.warnings_lost)


def at_risk_now(*, store: Store) -> dict:
    # Index: recovery case_store_status_idx (store, status, -opened_at).
    return RecoveryCase.objects.filter(store=store, status=S.OPEN).aggregate(
        amount=Sum("amount", filter=Q(currency=store.currency)),
        cases=Count("pk"),
        with_person=Count("pk", filter=Q(escalated=True, dunning_paused=True)),
    )


def _figures(prefix: str, cohort: dict, closed: dict, subs: dict, pre: dict) -> Figures:
    g = lambda d, k: d.get(f"{prefix}_{k}") or 0  # noqa: E731
    f = Figures(
        failed=g(cohort, "failed"),
        failed_amount=g(cohort, "failed_amount"),
        recovered=g(cohort, "recovered"),
        lost=g(cohort, "lost"),
        in_progress=g(cohort, "open"),
        cancelled=g(cohort, "cancelled"),
        recovered_revenue=g(closed, "recovered_revenue"),
        recoveries_closed=g(closed, "recoveries"),
        recovered_mrr=g(subs, "recovered_mrr"),
        churned_subscriptions=g(closed, "churned_subscriptions"),
        active_subscriptions=g(subs, "active"),
        warnings_sent=g(pre, "sent"),
        warnings_saved=g(pre, "saved"),
        warnings_lost=g(pre, "lost"),
    )
    f.recovery_rate = ratio(f.recovered, f.recovered + f.lost)
    f.involuntary_churn_rate = ratio(f.churned_subscriptions, f.active_subscriptions)
    _predunning_rate(f)
    median = closed.get(f"{prefix}_median_seconds")
    f.median_days_to_recovery = median / 86400 if median is not None else None
    f.attempts_per_recovery = ratio(g(closed, "attempts"), f.recoveries_closed)
    return f


# ------------------------------------------------------------------ breakdowns


def _outcome_columns(money: Q) -> dict:
    return {
        "failed": Count("pk"),
        "failed_amount": Coalesce(Sum("amount", filter=money), 0),
        "recovered": Count("pk", filter=Q(status=S.RECOVERED)),
        "recovered_amount": Coalesce(Sum("recovered_amount", filter=money), 0),
        "lost": Count("pk", filter=Q(status=S.LOST)),
        "in_progress": Count("pk", filter=Q(status=S.OPEN)),
    }


def _with_rate(row: dict) -> dict:
    row["rate"] = ratio(row["recovered"], row["recovered"] + row["lost"])
    return row


def cohort(*, store: Store, period: Period):
    return RecoveryCase.objects.filter(
        store=store, opened_at__gte=period.start, opened_at__lt=period.end
    )


def by_track_and_decline(*, store: Store, period: Period) -> tuple[list[dict], list[dict]]:
    """Both tables from one grouped query (track × decline code)."""
    rows = list(
        cohort(store=store, period=period)
        .values("track", "decline_code")
        .annotate(**_outcome_columns(Q(currency=store.currency)))
        .order_by()
    )
    labels = dict(Track.choices)
    tracks: dict[str, dict] = {}
    declines: dict[str, dict] = {}
    keys = ("failed", "failed_amount", "recovered", "recovered_amount", "lost", "in_progress")
    for row in rows:
        t = tracks.setdefault(
            row["track"], {"key": row["track"], "label": labels.get(row["track"], row["track"])}
        )
        d = declines.setdefault(
            row["decline_code"] or "",
            {"key": row["decline_code"] or "", "label": row["decline_code"] or "(no code)"},
        )
        for k in keys:
            t[k] = t.get(k, 0) + row[k]
            d[k] = d.get(k, 0) + row[k]
    order = lambda r: (-r["failed_amount"], -r["failed"], r["label"])  # noqa: E731
    return (
        sorted((_with_rate(t) for t in tracks.values()), key=order),
        sorted((_with_rate(d) for d in declines.values()), key=order),
    )


SOURCE_LABELS = {
    RecoveryCase.RecoveredVia.RECOUP_RETRY: "Recoup retry",
    RecoveryCase.RecoveredVia.STRIPE_RETRY: "Stripe retry",
    RecoveryCase.RecoveredVia.CUSTOMER: "Card update by the customer",
    RecoveryCase.RecoveredVia.CARD_UPDATER: "Card updater",
    RecoveryCase.RecoveredVia.AGENT: "Agent",
    RecoveryCase.RecoveredVia.OUTSIDE: "Paid outside Stripe",
}


def by_source(*, store: Store, period: Period) -> list[dict]:
    rows = (
        RecoveryCase.objects.filter(
            store=store, status=S.RECOVERED, closed_at__gte=period.start, closed_at__lt=period.end
        )
        .values("recovered_via")
        .annotate(
            recovered=Count("pk"),
            recovered_amount=Coalesce(
                Sum("recovered_amount", filter=Q(currency=store.currency)), 0
            ),
            attempts=Coalesce(Sum("attempt_count"), 0),
        )
        .order_by()
    )
    out = []
    total = 0
    for row in rows:
        total += row["recovered"]
        out.append(
            {
                "key": row["recovered_via"],
                "label": SOURCE_LABELS.get(row["recovered_via"], row["recovered_via"] or "Other"),
                "recovered": row["recovered"],
                "recovered_amount": row["recovered_amount"],
                "attempts_per_recovery": ratio(row["attempts"], row["recovered"]),
            }
        )
    for row in out:
        row["share"] = ratio(row["recovered"], total)
    return sorted(out, key=lambda r: (-r["recovered_amount"], r["label"]))


def message_model():
    """messaging.Message when its table exists (the messaging app may not be migrated)."""
    try:
        model = apps.get_model("messaging", "Message")
    except LookupError:
        return None
    return model if _table_exists(model._meta.db_table) else None


_tables: dict[str, bool] = {}


def _table_exists(name: str) -> bool:
    key = f"{connection.settings_dict['NAME']}:{name}"
    if key not in _tables:
        _tables[key] = name in connection.introspection.table_names()
    return _tables[key]


CHANNEL_LABELS = {"email": "Email", "sms": "SMS"}
NO_CHANNEL_LABEL = "None (no message link visited / no message before it)"


def channel_rows(acted: dict[str, dict], last: dict[str, dict]) -> list[dict]:
    """One row per channel: the recoveries credited to it as the channel the customer
    acted on (`recovered`, `recovered_amount`, `share`) and as the last touch
    (`last_touch_*`). `acted` and `last` map a channel ("" = none) to its recovered
    count and amount."""
    total = sum(r["recovered"] for r in acted.values())
    out = []
    for key in acted.keys() | last.keys():
        a = acted.get(key, {})
        b = last.get(key, {})
        out.append(
            {
                "key": key,
                "label": CHANNEL_LABELS.get(key, key) if key else NO_CHANNEL_LABEL,
                "recovered": a.get("recovered", 0),
                "recovered_amount": a.get("recovered_amount", 0),
                "share": ratio(a.get("recovered", 0), total),
                "last_touch_recovered": b.get("recovered", 0),
                "last_touch_amount": b.get("recovered_amount", 0),
                "last_touch_share": ratio(b.get("recovered", 0), total),
            }
        )
    # Channels first (most recoveries first), "none" last.
    return sorted(
        out, key=lambda r: (r["key"] == "", -r["recovered"], -r["last_touch_recovered"], r["label"])
    )


def by_channel(*, store: Store, period: Period) -> list[dict] | None:
    """Recoveries of the period by the channel the customer acted on (the last message
    whose own pay link they visited before recovery) and by last touch (the last message
    sent before it)."""
    from .services import channel_expression

    if message_model() is None:
        return None
    recovered = RecoveryCase.objects.filter(
        store=store, status=S.RECOVERED, closed_at__gte=period.start, closed_at__lt=period.end
    )
    money = Q(currency=store.currency)

    def grouped(expr) -> dict[str, dict]:
        rows = (
            recovered.annotate(ch=expr)
            .values("ch")
            .annotate(
                recovered=Count("pk"),
                recovered_amount=Coalesce(Sum("recovered_amount", filter=money), 0),
            )
            .order_by()
        )
        return {r["ch"]: r for r in rows}

    return channel_rows(
        grouped(channel_expression(acted=True)), grouped(channel_expression(acted=False))
    )


def by_product(*, store: Store, period: Period) -> list[dict]:
    rows = (
        cohort(store=store, period=period)
        .annotate(
            product=Case(
                When(kind=RecoveryCase.Kind.PAYMENT, then=Value("One-off orders")),
                default=Coalesce(
                    F("subscription__product_name"), Value(""), output_field=CharField()
                ),
                output_field=CharField(),
            )
        )
        .values("product")
        .annotate(**_outcome_columns(Q(currency=store.currency)))
        .order_by()
    )
    out = [
        _with_rate({"key": r["product"], "label": r["product"] or "(no product)", **r})
        for r in rows
    ]
    return sorted(out, key=lambda r: (-r["failed_amount"], r["label"]))


def trend(*, store: Store, period: Period) -> list[dict]:
    """Per day of failure: failed and recovered amounts of that day's cohort, its rate."""
    rows = {
        r["day"]: r
        for r in cohort(store=store, period=period)
        .annotate(day=TruncDate("opened_at", tzinfo=store.tzinfo))
        .values("day")
        .annotate(**_outcome_columns(Q(currency=store.currency)))
        .order_by()
    }
    out = []
    day = period.start.date()
    while day <= period.last_day:
        r = rows.get(day) or {
            "failed": 0,
            "failed_amount": 0,
            "recovered": 0,
            "recovered_amount": 0,
            "lost": 0,
            "in_progress": 0,
        }
        out.append(
            _with_rate({"key": day.isoformat(), "day": day, **{k: r[k] for k in r if k != "day"}})
        )
        day += DAY
    return out


def _subscription_aggregates(*, store: Store, period: Period) -> dict:
    prev = period.previous

    def subs(p: Period, status: str):
        # Index: recovery case_store_closed_idx (store, closed_at), index-only.
        return RecoveryCase.objects.filter(
            store=store,
            status=status,
            closed_at__gte=p.start,
            closed_at__lt=p.end,
            subscription__isnull=False,
        ).values("subscription_id")

    def active(p: Period) -> Q:
        return Q(created_at__lt=p.end) & (Q(canceled_at__isnull=True) | Q(canceled_at__gte=p.start))

    money = Q(currency=store.currency)
    return {
        "c_recovered_mrr": Sum("mrr", filter=Q(pk__in=subs(period, S.RECOVERED)) & money),
        "p_recovered_mrr": Sum("mrr", filter=Q(pk__in=subs(prev, S.RECOVERED)) & money),
        "c_active": Count("pk", filter=active(period)),
        "p_active": Count("pk", filter=active(prev)),
        "c_churned_subscriptions": Count("pk", filter=Q(pk__in=subs(period, S.LOST))),
        "p_churned_subscriptions": Count("pk", filter=Q(pk__in=subs(prev, S.LOST))),
    }


def subscription_figures(*, store: Store, period: Period) -> dict:
    """The figures that count each subscription once, live: recovered MRR (at today's
    MRR), subscriptions active, and subscriptions lost to payment failure."""
    return Subscription.objects.filter(store=store).aggregate(
        **_subscription_aggregates(store=store, period=period)
    )


SUBSCRIPTION_FIGURES = (
    "c_recovered_mrr",
    "p_recovered_mrr",
    "c_active",
    "p_active",
    "c_churned_subscriptions",
    "p_churned_subscriptions",
)
PREDUNNING_FIGURES = ("c_sent", "p_sent", "c_saved", "p_saved", "c_lost", "p_lost")


def live_figures(
    *, store: Store, period: Period, today: dt.date | None = None
) -> tuple[dict, dict]:
    """`subscription_figures` and `predunning_figures` in one statement (a UNION of the
    two aggregates, the second padded to the first's columns if it has fewer)."""
    today = today or predunning_today(store)

    def build():
        subs = _subscription_aggregates(store=store, period=period)
        pre = _predunning_aggregates(period, today)
        assert (tuple(subs), tuple(pre)) == (SUBSCRIPTION_FIGURES, PREDUNNING_FIGURES)
        pad = {
            f"pad{i}": Value(0, output_field=IntegerField()) for i in range(len(subs) - len(pre))
        }
        a = (
            Subscription.objects.filter(store=store)
            .annotate(k=Value(1, output_field=IntegerField()))
            .values("k")
            .annotate(**subs)
            .order_by()
        )
        b = (
            _predunning(store=store, period=period)
            .annotate(k=Value(2, output_field=IntegerField()))
            .values("k")
            .annotate(**pre, **pad)
            .order_by()
        )
        return a.union(b, all=True)

    key = ("live", store.pk, store.currency, period.start, period.end, today)
    rows = {
        r[0]: [int(v) if v is not None else None for v in r[1:]]
        for r in fetch(*statement(key, build))
    }
    return (
        dict(zip(SUBSCRIPTION_FIGURES, rows[1], strict=True)),
        dict(zip(PREDUNNING_FIGURES, rows[2][: len(PREDUNNING_FIGURES)], strict=True)),
    )


ROLLUP_COLUMNS = (
    "cur",
    "basis",
    "dkey",
    "track",
    "decline_code",
    "product",
    "status",
    "currency",
    "recovered_via",
    "channel",
    "acted_channel",
    "duration",
    "n",
    "amount_sum",
    "recovered_sum",
    "attempts_sum",
)


def rollup_rows(*, store: Store, period: Period) -> list[dict]:
    """The rollup of the period and the one before, summed over days in SQL (except the
    trend's days): a few hundred rows whatever the data size. The previous period needs
    only its totals and its histogram of durations, so its rows are summed over the
    breakdowns' dimensions too, and its products and days are not read."""
    from .models import CaseDay

    B = CaseDay.Basis
    start = period.start.date()

    def current(name: str):
        return Case(When(day__gte=start, then=F(name)), default=Value(""), output_field=CharField())

    def build():
        return (
            CaseDay.objects.filter(
                store=store, day__gte=period.previous.start.date(), day__lte=period.last_day
            )
            .exclude(basis__in=[B.PRODUCT, B.DAY], day__lt=start)
            .annotate(
                cur=Case(When(day__gte=start, then=Value(1)), default=Value(0)),
                dkey=Case(When(basis=B.DAY, then=F("day")), default=None, output_field=DateField()),
                g_track=current("track"),
                g_decline=current("decline_code"),
                g_via=current("recovered_via"),
                g_channel=current("channel"),
                g_acted=current("acted_channel"),
            )
            .values(
                "cur",
                "basis",
                "dkey",
                "g_track",
                "g_decline",
                "product",
                "status",
                "currency",
                "g_via",
                "g_channel",
                "g_acted",
                "duration",
            )
            .annotate(
                n=Sum("cases"),
                amount_sum=Sum("amount"),
                recovered_sum=Sum("recovered_amount"),
                attempts_sum=Sum("attempts"),
            )
            .order_by()
        )

    out = []
    for r in fetch(*statement(("rollup", store.pk, period.start, period.end), build)):
        row = dict(zip(ROLLUP_COLUMNS, r, strict=True))
        row["dkey"] = as_date(row["dkey"])
        for k in ("n", "amount_sum", "recovered_sum", "attempts_sum"):
            row[k] = int(row[k] or 0)
        out.append(row)
    return out


OUTCOME_KEYS = ("failed", "failed_amount", "recovered", "recovered_amount", "lost", "in_progress")


def _outcomes(row: dict, money: bool) -> dict:
    status, n = row["status"], row["n"]
    return {
        "failed": n,
        "failed_amount": row["amount_sum"] if money else 0,
        "recovered": n if status == S.RECOVERED else 0,
        "recovered_amount": row["recovered_sum"] if money else 0,
        "lost": n if status == S.LOST else 0,
        "in_progress": n if status == S.OPEN else 0,
    }


def _add(into: dict, values: dict) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0) + v


def _median(histogram: list[tuple[float, int]]) -> float | None:
    """percentile_cont(0.5) of a histogram of (value, count)."""
    n = sum(c for _, c in histogram)
    if not n:
        return None
    lo, hi = (n - 1) // 2, n // 2
    seen, a = 0, None
    for value, count in sorted(histogram):
        if a is None and seen + count > lo:
            a = value
        if seen + count > hi:
            return a + (value - a) / 2
        seen += count
    return None  # unreachable


def home(*, store: Store, period: Period) -> Home:
    """Everything the home page shows: the rollup, brought up to date first (so nothing
    shown is older than the request), read in one statement, plus the figures that count
    subscriptions once and the pre-dunning rate, live, in another. At any data size: four
    statements when no case changed since the last refresh (its check, and the revenue at
    risk with it), ten when some did (the refresh recomputes their days first)."""
    from .services import rollup_refresh

    refresh = rollup_refresh(store=store)
    rows = rollup_rows(store=store, period=period)
    subs, pre = live_figures(store=store, period=period)
    channels_on = message_model() is not None

    totals: dict[str, dict] = {"c": {}, "p": {}}
    closed: dict[str, dict] = {"c": {}, "p": {}}
    durations: dict[str, list] = {"c": [], "p": []}
    track_labels = dict(Track.choices)
    tracks: dict[str, dict] = {}
    declines: dict[str, dict] = {}
    products: dict[str, dict] = {}
    days: dict[dt.date, dict] = {}
    sources: dict[str, dict] = {}
    channels: dict[str, dict] = {}  # last touch
    acted: dict[str, dict] = {}  # the channel the customer acted on
    for r in rows:
        p = "c" if r["cur"] else "p"
        money = r["currency"] == store.currency
        basis = r["basis"]
        if basis == "duration":
            durations[p].append((r["duration"], r["n"]))
        elif basis == "closed":
            if r["status"] == S.RECOVERED:
                amount = r["recovered_sum"] if money else 0
                _add(
                    closed[p],
                    {"recoveries": r["n"], "revenue": amount, "attempts": r["attempts_sum"]},
                )
                if p == "c":
                    via, ch = r["recovered_via"], r["channel"]
                    _add(
                        sources.setdefault(via, {"key": via}),
                        {
                            "recovered": r["n"],
                            "recovered_amount": amount,
                            "attempts": r["attempts_sum"],
                        },
                    )
                    _add(
                        channels.setdefault(ch, {"key": ch}),
                        {"recovered": r["n"], "recovered_amount": amount},
                    )
                    _add(
                        acted.setdefault(r["acted_channel"], {"key": r["acted_channel"]}),
                        {"recovered": r["n"], "recovered_amount": amount},
                    )
        elif basis == "cohort":
            cols = _outcomes(r, money)
            _add(totals[p], {**cols, "cancelled": r["n"] if r["status"] == S.CANCELLED else 0})
            if p == "c":
                t, d = r["track"], r["decline_code"]
                _add(tracks.setdefault(t, {"key": t, "label": track_labels.get(t, t)}), cols)
                _add(declines.setdefault(d, {"key": d, "label": d or "(no code)"}), cols)
        elif basis == "product" and p == "c":
            k = r["product"]
            _add(
                products.setdefault(k, {"key": k, "label": k or "(no product)", "product": k}),
                _outcomes(r, money),
            )
        elif basis == "day" and p == "c":
            _add(days.setdefault(r["dkey"], {}), _outcomes(r, money))

    def figures(p: str) -> Figures:
        t, c = totals[p], closed[p]
        f = Figures(
            failed=t.get("failed", 0),
            failed_amount=t.get("failed_amount", 0),
            recovered=t.get("recovered", 0),
            lost=t.get("lost", 0),
            in_progress=t.get("in_progress", 0),
            cancelled=t.get("cancelled", 0),
            recovered_revenue=c.get("revenue", 0),
            recoveries_closed=c.get("recoveries", 0),
            recovered_mrr=subs[f"{p}_recovered_mrr"] or 0,
            churned_subscriptions=subs[f"{p}_churned_subscriptions"] or 0,
            active_subscriptions=subs[f"{p}_active"] or 0,
            warnings_sent=pre[f"{p}_sent"] or 0,
            warnings_saved=pre[f"{p}_saved"] or 0,
            warnings_lost=pre[f"{p}_lost"] or 0,
        )
        f.recovery_rate = ratio(f.recovered, f.recovered + f.lost)
        f.involuntary_churn_rate = ratio(f.churned_subscriptions, f.active_subscriptions)
        _predunning_rate(f)
        median = _median(durations[p])
        f.median_days_to_recovery = median / 86400 if median is not None else None
        f.attempts_per_recovery = ratio(c.get("attempts", 0), f.recoveries_closed)
        return f

    order = lambda r: (-r["failed_amount"], -r["failed"], r["label"])  # noqa: E731
    total_recovered = sum(s["recovered"] for s in sources.values())
    by_source = [
        {
            "key": s["key"],
            "label": SOURCE_LABELS.get(s["key"], s["key"] or "Other"),
            "recovered": s["recovered"],
            "recovered_amount": s["recovered_amount"],
            "attempts_per_recovery": ratio(s["attempts"], s["recovered"]),
            "share": ratio(s["recovered"], total_recovered),
        }
        for s in sources.values()
    ]
    by_channel = channel_rows(acted, channels)
    trend_rows = []
    day = period.start.date()
    while day <= period.last_day:
        cols = {k: 0 for k in OUTCOME_KEYS} | days.get(day, {})
        trend_rows.append(_with_rate({"key": day.isoformat(), "day": day, **cols}))
        day += DAY
    return Home(
        period=period,
        figures=figures("c"),
        previous=figures("p"),
        at_risk_amount=refresh.at_risk_amount,
        at_risk_cases=refresh.at_risk_cases,
        at_risk_with_person=refresh.at_risk_with_person,
        by_track=sorted((_with_rate(t) for t in tracks.values()), key=order),
        by_decline=sorted((_with_rate(d) for d in declines.values()), key=order),
        by_source=sorted(by_source, key=lambda r: (-r["recovered_amount"], r["label"])),
        by_channel=by_channel if channels_on else [],
        channel_available=channels_on,
        by_product=sorted(
            (_with_rate(r) for r in products.values()),
            key=lambda r: (-r["failed_amount"], r["label"]),
        ),
        trend=trend_rows,
    )


def home_direct(*, store: Store, period: Period) -> Home:
    """The home page's figures aggregated directly from the cases, ten scans: the
    reference the rollup is checked against (tests, bench), not what the page runs."""
    cohort_agg = cohort_figures(store=store, period=period)
    closed_agg = closed_figures(store=store, period=period)
    subs_agg = subscription_figures(store=store, period=period)
    pre_agg = predunning_figures(store=store, period=period)
    risk = at_risk_now(store=store)
    tracks, declines = by_track_and_decline(store=store, period=period)
    channels = by_channel(store=store, period=period)
    return Home(
        period=period,
        figures=_figures("c", cohort_agg, closed_agg, subs_agg, pre_agg),
        previous=_figures("p", cohort_agg, closed_agg, subs_agg, pre_agg),
        at_risk_amount=risk["amount"] or 0,
        at_risk_cases=risk["cases"] or 0,
        at_risk_with_person=risk["with_person"] or 0,
        by_track=tracks,
        by_decline=declines,
        by_source=by_source(store=store, period=period),
        by_channel=channels or [],
        channel_available=channels is not None,
        by_product=by_product(store=store, period=period),
        trend=trend(store=store, period=period),
    )
