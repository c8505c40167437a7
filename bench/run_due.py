#!/usr/bin/env python
"""Scheduler throughput: `recovery.scheduler.run_due` over N open, due cases on PostgreSQL.

Creates a throw-away database next to --pg, migrates it (`manage.py migrate`, production
settings: DEBUG off, generated SECRET_KEY and FIELD_ENCRYPTION_KEYS), seeds N open
soft-track cases of one sandbox store with bulk_create (customer, default card,
subscription, open invoice, the failed Stripe attempt, the case: next_action=retry,
retry_at = next_action_at in the past), then runs run_due in one worker process; seeds an
identical fresh batch and runs two worker processes in parallel. Prints cases/s per worker
and in total, queries per case (counted with connection.execute_wrapper inside each
worker), peak memory (ru_maxrss) per worker, what the passes did, the two-worker /
one-worker ratio, and the statements that dominate per case. Drops the database at the end.

    .venv/bin/python bench/run_due.py --cases 5000
    .venv/bin/python bench/run_due.py --cases 20000 --top 20
    .venv/bin/python bench/run_due.py --cases 2000 --latency-ms 300 --concurrency 1

Targets (the scheduler issue): >= 2,000 cases/s per worker, constant queries per case
(compare two sizes), peak memory < 300 MB whatever N, two workers >= 1.7x one.
Exit status 0 when the per-run targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable

TARGET_RATE = 2000.0
TARGET_RSS_MB = 300.0
TARGET_RATIO = 1.7
SEED_BATCH = 5000


def _django(env: dict) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# ---------------------------------------------------------------- seeding (parent)


def _seed(n: int, *, now: dt.datetime, tag: str) -> str:
    """N open due soft-track invoice cases in a new sandbox store; returns the store id."""
    from django.db import connection

    from recovery.models import PaymentAttempt, RecoveryCase, RetryPolicy
    from stores.models import Store
    from subscriptions.models import Customer, Invoice, PaymentMethod, Subscription

    store = Store.objects.create(name=f"bench run_due {tag}", gateway="sandbox", timezone="UTC")
    RetryPolicy.objects.create(store=store, version=1, created_by="bench")
    codes = ["insufficient_funds", "do_not_honor", "generic_decline", "insufficient_funds"]
    zones = ["America/New_York", "Europe/Berlin", "UTC", "America/Los_Angeles"]
    failed_at = now - dt.timedelta(hours=2)
    due = now - dt.timedelta(minutes=1)
    for lo in range(0, n, SEED_BATCH):
        idx = range(lo, min(n, lo + SEED_BATCH))
        cards = PaymentMethod.objects.bulk_create(
            [
                PaymentMethod(
                    store=store,
                    stripe_id=f"pm_{tag}_{i}",
                    brand="visa" if i % 3 else "mastercard",
                    last4=f"{i % 10000:04d}",
                    exp_month=12,
                    exp_year=now.year + 3,
                    fingerprint=f"fp_{tag}_{i}",
                    is_default=True,
                )
                for i in idx
            ]
        )
        customers = Customer.objects.bulk_create(
            [
                Customer(
                    store=store,
                    stripe_id=f"cus_{tag}_{i}",
                    email=f"c{i}@example.com",
                    time_zone=zones[i % len(zones)],
                    first_seen_at=now - dt.timedelta(days=30 + i % 900),
                    default_payment_method=pm,
                )
                for i, pm in zip(idx, cards, strict=True)
            ]
        )
        subs = Subscription.objects.bulk_create(
            [
                Subscription(
                    store=store,
                    customer=c,
                    stripe_id=f"sub_{tag}_{i}",
                    status="past_due",
                    product_name="Coffee Club",
                    amount=2900,
                    mrr=2900,
                )
                for i, c in zip(idx, customers, strict=True)
            ]
        )
        invoices = Invoice.objects.bulk_create(
            [
                Invoice(
                    store=store,
                    customer=c,
                    subscription=s,
                    stripe_id=f"in_{tag}_{i}",
                    amount_due=2900,
                    status="open",
                    attempt_count=1,
                    billing_reason="subscription_cycle",
                    payment_intent_id=f"pi_{tag}_{i}",
                )
                for i, c, s in zip(idx, customers, subs, strict=True)
            ]
        )
        cases = RecoveryCase.objects.bulk_create(
            [
                RecoveryCase(
                    store=store,
                    customer=c,
                    kind="invoice",
                    invoice=inv,
                    subscription=s,
                    payment_intent_id=f"pi_{tag}_{i}",
                    amount=2900,
                    currency="usd",
                    track="soft",
                    track_reason=f"{codes[i % len(codes)]}: soft decline",
                    status="open",
                    opened_at=failed_at,
                    window_start=failed_at,
                    window_end=failed_at + dt.timedelta(days=21),
                    attempt_count=1,
                    last_attempt_at=failed_at,
                    decline_code=codes[i % len(codes)],
                    next_action="retry",
                    next_action_at=due,
                    next_action_reason="retry 1 of 4 (seeded)",
                    retry_at=due,
                    retry_reason="retry 1 of 4 (seeded)",
                    policy_version=1,
                    step_down_at=failed_at + dt.timedelta(days=10.5),
                )
                for i, c, inv, s in zip(idx, customers, invoices, subs, strict=True)
            ]
        )
        PaymentAttempt.objects.bulk_create(
            [
                PaymentAttempt(
                    store=store,
                    case=case,
                    customer=c,
                    invoice_stripe_id=inv.stripe_id,
                    invoice_attempt_number=1,
                    payment_intent_id=inv.payment_intent_id,
                    charge_id=f"ch_{tag}_{i}",
                    source="stripe_auto",
                    outcome="failed",
                    amount=2900,
                    attempted_at=failed_at,
                    decline_code=case.decline_code,
                    failure_code="card_declined",
                    card_brand=pm.brand,
                    card_fingerprint=pm.fingerprint,
                    card_last4=pm.last4,
                    payment_method_id=pm.stripe_id,
                )
                for i, c, inv, case, pm in zip(idx, customers, invoices, cases, cards, strict=True)
            ]
        )
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE subscriptions_paymentmethod pm SET customer_id = c.id "
            "FROM subscriptions_customer c WHERE c.default_payment_method_id = pm.id "
            "AND c.store_id = %s",
            [store.pk],
        )
        cur.execute("ANALYZE")
    return str(store.pk)


def _wipe() -> None:
    """Remove every row the previous phase left, keeping the schema."""
    from django.db import connection

    tables = [
        "recovery_paymentattempt",
        "recovery_caseevent",
        "recovery_recoverycase",
        "recovery_retrystat",
        "recovery_expirywarning",
        "recovery_retrypolicy",
        "subscriptions_invoice",
        "subscriptions_subscription",
        "subscriptions_customer",
        "subscriptions_paymentmethod",
        "stores_store",
    ]
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        cur.execute("VACUUM ANALYZE")


# ---------------------------------------------------------------- the worker (child)

_IN_LIST = re.compile(r"IN \((?:%s, )*%s\)")
_SAVEPOINT = re.compile(r'"s\d+_x\d+"')  # Django names each savepoint uniquely


def _worker() -> int:
    from django.db import connection

    from recovery.scheduler import run_due

    counts: Counter = Counter()
    seconds: Counter = Counter()
    callers: Counter = Counter()
    project = str(ROOT) + os.sep
    skip = (str(ROOT / "bench"),)

    def caller() -> str:
        """The innermost function of the project's own code that sent the statement."""
        f = sys._getframe(2)
        while f is not None:
            name = f.f_code.co_filename
            if name.startswith(project) and ".venv" not in name and not name.startswith(skip):
                return f"{os.path.relpath(name, ROOT)}:{f.f_code.co_name}"
            f = f.f_back
        return "?"

    def wrapper(execute, sql, params, many, context):
        key = _SAVEPOINT.sub('"s…"', _IN_LIST.sub("IN (...)", sql))
        counts[key] += 1
        callers[caller()] += 1
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            seconds[key] += time.perf_counter() - t

    # Resident memory as the pass goes on: read at each claim of a new batch.
    from recovery import scheduler

    page_kb = os.sysconf("SC_PAGE_SIZE") / 1024
    claimed_so_far = [0]
    rss_curve: list[tuple[int, float]] = []
    original_claim = scheduler.cases_claim

    def claim_and_measure(**kwargs):
        with open("/proc/self/statm") as fh:
            rss_curve.append((claimed_so_far[0], int(fh.read().split()[1]) * page_kb / 1024))
        ids = original_claim(**kwargs)
        claimed_so_far[0] += len(ids)
        return ids

    scheduler.cases_claim = claim_and_measure
    latency = float(os.environ.get("BENCH_LATENCY_MS") or 0) / 1000
    if latency:
        # Stripe is a network round trip away: each sandbox charge waits that long, as a
        # call to Stripe would (the batch has RECOUP_GATEWAY_CONCURRENCY in the air).
        from recovery.gateways.sandbox import SandboxGateway

        charge = SandboxGateway._charge

        def slow_charge(self, **kwargs):
            time.sleep(latency)
            return charge(self, **kwargs)

        SandboxGateway._charge = slow_charge
    connection.ensure_connection()
    # The console email and SMS backends write every message to stdout. The parent reads
    # the workers' pipes one after the other, so a worker whose pipe filled up would wait
    # on it (that made a second worker look idle): messages go to /dev/null, and the
    # parent hears from the worker on a copy of the original stdout.
    proto = os.fdopen(os.dup(1), "w")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the worker
    print("ready", file=proto, flush=True)
    sys.stdin.readline()  # the parent starts every worker at once
    profiler = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
    backend = _backend_cpu_reader(connection)
    backend_before, cpu_before = backend(), time.process_time()
    started = time.perf_counter()
    with connection.execute_wrapper(wrapper):
        if profiler:
            profiler.enable()
        report = run_due()
        if profiler:
            profiler.disable()
    elapsed = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_before
    backend_after = backend()
    backend_seconds = (
        backend_after - backend_before
        if backend_after is not None and backend_before is not None
        else None
    )
    # Peak resident memory of this process: VmHWM. (ru_maxrss is printed too, but Linux
    # carries the parent's peak over fork+exec into it, so it shows the seeding parent.)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status") as fh:
        hwm = next(line for line in fh if line.startswith("VmHWM:"))
    peak_mb = int(hwm.split()[1]) / 1024
    if profiler:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(
            r"/work/main/(recovery|messaging|common|subscriptions|orders)/", 60
        )
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(30)
        Path(os.environ["BENCH_PROFILE"]).write_text(buf.getvalue())
    print(
        json.dumps(
            {
                "claimed": report.claimed,
                "actions": report.actions,
                "seconds": elapsed,
                "cpu_seconds": cpu_seconds,
                "backend_cpu_seconds": backend_seconds,
                "queries": sum(counts.values()),
                "db_seconds": sum(seconds.values()),
                "rss_mb": peak_mb,
                "ru_maxrss_mb": maxrss_mb,
                "top": [[sql, counts[sql], seconds[sql]] for sql, _ in counts.most_common()],
                "callers": callers.most_common(),
                "distinct_statements": len(counts),
                "rss_curve": rss_curve,
            }
        ),
        file=proto,
        flush=True,
    )
    return 0


def _backend_cpu_reader(connection):
    """A function returning the CPU seconds (user + system) used so far by this worker's
    PostgreSQL backend process, or None when it cannot be read (a server on another
    machine, or /proc not readable): where the database's own share of a case goes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    ticks = os.sysconf("SC_CLK_TCK")

    def read():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    return read


# ---------------------------------------------------------------- orchestration (parent)


class _WaitSampler:
    """Samples what the bench database's backends are doing (pg_stat_activity) while the
    workers run: how often a worker waited on a lock, and on what."""

    def __init__(self, url: str, dbname: str, every: float = 0.05):
        import threading

        self.url, self.dbname, self.every = url, dbname, every
        self.samples = 0
        self.states: Counter = Counter()
        self.lock_queries: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), "
                    "left(query, 60) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    [self.dbname],
                ).fetchall()
                for state, wtype, wevent, query in rows:
                    self.samples += 1
                    if state == "active":
                        self.states[f"active {wtype}:{wevent}" if wtype else "active (on CPU)"] += 1
                        if wtype == "Lock":
                            self.lock_queries[query] += 1
                    else:
                        self.states[state] += 1
                self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        text = ", ".join(
            f"{name} {n / self.samples * 100:.0f}%" for name, n in self.states.most_common(6)
        )
        if self.lock_queries:
            text += "; waiting on a lock in: " + "; ".join(
                f"{q!r} ({n})" for q, n in self.lock_queries.most_common(3)
            )
        return text


def _run_workers(env: dict, workers: int) -> tuple[list[dict], float]:
    procs = [
        subprocess.Popen(
            [PYTHON, __file__, "--_worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker did not start: {line!r}")
        started = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"worker exited with {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results, wall


def _line(r: dict) -> str:
    rate = r["claimed"] / r["seconds"] if r["seconds"] else 0.0
    qpc = r["queries"] / r["claimed"] if r["claimed"] else 0.0
    curve = r.get("rss_curve") or []
    marks = []
    for frac in (0.1, 0.5, 1.0):
        if curve:
            n, mb = curve[min(len(curve) - 1, int(frac * (len(curve) - 1)))]
            marks.append(f"{mb:.0f} MB after {n:,}")
    growth = ("; RSS " + ", ".join(marks)) if marks else ""
    per_case = 1000 / r["claimed"] if r["claimed"] else 0.0
    cpu = f"CPU per case: worker {r['cpu_seconds'] * per_case:.2f} ms"
    if r.get("backend_cpu_seconds") is not None:
        cpu += f", its PostgreSQL backend {r['backend_cpu_seconds'] * per_case:.2f} ms"
    return (
        f"{r['claimed']:>7,} cases in {r['seconds']:6.2f} s = {rate:7,.0f} cases/s; "
        f"{qpc:5.1f} queries/case ({r.get('distinct_statements', 0)} distinct; "
        f"{r['db_seconds'] / r['seconds'] * 100:.0f}% of the time "
        f"in the database); peak RSS {r['rss_mb']:.0f} MB (VmHWM; ru_maxrss "
        f"{r['ru_maxrss_mb']:.0f} MB){growth}; {cpu}; "
        f"{dict(sorted(r['actions'].items()))}"
    )


def _top(results: list[dict], cases: int, limit: int) -> list[str]:
    counts: Counter = Counter()
    secs: Counter = Counter()
    for r in results:
        for sql, n, s in r["top"]:
            counts[sql] += n
            secs[sql] += s
    total = sum(secs.values()) or 1.0
    out = []
    for sql, _ in secs.most_common(limit):
        n = counts[sql]
        text = re.sub(r'"recovery_|"subscriptions_|"stores_', '"', sql)
        text = (
            re.sub(r"SELECT .*? FROM", "SELECT … FROM", text, count=1) if len(text) > 160 else text
        )
        out.append(f"  {n / cases:5.2f}/case {secs[sql] / total * 100:4.1f}% db time  {text[:170]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL admin URL (a database is created next to it and dropped)",
    )
    ap.add_argument("--top", type=int, default=12, help="statements listed per case (0: none)")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        help="each sandbox charge waits this long, as a round trip to Stripe would",
    )
    ap.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="RECOUP_GATEWAY_CONCURRENCY for the workers (default: the setting's default)",
    )
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="also profile the one-worker run with cProfile and write the top functions to FILE",
    )
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        _django({})
        return _worker()
    if args.cases < 1:
        ap.error("--cases must be at least 1")

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)

    import psycopg
    from cryptography.fernet import Fernet

    dbname = f"recoup_bench_rundue_{os.getpid()}"
    base = args.pg.rpartition("/")[0]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"{base}/{dbname}",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        # The thank-you emails go to Django's dummy backend: the provider's own time is
        # not the scheduler's (in production, one Postmark batch request per 500 emails;
        # the console backend would add ~1 ms per email of MIME encoding to /dev/null).
        "BENCH_LATENCY_MS": str(args.latency_ms),
        **(
            {"RECOUP_GATEWAY_CONCURRENCY": str(args.concurrency)}
            if args.concurrency is not None
            else {}
        ),
        "EMAIL_BACKEND": os.environ.get(
            "BENCH_EMAIL_BACKEND", "django.core.mail.backends.dummy.EmailBackend"
        ),
    }
    created = False
    ok = True
    try:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{dbname}"')
            version = admin.execute("SHOW server_version").fetchone()[0]
        created = True
        t = time.perf_counter()
        proc = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{proc.stderr[-3000:]}")
        migrate_s = time.perf_counter() - t
        _django(env)
        from django.db import connection
        from django.utils import timezone

        print(
            f"run_due benchmark: {args.cases:,} open due soft-track cases (next_action=retry, "
            f"due 1 min ago), one sandbox store, PostgreSQL {version}, database {dbname} "
            f"(migrated in {migrate_s:.1f} s); {os.cpu_count()} CPUs"
        )
        if args.latency_ms or args.concurrency is not None:
            print(
                f"gateway: {args.latency_ms:g} ms per charge, "
                f"{env.get('RECOUP_GATEWAY_CONCURRENCY', 'default')} calls in the air per batch"
            )
        phases = {}
        for workers in (1, 2):
            if workers == 2:
                _wipe()
            t = time.perf_counter()
            _seed(args.cases, now=timezone.now(), tag=f"w{workers}")
            # Statistics as autovacuum keeps them in a running database: planned on a
            # table it believes empty, a lookup of 200 ids could scan every row.
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
            seed_s = time.perf_counter() - t
            connection.close()  # nothing of the parent's stays open during the run
            run_env = (
                {**env, "BENCH_PROFILE": os.path.abspath(args.profile)}
                if (args.profile and workers == 1)
                else env
            )
            with _WaitSampler(args.pg, dbname) as sampler:
                results, wall = _run_workers(run_env, workers)
            claimed = sum(r["claimed"] for r in results)
            queries = sum(r["queries"] for r in results)
            total_rate = claimed / wall if wall else 0.0
            phases[workers] = (results, wall, total_rate)
            label = "1 worker" if workers == 1 else f"{workers} workers in parallel"
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(
                f"\n{label} (seeded {args.cases:,} cases in {seed_s:.1f} s; "
                f"machine load average after the run {load}):"
            )
            for k, r in enumerate(results, 1):
                print(f"  worker {k}: {_line(r)}")
            print(
                f"  total: {claimed:,} cases in {wall:.2f} s (wall) = {total_rate:,.0f} cases/s; "
                f"{queries / claimed if claimed else 0:.1f} queries/case"
            )
            print(f"  worker backends in PostgreSQL (sampled): {sampler.summary()}")
            if claimed != args.cases:
                print(f"  ! {args.cases - claimed:,} seeded cases were not claimed")
                ok = False
        ratio = phases[2][2] / phases[1][2] if phases[1][2] else 0.0
        per_worker = [r["claimed"] / r["seconds"] for rs, _, _ in phases.values() for r in rs]
        peak = max(r["rss_mb"] for rs, _, _ in phases.values() for r in rs)
        q1 = sum(r["queries"] for r in phases[1][0]) / max(
            1, sum(r["claimed"] for r in phases[1][0])
        )
        print(f"\ntwo-worker / one-worker throughput: {ratio:.2f}x")
        checks = [
            (
                f"per worker >= {TARGET_RATE:,.0f} cases/s",
                min(per_worker) >= TARGET_RATE,
                f"min {min(per_worker):,.0f}",
            ),
            (f"peak memory < {TARGET_RSS_MB:.0f} MB", peak < TARGET_RSS_MB, f"max {peak:.0f} MB"),
            (f"two workers >= {TARGET_RATIO}x one", ratio >= TARGET_RATIO, f"{ratio:.2f}x"),
        ]
        for name, passed, value in checks:
            print(f"target {name}: {'met' if passed else 'NOT met'} ({value})")
            ok = ok and passed
        print(
            f"queries per case: {q1:.2f} at {args.cases:,} cases (run another --cases to compare)"
        )
        if args.profile:
            print(f"(cProfile of the one-worker run, with profiling overhead, in {args.profile})")
        if args.top:
            per_caller: Counter = Counter()
            for r in phases[1][0]:
                for name, n in r["callers"]:
                    per_caller[name] += n
            print("\nstatements per case by the function that sent them (one worker):")
            for name, n in per_caller.most_common(args.top):
                print(f"  {n / args.cases:5.2f}/case  {name}")
            print(f"\nstatements per case, one worker (of {q1:.1f}), most database time first:")
            for line in _top(phases[1][0], args.cases, args.top):
                print(line)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if created:
            with psycopg.connect(args.pg, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
