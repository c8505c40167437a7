#!/usr/bin/env python
"""Stripe conformance: the whole product, black-box, against the Stripe emulator.

Recoup runs as it runs in production, in separate processes: gunicorn (`config.wsgi`),
intake workers (`recovery.intake.stripe_events_work`) and a scheduler
(`recovery.scheduler.run_due` every few seconds), the workers at nice 10 as the README runs
them on a machine they share with the web server (`--worker-nice`), on a fresh database (PostgreSQL, created
and dropped here; `--sqlite` for a temporary SQLite file), with STRIPE_API_BASE pointing at
the emulator (`../shared/stripe-emulator/fakestripe.py`, imported at run time, never copied
here). The emulator runs in this process, answers in 100 ms and allows 25 requests/s per
account, as Stripe's test mode does. This script plays Stripe: it builds customers, cards,
subscriptions and renewal invoices, decides every charge (`fake.world`), and delivers the
events Stripe would send, signed, to `POST /webhooks/stripe/<store>/`.

Conformance: one renewal fails with each decline family (soft, card update, hard, fraud,
authentication, an unknown code, advice and network codes), for customers in several
countries with and without SMS consent or a time zone in their metadata, four times over:
A in Stripe's order; B shuffled, every event twice; C with the invoice events first and the
customer, card, PaymentIntent and Charge events only once the cases were classified (late);
D as C, for new signups whose first invoice fails in the second their card was saved (the
renewals of A-C fail a second or more after theirs). Stripe's `created` stays what it was.
Each stored event, every Stripe charge attempt recorded once. Then the scheduler runs in simulated time (`run_due(now=…)` at each case's next action, for
--days). Printed: per decline, the case's track and decline code (read through the cases
API) against `recovery.declines.classify`; the customer facts as read (`sms_opt_in`,
`time_zone`, `time_zone_source` where the model has it) against what Stripe holds; Recoup's
own charges per card (from the emulator's ledger), which must be 0 on cards that must not be
retried; `fake.double_charges()`, which must be [].

Burst (--burst N, 0 to skip): N renewals fail at once in another account; their failure
events go to the webhook as fast as it takes them over 8 keep-alive connections. Printed:
the time from the first event to the last case classified and planned, against the floor the
rate limit sets (one read of each invoice's payments at 25/s), and to the last stored event
processed; the reads the emulator saw, its 429s, the webhook's p50/p99 latency, and one case
per invoice.

    .venv/bin/python bench/stripe_conformance.py                  # conformance + 10,000 burst
    .venv/bin/python bench/stripe_conformance.py --burst 500      # quick
    .venv/bin/python bench/stripe_conformance.py --burst 0 --sqlite
    # also: --web-workers 4 --threads 4 --intake-workers 2 --days 30 --no-facts --keep-logs

Exit status: 0 when every check passes, 1 on any miss (each one is printed), 2 when the
emulator is not there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import itertools
import json
import os
import random
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
GUNICORN = str(VENV_BIN / "gunicorn")
EMULATOR_DIR = ROOT.parent / "shared" / "stripe-emulator"

CONFORMANCE_KEY = "sk_test_recoup_conformance"
BURST_KEY = "sk_test_recoup_burst"
LATENCY_MS = 100  # Stripe's round trip
RATE_LIMIT_RPS = 25  # Stripe's test-mode limit per account
BURST_CONNECTIONS = 8
TARGET_RATIO = 1.25  # burst time / rate-limit floor
TARGET_P99_MS = 100.0
SCHEDULER_EVERY_SECONDS = 10
# What a case waiting for its decline needs: one GET of its invoice (payments expanded).
READS = re.compile(r"^/v1/invoices/in_[^/]+$")


# ---------------------------------------------------------------- what Stripe holds


@dataclass(frozen=True)
class Scenario:
    """One way a renewal fails: the issuer's answer, and what Recoup may do about it."""

    label: str
    code: str
    brand: str = "visa"
    advice: str = ""
    network_advice: str = ""
    network_decline: str = ""
    requires_action: bool = False  # 3-D Secure: the PaymentIntent waits for the customer
    may_retry: bool = False  # DOMAIN.md: soft declines only; never the others' same card
    recovers_on: int = 0  # the invoice's n-th attempt succeeds (0: every attempt fails)
    expired: bool = False

    def outcomes(self, fakestripe):
        decline = fakestripe.Outcome.decline(
            self.code,
            advice_code=self.advice or None,
            network_advice_code=self.network_advice or None,
            network_decline_code=self.network_decline or None,
            requires_action=self.requires_action,
        )
        if not self.recovers_on:
            return decline
        return [decline] * (self.recovers_on - 1) + [fakestripe.Outcome.success()]

    def expected(self):
        from recovery.domain.declines import classify

        return classify(
            decline_code=self.code,
            advice_code=self.advice,
            network_advice_code=self.network_advice,
            network_decline_code=self.network_decline,
            card_brand=self.brand,
        )


SCENARIOS = [
    Scenario("insufficient_funds", "insufficient_funds", may_retry=True, recovers_on=3),
    Scenario("do_not_honor", "do_not_honor", may_retry=True),
    Scenario("generic_decline", "generic_decline", "mastercard", may_retry=True),
    Scenario("do_not_honor, do_not_try_again", "do_not_honor", advice="do_not_try_again"),
    Scenario("expired_card", "expired_card", expired=True),
    Scenario("incorrect_cvc", "incorrect_cvc"),
    Scenario("incorrect_number", "incorrect_number"),
    Scenario("lost_card", "lost_card"),
    Scenario("stolen_card", "stolen_card", "mastercard"),
    Scenario("pickup_card", "pickup_card"),
    Scenario("fraudulent", "fraudulent"),
    Scenario("authentication_required, 3DS", "authentication_required", requires_action=True),
    Scenario("authentication_required", "authentication_required"),
    Scenario("processing_error", "processing_error", may_retry=True, recovers_on=2),
    Scenario("card_velocity_exceeded", "card_velocity_exceeded", "mastercard", may_retry=True),
    Scenario("unknown code", "issuer_unavailable_xq", may_retry=True),
    Scenario("do_not_honor, MC 03", "do_not_honor", "mastercard", network_advice="03"),
    Scenario("do_not_honor, MC 21", "do_not_honor", "mastercard", network_advice="21"),
    Scenario(
        "do_not_honor, MC 24", "do_not_honor", "mastercard", network_advice="24", may_retry=True
    ),
    Scenario("do_not_honor, Visa 14", "do_not_honor", network_decline="14"),
]

# Where a customer's clock is, from the address Stripe holds.
ADDRESS_ZONES = {
    ("US", "CA"): "America/Los_Angeles",
    ("US", "NY"): "America/New_York",
    ("US", "TX"): "America/Chicago",
    ("CA", "BC"): "America/Vancouver",
    ("AU", "NSW"): "Australia/Sydney",
    ("BR", "SP"): "America/Sao_Paulo",
    ("DE", ""): "Europe/Berlin",
    ("GB", ""): "Europe/London",
}


@dataclass(frozen=True)
class Profile:
    """A customer as Stripe knows them."""

    country: str
    state: str = ""
    phone: str = ""
    metadata: tuple = ()

    @property
    def label(self) -> str:
        place = f"{self.country} {self.state}".strip()
        meta = " ".join(f"{k}={v}" for k, v in self.metadata)
        return f"{place}{', ' + meta if meta else ''}{', phone' if self.phone else ''}"

    @property
    def sms_opt_in(self) -> bool:
        return dict(self.metadata).get("sms_opt_in") == "true"

    @property
    def time_zone(self) -> str:
        return dict(self.metadata).get("timezone") or ADDRESS_ZONES[(self.country, self.state)]


PROFILES = [
    Profile("US", "CA", "+14155550101", (("sms_opt_in", "true"),)),
    Profile("US", "NY", "+12125550102"),
    Profile("US", "TX", "+15125550103", (("timezone", "America/Denver"),)),
    Profile("CA", "BC", "+16045550104", (("sms_opt_in", "true"),)),
    Profile("AU", "NSW"),
    Profile("BR", "SP", "+5511955550106", (("sms_opt_in", "false"),)),
    Profile("DE", "", "+4930555010", (("timezone", "America/Denver"), ("sms_opt_in", "true"))),
    Profile("GB", "", "+447700900107"),
]

POPULATIONS = {
    "A": "Stripe's order",
    "B": "shuffled, every event twice",
    "C": "customer and charge events late",
    "D": "new signups (card saved, first invoice failed, in one second), customer events late",
}


@dataclass
class Renewal:
    scenario: Scenario
    profile: Profile
    population: str
    customer: str
    fingerprint: str
    invoice: str
    events: list = field(default_factory=list)  # what Stripe sends, in its order


def _renewal(
    fake,
    key: str,
    n: int,
    scenario: Scenario,
    profile: Profile,
    population: str,
    billing_reason: str = "subscription_cycle",
):
    """A customer with a default card, a monthly subscription and its open renewal (or
    first) invoice, not attempted yet; the events so far are drained into the renewal."""
    address = {"country": profile.country, **({"state": profile.state} if profile.state else {})}
    cus = fake.create_customer(
        key,
        f"{population.lower()}{n}@example.com",
        f"Customer {population}{n}",
        phone=profile.phone or None,
        metadata=dict(profile.metadata),
        address=address,
    )
    pm = fake.add_card(
        key,
        cus["id"],
        brand=scenario.brand,
        last4=f"{(n * 7919) % 10000:04d}",
        exp_month=1 if scenario.expired else 12,
        exp_year=2025 if scenario.expired else 2030,
        country=profile.country,
    )
    sub = fake.create_subscription(
        key, cus["id"], 2900 + 100 * (n % 5), "usd", product_name="Coffee Club"
    )
    inv = fake.create_invoice(key, sub["id"], billing_reason=billing_reason)
    return Renewal(
        scenario,
        profile,
        population,
        cus["id"],
        pm["card"]["fingerprint"],
        inv["id"],
        events=fake.drain(key),
    )


def _fail_renewals(fake, key: str, renewals: list[Renewal]) -> None:
    """Stripe's own renewal attempt of each invoice, through the world; its events join
    the renewal's. From the next whole second on: Stripe's timestamps are whole seconds,
    and a renewal fails after its card was attached, never in the same second."""
    time.sleep(1.01 - time.time() % 1)
    for r in renewals:
        fake.attempt_invoice(key, r.invoice)
        r.events += fake.drain(key)


# ---------------------------------------------------------------- the emulator


def _emulator():
    if not (EMULATOR_DIR / "fakestripe.py").is_file():
        print(
            f"The Stripe emulator is not there: expected {EMULATOR_DIR}/fakestripe.py "
            "(../shared/stripe-emulator/ beside the repository). This benchmark runs "
            "Recoup against it and cannot run without it.",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.path.insert(0, str(EMULATOR_DIR))
    import fakestripe

    return fakestripe


# ---------------------------------------------------------------- webhook delivery


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Delivery:
    sent: int = 0
    first_at: float = 0.0  # time.monotonic() of the first request
    elapsed: float = 0.0
    latency: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # (event type, status, body)


def _deliver(
    port: int,
    path: str,
    secret: str,
    events: list[dict],
    bodies: list[bytes],
    concurrency: int,
    sign,
) -> Delivery:
    """POST each event once, in list order, over `concurrency` keep-alive connections;
    signed at sending time, as Stripe does (the signature's timestamp must be recent)."""
    result = Delivery(sent=len(bodies), latency=[0.0] * len(bodies))
    next_index = itertools.count()
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def sender() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        while (i := next(next_index)) < len(bodies):
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign(bodies[i], secret),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            }
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=bodies[i], headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                status, data = -1, f"{type(exc).__name__}: {exc}".encode()
            result.latency[i] = time.perf_counter() - t0
            if status != 200:
                with lock:
                    result.failures.append((events[i]["type"], status, data[:200]))

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    result.first_at = time.monotonic()
    for t in threads:
        t.join()
    result.elapsed = time.monotonic() - result.first_at
    return result


# ---------------------------------------------------------------- Recoup, as processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recoup:
    """The product under test: gunicorn, intake workers and a scheduler, each its own
    process (group), logging to files in `logs`."""

    def __init__(self, env: dict, logs: Path, dbname: str):
        self.env, self.logs, self.dbname = env, logs, dbname
        self.port = _free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, cmd: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_web(self, workers: int, threads: int) -> None:
        self._start(
            "gunicorn",
            [
                GUNICORN,
                "config.wsgi",
                "-w",
                str(workers),
                "-k",
                "gthread",
                "--threads",
                str(threads),
                "-b",
                f"127.0.0.1:{self.port}",
                "--no-control-socket",
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.procs["gunicorn"].poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_text('gunicorn')[-3000:]}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready:\n{self.log_text('gunicorn')[-3000:]}")

    def start_workers(self, intake: int) -> None:
        for k in range(intake):
            self._start(f"intake{k + 1}", [PYTHON, __file__, "--_intake"])

    def start_scheduler(self) -> None:
        self._start("scheduler", [PYTHON, __file__, "--_scheduler"])

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def cpu(self) -> Counter:
        """CPU seconds so far of each process group of ours (gunicorn with its workers),
        of the database's PostgreSQL backends alive now, and of this process (/proc)."""
        groups = {p.pid: n.rstrip("0123456789") for n, p in self.procs.items()}
        ticks = os.sysconf("SC_CLK_TCK")
        used: Counter = Counter()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            if int(fields[2]) in groups:  # process group
                used[groups[int(fields[2])]] += seconds
            elif cmdline.startswith(b"postgres: ") and f" {self.dbname} ".encode() in cmdline:
                used["postgres"] += seconds
        me = resource.getrusage(resource.RUSAGE_SELF)
        used["bench (emulator, load)"] = me.ru_utime + me.ru_stime
        busy = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ours = sum(used.values())
        # user nice system (idle iowait) irq softirq steal
        used["other processes"] = sum(int(busy[k]) for k in (0, 1, 2, 5, 6, 7)) / ticks - ours
        return used

    def dead(self) -> list[str]:
        return [
            f"{n} exited ({p.returncode})" for n, p in self.procs.items() if p.poll() is not None
        ]

    def log_text(self, name: str) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_problems(self) -> tuple[list[str], list[str]]:
        """(tracebacks, other lines) in every process's log, each distinct one once with
        its count: a traceback (its chained ones included) as the log line before it, its
        last exception, PostgreSQL's CONTEXT line and the deepest frame of the project.
        gunicorn's own INFO lines are not problems."""
        crashes: Counter = Counter()
        notes: Counter = Counter()
        for path in sorted(self.logs.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            i = 0
            while i < len(lines):
                if lines[i] != _TRACEBACK:
                    before_traceback = lines[i + 1 : i + 2] == [_TRACEBACK]
                    if lines[i].strip() and not (
                        before_traceback or _GUNICORN_INFO.match(lines[i])
                    ):
                        notes[f"{path.stem}: {re.sub(r'[0-9]+', 'N', lines[i].strip())[:200]}"] += 1
                    i += 1
                    continue
                context = lines[i - 1].strip() if i else ""
                j, frames, last, detail = i, [], "", ""
                while j < len(lines):
                    j += 1
                    while j < len(lines) and (lines[j].startswith(" ") or not lines[j]):
                        if "/work/main/" in lines[j] and "/.venv/" not in lines[j]:
                            frames.append(lines[j].strip())
                        j += 1
                    last = lines[j] if j < len(lines) else ""
                    j += 1
                    while j < len(lines) and _EXCEPTION_DETAIL.match(lines[j]):
                        detail = detail or (lines[j] if lines[j].startswith("CONTEXT") else "")
                        j += 1
                    k = j
                    while k < len(lines) and not lines[k]:
                        k += 1
                    if k < len(lines) and lines[k].startswith(_CHAINED):
                        j = k + 2  # past "The above exception…", blank, at "Traceback"
                        continue
                    break
                where = frames[-1] if frames else ""
                crashes[f"{path.stem}: {context} -> {last} {detail} [{where}]"] += 1
                i = j
        return (
            [f"{n}x {t}" for t, n in crashes.most_common()],
            [f"{n}x {t}" for t, n in notes.most_common()],
        )


_TRACEBACK = "Traceback (most recent call last):"
_GUNICORN_INFO = re.compile(r"^\[[^]]+\] \[\d+\] \[INFO\]")
# PostgreSQL's lines after an error's message (psycopg puts them in the exception's text).
_EXCEPTION_DETAIL = re.compile(r"^(DETAIL|HINT|CONTEXT|LINE \d+|SQL statement|Process \d+ )")
_CHAINED = ("The above exception", "During handling of the above exception")


# ---------------------------------------------------------------- child processes


def _django() -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def _stopping() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def _child_intake() -> int:
    """An intake worker: claims stored events and reads declines back, until SIGTERM.
    With BENCH_PROFILE_DIR, under cProfile (its stats written there at the end)."""
    os.nice(int(os.environ.get("BENCH_WORKER_NICE", "0")))
    _django()
    from recovery.intake import stripe_events_work

    stop = _stopping()
    profile_dir = os.environ.get("BENCH_PROFILE_DIR")
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    stripe_events_work(should_stop=stop.is_set)
    if profile_dir:
        profiler.disable()
        profiler.dump_stats(Path(profile_dir) / f"intake-{os.getpid()}.prof")
    return 0


def _child_scheduler() -> int:
    """The scheduler, in real time: a pass every few seconds (django-q2 does one a
    minute), until SIGTERM."""
    os.nice(int(os.environ.get("BENCH_WORKER_NICE", "0")))
    _django()
    from recovery.scheduler import run_due

    stop = _stopping()
    while not stop.is_set():
        run_due(max_seconds=60)
        stop.wait(SCHEDULER_EVERY_SECONDS)
    return 0


def _child_simulate(store_id: str, days: float) -> int:
    """The scheduler in simulated time: a pass at each open case's next action (actions
    due within 10 minutes of each other in one pass), for `days`. Prints a JSON summary."""
    _django()
    import time_machine
    from django.db.models import Min
    from django.utils import timezone

    from recovery.models import RecoveryCase
    from recovery.scheduler import run_due

    start = timezone.now()
    horizon = start + dt.timedelta(days=days)
    at, passes, actions = start, 0, Counter()
    while passes < 2000:
        due = (
            RecoveryCase.objects.filter(store_id=store_id, status="open")
            .exclude(next_action_at=None)
            .aggregate(m=Min("next_action_at"))["m"]
        )
        if due is None or due > horizon:
            break
        at = max(at, due) + dt.timedelta(minutes=10)
        with time_machine.travel(at, tick=True):
            report = run_due(now=at, store_id=store_id, max_seconds=120)
        passes += 1
        actions.update(report.actions)
    print(
        json.dumps(
            {
                "passes": passes,
                "days": (at - start).total_seconds() / 86400,
                "actions": dict(actions),
            }
        )
    )
    return 0


# ---------------------------------------------------------------- reading the product


def _api_cases(port: int, token: str) -> dict[str, dict]:
    """Every case of the token's store, by invoice, as the merchant's systems see it."""
    out, page = {}, 1
    while page:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(
            "GET", f"/api/v1/cases/?page={page}", headers={"Authorization": f"Bearer {token}"}
        )
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"GET /api/v1/cases/ answered {resp.status}: {body}")
        for case in body["results"]:
            out.setdefault(case["invoice"], []).append(case)
        page = page + 1 if body.get("next") else 0
    return out


def _progress(store_id) -> dict:
    """How far the product got with a store's events and cases."""
    from django.db.models import Count, Q

    from recovery.models import RecoveryCase, StripeEvent

    cases = RecoveryCase.objects.filter(store_id=store_id).aggregate(
        cases=Count("pk"),
        planned=Count("pk", filter=Q(decline_awaited_until__isnull=True) & ~Q(next_action="")),
    )
    events = StripeEvent.objects.filter(store_id=store_id).aggregate(
        stored=Count("pk"),
        pending=Count("pk", filter=Q(outcome="pending")),
        failed=Count("pk", filter=Q(outcome="failed")),
    )
    return {**cases, **events}


def _wait(store_id, done, timeout: float, app: Recoup, every: float = 0.25):
    """Poll until done(progress) holds; returns (monotonic time it held or None, progress)."""
    deadline = time.monotonic() + timeout
    while True:
        progress = _progress(store_id)
        if done(progress):
            return time.monotonic(), progress
        if time.monotonic() > deadline or app.dead():
            return None, progress
        time.sleep(every)


def _recoup_charges(fake, fingerprint: str) -> list[dict]:
    """Every charge attempt on a card that Stripe did not make on its own schedule."""
    return [e for e in fake.attempts_by_fingerprint(fingerprint) if e["source"] != "stripe_auto"]


def _cases_by_invoice(store) -> dict:
    from recovery.models import RecoveryCase

    cases = RecoveryCase.objects.filter(store=store).select_related("invoice")
    return {c.invoice.stripe_id if c.invoice_id else c.payment_intent_id: c for c in cases}


def _timeline(case) -> str:
    """The case's timeline up to Recoup's first charge of it, one entry per line."""
    from recovery.models import CaseEvent, PaymentAttempt

    first = (
        PaymentAttempt.objects.filter(case=case)
        .exclude(source="stripe_auto")
        .order_by("attempted_at")
        .values_list("attempted_at", flat=True)
        .first()
    )
    entries = CaseEvent.objects.filter(case=case).order_by("at", "pk")
    if first is not None:
        entries = entries.filter(at__lte=first)
    return "".join(
        f"\n        {e.at - case.opened_at} {e.kind}: {e.message[:150]}" for e in entries
    )


def _customer_facts(store_id) -> dict[str, dict]:
    from subscriptions.models import Customer

    names = {f.name for f in Customer._meta.get_fields()}
    fields = ["stripe_id", "sms_opt_in", "time_zone"]
    fields += ["time_zone_source"] if "time_zone_source" in names else []
    return {c["stripe_id"]: c for c in Customer.objects.filter(store_id=store_id).values(*fields)}


# ---------------------------------------------------------------- conformance


@dataclass
class Context:
    fakestripe: object
    fake: object
    app: Recoup
    args: argparse.Namespace
    misses: list = field(default_factory=list)

    def miss(self, text: str) -> None:
        self.misses.append(text)


def _store(name: str, key: str) -> tuple:
    from stores.services import api_token_create, store_create

    secret = "whsec_" + secrets.token_hex(16)
    store = store_create(
        name=name,
        stripe_secret_key=key,
        stripe_webhook_secret=secret,
        gateway="stripe",
        timezone="America/New_York",
    )
    _, token = api_token_create(store=store)
    return store, secret, token


def _split_late(events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(invoice and subscription events, the customer/card/PaymentIntent/Charge ones)."""
    first = [e for e in events if e["type"].startswith(("invoice.", "customer.subscription."))]
    early = {e["id"] for e in first}
    return first, [e for e in events if e["id"] not in early]


def _signups(fake, fs, key: str, first: int) -> list[Renewal]:
    """New signups whose first invoice fails at once: customer, card, subscription and
    the failed payment all within one second, as at Stripe (whose timestamps are whole
    seconds), so the card is saved in the very second its first payment fails."""
    time.sleep(1.01 - time.time() % 1)
    signups = []
    for n, scenario in enumerate(SCENARIOS, first):
        r = _renewal(
            fake, key, n, scenario, PROFILES[n % len(PROFILES)], "D", "subscription_create"
        )
        fake.world.rules[r.invoice] = scenario.outcomes(fs)
        fake.attempt_invoice(key, r.invoice)
        r.events += fake.drain(key)
        signups.append(r)
    return signups


def _conformance(ctx: Context) -> None:
    fake = ctx.fake
    store, secret, token = _store("Conformance", CONFORMANCE_KEY)
    renewals = _conformance_renewals(ctx)
    _conformance_deliver(ctx, store, secret, renewals)
    cells = _classification_check(ctx, store, token, renewals)
    facts = _customer_facts(store.pk)
    simulated = _simulate(ctx, store)
    own_events = len(fake.drain(CONFORMANCE_KEY))
    print(
        f"  then the scheduler in simulated time: {simulated['passes']} passes over "
        f"{simulated['days']:.1f} days, {simulated['actions'] or 'nothing done'}; "
        f"{own_events} events of Recoup's own charges not delivered (simulated time)"
    )
    _classification_table(ctx, store, renewals, cells)
    doubles = fake.double_charges()
    print(f"  double charges: {doubles} (target [])")
    for d in doubles:
        ctx.miss(f"double charge: {d}")
    _facts_table(ctx, renewals, facts)
    print(
        f"\n  emulator: {fake.rate_limited} requests answered 429 so far, "
        f"{len(fake.unhandled)} to unknown routes"
    )


def _conformance_renewals(ctx: Context) -> list[Renewal]:
    """Every scenario's renewal for A, B and C, failed a second after they were built, and
    D's new signups, failed in the second they were built."""
    fs, fake = ctx.fakestripe, ctx.fake
    renewals = [
        _renewal(fake, CONFORMANCE_KEY, n, scenario, PROFILES[n % len(PROFILES)], population)
        for n, (population, scenario) in enumerate(itertools.product("ABC", SCENARIOS))
    ]
    fake.world = fs.ScriptedWorld({r.invoice: r.scenario.outcomes(fs) for r in renewals})
    _fail_renewals(fake, CONFORMANCE_KEY, renewals)
    return renewals + _signups(fake, fs, CONFORMANCE_KEY, len(renewals))


def _conformance_deliver(ctx: Context, store, secret: str, renewals: list[Renewal]) -> None:
    """A in order on one connection; B shuffled and doubled on eight; C's and D's invoice
    events, then (once every case is classified) their other events, in order."""
    fake, app, args = ctx.fake, ctx.app, ctx.args
    by_pop = {p: [r for r in renewals if r.population == p] for p in POPULATIONS}
    a_events = [e for r in by_pop["A"] for e in r.events]
    b_events = [e for r in by_pop["B"] for e in r.events] * 2
    random.Random(7).shuffle(b_events)
    c_first, c_late = _split_late([e for r in by_pop["C"] + by_pop["D"] for e in r.events])
    one_second = sum(len({e["created"] for e in r.events}) == 1 for r in by_pop["D"])
    print(
        f"\nConformance: {len(SCENARIOS)} declines x {len(POPULATIONS)} deliveries "
        f"({'; '.join(f'{p}: {d}' for p, d in POPULATIONS.items())}); "
        f"{len(renewals)} renewals ({one_second} of D's {len(by_pop['D'])} in one second), "
        f"{len(a_events) + len(b_events) + len(c_first) + len(c_late)} webhook deliveries"
    )

    path = f"/webhooks/stripe/{store.pk}/"
    failures = []

    def deliver(events: list[dict], concurrency: int) -> None:
        bodies = [fake.event_payload(e) for e in events]
        sent = _deliver(app.port, path, secret, events, bodies, concurrency, ctx.fakestripe.sign)
        failures.extend(sent.failures)

    deliver(a_events, 1)  # one connection: the order Stripe sent them in
    deliver(b_events, BURST_CONNECTIONS)
    deliver(c_first, 1)

    def classified(p: dict) -> bool:
        return p["cases"] >= len(renewals) and p["planned"] == p["cases"] and p["pending"] == 0

    t0 = time.monotonic()
    at, progress = _wait(store.pk, classified, args.wait, app)
    print(
        f"  A, B, and C and D's invoice events: {progress['cases']} cases, "
        f"{progress['planned']} classified and planned, {progress['stored']} events stored, "
        f"{progress['pending']} pending, after {(at or time.monotonic()) - t0:.1f} s"
        + ("" if at else f" (gave up after --wait {args.wait:.0f} s)")
    )
    deliver(c_late, 1)
    _, progress = _wait(store.pk, lambda p: p["pending"] == 0, args.wait, app)
    for kind, status, body in failures[:5]:
        ctx.miss(f"webhook answered {status} to {kind}: {body!r}")
    if len(failures) > 5:
        ctx.miss(f"webhook: {len(failures) - 5} more failed deliveries")
    if progress["failed"]:
        print(f"  {progress['failed']} events failed in the intake (the sweep tries them again)")


def _classification_check(ctx: Context, store, token: str, renewals: list[Renewal]) -> dict:
    """Each renewal's one case, as the cases API shows it, against classify; Stripe's
    attempt and each charge recorded once. Returns the table's cells."""
    from recovery.models import PaymentAttempt

    api = _api_cases(ctx.app.port, token)
    db = _cases_by_invoice(store)
    for invoice in set(api) - {r.invoice for r in renewals}:
        ctx.miss(f"a case for no renewal's invoice: {api[invoice]}")
    attempts = PaymentAttempt.objects.filter(store=store)
    stripe_attempts = Counter(
        attempts.filter(source="stripe_auto").values_list("case__invoice__stripe_id", flat=True)
    )
    per_charge = Counter(attempts.exclude(charge_id="").values_list("charge_id", flat=True))
    for charge, k in per_charge.items():
        if k > 1:
            ctx.miss(f"charge {charge} recorded as {k} attempts (the card's budget counts it {k}x)")
    cells: dict[tuple, str] = {}
    for r in renewals:
        expected = r.scenario.expected()
        found = api.get(r.invoice, [])
        where = f"{r.scenario.label} [{r.population}] {r.invoice}"
        cell = "ok"
        if len(found) != 1:
            cell = f"{len(found)} cases"
            ctx.miss(f"{where}: {len(found)} cases (expected exactly one)")
        elif db[r.invoice].decline_awaited_until is not None:
            cell = "waiting"
            ctx.miss(f"{where}: still waiting for its decline ({found[0]['track']})")
        elif (found[0]["track"], found[0]["decline_code"]) != (expected.track, expected.code):
            cell = f"{found[0]['track']} {found[0]['decline_code'] or '-'}"
            ctx.miss(
                f"{where}: track {found[0]['track']}, decline_code "
                f"{found[0]['decline_code']!r}; classify says {expected.track}, "
                f"{expected.code!r} ({found[0]['track_reason']})"
            )
        elif not db[r.invoice].next_action and db[r.invoice].status == "open":
            cell = "no plan"
            ctx.miss(f"{where}: classified but nothing planned (next_action empty)")
        cells[r.scenario, r.population] = cell
        if stripe_attempts[r.invoice] != 1:
            ctx.miss(f"{where}: Stripe's one attempt recorded {stripe_attempts[r.invoice]} times")
    return cells


def _simulate(ctx: Context, store) -> dict:
    """The scheduler in simulated time, in a process of its own (the real-time one
    stopped first)."""
    ctx.app.stop("scheduler")
    proc = subprocess.run(
        [PYTHON, __file__, "--_simulate", str(store.pk), str(ctx.args.days)],
        cwd=ROOT,
        env=ctx.app.env,
        capture_output=True,
        text=True,
    )
    (ctx.app.logs / "simulate.log").write_text(proc.stderr)
    if proc.returncode != 0:
        ctx.miss(f"simulated scheduler passes failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return {"passes": 0, "days": 0, "actions": {}}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _classification_table(ctx: Context, store, renewals: list[Renewal], cells: dict) -> None:
    """Per decline: what classify says, each delivery's verdict, Recoup's charges on each
    card (none on a card that is not a soft decline) and the cases' end."""
    from recovery.models import PaymentAttempt

    final = _cases_by_invoice(store)
    first_retry = dict(
        PaymentAttempt.objects.filter(store=store, source="recoup_retry")
        .order_by("-attempted_at")  # the earliest last, so it stays
        .values_list("case__invoice__stripe_id", "attempted_at")
    )
    width = max(len(s.label) for s in SCENARIOS) + 13
    print(
        f"\n  {'decline (card)':{width}s} {'classify says':39s} "
        + " ".join(f"{p:8s}" for p in POPULATIONS)
        + f"  Recoup's charges {'/'.join(POPULATIONS)}, then status"
    )
    never_retried = retried = 0
    for scenario in SCENARIOS:
        expected = scenario.expected()
        charges, statuses = [], []
        for r in (r for r in renewals if r.scenario == scenario):
            ours = _recoup_charges(ctx.fake, r.fingerprint)
            case = final.get(r.invoice)
            charges.append(str(len(ours)))
            statuses.append(
                "-"
                if case is None
                else case.status + ("" if case.track == expected.track else f" as {case.track}")
            )
            where = f"{scenario.label} [{r.population}] {r.invoice}"
            if ours and not scenario.may_retry:
                story = (  # the first one's timeline; the others are alike, as a rule
                    f"; timeline:{_timeline(case)}" if case and not never_retried else ""
                )
                ctx.miss(
                    f"{where}: {len(ours)} charge(s) by Recoup on a card that must not be "
                    f"retried ({expected.track}); sources {Counter(e['source'] for e in ours)}"
                    + story
                )
                never_retried += len(ours)
            retried += len(ours) if scenario.may_retry else 0
            if expected.retry_after and r.invoice in first_retry and case is not None:
                waited = first_retry[r.invoice] - case.opened_at
                if waited < expected.retry_after:
                    ctx.miss(
                        f"{where}: first retry after {waited}, must wait {expected.retry_after}"
                    )
        print(
            f"  {f'{scenario.label} ({scenario.brand})':{width}s} "
            f"{expected.track + ' ' + (expected.code or '-'):39s} "
            + " ".join(f"{cells[scenario, p]:8s}" for p in POPULATIONS)
            + f"  {'/'.join(charges)} {'/'.join(sorted(set(statuses)))}"
            + ("" if scenario.may_retry else "  (no retry)")
        )
    print(
        f"  Recoup's charges on cards that must not be retried: {never_retried} (target 0); "
        f"on soft-declined cards: {retried}"
    )


def _facts_table(ctx: Context, renewals: list[Renewal], facts: dict) -> None:
    """Per kind of customer: what Stripe holds against what Recoup read."""
    has_source = any("time_zone_source" in f for f in facts.values())
    print(
        f"\n  {'customer in Stripe':44s} {'expected':28s} read by Recoup (customers)"
        + ("" if has_source else "   [Customer.time_zone_source: n/a]")
    )
    for profile in PROFILES:
        mine = [facts.get(r.customer) for r in renewals if r.profile == profile]
        read = Counter(
            (f["sms_opt_in"], f["time_zone"] or "(blank)", f.get("time_zone_source", "n/a"))
            if f
            else (None, "(no customer)", "n/a")
            for f in mine
        )
        want = (profile.sms_opt_in, profile.time_zone)
        right = sum(n for (sms, zone, _), n in read.items() if (sms, zone) == want)
        shown = "; ".join(
            f"sms {'yes' if sms else 'no'} {zone} ({source}) x{n}"
            for (sms, zone, source), n in read.most_common()
        )
        expected = f"sms {'yes' if want[0] else 'no'} {want[1]}"
        print(f"  {profile.label:44s} {expected:28s} {right}/{len(mine)} right: {shown}")
        if right != len(mine) and not ctx.args.no_facts:
            ctx.miss(
                f"customer facts of {profile.label}: {len(mine) - right} of {len(mine)} "
                f"customers read otherwise than {expected} ({shown})"
            )


# ---------------------------------------------------------------- burst


def _burst(ctx: Context, n: int) -> None:
    store, secret, _ = _store("Burst", BURST_KEY)
    renewals, events, bodies = _burst_renewals(ctx, n)
    floor = n / RATE_LIMIT_RPS
    timeout = ctx.args.timeout or max(180.0, 5 * floor + 120)
    reads_from, limited_from = len(ctx.fake.requests), ctx.fake.rate_limited
    cpu_before = ctx.app.cpu()
    result: dict = {}
    watcher = threading.Thread(
        target=_burst_watch, args=(ctx, store, n, timeout, reads_from, result), daemon=True
    )
    watcher.start()
    path = f"/webhooks/stripe/{store.pk}/"
    delivery = _deliver(
        ctx.app.port, path, secret, events, bodies, BURST_CONNECTIONS, ctx.fakestripe.sign
    )
    watcher.join()
    cpu = ctx.app.cpu()
    cpu.subtract(cpu_before)
    planned_at, progress = result["planned_at"], result["progress"]
    took = (planned_at or time.monotonic()) - delivery.first_at
    settled_at = result["settled_at"]
    ratio = took / floor
    reads = Counter(
        e["status"]
        for e in ctx.fake.requests[reads_from:]
        if e["method"] == "GET" and READS.match(e["path"])
    )
    limited = ctx.fake.rate_limited - limited_from
    p50, p99 = (_percentile(delivery.latency, q) * 1000 for q in (50, 99))
    print(
        f"  delivered in {delivery.elapsed:.1f} s ({len(events) / delivery.elapsed:,.0f} events/s), "
        f"webhook latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 < {TARGET_P99_MS:.0f} ms), "
        f"{len(delivery.failures)} failed"
    )
    print(
        f"  first event to last case classified and planned: {took:.1f} s; the rate limit's "
        f"floor {floor:.1f} s ({n:,} reads at {RATE_LIMIT_RPS}/s); ratio {ratio:.2f} "
        f"(target <= {TARGET_RATIO})"
    )
    print(
        "  first event to every stored event processed: "
        + (f"{settled_at - delivery.first_at:.1f} s" if settled_at else "not within the timeout")
    )
    print(
        f"  GET /v1/invoices/<id> seen by the emulator: {sum(reads.values()):,} "
        f"({', '.join(f'{s}: {k:,}' for s, k in sorted(reads.items(), key=str))}) for "
        f"{n:,} reads needed; 429s: {limited:,} (target 0)"
    )
    _rate_margin(ctx.fake.requests[reads_from:], delivery)
    _burst_cases(ctx, store, renewals)
    print(
        f"  CPU seconds until every event was processed ({os.cpu_count()} CPUs): "
        + ", ".join(f"{name} {max(0.0, s):.0f}" for name, s in cpu.most_common())
        + (" (postgres: its backends alive at both ends)" if "postgres" in cpu else "")
    )
    if progress["failed"]:
        print(f"  {progress['failed']} events failed in the intake (the sweep tries them again)")

    if planned_at is None:
        ctx.miss(
            f"burst: after {timeout:.0f} s only {progress['planned']:,} of {n:,} cases were "
            f"classified and planned ({progress['cases']:,} cases, {progress['pending']:,} "
            "events pending)"
        )
    elif settled_at is None:
        ctx.miss(f"burst: after {timeout:.0f} s {progress['pending']:,} events were still pending")
    if ratio > TARGET_RATIO:
        ctx.miss(
            f"burst: {took:.1f} s is {ratio:.2f}x the rate limit's floor (target <= {TARGET_RATIO})"
        )
    if limited:
        ctx.miss(f"burst: the emulator answered 429 to {limited:,} requests (target 0)")
    if not p99 < TARGET_P99_MS:
        ctx.miss(f"burst: webhook p99 {p99:.1f} ms (target < {TARGET_P99_MS:.0f} ms)")
    for kind, status, body in delivery.failures[:5]:
        ctx.miss(f"burst: webhook answered {status} to {kind}: {body!r}")


def _rate_margin(requests: list[dict], delivery: Delivery) -> None:
    """How close the product came to the limit, as the emulator counts: the shortest time
    in which RATE_LIMIT_RPS + 1 requests in a row reached it (the last one is a 429 when
    that is under 1 s; paced at the headroom's rate it is 1 s / headroom), and when each
    429 came (seconds after the first event; while the events are delivered, the load
    shares the emulator's process)."""
    first = time.time() - (time.monotonic() - delivery.first_at)
    times = sorted(e["time"] for e in requests)
    spans = [b - a for a, b in zip(times, times[RATE_LIMIT_RPS:], strict=False)]
    if spans:
        print(
            f"  tightest {RATE_LIMIT_RPS + 1} requests in a row at the emulator: "
            f"{min(spans) * 1000:.0f} ms (a 429 under 1,000 ms); "
            f"median {statistics.median(spans) * 1000:.0f} ms"
        )
    refused = [e["time"] - first for e in requests if e["status"] == 429]
    if refused:
        print(
            f"  429s at {', '.join(f'+{t:.1f} s' for t in refused[:10])} "
            f"(delivery ended at +{delivery.elapsed:.1f} s)"
        )


def _burst_renewals(ctx: Context, n: int) -> tuple[list[Renewal], list[dict], list[bytes]]:
    """N renewals of a second account (the declines in turn, 3DS left out), failed at
    once; their failure events and the bodies Stripe would post."""
    fs, fake = ctx.fakestripe, ctx.fake
    scenarios = [s for s in SCENARIOS if not s.requires_action]
    t0 = time.monotonic()
    renewals = [
        _renewal(
            fake, BURST_KEY, i, scenarios[i % len(scenarios)], PROFILES[i % len(PROFILES)], "X"
        )
        for i in range(n)
    ]
    for r in renewals:
        r.events = []  # the product meets these customers through their failure events
        fake.world.rules[r.invoice] = r.scenario.outcomes(fs)
    _fail_renewals(fake, BURST_KEY, renewals)
    events = [e for r in renewals for e in r.events]
    bodies = [fake.event_payload(e) for e in events]
    print(
        f"\nBurst: {n:,} renewals fail at once ({len(scenarios)} declines in turn, "
        f"3DS left out), {len(events):,} events ({sum(map(len, bodies)) / len(bodies) / 1024:.1f} "
        f"KiB each) over {BURST_CONNECTIONS} connections; built in the emulator in "
        f"{time.monotonic() - t0:.0f} s"
    )
    return renewals, events, bodies


def _burst_watch(ctx: Context, store, n: int, timeout: float, reads_from: int, result: dict):
    """Polls until every case is classified and planned (into `result`), with a progress
    line a minute."""
    from django.db import connection

    time.sleep(0.5)
    started = shown = time.monotonic()

    def done(p: dict) -> bool:
        nonlocal shown
        if time.monotonic() - shown >= 60:
            shown = time.monotonic()
            reads = sum(
                1
                for e in ctx.fake.requests[reads_from:]
                if e["method"] == "GET" and READS.match(e["path"])
            )
            print(
                f"  ... {shown - started:4.0f} s: {p['stored']:,} events stored, "
                f"{p['pending']:,} pending; {p['cases']:,} cases, {p['planned']:,} planned; "
                f"{reads:,} reads",
                flush=True,
            )
        if p["planned"] == n and "planned_at" not in result:
            result["planned_at"] = time.monotonic()
        return p["planned"] == n and p["pending"] == 0

    # The burst's figure is the moment the last case was classified and planned; the
    # watch goes on until every stored event was processed too (the Charge and
    # PaymentIntent events that come after, which change no case's track), and says when.
    # Once a second: each look counts the store's events and cases (tens of thousands of
    # rows), work for the database the product's own would wait behind.
    result["settled_at"], result["progress"] = _wait(store.pk, done, timeout, ctx.app, every=1.0)
    result.setdefault("planned_at", None)
    connection.close()


def _burst_cases(ctx: Context, store, renewals: list[Renewal]) -> None:
    """One case per invoice, classified as classify says."""
    from django.db.models import Count

    from recovery.models import RecoveryCase

    cases = RecoveryCase.objects.filter(store=store)
    per_invoice = Counter(
        dict(cases.order_by().values_list("invoice__stripe_id").annotate(k=Count("pk")))
    )
    expected = {r.invoice: r.scenario.expected() for r in renewals}
    missing = set(expected) - set(per_invoice)
    twice = [i for i, k in per_invoice.items() if k > 1]
    extra = set(per_invoice) - set(expected)
    print(
        f"  cases: {sum(per_invoice.values()):,} for {len(expected):,} invoices "
        f"({len(missing)} without a case, {len(twice)} with more than one, {len(extra)} unknown)"
    )
    wrong, waiting = Counter(), 0
    for inv, track, code, awaited in cases.values_list(
        "invoice__stripe_id", "track", "decline_code", "decline_awaited_until"
    ):
        want = expected.get(inv)
        if awaited is not None:
            waiting += 1
        elif want is not None and (track, code) != (want.track, want.code):
            wrong[f"{want.code} -> {track} {code or '-'}"] += 1
    right = len(expected) - sum(wrong.values()) - len(missing) - waiting
    print(
        f"  classified as classify says: {right:,} of {len(expected):,} "
        f"({waiting:,} still waiting for their decline)"
    )
    if missing or twice or extra:
        ctx.miss(
            f"burst: not one case per invoice ({len(missing)} missing, {len(twice)} "
            f"doubled, e.g. {sorted(missing)[:3] + twice[:3]}, {len(extra)} unknown)"
        )
    for text, k in wrong.most_common(10):
        ctx.miss(f"burst: {k} cases classified {text} (classify disagrees)")


# ---------------------------------------------------------------- main


def _gist(error: str) -> str:
    """An error's first line, and PostgreSQL's CONTEXT line when it has one."""
    lines = error.splitlines()
    return " ".join(lines[:1] + [ln for ln in lines if ln.startswith("CONTEXT")])[:300]


def _events_settled(ctx: Context) -> None:
    """Every stored event processed in the end; those that needed more than one go."""
    from django.db.models import Count

    from recovery.models import StripeEvent

    outcomes = dict(StripeEvent.objects.order_by().values_list("outcome").annotate(k=Count("pk")))
    again = StripeEvent.objects.filter(attempts__gt=1).count()
    print(f"\nStored events by outcome: {outcomes}; {again} processed only on a later attempt")
    if outcomes.get("pending"):
        ctx.miss(f"{outcomes['pending']:,} stored events never processed")
    for e in StripeEvent.objects.filter(outcome="failed")[:5]:
        ctx.miss(f"event {e.type} {e.event_id} failed {e.attempts} times: {_gist(e.error)}")


def _git_state() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = len(git("status", "--porcelain").splitlines())
    return f"{git('rev-parse', '--short', 'HEAD')}" + (
        f" + {changed} uncommitted changes" if changed else ""
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--burst", type=int, default=10_000, help="renewals failing at once (0: none)")
    ap.add_argument("--no-conformance", action="store_true", help="only the burst")
    ap.add_argument(
        "--timeout", type=float, help="seconds the burst may take (default: 5x its floor + 120)"
    )
    ap.add_argument("--days", type=float, default=30, help="simulated days of scheduler passes")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for classification")
    ap.add_argument("--no-facts", action="store_true", help="customer facts printed, not checked")
    ap.add_argument("--web-workers", type=int, default=4, help="gunicorn worker processes")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    ap.add_argument("--intake-workers", type=int, default=2, help="intake worker processes")
    ap.add_argument(
        "--worker-nice",
        type=int,
        default=10,
        help="CPU niceness of the intake workers and the scheduler (the README runs them "
        "at 10 on a machine they share with the web server; 0: as gunicorn)",
    )
    ap.add_argument("--sqlite", action="store_true", help="a temporary SQLite file, not PostgreSQL")
    ap.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL admin URL (a database is created next to it and dropped)",
    )
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    ap.add_argument(
        "--profile", metavar="DIR", help="run the intake workers under cProfile; stats to DIR"
    )
    ap.add_argument("--_intake", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_scheduler", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_simulate", nargs=2, metavar=("STORE", "DAYS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._intake:
        return _child_intake()
    if args._scheduler:
        return _child_scheduler()
    if args._simulate:
        return _child_simulate(args._simulate[0], float(args._simulate[1]))

    fakestripe = _emulator()

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)

    from cryptography.fernet import Fernet

    fake = fakestripe.FakeStripe([CONFORMANCE_KEY, BURST_KEY], seed=11)
    fake.latency_ms, fake.rate_limit_rps = LATENCY_MS, RATE_LIMIT_RPS
    fake.world = fakestripe.ScriptedWorld({})
    logs = Path(tempfile.mkdtemp(prefix="recoup-conformance-"))
    dbname = f"recoup_conformance_{os.getpid()}"
    if args.sqlite:
        db_url, db_text = (
            f"sqlite:///{logs / 'recoup.sqlite3'}",
            f"SQLite {logs / 'recoup.sqlite3'}",
        )
    else:
        db_url = f"{args.pg.rpartition('/')[0]}/{dbname}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": db_url,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "STRIPE_API_BASE": fake.url,
        "REDIS_URL": "",
        "EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
        "SMS_BACKEND": "messaging.sms.locmem.SmsBackend",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "BENCH_WORKER_NICE": str(args.worker_nice),
        **({"BENCH_PROFILE_DIR": os.path.abspath(args.profile)} if args.profile else {}),
    }
    app = Recoup(env, logs, dbname)
    ctx = Context(fakestripe, fake, app, args)
    created = ok = False
    try:
        if not args.sqlite:
            import psycopg

            with psycopg.connect(args.pg, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{dbname}"')
                version = admin.execute("SHOW server_version").fetchone()[0]
            created = True
            db_text = f"PostgreSQL {version.split()[0]}, database {dbname}"
        migrate = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stderr[-3000:]}")
        os.environ.update(env)
        _django()

        app.start_web(args.web_workers, args.threads)
        app.start_workers(args.intake_workers)
        app.start_scheduler()
        print(
            f"Recoup {_git_state()} on {db_text}; gunicorn {args.web_workers} workers x "
            f"{args.threads} threads (gthread) on :{app.port}, {args.intake_workers} intake "
            f"workers (stripe_events_work), 1 scheduler (run_due every "
            f"{SCHEDULER_EVERY_SECONDS} s), those at nice {args.worker_nice}; emulator {fake.url} ({LATENCY_MS} ms a request, "
            f"{RATE_LIMIT_RPS} requests/s per account); "
            f"{os.cpu_count()} CPUs"
        )
        if not args.no_conformance:
            _conformance(ctx)
        if args.burst > 0:
            if "scheduler" not in app.procs:
                app.start_scheduler()
            _burst(ctx, args.burst)

        for text in app.dead():
            ctx.miss(f"process {text}")
        app.stop_all()
        _events_settled(ctx)
        crashes, notes = app.log_problems()
        for text in crashes:
            ctx.miss(f"log: {text}")
        if notes:
            print("\nOther log lines (not counted as misses):")
            for text in notes[:15]:
                print(f"  {text}")
        for u in fake.unhandled[:5]:
            ctx.miss(f"Recoup called {u['method']} {u['path']}, which Stripe does not have")
        for e in fake.errors[:5]:
            ctx.miss(f"emulator error: {e}")
        ignored = Counter(
            f"{i['method']} {i['path'].rsplit('/', 1)[0]} {i['param']}" for i in fake.ignored_params
        )
        if ignored:
            print(f"Parameters the emulator does not act on: {dict(ignored.most_common(8))}")

        print(f"\n{len(ctx.misses)} misses" + (":" if ctx.misses else ""))
        for text in ctx.misses:
            print(f"  MISS {text}")
        ok = not ctx.misses
    except BaseException:
        args.keep_logs = True
        raise
    finally:
        app.stop_all()
        fake.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if created:
            import psycopg

            with psycopg.connect(args.pg, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        if args.keep_logs or not ok:
            print(f"logs: {logs}", file=sys.stderr)
        else:
            for p in logs.iterdir():
                p.unlink()
            logs.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
