"""`common.bulk`: many rows written in one statement, on SQLite and PostgreSQL alike.

On PostgreSQL the values go as binary array parameters through a server-binding cursor;
these tests pin that every kind of value the scheduler writes arrives as it was.
"""

from __future__ import annotations

import datetime as dt
import warnings

import pytest
from django.db import DataError, IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from common.bulk import rows_insert, rows_update
from recovery.models import CaseEvent, RecoveryCase
from subscriptions.models import Customer

WHEN = dt.datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)


def _people(store, n):
    return [
        Customer.objects.create(
            store=store, stripe_id=f"cus_bulk_{i}", email=f"b{i}@example.com", first_seen_at=WHEN
        )
        for i in range(n)
    ]


@pytest.mark.django_db
def test_rows_insert_sets_each_rows_key_in_order_and_keeps_every_value(store, failed_invoice):
    case = RecoveryCase.objects.get()
    events = [
        CaseEvent(
            store=store,
            case=case,
            kind=f"kind_{i}",
            at=WHEN + dt.timedelta(minutes=i),
            message="Ünïcode — and 'quotes', \"double\", {braces}, NULL" if i == 1 else f"m{i}",
            data={"i": i, "nested": {"list": [1, None, "x"]}} if i else {},
            actor="agent@example.com" if i == 2 else "system",
        )
        for i in range(3)
    ]
    before = CaseEvent.objects.count()
    with CaptureQueriesContext(connection) as queries:
        assert rows_insert(events) is events
    if connection.vendor == "postgresql":
        assert len(queries) == 1
    assert CaseEvent.objects.count() == before + 3
    assert all(e.pk is not None and not e._state.adding for e in events)
    for i, event in enumerate(events):
        row = CaseEvent.objects.get(pk=event.pk)  # each key names its own row
        assert (row.kind, row.at, row.message, row.data, row.actor) == (
            f"kind_{i}",
            WHEN + dt.timedelta(minutes=i),
            event.message,
            event.data,
            event.actor,
        )
    assert rows_insert([]) == []


@pytest.mark.django_db
def test_rows_insert_fills_auto_now_fields(store):
    before = dt.datetime.now(dt.UTC)
    people = [
        Customer(store=store, stripe_id=f"cus_new_{i}", first_seen_at=WHEN, metadata={"k": i})
        for i in range(2)
    ]
    rows_insert(people)
    for person in people:
        row = Customer.objects.get(pk=person.pk)
        assert row.updated_at >= before and row.updated_at == person.updated_at
        assert (row.stripe_id, row.metadata, row.email) == (person.stripe_id, person.metadata, "")


@pytest.mark.django_db(transaction=True)
def test_rows_insert_that_breaks_a_constraint_writes_nothing(store):
    Customer.objects.create(store=store, stripe_id="cus_taken", first_seen_at=WHEN)
    people = [
        Customer(store=store, stripe_id="cus_fresh", first_seen_at=WHEN),
        Customer(store=store, stripe_id="cus_taken", first_seen_at=WHEN),
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        rows_insert(people)
    assert list(Customer.objects.values_list("stripe_id", flat=True)) == ["cus_taken"]


@pytest.mark.django_db
def test_rows_update_round_trips_every_kind_of_value(store):
    people = _people(store, 3)
    people[0].email, people[0].disputed_at, people[0].sms_opt_in = "", None, True
    people[1].email, people[1].disputed_at, people[1].link_version = "o'neil@example.com", WHEN, 7
    people[2].metadata = {"plan": "gold", "n": [1, 2]}
    people[2].disputed_at = WHEN.astimezone(dt.timezone(dt.timedelta(hours=-5)))  # same instant
    fields = ["email", "disputed_at", "sms_opt_in", "link_version", "metadata"]
    assert rows_update(people, fields) == 3
    got = {
        c.stripe_id: (c.email, c.disputed_at, c.sms_opt_in, c.link_version, c.metadata)
        for c in Customer.objects.filter(store=store)
    }
    assert got == {
        "cus_bulk_0": ("", None, True, 1, {}),
        "cus_bulk_1": ("o'neil@example.com", WHEN, False, 7, {}),
        "cus_bulk_2": ("b2@example.com", WHEN, False, 1, {"plan": "gold", "n": [1, 2]}),
    }


@pytest.mark.django_db
def test_rows_update_converts_what_is_not_already_the_columns_type(store):
    """Values of another type than the column's go through the field's own conversion:
    a naive datetime (Django's warning, read as the current time zone), an enum member,
    a number given as text."""
    (person,) = _people(store, 1)
    person.disputed_at = WHEN.replace(tzinfo=None)
    person.link_version = "3"
    person.locale = RecoveryCase.Status.OPEN  # a str enum: stored as its value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert rows_update([person], ["disputed_at", "link_version", "locale"]) == 1
    row = Customer.objects.get(pk=person.pk)
    assert (row.disputed_at, row.link_version, row.locale) == (WHEN, 3, "open")


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite does not enforce varchar lengths"
)
@pytest.mark.django_db
def test_rows_update_refuses_a_value_too_long_for_its_column(store):
    (person,) = _people(store, 1)
    person.phone = "9" * 40  # varchar(32)
    with pytest.raises(DataError, match="too long"), transaction.atomic():
        rows_update([person], ["phone"])
    assert Customer.objects.get(pk=person.pk).phone == ""
