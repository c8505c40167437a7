"""The page number of a dashboard list, read from its query string."""

from __future__ import annotations

MAX_PAGE = 100_000


def page_number(raw: str | None) -> int:
    """`?page=` as 1..MAX_PAGE. Anything but ASCII digits is the first page (int() would
    take "٣" or "1_0"); a larger number is MAX_PAGE, so the list's offset stays far
    inside the database's integer range and int() never sees thousands of digits."""
    raw = (raw or "").strip()
    if not (raw.isascii() and raw.isdigit()):
        return 1
    digits = raw.lstrip("0")
    if len(digits) > len(str(MAX_PAGE)):
        return MAX_PAGE
    return min(max(int(digits or "0"), 1), MAX_PAGE)
