"""Server-side SVG charts: no JavaScript, no CDN, readable by screen readers (a title and
a description, and the same numbers in a table under each chart)."""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 44, 14, 30


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _money(minor: float, currency: str) -> str:
    major = minor / 100
    if major >= 1000:
        return f"{major / 1000:,.1f}k"
    return f"{major:,.0f}"


def trend_svg(rows: list[dict], *, currency: str) -> SafeString:
    """Failed vs recovered amount per day (bars) and the recovery rate (line)."""
    n = max(len(rows), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_max(max((r["failed_amount"] for r in rows), default=0))
    slot = plot_w / n
    bar = max(min(slot * 0.38, 14), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-labelledby="trend-title trend-desc" xmlns="http://www.w3.org/2000/svg">',
        '<title id="trend-title">Failed and recovered amounts per day, with the recovery rate</title>',
        f'<desc id="trend-desc">{n} days. Bars: amount failed that day (grey) and recovered of it '
        "(green). Line: recovery rate of the day's failed payments whose recovery has ended. "
        "The table below the chart has the same numbers.</desc>",
    ]
    for i in range(5):
        y = TOP + plot_h * i / 4
        value = top * (4 - i) / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_money(value, currency)}</text>"
            f'<text class="axis" x="{WIDTH - RIGHT + 6}" y="{y + 4:.1f}">{(4 - i) * 25}%</text>'
        )
    points = []
    for i, r in enumerate(rows):
        x = LEFT + slot * i + slot / 2
        for offset, key, cls in (
            (-bar, "failed_amount", "failed"),
            (0, "recovered_amount", "recovered"),
        ):
            h = plot_h * (r[key] / top) if top else 0
            parts.append(
                f'<rect class="{cls}" x="{x + offset:.1f}" y="{TOP + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"><title>{escape(r["day"].isoformat())}: '
                f"{escape(key.replace('_', ' '))} {r[key] / 100:,.2f} {currency.upper()}</title></rect>"
            )
        if r.get("rate") is not None:
            points.append(f"{x:.1f},{TOP + plot_h * (1 - r['rate']):.1f}")
        if i % max(n // 8, 1) == 0:
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                f"{r['day']:%b %-d}</text>"
            )
    if len(points) > 1:
        parts.append(f'<polyline class="rate" points="{" ".join(points)}"/>')
    for p in points:
        x, y = p.split(",")
        parts.append(f'<circle class="rate-dot" cx="{x}" cy="{y}" r="2.5"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every dynamic text above is escaped
