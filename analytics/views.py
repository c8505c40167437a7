"""The home page: recovery analytics for a period, compared with the one before."""

from __future__ import annotations

import datetime as dt

from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone

from stores.access import Access, dashboard_view, render_page

from . import selectors
from .charts import trend_svg
from .tables import csv_response, home_tables

PERIOD_CHOICES = [
    (7, "Last 7 days"),
    (30, "Last 30 days"),
    (90, "Last 90 days"),
    (365, "Last 12 months"),
]


def _date(value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _period(request: HttpRequest, access: Access) -> selectors.Period:
    try:
        days = int(request.GET.get("days") or 30)
    except ValueError:
        days = 30
    return selectors.period_for(
        store=access.store,
        now=timezone.now(),
        days=days,
        start=_date(request.GET.get("start")),
        end=_date(request.GET.get("end")),
    )


@dashboard_view()
def home(request: HttpRequest, access: Access) -> HttpResponse:
    period = _period(request, access)
    data = selectors.home(store=access.store, period=period)
    tables = home_tables(data, currency=access.store.currency)
    f, p = data.figures, data.previous
    empty = not (f.failed or p.failed or data.at_risk_cases or f.recoveries_closed)
    return render_page(
        request,
        access,
        "analytics/home.html",
        {
            "data": data,
            "f": f,
            "p": p,
            "tables": tables,
            "breakdowns": [
                tables[n]
                for n in ("by_track", "by_source", "by_channel", "by_product", "by_decline")
            ],
            "chart": trend_svg(data.trend, currency=access.store.currency) if not empty else "",
            "empty": empty,
            "period_choices": PERIOD_CHOICES,
            "query": request.GET.urlencode(),
            "days": request.GET.get("days") or ("" if request.GET.get("start") else "30"),
            "currency": access.store.currency,
        },
        section="home",
    )


@dashboard_view()
def export(request: HttpRequest, access: Access, table: str) -> HttpResponse:
    period = _period(request, access)
    tables = home_tables(
        selectors.home(store=access.store, period=period), currency=access.store.currency
    )
    if table not in tables:
        raise Http404("No such table")
    name = f"recoup-{table}-{period.start:%Y%m%d}-{period.last_day:%Y%m%d}.csv"
    return csv_response(tables[table], filename=name, currency=access.store.currency)
