"""The intake finds a case and its attempts through an index, not by reading the store.

A burst of 10,000 failed renewals sends 50,000 events to one store: a lookup that reads
every case or attempt of the store for each event makes each event slower than the last
(a 10,000-case store: 25 ms for each PaymentIntent event's case lock)."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import stripe_factory as sf
from tests.conftest import requires_postgres

pytestmark = requires_postgres()


def _plans(queries: list[dict], table: str) -> list[str]:
    """The plans PostgreSQL makes for the statements that read `table`, with the sequential
    scan ruled out (a test's tables are small: the planner would read them whole)."""
    plans = []
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in queries:
            sql = query["sql"]
            if sql.startswith("SELECT") and f'FROM "{table}"' in sql:
                cursor.execute("EXPLAIN " + sql)
                plans.append("\n".join(row[0] for row in cursor.fetchall()))
        cursor.execute("SET LOCAL enable_seqscan = on")
    return plans


@pytest.mark.parametrize("type_", ["payment_intent.payment_failed", "charge.failed"])
def test_a_payment_event_finds_its_case_and_attempt_through_indexes(webhooks, type_):
    invoice = sf.failed_invoice(decline_code="insufficient_funds")
    webhooks.deliver("invoice.payment_failed", invoice)
    payload = (
        sf.payment_intent_failed(invoice)
        if type_.startswith("payment_intent")
        else sf.charge_failed(invoice)
    )
    with CaptureQueriesContext(connection) as queries:
        webhooks.deliver(type_, payload)

    case_plans = _plans(queries.captured_queries, "recovery_recoverycase")
    assert any("case_store_intent_idx" in plan for plan in case_plans), case_plans
    attempt_plans = _plans(queries.captured_queries, "recovery_paymentattempt")
    assert attempt_plans
    for plan in case_plans + attempt_plans:
        # Each one an index on what it looks for, never the store's rows one by one.
        assert not STORE_WIDE.search(plan), plan


# Indexes that lead with the store alone: read through one, a lookup reads the store.
STORE_WIDE = re.compile(
    r"Seq Scan|using (recovery_recoverycase_store_id\w*|case_store_(updated|status|opened|closed)_idx"
    r"|recovery_paymentattempt_store_id\w*)|on (recovery_recoverycase_store_id\w*"
    r"|case_store_(updated|status|opened|closed)_idx|recovery_paymentattempt_store_id\w*)"
)


def test_a_prepared_statement_is_planned_for_its_parameters_each_time(store):
    """Prepared (DATABASE_PREPARED_STATEMENTS), a lookup by a charge's id runs many times
    on one connection: each run is planned for its own id (a custom plan), so it can use
    the partial unique index on charges; a generic plan cannot, and reads the store."""
    from recovery.models import PaymentAttempt

    connection.ensure_connection()
    if connection.connection.prepare_threshold is None:
        pytest.skip("DATABASE_PREPARED_STATEMENTS is off: nothing is prepared")
    for i in range(12):
        PaymentAttempt.objects.filter(store=store, charge_id=f"ch_{i}").first()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s",
            ['SELECT %WHERE ("recovery_paymentattempt"."charge_id" = $%'],
        )
        rows = cursor.fetchall()
    assert rows, "the lookup was prepared"
    assert all(generic == 0 for generic, _ in rows), rows
    assert sum(custom for _, custom in rows) >= 8  # prepared from its second run
