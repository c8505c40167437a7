#!/usr/bin/env python
"""Inventory holds on a hot SKU: K worker processes racing for its stock on PostgreSQL.

Creates a throw-away database, migrates it (DATABASE_URL, DEBUG=1), creates a store, one
hot SKU with --stock units and --orders orders for it. Then K worker processes, released
together, each take their share of the orders and place holds through the real service
(`orders.services.inventory_hold_place`: SKU row lock, availability, hold policy, insert).
With --churn, a worker gives back that share of the holds it won
(`inventory_hold_release`), so stock keeps freeing up while the others race for it.

Meanwhile a sampler process reads, in single statements (one snapshot each), the SKU's
on-hand and the units promised (committed + held and unexpired); a sample above on-hand
is an oversell. The final state is checked the same way, and against the workers' own
tally. Prints holds/s, refusals, latency and oversells, then drops the database.

    .venv/bin/python bench/holds.py
    .venv/bin/python bench/holds.py --workers 16 --stock 1000 --orders 4000 --churn 0.3

Exit status 0 when there are no oversells and no unexpected errors, 1 otherwise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

PROMISED_SQL = """
SELECT s.on_hand,
       COALESCE(SUM(h.quantity) FILTER (
           WHERE h.status = 'committed' OR (h.status = 'held' AND h.held_until > now())
       ), 0)
  FROM orders_sku s LEFT JOIN orders_inventoryhold h ON h.sku_id = s.id
 WHERE s.id = %s
 GROUP BY s.on_hand
"""


def _db_url(admin_url: str, dbname: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


def _django(db_url: str) -> None:
    """Point this process's Django at the bench database (before anything imports models)."""
    os.environ["DATABASE_URL"] = db_url
    os.environ["DEBUG"] = "1"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# ---------------------------------------------------------------- processes


def _worker(db_url: str, line_ids: list[int], churn: float, seed: int, start, out) -> None:
    _django(db_url)
    from django.db import DatabaseError, connection
    from django.utils import timezone

    from orders.models import OrderLine
    from orders.services import InsufficientStock, inventory_hold_place, inventory_hold_release

    rng = random.Random(seed)
    lines = list(OrderLine.objects.filter(pk__in=line_ids).order_by("pk"))
    connection.ensure_connection()
    held, refused, released, errors = 0, 0, 0, []
    latency: list[float] = []
    start.wait()
    t0 = time.perf_counter()
    for line in lines:
        t = time.perf_counter()
        try:
            hold = inventory_hold_place(line=line, at=timezone.now())
        except InsufficientStock:
            refused += 1
        except DatabaseError as exc:  # a deadlock or a constraint would be a bug
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        else:
            held += 1
            if rng.random() < churn:
                released += inventory_hold_release(hold=hold, why="bench churn")
        latency.append(time.perf_counter() - t)
    out.put(
        {
            "held": held,
            "refused": refused,
            "released": released,
            "errors": errors,
            "latency": latency,
            "elapsed": time.perf_counter() - t0,
        }
    )
    connection.close()


def _sampler(db_url: str, sku_id: int, start, stop, out) -> None:
    import psycopg

    samples = oversells = max_promised = 0
    with psycopg.connect(db_url, autocommit=True) as db:
        start.wait()
        while not stop.is_set():
            on_hand, promised = db.execute(PROMISED_SQL, [sku_id]).fetchone()
            samples += 1
            max_promised = max(max_promised, promised)
            oversells += promised > on_hand
            time.sleep(0.01)
    out.put({"samples": samples, "oversells": oversells, "max_promised": max_promised})


# ---------------------------------------------------------------- setup


def _setup(stock: int, orders: int) -> tuple[int, list[int]]:
    from orders.services import LineInput, SkuInput, order_upsert, skus_upsert
    from stores.services import store_create

    store = store_create(name="Bench holds store", stripe_webhook_secret="whsec_bench")
    (sku,) = skus_upsert(
        store=store,
        items=[SkuInput(sku="HOT", on_hand=stock, title="Hot item", low_stock_threshold=0)],
    )
    line_ids = []
    for i in range(orders):
        order, _ = order_upsert(
            store=store, number=f"bench-{i:06d}", lines=[LineInput(sku="HOT", quantity=1)]
        )
        line_ids.append(order.lines.get().pk)
    return sku.pk, line_ids


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(pct / 100 * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8, help="K concurrent worker processes")
    parser.add_argument("--stock", type=int, default=500, help="units of the hot SKU")
    parser.add_argument("--orders", type=int, default=2000, help="single-unit orders racing")
    parser.add_argument(
        "--churn", type=float, default=0.25, help="share of won holds a worker gives back"
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="admin connection used to create and drop the throw-away database",
    )
    args = parser.parse_args()

    import psycopg

    dbname = f"recoup_bench_holds_{secrets.token_hex(4)}"
    db_url = _db_url(args.pg, dbname)
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
    failed = True
    try:
        env = {**os.environ, "DATABASE_URL": db_url, "DEBUG": "1", "LOG_LEVEL": "WARNING"}
        migrate = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stderr[-3000:]}")
        _django(db_url)
        from django.db import connection

        sku_id, line_ids = _setup(args.stock, args.orders)
        connection.close()

        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(args.workers + 2)
        stop = ctx.Event()
        results, sampled = ctx.Queue(), ctx.Queue()
        shares = [line_ids[i :: args.workers] for i in range(args.workers)]
        workers = [
            ctx.Process(
                target=_worker, args=(db_url, share, args.churn, n, start, results), daemon=True
            )
            for n, share in enumerate(shares)
        ]
        sampler = ctx.Process(
            target=_sampler, args=(db_url, sku_id, start, stop, sampled), daemon=True
        )
        for p in [*workers, sampler]:
            p.start()
        start.wait()
        t0 = time.perf_counter()
        tallies = [results.get(timeout=600) for _ in workers]
        elapsed = time.perf_counter() - t0
        stop.set()
        sample = sampled.get(timeout=60)
        for p in [*workers, sampler]:
            p.join(30)

        with psycopg.connect(db_url, autocommit=True) as db:
            on_hand, promised = db.execute(PROMISED_SQL, [sku_id]).fetchone()
            held_rows, held_units = db.execute(
                "SELECT count(*), COALESCE(SUM(quantity), 0) FROM orders_inventoryhold"
                " WHERE sku_id = %s AND status = 'held'",
                [sku_id],
            ).fetchone()

        held = sum(t["held"] for t in tallies)
        refused = sum(t["refused"] for t in tallies)
        released = sum(t["released"] for t in tallies)
        errors = [e for t in tallies for e in t["errors"]]
        latency = [x for t in tallies for x in t["latency"]]
        attempts = held + refused + len(errors)
        final_oversell = max(promised - on_hand, 0)
        ledger_ok = held_rows == held - released and held_units == promised
        oversells = sample["oversells"] + (1 if final_oversell else 0)

        print(
            f"\nRecoup inventory holds: hot SKU with {args.stock} units, {args.orders} "
            f"single-unit orders, {args.workers} worker processes, churn {args.churn:.2f}"
        )
        print(
            f"  placed {held} holds, refused {refused} (insufficient stock), released {released}, "
            f"errors {len(errors)}, in {elapsed:.2f} s"
        )
        print(
            f"  holds/s {held / elapsed:.1f}   attempts/s {attempts / elapsed:.1f}   "
            f"p50 {_pct(latency, 50) * 1000:.2f} ms   p99 {_pct(latency, 99) * 1000:.2f} ms"
        )
        print(
            f"  sampler: {sample['samples']} snapshots during the run, max promised "
            f"{sample['max_promised']} of {args.stock}, over on-hand: {sample['oversells']}"
        )
        print(
            f"  final: {promised} units promised of {on_hand} on hand; {held_rows} held rows = "
            f"{held} placed - {released} released: {'OK' if ledger_ok else 'MISMATCH'}"
        )
        print(f"  oversells: {oversells}  -> {'OK' if oversells == 0 else 'FAIL'}")
        for e in errors[:5]:
            print(f"    error: {e}")
        failed = bool(oversells or errors or not ledger_ok)
    finally:
        from contextlib import suppress

        with suppress(Exception):
            from django.db import connection

            connection.close()
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
