"""The home page's tables, as data: one definition for the page and for its CSV export."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from django.http import HttpResponse
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from .selectors import Figures, Home


@dataclass
class Column:
    key: str
    title: str
    kind: str = "int"  # int | money | rate | days | float | text | date


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict]
    note: str = ""
    currency: str = "usd"

    def rows_html(self) -> SafeString:
        """The body rows, every cell formatted and escaped here: one string for the page
        instead of a template loop over some five hundred cells, which took longer than
        the queries behind them."""
        from .templatetags.dashboard import cell

        if not self.rows:
            return format_html(
                '<tr><td colspan="{}" class="muted">Nothing in this period.</td></tr>',
                len(self.columns),
            )
        first, *rest = self.columns
        rest_attrs = [(col, f'<td class="num" data-col="{escape(col.key)}">') for col in rest]
        out = []
        for row in self.rows:
            parts = [
                f'<tr data-key="{escape(row.get("key", ""))}"><th scope="row">',
                escape(cell(row.get(first.key), self._kind(first, row), self.currency)),
                "</th>",
            ]
            for col, td in rest_attrs:
                parts += td, escape(cell(row.get(col.key), self._kind(col, row), self.currency))
                parts.append("</td>")
            parts.append("</tr>")
            out.append("".join(parts))
        return mark_safe("".join(out))  # noqa: S308 - every value above is escaped

    @staticmethod
    def _kind(col: Column, row: dict) -> str:
        return row.get("kind", "text") if col.kind == "cell" else col.kind


OUTCOME_COLUMNS = [
    Column("failed", "Failed"),
    Column("failed_amount", "Failed amount", "money"),
    Column("recovered", "Recovered"),
    Column("recovered_amount", "Recovered amount", "money"),
    Column("lost", "Lost"),
    Column("in_progress", "In progress"),
    Column("rate", "Recovery rate", "rate"),
]

SUMMARY_ROWS = [
    ("recovery_rate", "Recovery rate", "rate"),
    ("recovered", "Failed payments recovered (cohort)", "int"),
    ("lost", "Failed payments lost (cohort)", "int"),
    ("in_progress", "Still in progress (not counted)", "int"),
    ("failed", "Failed payments", "int"),
    ("failed_amount", "Failed amount", "money"),
    ("recovered_revenue", "Recovered revenue", "money"),
    ("recovered_mrr", "Recovered MRR", "money"),
    ("involuntary_churn_rate", "Involuntary churn rate", "rate"),
    ("predunning_save_rate", "Pre-dunning save rate (decided warnings)", "rate"),
    ("warnings_saved", "Expiry warnings saved", "int"),
    ("warnings_lost", "Expiry warnings lost (card expired unreplaced)", "int"),
    ("warnings_in_progress", "Expiry warnings in progress (not counted)", "int"),
    ("median_days_to_recovery", "Median days to recovery", "days"),
    ("attempts_per_recovery", "Attempts per recovery", "float"),
]


def _summary(cur: Figures, prev: Figures) -> list[dict]:
    return [
        {
            "key": key,
            "label": label,
            "kind": kind,
            "current": getattr(cur, key),
            "previous": getattr(prev, key),
        }
        for key, label, kind in SUMMARY_ROWS
    ]


def home_tables(h: Home, *, currency: str = "usd") -> dict[str, Table]:
    tables = [
        Table(
            "summary",
            "Summary",
            [
                Column("label", "Metric", "text"),
                Column("current", "This period", "cell"),
                Column("previous", "Previous period", "cell"),
            ],
            _summary(h.figures, h.previous),
        ),
        Table(
            "by_track",
            "By track",
            [Column("label", "Track", "text"), *OUTCOME_COLUMNS],
            h.by_track,
            "Failed payments of the period by how Recoup classified the decline.",
        ),
        Table(
            "by_decline",
            "By decline code",
            [Column("label", "Decline code", "text"), *OUTCOME_COLUMNS],
            h.by_decline,
        ),
        Table(
            "by_source",
            "By recovery source",
            [
                Column("label", "Source", "text"),
                Column("recovered", "Recovered"),
                Column("recovered_amount", "Amount", "money"),
                Column("share", "Share", "rate"),
                Column("attempts_per_recovery", "Attempts per recovery", "float"),
            ],
            h.by_source,
            "Payments recovered in the period, by what brought the money back.",
        ),
        Table(
            "by_channel",
            "By channel",
            [
                Column("label", "Channel", "text"),
                Column("recovered", "Recovered (channel acted on)"),
                Column("recovered_amount", "Amount (channel acted on)", "money"),
                Column("share", "Share (channel acted on)", "rate"),
                Column("last_touch_recovered", "Recovered (last touch)"),
                Column("last_touch_amount", "Amount (last touch)", "money"),
                Column("last_touch_share", "Share (last touch)", "rate"),
            ],
            h.by_channel,
            "Payments recovered in the period. Channel acted on: the last message whose own "
            "pay link the customer opened before the recovery. Last touch: the last message "
            "sent before it, whether or not it was opened."
            if h.channel_available
            else "Messaging is not set up yet.",
        ),
        Table(
            "by_product",
            "By product",
            [Column("label", "Product", "text"), *OUTCOME_COLUMNS],
            h.by_product,
        ),
        Table(
            "trend",
            "Daily",
            [Column("day", "Day of failure", "date"), *OUTCOME_COLUMNS],
            h.trend,
        ),
    ]
    for t in tables:
        t.currency = currency
    return {t.name: t for t in tables}


def _csv_value(value, kind: str, row: dict | None = None):
    if value is None:
        return ""
    if kind == "cell":
        kind = row["kind"] if row else "text"
    if kind == "money":
        return f"{value / 100:.2f}"
    if kind == "rate":
        return f"{value * 100:.1f}"
    if kind in ("days", "float"):
        return f"{value:.2f}"
    if kind == "date":
        return value.isoformat()
    return value


def csv_response(table: Table, *, filename: str, currency: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    headers = []
    for col in table.columns:
        title = col.title
        if col.kind == "money":
            title += f" ({currency.upper()})"
        elif col.kind == "rate":
            title += " (%)"
        headers.append(title)
    writer.writerow(headers)
    for row in table.rows:
        writer.writerow([_csv_value(row.get(col.key), col.kind, row) for col in table.columns])
    return response
