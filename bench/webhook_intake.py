#!/usr/bin/env python
"""Webhook intake throughput: signed `invoice.payment_failed` events against gunicorn + PostgreSQL.

Creates a throw-away database, migrates it, creates a store, starts the app under gunicorn
(production settings: DEBUG off, persistent connections) with `bench.settings` (the app's
URLs plus a bare view at /bench/bare/), and from a separate load process sends N distinct
signed events over several keep-alive connections. The bare view gets the same bodies, the
same N and the same concurrency in the same run, in alternating rounds after a warm-up of
both. Prints events/s, p50/p99 latency for both and the ratio, checks that every event was
stored exactly once, re-sends some events to show duplicates are refused, then starts
intake workers (`recovery.intake.stripe_events_work`, which claim stored events straight
from the table) and checks that every event is processed exactly once, and how fast; then
drops the database.

    .venv/bin/python bench/webhook_intake.py --events 3000
    .venv/bin/python bench/webhook_intake.py --events 3000 --redis
    .venv/bin/python bench/webhook_intake.py --events 3000 --profile   # where the time goes

Exit status 0 when every check passes (exactly-once storage and processing, duplicates
refused, no errors, throughput ratio >= --min-ratio), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import itertools
import json
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
GUNICORN = str(VENV_BIN / "gunicorn")
BARE_PATH = "/bench/bare/"
DRAIN = "from recovery.intake import stripe_events_work; stripe_events_work(until_idle=True)"


# ---------------------------------------------------------------- load process


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def _run_phase(port: int, reqs: list[tuple[str, bytes, dict]], concurrency: int) -> dict:
    """Send every request once over `concurrency` connections; time each one."""
    n = len(reqs)
    latency = [0.0] * n
    status = [0] * n
    duplicate: list[bool | None] = [None] * n
    errors: list[str] = []
    next_index = itertools.count()
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def worker() -> None:
        # HTTP/1.1 keep-alive; if the server closes (gunicorn sync workers answer with
        # Connection: close) http.client opens a new connection for the next request.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        while True:
            with lock:
                i = next(next_index)
            if i >= n:
                break
            path, body, headers = reqs[i]
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                latency[i] = time.perf_counter() - t0
                status[i] = -1
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            latency[i] = time.perf_counter() - t0
            status[i] = resp.status
            if resp.status == 200:
                try:
                    duplicate[i] = bool(json.loads(data).get("duplicate"))
                except ValueError:
                    errors.append(f"200 with a body that is not JSON: {data[:120]!r}")
            else:
                errors.append(f"HTTP {resp.status}: {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {
        "elapsed": elapsed,
        "latency": latency,
        "status": status,
        "duplicate": duplicate,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def _load_process(conn, port: int) -> None:
    """Runs in its own process: takes (requests, concurrency) jobs, answers with timings."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    while True:
        job = conn.recv()
        if job is None:
            return
        reqs, concurrency = job
        conn.send(_run_phase(port, reqs, concurrency))


class Loader:
    def __init__(self, port: int):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_load_process, args=(child, port), daemon=True)
        self.proc.start()
        child.close()

    def run(self, reqs: list[tuple[str, bytes, dict]], concurrency: int) -> dict:
        self._conn.send((reqs, concurrency))
        return self._conn.recv()

    def close(self, wait: float = 5) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self.proc.join(wait)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ---------------------------------------------------------------- results


class Tally:
    """Results of one kind of request over all rounds."""

    def __init__(self, name: str):
        self.name = name
        self.elapsed = 0.0
        self.latency: list[float] = []
        self.sent = 0
        self.ok = 0
        self.fresh = 0
        self.duplicates = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.cpu: dict[str, float] = {}

    def add(self, result: dict, cpu: dict[str, float] | None = None) -> None:
        for k, v in (cpu or {}).items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v
        self.elapsed += result["elapsed"]
        self.latency.extend(result["latency"])
        self.sent += len(result["status"])
        self.ok += sum(1 for s in result["status"] if s == 200)
        self.fresh += sum(1 for d in result["duplicate"] if d is False)
        self.duplicates += sum(1 for d in result["duplicate"] if d is True)
        self.errors.extend(result["errors"])
        self.error_count += result["error_count"]

    @property
    def rate(self) -> float:
        """Accepted requests per second (for intake: accepted as new, i.e. stored)."""
        return self.fresh / self.elapsed if self.elapsed else 0.0

    def pct_ms(self, pct: float) -> float:
        return _percentile(sorted(self.latency), pct) * 1000


# ---------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_by_group(gunicorn_pgid: int, loader_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by gunicorn's process group, the loader
    and every PostgreSQL process on this machine (Linux /proc; empty elsewhere)."""
    out = {"loader": 0.0, "gunicorn": 0.0, "postgres": 0.0}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        pgrp, cpu = int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK
        if int(entry.name) == loader_pid:
            out["loader"] += cpu
        elif pgrp == gunicorn_pgid:
            out["gunicorn"] += cpu
        elif comm == "postgres" or comm.startswith("postgres:"):
            out["postgres"] += cpu
    return out


# ---------------------------------------------------------------- the app under test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg(admin_url: str):
    import psycopg

    return psycopg.connect(admin_url, autocommit=True)


def _db_url(admin_url: str, dbname: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


def _manage(env: dict, *args: str) -> str:
    proc = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _create_store(env: dict, name: str, secret: str) -> str:
    out = _manage(env, "create_store", "--name", name, "--stripe-webhook-secret", secret, "--json")
    return json.loads(out.strip().splitlines()[-1])["store_id"]


class Gunicorn:
    def __init__(self, env: dict, port: int, workers: int, threads: int, log_path: Path):
        self.log_path = log_path
        self.port = port
        cmd = [GUNICORN, "config.wsgi", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
        # gunicorn >= 24 opens a control socket at a fixed per-user path by default; a bench
        # must not take it over from (or remove it under) a server someone else is running.
        cmd.append("--no-control-socket")
        if threads > 1:
            cmd += ["-k", "gthread", "--threads", str(threads)]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Own session = own process group, so stop() takes the master and its workers.
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        """The end of gunicorn's log, without django-q2's one-line-per-task chatter."""
        self._log.flush()
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(ln for ln in lines if not ln.startswith("Enqueued ["))[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers left behind by a master that died first share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


# ---------------------------------------------------------------- payloads


def _events(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """`count` distinct invoice.payment_failed events as Stripe sends them (indented JSON)."""
    sys.path.insert(0, str(ROOT))
    from tests import stripe_factory as sf

    out = []
    for i in range(count):
        invoice = sf.failed_invoice(
            customer=f"cus_{prefix}{i:07d}",
            subscription=f"sub_{prefix}{i:07d}",
            invoice_id=f"in_{prefix}{i:07d}",
            fingerprint=f"fp_{prefix}{i % 97}",
            email=f"customer{i}@example.com",
        )
        event_id = f"evt_{prefix}{i:07d}"
        evt = sf.event("invoice.payment_failed", invoice, event_id=event_id)
        out.append((event_id, json.dumps(evt, indent=2).encode()))
    return out


def _signed(
    path: str, events: list[tuple[str, bytes]], secret: str
) -> list[tuple[str, bytes, dict]]:
    import stripe

    t = int(time.time())
    reqs = []
    for _, body in events:
        sig = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", secret)
        reqs.append(
            (
                path,
                body,
                {
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": f"t={t},v1={sig}",
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                },
            )
        )
    return reqs


def _bare(events: list[tuple[str, bytes]]) -> list[tuple[str, bytes, dict]]:
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "bench"}
    return [(BARE_PATH, body, headers) for _, body in events]


def _chunks(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


# ---------------------------------------------------------------- profile (optional)


def _profile_child(store_id: str, secret: str, count: int) -> None:
    """In-process, through Django's real WSGI handler (no gunicorn, no client): the SQL
    round trips of one intake request, and where the time of `count` requests goes."""
    import cProfile
    import io
    import pstats
    import re
    from wsgiref.util import setup_testing_defaults

    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    from django.core.wsgi import get_wsgi_application
    from django.db import connection

    app = get_wsgi_application()
    path = f"/webhooks/stripe/{store_id}/"

    def call(req):
        p, body, headers = req
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": p,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": headers["Content-Type"],
            "wsgi.input": io.BytesIO(body),
            "SERVER_NAME": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
        }
        if "Stripe-Signature" in headers:
            environ["HTTP_STRIPE_SIGNATURE"] = headers["Stripe-Signature"]
        setup_testing_defaults(environ)
        out = {}

        def start_response(status, hdrs, exc_info=None):
            out["status"] = status

        resp = app(environ, start_response)
        b"".join(resp)
        resp.close()  # request_finished, as gunicorn does
        assert out["status"].startswith("200"), out["status"]

    events = _events(f"prof{os.getpid()}x", 2 * count + 21)
    warm, one = events[:20], events[20:21]
    plain, profiled = events[21 : 21 + count], events[21 + count :]
    for req in _signed(path, warm, secret) + _bare(warm):
        call(req)

    # 1. Every message the app sends to PostgreSQL for one request (libpq trace).
    connection.ensure_connection()
    trace_path = Path(tempfile.mkstemp(prefix="recoup-bench-trace-")[1])
    fd = os.open(trace_path, os.O_WRONLY | os.O_TRUNC)
    pgconn = connection.connection.pgconn
    pgconn.trace(fd)
    call(_signed(path, one, secret)[0])
    pgconn.untrace()
    os.close(fd)
    statements: list[tuple[str, float]] = []  # (SQL, ms until ReadyForQuery)
    pending: tuple[str, float] | None = None
    for line in trace_path.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        stamp = dt.datetime.fromisoformat(parts[0]).timestamp()
        direction, message, text = parts[1], parts[3], (parts[4] if len(parts) > 4 else "").strip()
        if direction == "F" and message == "Query":
            pending = (text.strip('"'), stamp)
        elif direction == "F" and message == "Parse":
            # "<statement name>" "<sql>" <n params> <types...>
            pending = (text[3:].rsplit('"', 1)[0] if text.startswith('"" "') else text, stamp)
        elif direction == "B" and message == "ReadyForQuery" and pending:
            sql = re.sub(r"\s+", " ", pending[0])
            statements.append((sql if len(sql) < 100 else sql[:97] + "...", stamp - pending[1]))
            pending = None
    trace_path.unlink()
    print(
        f"\nRound trips to PostgreSQL for one new event ({len(statements)}, "
        f"{sum(ms for _, ms in statements) * 1000:.2f} ms in all, traced):"
    )
    for sql, secs in statements:
        print(f"  {secs * 1000:6.3f} ms  {sql}")

    # 2. Time per request, in-process, and where it goes.
    def timed(reqs):
        t0 = time.perf_counter()
        for r in reqs:
            call(r)
        return (time.perf_counter() - t0) / len(reqs) * 1000

    bare_ms = timed(_bare(plain))
    intake_ms = timed(_signed(path, plain, secret))
    print(
        f"\nIn-process through Django's WSGI handler, one at a time ({count} each): "
        f"bare {bare_ms:.2f} ms, intake {intake_ms:.2f} ms per request"
    )
    intake_reqs = _signed(path, profiled, secret)
    prof = cProfile.Profile()
    prof.enable()
    profiled_ms = timed(intake_reqs)
    prof.disable()
    print(f"Under cProfile (inflates Python-heavy parts), intake {profiled_ms:.2f} ms per request:")
    stats = pstats.Stats(prof)
    print("  the functions with the most own time (ms/request):")
    own = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:15]
    for (f, line, name), (_cc, nc, tt, _ct, _callers) in own:
        where = "/".join(Path(f).parts[-2:]) if f != "~" else ""
        print(f"    {tt / count * 1000:7.3f}  {nc / count:5.1f}x  {name}  {where}:{line}")
    wanted = [
        ("recovery/webhooks.py", "stripe_webhook", "webhook view, total"),
        ("django/db/models/query.py", "first", "  store lookup (Store ... .first())"),
        ("common/crypto.py", "decrypt", "    decrypt webhook secret (Fernet)"),
        ("recovery/intake/inbox.py", "stripe_event_verify", "  verify signature + json.loads"),
        ("recovery/intake/inbox.py", "stripe_event_store", "  store event (BEGIN/INSERT/COMMIT)"),
        (
            "django/db/__init__.py",
            "close_old_connections",
            "close_old_connections (signals+broker)",
        ),
        ("django/db/backends/postgresql/base.py", "is_usable", "health check SELECT 1"),
        ("psycopg/cursor.py", "execute", "all psycopg execute (DB wait)"),
        ("django/db/backends/base/base.py", "commit", "all COMMITs"),
    ]
    print(f"  {'':44s} ms/request  calls/request")
    for fname, func, label in wanted:
        total, calls = 0.0, 0
        for (f, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
            if name == func and f.replace("\\", "/").endswith(fname):
                total += ct
                calls += nc
        if calls:
            print(f"  {label:44s} {total / count * 1000:8.3f}   {calls / count:6.2f}")


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=5000, help="distinct events to send (N)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client connections")
    ap.add_argument(
        "--workers", type=int, default=4, help="gunicorn worker processes (the README's -w 4)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="gunicorn threads per worker (>1: gthread worker)"
    )
    ap.add_argument("--rounds", type=int, default=4, help="alternating bare/intake rounds")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests for each kind")
    ap.add_argument("--resend", type=int, default=200, help="duplicates re-sent at the end")
    ap.add_argument(
        "--intake-workers", type=int, default=2, help="intake worker processes for the drain"
    )
    ap.add_argument("--redis", action="store_true", help="django-q2 broker on Redis db 14")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL admin URL (a database is created next to it)",
    )
    ap.add_argument("--min-ratio", type=float, default=0.6, help="target intake/bare throughput")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, list one request's SQL and profile the view in-process",
    )
    ap.add_argument("--keep-log", action="store_true", help="keep gunicorn's log file")
    ap.add_argument(
        "--_profile-child", nargs=3, metavar=("STORE", "SECRET", "N"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()

    if args._profile_child:
        store_id, secret, n = args._profile_child
        _profile_child(store_id, secret, int(n))
        return 0

    if args.events < 1 or args.concurrency < 1 or args.rounds < 1:
        ap.error("--events, --concurrency and --rounds must be at least 1")
    rounds = min(args.rounds, args.events)

    # Make SIGTERM unwind like Ctrl-C, so the finally block cleans up.
    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)

    from cryptography.fernet import Fernet

    run = f"{os.getpid()}"
    dbname = f"recoup_bench_{run}"
    q_name = f"recoup-bench-{run}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATABASE_URL": _db_url(args.pg, dbname),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "REDIS_URL": args.redis_url if args.redis else "",
        "BENCH_Q_NAME": q_name,
        "PYTHONUNBUFFERED": "1",
    }
    tmp = Path(tempfile.mkdtemp(prefix="recoup-bench-"))
    log_path = tmp / "gunicorn.log"
    server: Gunicorn | None = None
    loader: Loader | None = None
    failed = False
    keep_log = args.keep_log
    aborted = False
    created_db = False

    try:
        with _pg(args.pg) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')
        created_db = True
        _manage(env, "migrate", "--noinput", "-v0")
        secret = "whsec_bench_" + secrets.token_hex(16)
        store_id = _create_store(env, "Bench store", secret)
        warm_store_id = _create_store(env, "Bench warm-up store", secret)
        intake_path = f"/webhooks/stripe/{store_id}/"
        warm_path = f"/webhooks/stripe/{warm_store_id}/"

        # Payloads are built (and, just before each round, signed) here, not in the loader.
        events = _events(f"bench{run}x", args.events)
        warm_events = _events(f"warm{run}x", args.warmup)
        sent_ids = {eid for eid, _ in events}
        assert len(sent_ids) == args.events
        avg_kb = sum(len(b) for _, b in events) / len(events) / 1024

        port = _free_port()
        server = Gunicorn(env, port, args.workers, args.threads, log_path)
        server.wait_ready()
        loader = Loader(port)

        if warm_events:
            loader.run(_bare(warm_events), args.concurrency)
            loader.run(_signed(warm_path, warm_events, secret), args.concurrency)

        bare, intake = Tally("bare view"), Tally("intake")
        for r, chunk in enumerate(_chunks(events, rounds)):
            order = ["bare", "intake"] if r % 2 == 0 else ["intake", "bare"]
            for kind in order:
                reqs = _bare(chunk) if kind == "bare" else _signed(intake_path, chunk, secret)
                cpu0 = _cpu_by_group(server.proc.pid, loader.proc.pid)
                result = loader.run(reqs, args.concurrency)
                cpu1 = _cpu_by_group(server.proc.pid, loader.proc.pid)
                used = {k: cpu1[k] - cpu0[k] for k in cpu0}
                (bare if kind == "bare" else intake).add(result, used)

        # Exactly once: what the database holds now.
        import psycopg

        store_uuid = uuid.UUID(store_id)
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as db:
            rows, distinct = db.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM recovery_stripeevent"
                " WHERE store_id = %s",
                [store_uuid],
            ).fetchone()
            stored_ids = {
                r[0]
                for r in db.execute(
                    "SELECT event_id FROM recovery_stripeevent WHERE store_id = %s", [store_uuid]
                )
            }

            # Duplicates: the same events again (freshly signed, as Stripe's retries are).
            resend = Tally("duplicates")
            dup_events = events[: min(args.resend, len(events))]
            if dup_events:
                resend.add(loader.run(_signed(intake_path, dup_events, secret), args.concurrency))
            rows_after = db.execute(
                "SELECT count(*) FROM recovery_stripeevent WHERE store_id = %s", [store_uuid]
            ).fetchone()[0]

            # The intake workers take the stored events from the table: each exactly once.
            drain_started = time.monotonic()
            workers = [
                subprocess.Popen(
                    [PYTHON, "manage.py", "shell", "-c", DRAIN],
                    cwd=ROOT,
                    env={**env, "LOG_LEVEL": "WARNING"},
                )
                for _ in range(max(1, args.intake_workers))
            ]
            for w in workers:
                w.wait(timeout=3600)
            drain_seconds = time.monotonic() - drain_started
            processed, once, left = db.execute(
                "SELECT count(*) FILTER (WHERE outcome IN ('processed', 'ignored')),"
                " count(*) FILTER (WHERE attempts = 1),"
                " count(*) FILTER (WHERE outcome NOT IN ('processed', 'ignored'))"
                " FROM recovery_stripeevent WHERE store_id = %s",
                [store_uuid],
            ).fetchone()
            cases = db.execute(
                "SELECT count(*), count(DISTINCT invoice_id) FROM recovery_recoverycase"
                " WHERE store_id = %s",
                [store_uuid],
            ).fetchone()

        # ------------------------------------------------------------ report
        broker = f"Redis ({args.redis_url})" if args.redis else "ORM (PostgreSQL, django_q_ormq)"
        kind = f"gthread x{args.threads}" if args.threads > 1 else "sync"
        print(
            f"\nRecoup webhook intake: {args.events} events ({avg_kb:.1f} KiB each), "
            f"{args.concurrency} connections, gunicorn {args.workers} {kind} workers, "
            f"broker {broker}, {rounds} alternating rounds after {args.warmup} warm-up each"
        )
        print(
            f"  {'':10s} {'sent':>6s} {'accepted':>8s} {'events/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s}"
        )
        for t in (bare, intake):
            print(
                f"  {t.name:10s} {t.sent:6d} {t.fresh:8d} {t.rate:9.1f} "
                f"{t.pct_ms(50):7.2f} {t.pct_ms(99):7.2f}"
            )
        if bare.cpu and bare.sent and intake.sent:
            print(f"  CPU ms per event: {'':3s}" + "".join(f"{k:>10s}" for k in bare.cpu))
            for t in (bare, intake):
                print(
                    f"  {t.name:20s}"
                    + "".join(f"{t.cpu[k] / t.sent * 1000:10.3f}" for k in bare.cpu)
                )
        ratio = intake.rate / bare.rate if bare.rate else 0.0
        ratio_ok = ratio >= args.min_ratio
        print(
            f"  ratio intake/bare throughput: {ratio:.2f}  "
            f"(target >= {args.min_ratio:.2f}: {'OK' if ratio_ok else 'MISSED'})"
        )
        once_ok = rows == args.events == distinct and stored_ids == sent_ids
        print(
            f"  stored: {rows} rows, {distinct} distinct ids, "
            f"{len(sent_ids & stored_ids)}/{args.events} sent ids present"
            f" -> exactly once: {'OK' if once_ok else 'FAIL'}"
        )
        dup_ok = resend.duplicates == len(dup_events) and rows_after == rows
        if dup_events:
            print(
                f"  re-sent {len(dup_events)}: {resend.ok} x 200, {resend.duplicates} duplicate=true, "
                f"rows {rows} -> {rows_after} -> refused: {'OK' if dup_ok else 'FAIL'}"
                f"  ({len(dup_events) / resend.elapsed:.0f}/s, "
                f"p50 {resend.pct_ms(50):.2f} ms)"
            )
        error_count = bare.error_count + intake.error_count + resend.error_count
        if error_count:
            print(f"  errors: {error_count}, e.g.")
            for e in (bare.errors + intake.errors + resend.errors)[:5]:
                print(f"    {e}")
        processed_ok = processed == once == rows and left == 0 and cases == (rows, rows)
        print(
            f"  processed by {args.intake_workers} intake workers in {drain_seconds:.1f} s "
            f"({rows / drain_seconds:.0f} events/s, each opening its case and reading its "
            f"decline back): {processed}/{rows} processed, {once} on the first attempt, "
            f"{cases[0]} cases for {cases[1]} invoices -> exactly once: "
            f"{'OK' if processed_ok else 'FAIL'}"
        )
        failed = not (ratio_ok and once_ok and dup_ok and processed_ok and error_count == 0)
        keep_log = keep_log or error_count > 0
        sys.stdout.flush()

        if args.profile:
            loader.close()
            loader = None
            server.stop()
            server = None
            n = min(max(args.events // 5, 100), 1000)
            subprocess.run(
                [PYTHON, __file__, "--_profile-child", warm_store_id, secret, str(n)],
                cwd=ROOT,
                env={**env, "LOG_LEVEL": "WARNING"},
                check=True,
            )
    except BaseException:
        failed = keep_log = aborted = True
        if server is not None:
            print(f"gunicorn log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if loader is not None:
            loader.close(wait=0 if aborted else 5)
        if server is not None:
            server.stop()
        if created_db:
            try:
                with _pg(args.pg) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning up
                print(f"could not drop database {dbname}: {exc}", file=sys.stderr)
        if args.redis:
            with contextlib.suppress(Exception):
                import redis

                redis.Redis.from_url(args.redis_url).delete(f"django_q:{q_name}:q")
        if keep_log:
            print(f"gunicorn log: {log_path}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                log_path.unlink()
                tmp.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
