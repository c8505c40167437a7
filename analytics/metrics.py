"""SQL building blocks for the metrics: a portable median and a duration in seconds."""

from __future__ import annotations

import statistics

from django.db.backends.signals import connection_created
from django.db.models import Aggregate, FloatField, Func


class DurationSeconds(Func):
    """`end - start` in seconds, as a float (PostgreSQL and SQLite)."""

    output_field = FloatField()
    arity = 2

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(
            compiler, connection, template="EXTRACT(EPOCH FROM (%(expressions)s))", arg_joiner=" - "
        )

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler,
            connection,
            template="((julianday(%(expressions)s)) * 86400.0)",
            arg_joiner=") - julianday(",
        )


class Median(Aggregate):
    """The median of an expression: percentile_cont on PostgreSQL, a registered aggregate
    on SQLite. NULLs are ignored, so a Case/When picks the rows."""

    function = "MEDIAN"
    output_field = FloatField()
    allow_distinct = False

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(
            compiler,
            connection,
            template="percentile_cont(0.5) WITHIN GROUP (ORDER BY %(expressions)s)",
            **extra,
        )


class _SqliteMedian:
    def __init__(self):
        self.values = []

    def step(self, value):
        if value is not None:
            self.values.append(value)

    def finalize(self):
        return statistics.median(self.values) if self.values else None


def _register_sqlite_median(sender, connection, **kwargs):
    if connection.vendor == "sqlite":
        connection.connection.create_aggregate("MEDIAN", 1, _SqliteMedian)


def connect_signals() -> None:
    connection_created.connect(_register_sqlite_median, dispatch_uid="analytics-sqlite-median")
