"""Many rows, each with its own values, updated in one statement.

Django's `bulk_update` builds a CASE WHEN per field and row, which costs more to compile
than the database takes to run it (a scheduler batch spent most of its time there). This
sends `UPDATE … FROM (VALUES …)` instead: one row of values per object, joined on the
primary key. PostgreSQL and SQLite (3.33+) both run it.
"""

from __future__ import annotations

from django.db import connection

CHUNK = 500


def rows_update(objs: list, fields, *, where: dict | None = None) -> int:
    """Write `fields` of each model instance in `objs` (one model). Returns rows updated.
    Like `bulk_update`, it sends what the instances hold: no save() and no signals.
    `where` ({field: value}) writes only the rows that still hold those values."""
    objs = [o for o in objs if o.pk is not None]
    if not objs:
        return 0
    model = type(objs[0])
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    q = connection.ops.quote_name
    pk = meta.pk
    postgres = connection.vendor == "postgresql"

    def slot(field) -> str:
        if not postgres:
            return "%s"
        kind = field.db_type(connection)
        # varchar without its length: an explicit CAST to varchar(n) would cut a longer
        # value silently, where assigning it to the column refuses it, as update() does.
        return f"CAST(%s AS {'varchar' if kind.startswith('varchar(') else kind})"

    if postgres:
        alias = ["pk", *(f"c{i}" for i in range(len(columns)))]
        head = f"AS v({', '.join(alias)})"
    else:  # SQLite names a VALUES table's columns column1, column2, …
        alias = [f"column{i + 1}" for i in range(len(columns) + 1)]
        head = "AS v"
    row = "(" + ", ".join([slot(pk), *(slot(f) for f in columns)]) + ")"
    sets = ", ".join(f"{q(f.column)} = v.{alias[i + 1]}" for i, f in enumerate(columns))
    table = q(meta.db_table)
    guard, guard_params = "", []
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        guard += f" AND {table}.{q(field.column)} = %s"
        guard_params.append(field.get_db_prep_save(value, connection))
    done = 0
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
