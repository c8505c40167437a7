"""Dashboard at scale: one store with 200,000 cases and 1,000,000 attempts on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/recoup_bench .venv/bin/python bench/dashboard.py

Seeds once (INSERT … SELECT generate_series: seeding is not what is measured; a second
run reuses the data), then measures server-side with Django's test Client, after a
warm-up: p50/p95 of the home page, the case list and the queue, their query counts, and
in the same run the bare SQL aggregates behind the home page (the same statements, run
on a cursor with nothing around them). Targets: p95 < 250 ms, ≤ 15 queries a page,
home within 2× its bare aggregates.

The indexes the dashboard needs on recovery tables belong in recovery's migrations;
until they are there, this script creates them itself (IF NOT EXISTS) and says so.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

CASES = int(os.environ.get("BENCH_CASES", 200_000))
ATTEMPTS_PER_CASE = 5
CUSTOMERS = CASES // 4
RUNS = int(os.environ.get("BENCH_RUNS", 40))
STORE_NAME = "Bench Store (dashboard)"

# Indexes the dashboard's queries need (proposed for recovery's migrations).
PROPOSED_INDEXES = {
    # analytics cohort figures, breakdowns by track/decline/product, the daily trend, and
    # the case list's default order: a store's cases by opening time.
    "case_store_opened_idx": "CREATE INDEX IF NOT EXISTS case_store_opened_idx "
    "ON recovery_recoverycase (store_id, opened_at) INCLUDE (status, currency, amount, "
    "recovered_amount, track, decline_code, kind, subscription_id)",
    # analytics closed figures (recovered revenue/MRR, median days, by source, by
    # channel, involuntary churn): a store's cases by closing time.
    "case_store_closed_idx": "CREATE INDEX IF NOT EXISTS case_store_closed_idx "
    "ON recovery_recoverycase (store_id, closed_at) INCLUDE (status, currency, "
    "recovered_amount, recovered_via, attempt_count, opened_at, subscription_id) "
    "WHERE closed_at IS NOT NULL",
    # pre-dunning save rate: a store's expiry warnings by time sent.
    "expiry_store_warned_idx": "CREATE INDEX IF NOT EXISTS expiry_store_warned_idx "
    "ON recovery_expirywarning (store_id, warned_at)",
}


def insert_select(model, n: int, exprs: dict[str, str], *, series: str = "g") -> None:
    """INSERT INTO <model> SELECT … FROM generate_series(1, n): every column not given
    gets its field default (or NULL)."""
    cols, values, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.primary_key and field.name not in exprs:
            continue
        cols.append(f'"{field.column}"')
        if field.name in exprs:
            values.append(exprs[field.name].replace("%", "%%"))
        elif field.has_default():
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
        elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            values.append("now()")
        else:
            values.append("NULL")
    sql = (
        f'INSERT INTO "{model._meta.db_table}" ({", ".join(cols)}) '
        f"SELECT {', '.join(values)} FROM generate_series(1::bigint, {n}) AS {series}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, params)


def seed():
    from recovery.models import PaymentAttempt, RecoveryCase
    from stores.models import Store
    from stores.services import membership_create, store_create
    from subscriptions.models import Customer, Subscription
    from support.models import QueueItem

    store = Store.objects.filter(name=STORE_NAME).first()
    if store and RecoveryCase.objects.filter(store=store).count() >= CASES:
        print(f"reusing the seeded store ({CASES:,} cases)")
        return store
    t0 = time.perf_counter()
    store = store or store_create(name=STORE_NAME, currency="usd", timezone="Europe/Berlin")
    membership_create(
        store=store, username="bench-operator", role="operator", password="bench-pass-1"
    )
    membership_create(store=store, username="bench-agent", role="agent", password="bench-pass-1")
    sid = f"'{store.pk.hex}'::uuid"
    insert_select(
        Customer,
        CUSTOMERS,
        {
            "store": sid,
            "stripe_id": "'cus_bench' || g",
            "email": "'c' || g || '@bench.example'",
            "name": "'Customer ' || g",
            "first_seen_at": "now() - (g % 900) * interval '1 day'",
            "metadata": "'{}'::jsonb",
        },
    )
    cmin = Customer.objects.filter(store=store).order_by("pk").values_list("pk", flat=True).first()
    insert_select(
        Subscription,
        CUSTOMERS,
        {
            "store": sid,
            "customer": f"{cmin} + g - 1",
            "stripe_id": "'sub_bench' || g",
            "product_name": "(ARRAY['Coffee club','Tea box','Espresso kit','Gift plan'])[1 + g % 4]",
            "amount": "(ARRAY[1500,2900,4900,9900])[1 + g % 4]",
            "mrr": "(ARRAY[1500,2900,4900,9900])[1 + g % 4]",
            "created_at": "now() - interval '800 days'",
        },
    )
    smin = (
        Subscription.objects.filter(store=store).order_by("pk").values_list("pk", flat=True).first()
    )
    # Cases over the last 365 days; those older than their 21-day window are decided.
    opened = "(now() - ((g * 7919) % 525600) * interval '1 minute')"
    decided = f"({opened} < now() - interval '21 days')"
    roll = "((g * 31) % 100)"
    status = (
        f"CASE WHEN NOT {decided} AND {roll} < 55 THEN 'open' "
        f"WHEN {roll} < 58 THEN 'cancelled' WHEN {roll} < 78 THEN 'lost' ELSE 'recovered' END"
    )
    status_sql = f"(CASE WHEN {decided} OR {roll} >= 55 THEN ({status}) ELSE 'open' END)"
    insert_select(
        RecoveryCase,
        CASES,
        {
            "store": sid,
            "customer": f"{cmin} + (g % {CUSTOMERS})",
            "subscription": f"CASE WHEN g % 10 < 8 THEN {smin} + (g % {CUSTOMERS}) END",
            "kind": "CASE WHEN g % 10 < 8 THEN 'invoice' ELSE 'payment' END",
            "payment_intent_id": "'pi_bench' || g",
            "amount": "(ARRAY[1500,2900,4900,9900,12000])[1 + g % 5]",
            "currency": "'usd'",
            "track": "(ARRAY['soft','soft','soft','card_update','hard','authentication','fraud'])[1 + g % 7]",
            "track_reason": "'bench'",
            "status": status_sql,
            "opened_at": opened,
            "window_start": opened,
            "window_end": f"{opened} + interval '21 days'",
            "decline_code": "(ARRAY['insufficient_funds','do_not_honor','generic_decline','expired_card','lost_card','authentication_required','fraudulent','card_velocity_exceeded'])[1 + g % 8]",
            "attempt_count": "1 + g % 5",
            "closed_at": f"CASE WHEN {status_sql} <> 'open' THEN {opened} + ((g % 20) + 1) * interval '1 day' - interval '1 hour' END",
            "recovered_via": f"CASE WHEN {status_sql} = 'recovered' THEN (ARRAY['recoup_retry','stripe_retry','customer','card_updater','agent'])[1 + g % 5] ELSE '' END",
            "recovered_amount": f"CASE WHEN {status_sql} = 'recovered' THEN (ARRAY[1500,2900,4900,9900,12000])[1 + g % 5] ELSE 0 END",
            "escalated": "g % 50 = 0",
            "dunning_paused": "g % 50 = 0",
            "next_action_at": f"CASE WHEN {status_sql} = 'open' THEN now() + (g % 72) * interval '1 hour' END",
        },
    )
    kmin = (
        RecoveryCase.objects.filter(store=store).order_by("pk").values_list("pk", flat=True).first()
    )
    insert_select(
        PaymentAttempt,
        CASES * ATTEMPTS_PER_CASE,
        {
            "store": sid,
            "case": f"{kmin} + ((g - 1) / {ATTEMPTS_PER_CASE})",
            "customer": f"{cmin} + (((g - 1) / {ATTEMPTS_PER_CASE}) % {CUSTOMERS})",
            "source": "(ARRAY['stripe_auto','recoup_retry','recoup_retry','customer','agent'])[1 + g % 5]",
            "outcome": "CASE WHEN g % 5 = 0 THEN 'succeeded' ELSE 'failed' END",
            "amount": "2900",
            "currency": "'usd'",
            "attempted_at": "now() - ((g * 104729) % 525600) * interval '1 minute'",
            "decline_code": "'insufficient_funds'",
            "card_brand": "'visa'",
            "card_fingerprint": f"'fp' || (((g - 1) / {ATTEMPTS_PER_CASE}) % {CUSTOMERS})",
            "reason": "'bench'",
            "created_at": "now()",
        },
    )
    # The queue: the open escalated cases (every 50th case).
    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO support_queueitem (store_id, case_id, status, reasons, churn_score,
                churn_reasons, value_at_risk, currency, window_end, entered_at, outcome,
                outcome_note, updated_at)
            SELECT store_id, id, 'waiting',
                '[{"code": "high_value_mrr", "label": "High value: MRR 99.00 USD"}]'::jsonb,
                id %% 100, '[{"code": "downgrade", "label": "Downgraded recently", "points": 20}]'::jsonb,
                amount * 12, currency, window_end, opened_at + interval '5 minutes', '', '', now()
            FROM recovery_recoverycase
            WHERE store_id = %s AND status = 'open' AND escalated
            """,
            [store.pk.hex],
        )
        cur.execute("ANALYZE")
    print(
        f"seeded {CASES:,} cases, {CASES * ATTEMPTS_PER_CASE:,} attempts, "
        f"{QueueItem.objects.filter(store=store).count():,} queue items "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return store


def ensure_indexes() -> list[str]:
    created = []
    with connection.cursor() as cur:
        for name, sql in PROPOSED_INDEXES.items():
            cur.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [name])
            if cur.fetchone() is None:
                cur.execute(sql)
                created.append(name)
        if created:
            cur.execute("ANALYZE recovery_recoverycase")
    return created


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(int(round(p / 100 * len(values) + 0.5)) - 1, 0)
    return values[min(k, len(values) - 1)]


def measure(client: Client, path: str) -> dict:
    for _ in range(3):  # warm-up: connections, caches, query plans
        assert client.get(path).status_code == 200, path
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as ctx:
        client.get(path)
    return {
        "p50": statistics.median(times),
        "p95": percentile(times, 95),
        "queries": len(ctx.captured_queries),
    }


def bare_home_aggregates(store) -> tuple[float, float, int]:
    """The home page's aggregate statements, run bare on a cursor: p50, p95 (ms), count."""
    from analytics import selectors

    period = selectors.period_for(store=store, now=timezone.now())
    with CaptureQueriesContext(connection) as ctx:
        selectors.home(store=store, period=period)
    statements = [q["sql"] for q in ctx.captured_queries]
    times = []
    with connection.cursor() as cur:
        for _ in range(3):
            for sql in statements:
                cur.execute(sql)
                cur.fetchall()
        for _ in range(RUNS):
            t = time.perf_counter()
            for sql in statements:
                cur.execute(sql)
                cur.fetchall()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), percentile(times, 95), len(statements)


def main() -> int:
    if connection.vendor != "postgresql":
        print("bench/dashboard.py needs PostgreSQL: set DATABASE_URL=postgres://…")
        return 2
    call_command("migrate", verbosity=0)
    store = seed()
    created = ensure_indexes()
    if created:
        print(f"created proposed indexes not yet in recovery's migrations: {', '.join(created)}")
    settings.DEBUG = False  # no query log overhead in the measured requests
    client = Client()
    client.login(username="bench-operator", password="bench-pass-1")
    pages = {
        "home": f"/s/{store.pk}/",
        "case list": f"/s/{store.pk}/cases/",
        "case list (open, soft)": f"/s/{store.pk}/cases/?status=open&track=soft",
        "queue": f"/s/{store.pk}/queue/",
    }
    results = {name: measure(client, path) for name, path in pages.items()}
    bare50, bare95, n = bare_home_aggregates(store)
    print(f"\n{CASES:,} cases, {CASES * ATTEMPTS_PER_CASE:,} attempts; {RUNS} requests per page\n")
    print(f"{'page':26} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
    ok = True
    for name, r in results.items():
        print(f"{name:26} {r['p50']:8.1f} {r['p95']:8.1f} {r['queries']:8d}")
        ok &= r["p95"] < 250 and r["queries"] <= 15
    ratio = results["home"]["p50"] / bare50
    print(f"{'bare home aggregates':26} {bare50:8.1f} {bare95:8.1f} {n:8d}")
    print(f"\nhome page / bare aggregates (p50): {ratio:.2f}x (target ≤ 2x)")
    ok &= ratio <= 2
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
