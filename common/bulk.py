"""Many rows, each with its own values, updated in one statement.

Django's `bulk_update` builds a CASE WHEN per field and row, which costs more to compile
than the database takes to run it (a scheduler batch spent most of its time there). This
sends `UPDATE … FROM` a table of the new values, joined on the primary key: on
PostgreSQL `unnest` of one array per column (the same statement text for any number of
rows), on SQLite (3.33+) `VALUES` with a row per object.
"""

from __future__ import annotations

from django.db import connection

CHUNK = 500


def _base_type(field) -> str:
    kind = field.db_type(connection)
    # varchar without its length: an explicit CAST to varchar(n) would cut a longer value
    # silently, where assigning it to the column refuses it, as update() does.
    return "varchar" if kind.startswith("varchar(") else kind


def rows_update(objs: list, fields, *, where: dict | None = None, rising: bool = False) -> int:
    """Write `fields` of each model instance in `objs` (one model). Returns rows updated.
    Like `bulk_update`, it sends what the instances hold: no save() and no signals.
    `where` ({field: value}) writes only the rows that still hold those values; `rising`
    only the rows whose every field is below the new value (a count never goes back)."""
    objs = [o for o in objs if o.pk is not None]
    if not objs:
        return 0
    model = type(objs[0])
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    q = connection.ops.quote_name
    pk = meta.pk
    postgres = connection.vendor == "postgresql"

    if postgres:
        alias = ["pk", *(f"c{i}" for i in range(len(columns)))]
        head = f"AS v({', '.join(alias)})"
    else:  # SQLite names a VALUES table's columns column1, column2, …
        alias = [f"column{i + 1}" for i in range(len(columns) + 1)]
        head = "AS v"
    row = "(" + ", ".join(["%s"] * (len(columns) + 1)) + ")"
    sets = ", ".join(f"{q(f.column)} = v.{alias[i + 1]}" for i, f in enumerate(columns))
    table = q(meta.db_table)
    guard, guard_params = "", []
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        guard += f" AND {table}.{q(field.column)} = %s"
        guard_params.append(field.get_db_prep_save(value, connection))
    if rising:
        guard += "".join(
            f" AND {table}.{q(f.column)} < v.{alias[i + 1]}" for i, f in enumerate(columns)
        )
    done = 0
    if postgres:
        # One array per column, unnested into rows: the statement's text is the same
        # whatever the number of rows (parsed once, not once per placeholder).
        source = (
            "unnest("
            + ", ".join(f"CAST(%s AS {_base_type(f)}[])" for f in [pk, *columns])
            + f") {head}"
        )
        with connection.cursor() as cursor:
            for lo in range(0, len(objs), CHUNK * 10):
                chunk = objs[lo : lo + CHUNK * 10]
                params = [[pk.get_db_prep_save(o.pk, connection) for o in chunk]] + [
                    [f.get_db_prep_save(getattr(o, f.attname), connection) for o in chunk]
                    for f in columns
                ]
                cursor.execute(
                    f"UPDATE {table} SET {sets} FROM {source} "
                    f"WHERE {table}.{q(pk.column)} = v.{alias[0]}{guard}",
                    params + guard_params,
                )
                done += cursor.rowcount
        return done
    with connection.cursor() as cursor:
        for lo in range(0, len(objs), CHUNK):
            chunk = objs[lo : lo + CHUNK]
            params = []
            for obj in chunk:
                params.append(pk.get_db_prep_save(obj.pk, connection))
                params += [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in columns]
            cursor.execute(
                f"UPDATE {table} SET {sets} FROM (VALUES {', '.join([row] * len(chunk))}) {head} "
                f"WHERE {table}.{q(pk.column)} = v.{alias[0]}{guard}",
                params + guard_params,
            )
            done += cursor.rowcount
    return done
