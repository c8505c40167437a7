"""The home page's statements, compiled once and run on a bare cursor.

Compiling a queryset with subqueries and unions takes the ORM milliseconds, longer than
running some of them against the rollup; the home page's statements depend only on the
store and the period (or the refresh's watermark), so each is compiled once per process
and key. A bare cursor returns what the database returns: `as_date` evens out SQLite's
text dates, and sums are made `int` where they are read.
"""

from __future__ import annotations

import datetime as dt

from django.db import connection

_statements: dict[tuple, tuple[str, tuple]] = {}


def statement(key: tuple, build) -> tuple[str, tuple]:
    """The SQL and parameters of the queryset `build()` makes, compiled once per process
    for a key that names everything it depends on (store, period, …). Compiling the
    home page's statements with the ORM took longer than running some of them."""
    key = (connection.settings_dict["NAME"], *key)
    hit = _statements.get(key)
    if hit is None:
        if len(_statements) >= 512:
            _statements.clear()
        hit = _statements[key] = build().query.sql_with_params()
    return hit


def fetch(sql: str, params: tuple) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def as_date(value) -> dt.date | None:
    """A date as a raw cursor returns it (SQLite: text)."""
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)
