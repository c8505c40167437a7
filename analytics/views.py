"""The home page: recovery analytics for a period, compared with the one before."""

from __future__ import annotations

from django import forms
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils import timezone

from recovery.forms import DayField
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


class PeriodForm(forms.Form):
    """The period of the query string: `days` back from today, or the days `start` to
    `end`. Bounded so that the period before it, which the page compares with, is a date
    Python can hold."""

    days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=366,
        error_messages={
            k: "Period: from 1 to 366 days." for k in ("invalid", "min_value", "max_value")
        },
    )
    start = DayField(label="From")
    end = DayField(label="To")

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            self.add_error("end", "To: pick a day on or after From.")
        return data


def _period(request: HttpRequest, access: Access) -> tuple[selectors.Period, list[str]]:
    """The period asked for and no errors, or the default period and what was wrong."""
    form = PeriodForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    errors = [error for errors in form.errors.values() for error in errors]
    period = selectors.period_for(
        store=access.store,
        now=timezone.now(),
        days=data.get("days"),
        start=data.get("start"),
        end=data.get("end"),
    )
    return period, errors


@dashboard_view()
def home(request: HttpRequest, access: Access) -> HttpResponse:
    period, errors = _period(request, access)
    if errors:  # the page shows the default period, and so do its exports
        days, query = "30", ""
    else:
        days = request.GET.get("days") or ("" if request.GET.get("start") else "30")
        query = request.GET.urlencode()
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
            "query": query,
            "days": days,
            "period_errors": errors,
            "currency": access.store.currency,
        },
        section="home",
    )


@dashboard_view()
def export(request: HttpRequest, access: Access, table: str) -> HttpResponse:
    period, errors = _period(request, access)
    if errors:
        return HttpResponseBadRequest(" ".join(errors), content_type="text/plain; charset=utf-8")
    tables = home_tables(
        selectors.home(store=access.store, period=period), currency=access.store.currency
    )
    if table not in tables:
        raise Http404("No such table")
    name = f"recoup-{table}-{period.start:%Y%m%d}-{period.last_day:%Y%m%d}.csv"
    return csv_response(tables[table], filename=name, currency=access.store.currency)
