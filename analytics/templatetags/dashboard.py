"""Formatting for the dashboard: money in minor units, rates, changes between periods."""

from __future__ import annotations

import datetime as dt

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

register = template.Library()

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}
ZERO_DECIMAL = {"jpy", "krw", "vnd", "clp", "isk", "huf"}


@register.filter
def money(amount, currency="usd"):
    if amount is None or amount == "":
        return "—"
    currency = (currency or "usd").lower()
    value = amount if currency in ZERO_DECIMAL else amount / 100
    symbol = SYMBOLS.get(currency)
    text = f"{value:,.0f}" if currency in ZERO_DECIMAL else f"{value:,.2f}"
    return f"{symbol}{text}" if symbol else f"{text} {currency.upper()}"


@register.filter
def pct(rate, digits=1):
    if rate is None or rate == "":
        return "—"
    return f"{rate * 100:.{int(digits)}f}%"


@register.filter
def days(value):
    if value is None:
        return "—"
    return f"{value:.1f} d"


@register.filter
def num(value, digits=1):
    if value is None:
        return "—"
    return f"{value:,.{int(digits)}f}"


@register.simple_tag
def cell(value, kind, currency="usd"):
    """One table cell by its column kind."""
    if kind == "money":
        return money(value, currency)
    if kind == "rate":
        return pct(value)
    if kind == "days":
        return days(value)
    if kind == "float":
        return num(value, 2)
    if kind == "date":
        return value.strftime("%a %b %-d") if value else "—"
    if kind == "int":
        return f"{value:,}" if isinstance(value, int) else value
    return value if value not in (None, "") else "—"


@register.simple_tag
def change(current, previous, kind="int", better="up"):
    """The change from the previous period, marked good or bad (text, not only colour)."""
    if current is None or previous is None:
        return mark_safe('<span class="delta">no comparison</span>')
    diff = current - previous
    if abs(diff) < 1e-9:
        return mark_safe('<span class="delta">same as previous period</span>')
    good = (diff > 0) == (better == "up")
    arrow = "▲" if diff > 0 else "▼"
    if kind == "rate":
        text = f"{diff * 100:+.1f} pts"
    elif kind == "money":
        text = ("+" if diff > 0 else "−") + money(abs(diff))
    elif kind in ("days", "float"):
        text = f"{diff:+.1f}"
    else:
        text = f"{diff:+,}"
    return format_html(
        '<span class="delta {}"><span aria-hidden="true">{}</span> {} <span class="sr-only">({})</span></span>',
        "good" if good else "bad",
        arrow,
        text,
        "better" if good else "worse",
    )


@register.filter
def ago(when):
    """'3 h 20 min' since `when`."""
    if not when:
        return "—"
    delta = timezone.now() - when
    return duration(delta)


@register.filter
def duration(delta):
    if delta is None:
        return "—"
    if isinstance(delta, int | float):
        delta = dt.timedelta(minutes=delta)
    minutes = int(delta.total_seconds() // 60)
    if minutes < 0:
        return "0 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


@register.filter
def until(when):
    """Time left until `when` ('2 d 4 h left', or 'ended')."""
    if not when:
        return "—"
    delta = when - timezone.now()
    if delta.total_seconds() <= 0:
        return "ended"
    return f"{duration(delta)} left"


@register.filter
def get(mapping, key):
    return mapping.get(key) if mapping else None


@register.filter
def width(value, total):
    """Percentage width for a CSS bar."""
    try:
        return f"{max(min(100 * value / total, 100), 0):.1f}" if total else "0"
    except TypeError:
        return "0"
