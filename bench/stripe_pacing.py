#!/usr/bin/env python
"""Stripe pacing: K processes x T threads hammering one store's Stripe budget.

Creates a throw-away PostgreSQL database, migrates it (DATABASE_URL, DEBUG=1) and creates
one Stripe store whose account allows --rate requests per second. A local HTTP server
stands in for Stripe's API: it notes when each request arrives (one clock, this
process's) and, like Stripe's limiter, answers 429 to a request that would make more than
--rate in the last second. K worker processes, released together, each run T threads
that call `stripe_client(store).v1.invoices.retrieve(...)` through the real stripe SDK as
fast as they can for --seconds: every request first takes a slot from the store's budget,
in the database (default) or in Redis (--redis, db 14).

Prints the achieved rate against the limit and the paced target (limit x headroom), the
most requests the server saw in any sliding one-second window, the 429s it answered, the
requests the budget refused (not sent), and the wait per request. Then drops the database
(and the Redis key).

    .venv/bin/python bench/stripe_pacing.py
    .venv/bin/python bench/stripe_pacing.py --redis --rate 100 --seconds 20

Exit status 0 when no one-second window held more than --rate, Stripe's limiter (the
server's) refused nothing and nothing failed; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
INVOICE_ID = "in_bench_pacing"


def _db_url(admin_url: str, dbname: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


def _django(db_url: str, redis_url: str, api_base: str) -> None:
    """Point this process's Django at the bench database (before anything imports models)."""
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = redis_url
    os.environ["STRIPE_API_BASE"] = api_base
    os.environ["DEBUG"] = "1"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# ---------------------------------------------------------------- the counting "Stripe"


class CountingStripe:
    """Arrival times of every request, and Stripe's limiter: a request that would make more
    than `limit` within the last second is answered 429 (and still counted as seen)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.arrivals: list[float] = []
        self.refused = 0
        self._window: deque[float] = deque()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's session expects

            def do_GET(self) -> None:
                status = fake.arrive(time.monotonic())
                body = (
                    {"id": INVOICE_ID, "object": "invoice", "status": "open"}
                    if status == 200
                    else {
                        "error": {
                            "type": "invalid_request_error",
                            "code": "rate_limit",
                            "message": "Request rate limit exceeded.",
                        }
                    }
                )
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def arrive(self, t: float) -> int:
        with self._lock:
            self.arrivals.append(t)
            while self._window and self._window[0] < t - 1.0:
                self._window.popleft()
            if len(self._window) >= self.limit:
                self.refused += 1
                return 429
            self._window.append(t)
            return 200


def most_in_any_second(times: list[float]) -> tuple[int, float]:
    """The most requests in any closed one-second window, and when that window starts."""
    times = sorted(times)
    most, first, at = 0, 0, float("nan")
    for last, t in enumerate(times):
        while times[first] < t - 1.0:
            first += 1
        if last - first + 1 > most:
            most, at = last - first + 1, times[first]
    return most, at


# ---------------------------------------------------------------- workers


def _worker(db_url, redis_url, api_base, store_id, threads, seconds, start, out) -> None:
    _django(db_url, redis_url, api_base)
    import stripe
    from django.db import connection

    from recovery.gateways.stripe import stripe_client
    from recovery.gateways.stripe_pacing import BudgetExhausted, store_pacer
    from stores.models import Store

    store = Store.objects.get(pk=store_id)
    connection.close()
    tallies = []

    def run(deadline: float) -> None:
        client = stripe_client(store, timeout=10)
        ok = limited = refused = 0
        errors, waits = [], []
        try:
            while time.monotonic() < deadline:
                t = time.monotonic()
                try:
                    client.v1.invoices.retrieve(INVOICE_ID)
                    ok += 1
                except BudgetExhausted:
                    refused += 1
                except stripe.RateLimitError:
                    limited += 1
                except Exception as exc:  # noqa: BLE001 - reported, and fails the run
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                waits.append(time.monotonic() - t)
        finally:
            connection.close()
        tallies.append(
            {
                "ok": ok,
                "limited": limited,
                "refused": refused,
                "errors": errors,
                "latency": waits,
                "backend": type(store_pacer(store).backend).__name__,
            }
        )

    start.wait()
    deadline = time.monotonic() + seconds
    pool = [threading.Thread(target=run, args=(deadline,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(tallies)


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(pct / 100 * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="K worker processes")
    parser.add_argument("--threads", type=int, default=4, help="T threads per process")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long they hammer")
    parser.add_argument("--rate", type=int, default=25, help="the account's requests/s")
    parser.add_argument("--redis", action="store_true", help="the budget in Redis (db 14)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--pg",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="admin connection used to create and drop the throw-away database",
    )
    args = parser.parse_args()

    import psycopg

    stripe_api = CountingStripe(args.rate)
    stripe_api.thread.start()
    dbname = f"recoup_bench_pacing_{secrets.token_hex(4)}"
    db_url = _db_url(args.pg, dbname)
    redis_url = args.redis_url if args.redis else ""
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
    failed = True
    store_id = None
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
        _django(db_url, redis_url, stripe_api.url)
        from django.conf import settings
        from django.db import connection

        from stores.services import store_create

        store = store_create(
            name="Bench pacing store",
            stripe_webhook_secret="whsec_bench",
            stripe_secret_key="sk_test_bench_pacing",
            gateway="stripe",
        )
        store.stripe_requests_per_second = args.rate
        store.save(update_fields=["stripe_requests_per_second"])
        store_id = str(store.pk)
        headroom = settings.RECOUP_STRIPE_RATE_HEADROOM
        connection.close()

        ctx = multiprocessing.get_context("spawn")
        start = ctx.Barrier(args.processes + 1)
        results = ctx.Queue()
        workers = [
            ctx.Process(
                target=_worker,
                args=(
                    db_url,
                    redis_url,
                    stripe_api.url,
                    store_id,
                    args.threads,
                    args.seconds,
                    start,
                    results,
                ),
                daemon=True,
            )
            for _ in range(args.processes)
        ]
        for p in workers:
            p.start()
        start.wait()
        tallies = [t for _ in workers for t in results.get(timeout=args.seconds + 120)]
        for p in workers:
            p.join(30)

        arrivals = sorted(stripe_api.arrivals)
        sent = len(arrivals)
        span = arrivals[-1] - arrivals[0] if sent > 1 else float("nan")
        achieved = (sent - 1) / span if sent > 1 else 0.0
        most, busiest = most_in_any_second(arrivals)
        ok = sum(t["ok"] for t in tallies)
        limited = sum(t["limited"] for t in tallies)
        refused = sum(t["refused"] for t in tallies)
        errors = [e for t in tallies for e in t["errors"]]
        latency = [x for t in tallies for x in t["latency"]]
        backend = {t["backend"] for t in tallies}
        target = args.rate * headroom

        print(
            f"\nRecoup Stripe pacing: {args.processes} processes x {args.threads} threads on one "
            f"store, limit {args.rate} req/s, headroom {headroom} (paced target {target:.1f}/s), "
            f"budget in {'Redis (' + args.redis_url + ')' if args.redis else 'PostgreSQL'} "
            f"[{', '.join(sorted(backend))}], {args.seconds:.0f} s"
        )
        print(
            f"  server saw {sent} requests over {span:.2f} s: {achieved:.2f} req/s achieved "
            f"= {achieved / args.rate:.1%} of the limit, {achieved / target:.1%} of the target"
        )
        print(
            f"  most in any sliding 1 s window: {most} (limit {args.rate}), from "
            f"+{busiest - arrivals[0]:.2f} s -> {'OK' if most <= args.rate else 'OVER'}"
        )
        print(
            f"  answered 200: {ok}; 429 from the server's limiter: {stripe_api.refused} "
            f"(seen by clients: {limited}); not sent (budget booked past the max wait): "
            f"{refused}; errors: {len(errors)}"
        )
        print(
            f"  time per call (wait for the slot + round trip): p50 "
            f"{_pct(latency, 50) * 1000:.0f} ms, p99 {_pct(latency, 99) * 1000:.0f} ms"
        )
        for e in errors[:5]:
            print(f"    error: {e}")
        failed = bool(most > args.rate or stripe_api.refused or errors or not sent)
    finally:
        from contextlib import suppress

        stripe_api.server.shutdown()
        with suppress(Exception):
            from django.db import connection

            connection.close()
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        if args.redis and store_id:
            with suppress(Exception):
                import redis

                from recovery.gateways.stripe_pacing import RedisBackend

                redis.Redis.from_url(args.redis_url).delete(RedisBackend.PREFIX + store_id)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
