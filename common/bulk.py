"""Many rows, each with its own values, written in one statement.

Django's `bulk_update` builds a CASE WHEN per field and row, which costs more to compile
than the database takes to run it (a scheduler batch spent most of its time there).
`rows_update` sends `UPDATE … FROM` a table of the new values, joined on the primary key;
`rows_insert` sends `INSERT … SELECT` from such a table.

On PostgreSQL the table is `unnest` of one array per column: the statement's text is the
same for any number of rows, and the arrays go to the server as bound parameters in
binary (a server-binding cursor, not Django's default client-side binding, which quotes
every value into the SQL text in Python: for a column of 500 timestamps that took ten
times longer than sending it). On SQLite (3.33+) `rows_update` sends `VALUES` with a row
per object and `rows_insert` is Django's `bulk_create`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools

from django.db import connection, models

CHUNK = 500

# Fields whose values, when already of the column's plain Python type, go to the database
# as they are: `get_db_prep_save` would only hand them back (exact classes only, so a
# subclass that encrypts or reshapes its values still goes through its own code).
_PLAIN = {
    models.CharField: str,
    models.TextField: str,
    models.EmailField: str,
    models.SlugField: str,
    models.URLField: str,
    models.IntegerField: int,
    models.BigIntegerField: int,
    models.SmallIntegerField: int,
    models.PositiveIntegerField: int,
    models.PositiveBigIntegerField: int,
    models.PositiveSmallIntegerField: int,
    models.AutoField: int,
    models.BigAutoField: int,
    models.BooleanField: bool,
    models.DateTimeField: dt.datetime,
}
_RELATIONS = {models.ForeignKey, models.OneToOneField}


def _prep(field):
    """A function turning an instance's value of `field` into what the column takes."""
    target = field.target_field if field.is_relation else field
    plain = _PLAIN.get(type(target)) if type(field) in (_PLAIN.keys() | _RELATIONS) else None
    slow = field.get_db_prep_save
    if plain is None or not _postgres():  # SQLite stores datetimes as Django formats them
        return lambda value: slow(value, connection)
    if plain is dt.datetime:
        # Aware datetimes only: a naive one gets Django's warning and conversion.
        return lambda value: (
            value
            if value is None or (type(value) is dt.datetime and value.tzinfo is not None)
            else slow(value, connection)
        )
    return lambda value: value if value is None or type(value) is plain else slow(value, connection)


def _base_type(field) -> str:
    kind = field.db_type(connection)
    # varchar without its length: an explicit CAST to varchar(n) would cut a longer value
    # silently, where assigning it to the column refuses it, as update() does.
    return "varchar" if kind.startswith("varchar(") else kind


def _postgres() -> bool:
    return connection.vendor == "postgresql"


@functools.cache
def _binding_cursor_class():
    """Django's server-binding cursor (imported on first use: only PostgreSQL has it)."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    return ServerBindingCursor


@contextlib.contextmanager
def binding_cursor(*, check_health: bool = True):
    """A cursor that sends its parameters apart from the statement (`%b`: in binary),
    wrapped as Django wraps its own (execute wrappers, query logging, error translation).
    A statement is prepared on the server as the connection's `prepare_threshold` says:
    from its second run when DATABASE_PREPARED_STATEMENTS is on, never when it is off
    (behind a pooler that does not track prepared statements). check_health=False
    skips Django's SELECT 1 on a reused connection: for a caller whose statement is its
    own check (it is sent again on a new connection if this one turns out dead)."""
    if check_health:
        connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        raw = _binding_cursor_class()(connection.connection)
    cursor = (
        connection.make_debug_cursor(raw)
        if connection.queries_logged
        else connection.make_cursor(raw)
    )
    try:
        yield cursor
    finally:
        cursor.close()


def _arrays(objs: list, fields) -> list[list]:
    """One list of database values per field, for `unnest`."""
    out = []
    for field in fields:
        prep, name = _prep(field), field.attname
        out.append([prep(getattr(o, name)) for o in objs])
    return out


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
    postgres = _postgres()
    mark = "%b" if postgres else "%s"

    if postgres:
        alias = ["pk", *(f"c{i}" for i in range(len(columns)))]
        head = f"AS v({', '.join(alias)})"
    else:  # SQLite names a VALUES table's columns column1, column2, …
        alias = [f"column{i + 1}" for i in range(len(columns) + 1)]
        head = "AS v"
    sets = ", ".join(f"{q(f.column)} = v.{alias[i + 1]}" for i, f in enumerate(columns))
    table = q(meta.db_table)
    guard, guard_params = "", []
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        guard += f" AND {table}.{q(field.column)} = {mark}"
        guard_params.append(field.get_db_prep_save(value, connection))
    if rising:
        guard += "".join(
            f" AND {table}.{q(f.column)} < v.{alias[i + 1]}" for i, f in enumerate(columns)
        )
    done = 0
    if postgres:
        source = (
            "unnest("
            + ", ".join(f"CAST(%b AS {_base_type(f)}[])" for f in [pk, *columns])
            + f") {head}"
        )
        sql = (
            f"UPDATE {table} SET {sets} FROM {source} "
            f"WHERE {table}.{q(pk.column)} = v.{alias[0]}{guard}"
        )
        with binding_cursor() as cursor:
            for lo in range(0, len(objs), CHUNK * 10):
                cursor.execute(
                    sql, _arrays(objs[lo : lo + CHUNK * 10], [pk, *columns]) + guard_params
                )
                done += cursor.rowcount
        return done
    row = "(" + ", ".join(["%s"] * (len(columns) + 1)) + ")"
    preps = [_prep(f) for f in [pk, *columns]]
    names = [f.attname for f in [pk, *columns]]
    with connection.cursor() as cursor:
        for lo in range(0, len(objs), CHUNK):
            chunk = objs[lo : lo + CHUNK]
            params = [p(getattr(o, n)) for o in chunk for p, n in zip(preps, names, strict=True)]
            cursor.execute(
                f"UPDATE {table} SET {sets} FROM (VALUES {', '.join([row] * len(chunk))}) {head} "
                f"WHERE {table}.{q(pk.column)} = v.{alias[0]}{guard}",
                params + guard_params,
            )
            done += cursor.rowcount
    return done


def rows_insert(objs: list) -> list:
    """Insert new model instances (one model, no primary key yet) and set their primary
    keys, as `bulk_create` does (each field's `pre_save` runs, so `auto_now_add` is
    filled in; no save() and no signals). Returns `objs`."""
    if not objs:
        return objs
    model = type(objs[0])
    meta = model._meta
    fields = [f for f in meta.concrete_fields if f is not meta.pk]
    plain = all(
        type(f).pre_save is models.Field.pre_save or isinstance(f, models.DateField) for f in fields
    )
    if not _postgres() or not plain or any(o.pk is not None for o in objs):
        model._default_manager.bulk_create(objs, batch_size=CHUNK)
        return objs
    stamped = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
    for obj in objs:
        for field in stamped:
            field.pre_save(obj, True)
    q = connection.ops.quote_name
    sql = (
        f"INSERT INTO {q(meta.db_table)} ({', '.join(q(f.column) for f in fields)}) "
        f"SELECT * FROM unnest("
        + ", ".join(f"CAST(%b AS {_base_type(f)}[])" for f in fields)
        + f") RETURNING {q(meta.pk.column)}"
    )
    with binding_cursor() as cursor:
        for lo in range(0, len(objs), CHUNK * 10):
            chunk = objs[lo : lo + CHUNK * 10]
            cursor.execute(sql, _arrays(chunk, fields))
            # One row back per row in, in the order given (as Django's own UNNEST
            # bulk insert relies on).
            for obj, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
                obj.pk = pk
                obj._state.adding = False
                obj._state.db = connection.alias
    return objs
