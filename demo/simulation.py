"""Strategy simulation: one seeded cohort of subscription customers, three ways to recover.

`build_cohort` draws the customers, their failed renewals (with a decline-code mix like
the one in DOMAIN.md) and the card events that follow some failures (card-updater
refreshes, customers saving a new card). Every strategy sees exactly the same cohort:

- ``recoup`` drives the real code: a throw-away sandbox store, failures entered the way
  the intake enters them once it has read the decline back (`recovery_case_open` + the
  attempt record + `case_attempt_seen`, with the decline of the failed PaymentIntent its
  Stripe records, `sandbox_payment_record`, as the read-back finds it), card events through `engine.customer_card_changed`, and simulated time stepped with
  time_machine, calling `scheduler.run_due(now=...)` at each case's next action. All of it
  runs inside one transaction that is rolled back, so nothing is left behind.
- ``fixed`` retries on days 3, 7 and 14 after the failure whatever the decline code
  (a card updated by the updater is used at the next of those retries).
- ``none`` never retries.

In every strategy a customer who saves a new card pays at once (on-session), and every
charge is decided by the same sandbox issuer (`SandboxGateway`, seeded): the same
invoice's n-th attempt draws the same random number in every strategy, so differences
come from when and whether each strategy tries, not from luck.

Failures happen during the first ``days`` days; every case is then followed to the end
of its recovery window, so each failure is either recovered or lost.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from recovery import engine
from recovery.domain import declines, timing
from recovery.gateways.sandbox import Hint, SandboxGateway, sandbox_payment_record
from recovery.models import CaseEvent, PaymentAttempt, RecoveryCase, RetryPolicy
from recovery.scheduler import run_due
from recovery.services import payment_attempt_record, recovery_case_open
from recovery.stripe_payloads import decline_from_payment_intent
from stores.models import Store
from subscriptions import services as subs
from subscriptions.models import Customer, Invoice, PaymentMethod, Subscription

STRATEGIES = ("recoup", "fixed", "none")
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # a Monday, well before any live data
FIXED_RETRY_DAYS = (3, 7, 14)

# DOMAIN.md: mostly insufficient funds and generic declines, some card-data problems, a
# few lost/stolen cards, transient trouble and bank authentication.
DECLINE_MIX: list[tuple[str, float]] = [
    ("insufficient_funds", 34),
    ("do_not_honor", 15),
    ("generic_decline", 15),
    ("expired_card", 11),
    ("incorrect_cvc", 5),
    ("try_again_later", 6),
    ("authentication_required", 6),
    ("processing_error", 2),
    ("card_velocity_exceeded", 2),
    ("lost_card", 2),
    ("stolen_card", 2),
]
BRANDS = [("visa", 0.6), ("mastercard", 0.4)]
ZONES = [
    ("America/New_York", 0.3),
    ("America/Chicago", 0.15),
    ("America/Los_Angeles", 0.2),
    ("Europe/London", 0.15),
    ("Europe/Berlin", 0.15),
    ("Australia/Sydney", 0.05),
]
PLAN_AMOUNTS = [(900, 0.2), (1500, 0.2), (2900, 0.3), (4900, 0.2), (9900, 0.1)]

# Share of failures followed by a card-updater refresh (Visa Account Updater / Mastercard
# ABU): mostly expired and reissued cards; and by the customer saving a new card.
UPDATER_SHARE = {"expired_card": 0.45, "lost_card": 0.30, "stolen_card": 0.30}
UPDATER_SHARE_SOFT = 0.04
CUSTOMER_SHARE = {"soft": 0.10, "card_update": 0.35, "hard": 0.35, "authentication": 0.45}
CUSTOMER_MEAN_DELAY_DAYS = 3.0

# Card-network limits on attempts per card (DOMAIN.md), checked after the fact.
NETWORK_LIMITS = {
    "visa": [(dt.timedelta(days=30), 15)],
    "mastercard": [(dt.timedelta(days=1), 10), (dt.timedelta(days=30), 35)],
}


def _pick(rng: random.Random, table: list[tuple]):
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights=weights, k=1)[0]


# ---------------------------------------------------------------- the cohort


@dataclass
class SimCustomer:
    index: int
    stripe_id: str
    brand: str
    time_zone: str
    first_seen_at: dt.datetime
    amount: int

    def card(self, generation: int) -> tuple[str, str, str]:
        """(payment method id, fingerprint, last4) of the card in use at `generation`."""
        return (
            f"pm_{self.stripe_id}_{generation}",
            f"fp_{self.stripe_id}_{generation}",
            f"{(self.index * 7919 + generation * 131) % 10000:04d}",
        )


@dataclass
class Failure:
    index: int
    customer: int
    at: dt.datetime
    code: str
    track: str
    group: str
    amount: int
    window_end: dt.datetime

    @property
    def invoice_id(self) -> str:
        return f"in_sim_{self.index:06d}"


@dataclass
class CardEvent:
    customer: int
    failure: int
    at: dt.datetime
    kind: str  # "updater" | "customer"
    new_number: bool  # a new card number, so a new fingerprint


@dataclass
class Cohort:
    seed: int
    days: int
    window_days: int
    start: dt.datetime
    customers: list[SimCustomer]
    failures: list[Failure]
    card_events: list[CardEvent]

    @property
    def end(self) -> dt.datetime:
        return max(
            [self.start + dt.timedelta(days=self.days)] + [f.window_end for f in self.failures]
        )


def default_window_days() -> int:
    return RetryPolicy(version=0).window_days("month")


def build_cohort(
    *, seed: int, customers: int, days: int, failure_rate: float = 0.25, window_days: int = 21
) -> Cohort:
    """Draw the cohort: monthly subscribers, each renewal failing with `failure_rate`
    (at most one failure per customer in the period), and the card events after some."""
    rng = random.Random(f"recoup-simulation:{seed}")
    start = EPOCH
    people: list[SimCustomer] = []
    failures: list[Failure] = []
    events: list[CardEvent] = []
    for i in range(customers):
        tenure_days = _pick(
            rng,
            [
                (rng.uniform(5, 60), 0.25),
                (rng.uniform(60, 365), 0.4),
                (rng.uniform(365, 1500), 0.35),
            ],
        )
        customer = SimCustomer(
            index=i,
            stripe_id=f"cus_sim{seed}_{i:05d}",
            brand=_pick(rng, BRANDS),
            time_zone=_pick(rng, ZONES),
            first_seen_at=start - dt.timedelta(days=tenure_days),
            amount=_pick(rng, PLAN_AMOUNTS),
        )
        people.append(customer)
        anchor = start + dt.timedelta(seconds=rng.uniform(0, 30 * 86400))
        renewal = anchor
        while renewal < start + dt.timedelta(days=days):
            if rng.random() < failure_rate:
                code = _pick(rng, DECLINE_MIX)
                cls = declines.classify(decline_code=code)
                failure = Failure(
                    index=len(failures),
                    customer=i,
                    at=renewal.replace(microsecond=0),
                    code=code,
                    track=cls.track,
                    group=cls.decline_group,
                    amount=customer.amount,
                    window_end=renewal.replace(microsecond=0) + dt.timedelta(days=window_days),
                )
                failures.append(failure)
                events += _card_events_after(rng, failure)
                break
            renewal += dt.timedelta(days=30)
    events.sort(key=lambda e: (e.at, e.customer, e.kind))
    return Cohort(seed, days, window_days, start, people, failures, events)


def _card_events_after(rng: random.Random, failure: Failure) -> list[CardEvent]:
    out = []
    hard = failure.track == "hard"
    updater = UPDATER_SHARE.get(failure.code, UPDATER_SHARE_SOFT if failure.track == "soft" else 0)
    if rng.random() < updater:
        delay = dt.timedelta(hours=rng.uniform(2, 240))
        out.append(CardEvent(failure.customer, failure.index, failure.at + delay, "updater", hard))
    if rng.random() < CUSTOMER_SHARE.get(failure.track, 0.1):
        delay = dt.timedelta(days=max(rng.expovariate(1 / CUSTOMER_MEAN_DELAY_DAYS), 0.02))
        if failure.at + delay < failure.window_end:
            out.append(
                CardEvent(failure.customer, failure.index, failure.at + delay, "customer", True)
            )
    return [
        CardEvent(e.customer, e.failure, e.at.replace(microsecond=0), e.kind, e.new_number)
        for e in out
    ]


def failed_payment_intent(
    *, failure: Failure, customer: SimCustomer, payment_method: str, fingerprint: str, last4: str
) -> dict:
    """The failure's PaymentIntent as the sandbox's Stripe holds it (`latest_charge`
    expanded, no `invoice`: PaymentIntents and Charges have none); its invoice's read back
    gives it with `latest_charge` an id."""
    pi_id, charge_id = f"pi_sim_{failure.index:06d}", f"ch_sim_{failure.index:06d}"
    card = {"brand": customer.brand, "last4": last4, "fingerprint": fingerprint}
    return {
        "id": pi_id,
        "object": "payment_intent",
        "amount": failure.amount,
        "currency": "usd",
        "customer": customer.stripe_id,
        "created": int(failure.at.timestamp()),
        "status": "requires_action"
        if failure.code == "authentication_required"
        else "requires_payment_method",
        "payment_method": payment_method,
        "last_payment_error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": failure.code,
            "message": "Your card was declined.",
            "charge": charge_id,
            "payment_method": {
                "id": payment_method,
                "object": "payment_method",
                "type": "card",
                "card": card,
            },
        },
        "latest_charge": {
            "id": charge_id,
            "object": "charge",
            "amount": failure.amount,
            "currency": "usd",
            "customer": customer.stripe_id,
            "payment_intent": pi_id,
            "payment_method": payment_method,
            "paid": False,
            "status": "failed",
            "failure_code": "card_declined",
            "failure_message": "Your card was declined.",
            "outcome": {"type": "issuer_declined", "reason": failure.code},
            "payment_method_details": {"type": "card", "card": card},
        },
    }


# ---------------------------------------------------------------- shared issuer


class SimulationGateway(SandboxGateway):
    """The sandbox issuer, with the idempotency key namespaced by invoice and attempt
    number instead of the case's database id, so that a seed gives the same outcomes on
    any database and the n-th attempt on an invoice draws the same number in every
    strategy. The approval model itself is the sandbox's, unchanged."""

    def _charge(self, *, object_id: str, idempotency_key: str, amount: int, hint):
        number = idempotency_key.rsplit("-", 1)[-1]
        return super()._charge(
            object_id=object_id,
            idempotency_key=f"{object_id}-attempt-{number}",
            amount=amount,
            hint=hint,
        )


@dataclass
class Attempt:
    failure: int
    at: dt.datetime
    source: str  # stripe_auto (the failure itself) | retry | customer | card_update | ...
    outcome: str
    fingerprint: str
    brand: str


@dataclass
class StrategyResult:
    strategy: str
    metrics: dict
    runtime: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- fixed / none, in process


def _hint(cohort: Cohort, failure: Failure, now: dt.datetime, card_changed: bool) -> Hint:
    customer = cohort.customers[failure.customer]
    local = now.astimezone(timing._zone(customer.time_zone))
    return Hint(
        decline_group=failure.group,
        track=failure.track,
        hours_since_failure=(now - failure.at).total_seconds() / 3600,
        payday=timing.is_payday(local),
        local_hour=local.hour,
        card_changed=card_changed,
        decline_code=failure.code,
    )


def run_baseline(cohort: Cohort, strategy: str) -> StrategyResult:
    """`fixed` or `none`, simulated in process against the same sandbox issuer."""
    started = time.perf_counter()
    gateway = SimulationGateway(seed=cohort.seed)
    attempts: list[Attempt] = []
    outcomes: dict[int, tuple[str, dt.datetime, str]] = {}
    by_failure: dict[int, list[CardEvent]] = {}
    for e in cohort.card_events:
        by_failure.setdefault(e.failure, []).append(e)
    for f in cohort.failures:
        customer = cohort.customers[f.customer]
        generation = 0
        _, fp, _ = customer.card(generation)
        attempts.append(Attempt(f.index, f.at, "stripe_auto", "failed", fp, customer.brand))
        steps: list[tuple[dt.datetime, int, str, CardEvent | None]] = [
            (e.at, 0, e.kind, e) for e in by_failure.get(f.index, [])
        ]
        if strategy == "fixed":
            steps += [(f.at + dt.timedelta(days=d), 1, "retry", None) for d in FIXED_RETRY_DAYS]
        steps.sort(key=lambda s: (s[0], s[1]))
        card_changed = False
        number = 0
        outcome = ("lost", f.window_end, "")
        for at, _, kind, event in steps:
            if at >= f.window_end:
                break
            if kind in ("updater", "customer"):
                generation += 1
                if event.new_number:
                    _, fp, _ = customer.card(generation)
                card_changed = True
                if kind == "updater":
                    continue  # used at the next scheduled retry, if there is one
            number += 1
            result = gateway.invoice_pay(
                invoice_id=f.invoice_id,
                idempotency_key=f"{strategy}-{f.invoice_id}-attempt-{number}",
                amount=f.amount,
                hint=_hint(cohort, f, at, card_changed),
            )
            source = "customer" if kind == "customer" else "retry"
            attempts.append(Attempt(f.index, at, source, result.outcome, fp, customer.brand))
            if result.outcome == "succeeded":
                via = "customer" if kind == "customer" else "retry"
                if kind == "retry" and card_changed:
                    via = "card_updater"
                outcome = ("recovered", at, via)
                break
            card_changed = False
        outcomes[f.index] = outcome
    return _summarise(cohort, strategy, attempts, outcomes, time.perf_counter() - started)


# ---------------------------------------------------------------- recoup, the real code


class _Rollback(Exception):
    pass


class _ErrorLog(logging.Handler):
    """Keeps the first errors the engine and scheduler log, to report them."""

    MAX_ERRORS = 25

    def __init__(self):
        super().__init__(logging.ERROR)
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.first) < 3:
            text = record.getMessage()
            if record.exc_info:
                text += ": " + logging.Formatter().formatException(record.exc_info).splitlines()[-1]
            self.first.append(text)


def run_recoup(cohort: Cohort, *, log=None) -> StrategyResult:
    """Drive the real engine and scheduler through the cohort, in one rolled-back
    transaction."""
    import time_machine
    from django.db import transaction

    started = time.perf_counter()
    box: dict = {}
    errors = _ErrorLog()
    logging.getLogger("recovery").addHandler(errors)
    try:
        with transaction.atomic():
            with time_machine.travel(cohort.start, tick=False) as traveller:
                box["result"] = _recoup_inside(cohort, traveller, log=log, errors=errors)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        logging.getLogger("recovery").removeHandler(errors)
    attempts, outcomes, extra, notes = box["result"]
    result = _summarise(cohort, "recoup", attempts, outcomes, time.perf_counter() - started)
    result.metrics.update(extra)
    result.notes += notes
    return result


def _recoup_inside(cohort: Cohort, traveller, *, log=None, errors: _ErrorLog):
    from django.db.models import Min

    notes: list[str] = []
    store = Store.objects.create(
        name=f"Simulation (seed {cohort.seed})",
        gateway=Store.Gateway.SANDBOX,
        timezone="UTC",
        currency="usd",
    )
    RetryPolicy.objects.create(store=store, version=1, created_by="simulation")
    # Other stores' due work must not be touched by our passes (run_due is global): any
    # open case of theirs due inside our simulated period waits (undone by the rollback).
    parked = (
        RecoveryCase.objects.filter(status=RecoveryCase.Status.OPEN, next_action_at__lte=cohort.end)
        .exclude(store=store)
        .update(next_action_at=None)
    )
    if parked:
        notes.append(
            f"{parked} other stores' open cases were held back during the run (rolled back)"
        )

    # The cohort's customers, cards and subscriptions (the failing ones get invoices later).
    customers = Customer.objects.bulk_create(
        [
            Customer(
                store=store,
                stripe_id=c.stripe_id,
                name=f"Sim Customer {c.index}",
                time_zone=c.time_zone,
                first_seen_at=c.first_seen_at,
            )
            for c in cohort.customers
        ]
    )
    exp_year = cohort.start.year + 3
    cards = PaymentMethod.objects.bulk_create(
        [
            PaymentMethod(
                store=store,
                customer=row,
                stripe_id=c.card(0)[0],
                fingerprint=c.card(0)[1],
                last4=c.card(0)[2],
                brand=c.brand,
                exp_month=12,
                exp_year=exp_year,
                is_default=True,
            )
            for c, row in zip(cohort.customers, customers, strict=True)
        ]
    )
    for row, pm in zip(customers, cards, strict=True):
        row.default_payment_method = pm
    Customer.objects.bulk_update(customers, ["default_payment_method"])
    subscriptions = Subscription.objects.bulk_create(
        [
            Subscription(
                store=store,
                customer=row,
                stripe_id=f"sub_{c.stripe_id}",
                product_name="Coffee Club",
                plan_name="Monthly",
                interval=Subscription.Interval.MONTH,
                amount=c.amount,
                mrr=c.amount,
                currency="usd",
            )
            for c, row in zip(cohort.customers, customers, strict=True)
        ]
    )
    generation = [0] * len(cohort.customers)
    pm_of = [c.card(0)[0] for c in cohort.customers]

    def enter_failure(f: Failure) -> None:
        c = cohort.customers[f.customer]
        customer = Customer.objects.get(pk=customers[f.customer].pk)
        pm = customer.default_payment_method
        invoice = Invoice.objects.create(
            store=store,
            customer=customer,
            subscription=subscriptions[f.customer],
            stripe_id=f.invoice_id,
            amount_due=f.amount,
            currency="usd",
            status=Invoice.Status.OPEN,
            attempt_count=1,
            billing_reason="subscription_cycle",
            payment_intent_id=f"pi_sim_{f.index:06d}",
            stripe_updated=f.at,
        )
        pi = failed_payment_intent(
            failure=f,
            customer=c,
            payment_method=pm.stripe_id,
            fingerprint=pm.fingerprint,
            last4=pm.last4,
        )
        sandbox_payment_record(store=store, invoice_id=f.invoice_id, payment_intent=pi, at=f.at)
        decline = decline_from_payment_intent(pi)
        # As recovery.intake._invoice_failure for invoice.payment_failed and then
        # recovery.lookups for the decline it reads back.
        case, _ = recovery_case_open(
            store=store,
            customer=customer,
            amount=f.amount,
            currency="usd",
            decline=decline,
            at=f.at,
            invoice=invoice,
            subscription=subscriptions[f.customer],
            payment_intent_ids=[f"pi_sim_{f.index:06d}"],
        )
        attempt, created = payment_attempt_record(
            store=store,
            case=case,
            customer=customer,
            source=PaymentAttempt.Source.STRIPE_AUTO,
            outcome=PaymentAttempt.Outcome.REQUIRES_ACTION
            if f.track == "authentication"
            else PaymentAttempt.Outcome.FAILED,
            amount=f.amount,
            currency="usd",
            at=f.at,
            decline=decline,
            invoice_stripe_id=f.invoice_id,
            invoice_attempt_number=1,
        )
        engine.case_attempt_seen(case=case, attempt=attempt, created=created, at=f.at)
        subs.subscription_mark_past_due(subscription=subscriptions[f.customer], at=f.at)

    def card_event(e: CardEvent) -> None:
        c = cohort.customers[e.customer]
        customer = Customer.objects.get(pk=customers[e.customer].pk)
        generation[e.customer] += 1
        g = generation[e.customer]
        if e.kind == "customer":
            pm_id, fp, last4 = c.card(g)
            pm_of[e.customer] = pm_id
            subs.payment_method_upsert(
                store=store,
                customer=customer,
                data={
                    "id": pm_id,
                    "card": {
                        "brand": c.brand,
                        "last4": last4,
                        "exp_month": 6,
                        "exp_year": exp_year + 1,
                        "fingerprint": fp,
                    },
                },
                make_default=True,
            )
            engine.customer_card_changed(
                customer=customer,
                at=e.at,
                source="customer",
                message="Customer saved a new card (simulation)",
            )
        else:
            current = PaymentMethod.objects.get(store=store, stripe_id=pm_of[e.customer])
            fp, last4 = (
                (c.card(g)[1], c.card(g)[2])
                if e.new_number
                else (current.fingerprint, current.last4)
            )
            pm = subs.payment_method_upsert(
                store=store,
                customer=customer,
                data={
                    "id": current.stripe_id,
                    "card": {
                        "brand": c.brand,
                        "last4": last4,
                        "exp_month": 9,
                        "exp_year": exp_year + 2,
                        "fingerprint": fp,
                    },
                },
            )
            engine.customer_card_changed(
                customer=customer,
                at=e.at,
                source="card_updater",
                message=f"Card updater refreshed {pm}",
            )

    exogenous = sorted(
        [(f.at, 0, "failure", f) for f in cohort.failures]
        + [(e.at, 1, "card", e) for e in cohort.card_events],
        key=lambda x: (x[0], x[1]),
    )
    gateways = {store.pk: SimulationGateway(seed=cohort.seed)}
    open_cases = RecoveryCase.objects.filter(store=store, status=RecoveryCase.Status.OPEN)
    actions: dict[str, int] = {}
    passes = 0
    now = cohort.start
    i = 0
    stalled = 0
    while True:
        next_event = exogenous[i][0] if i < len(exogenous) else None
        next_due = open_cases.aggregate(m=Min("next_action_at"))["m"]
        if next_event is None and next_due is None:
            break
        if next_event is not None and (next_due is None or next_event <= next_due):
            now = max(now, next_event)
            traveller.move_to(now)
            _, _, kind, item = exogenous[i]
            i += 1
            (enter_failure if kind == "failure" else card_event)(item)
            continue
        if next_due <= now:
            stalled += 1
            if stalled > 50:
                raise RuntimeError(
                    f"simulation stalled at {now:%Y-%m-%d %H:%M}: a case stays due after passes"
                )
            next_due = now + dt.timedelta(minutes=1)  # like a scheduler running each minute
        else:
            stalled = 0
        now = next_due
        traveller.move_to(now)
        report = run_due(now=now, gateways=gateways)
        passes += 1
        for k, v in report.actions.items():
            actions[k] = actions.get(k, 0) + v
        if actions.get("error", 0) > errors.MAX_ERRORS:
            raise RuntimeError(
                f"simulation stopped at {now:%Y-%m-%d %H:%M}: the scheduler pass failed on "
                f"{actions['error']} cases; first errors: " + " | ".join(errors.first)
            )
    if actions.get("error"):
        notes.append(
            f"the scheduler failed on {actions['error']} case passes; first: "
            + " | ".join(errors.first)
        )

    # Read the results back before the rollback.
    by_invoice = {f.invoice_id: f for f in cohort.failures}
    source_map = {
        PaymentAttempt.Source.STRIPE_AUTO: "stripe_auto",
        PaymentAttempt.Source.RECOUP_RETRY: "retry",
        PaymentAttempt.Source.CARD_UPDATE: "card_update",
        PaymentAttempt.Source.CUSTOMER: "customer",
        PaymentAttempt.Source.AGENT: "agent",
    }
    attempts = [
        Attempt(
            by_invoice[row["case__invoice__stripe_id"]].index,
            row["attempted_at"],
            source_map.get(row["source"], row["source"]),
            row["outcome"],
            row["card_fingerprint"],
            row["card_brand"]
            or cohort.customers[by_invoice[row["case__invoice__stripe_id"]].customer].brand,
        )
        for row in PaymentAttempt.objects.filter(store=store)
        .order_by("attempted_at", "id")
        .values(
            "case__invoice__stripe_id",
            "attempted_at",
            "source",
            "outcome",
            "card_fingerprint",
            "card_brand",
        )
    ]
    outcomes = {}
    for row in RecoveryCase.objects.filter(store=store).values(
        "invoice__stripe_id", "status", "closed_at", "recovered_via"
    ):
        f = by_invoice[row["invoice__stripe_id"]]
        status = {"recovered": "recovered", "open": "open"}.get(row["status"], "lost")
        outcomes[f.index] = (status, row["closed_at"], row["recovered_via"])
    messages = (
        CaseEvent.objects.filter(store_id=store.pk, kind="message_due")
        .exclude(data__purpose=engine.Purpose.RECOVERED)
        .count()
    )
    extra = {
        "messages": messages,
        "scheduler_passes": passes,
        "scheduler_errors": actions.get("error", 0),
    }
    if log:
        log(f"recoup: {passes} scheduler passes, actions {dict(sorted(actions.items()))}")
    return attempts, outcomes, extra, notes


# ---------------------------------------------------------------- measures


def network_violations(attempts: list[Attempt]) -> tuple[int, int]:
    """(attempts beyond a network limit, cards with any), per card fingerprint, counting
    every attempt that reached the network whoever made it."""
    per_card: dict[str, list[Attempt]] = {}
    for a in attempts:
        if a.outcome == "not_sent" or not a.fingerprint:
            continue
        per_card.setdefault(a.fingerprint, []).append(a)
    over, cards = 0, 0
    for rows in per_card.values():
        rows.sort(key=lambda a: a.at)
        limits = NETWORK_LIMITS.get(
            rows[0].brand.lower(), NETWORK_LIMITS["visa"] + NETWORK_LIMITS["mastercard"]
        )
        bad = 0
        for k, a in enumerate(rows):
            for window, limit in limits:
                in_window = sum(1 for b in rows[: k + 1] if b.at > a.at - window)
                if in_window > limit:
                    bad += 1
                    break
        over += bad
        cards += 1 if bad else 0
    return over, cards


def _same_card_retries(cohort: Cohort, attempts: list[Attempt], tracks: set[str]) -> int:
    """Attempts after a decline of one of `tracks` with no card change in between."""
    events: dict[int, list[dt.datetime]] = {}
    for e in cohort.card_events:
        events.setdefault(e.failure, []).append(e.at)
    count = 0
    last_decline: dict[int, dt.datetime] = {}
    for a in sorted(attempts, key=lambda a: a.at):
        f = cohort.failures[a.failure]
        if a.source != "stripe_auto" and a.outcome != "not_sent" and f.track in tracks:
            since = last_decline.get(a.failure, f.at)
            if not any(since < t <= a.at for t in events.get(a.failure, [])):
                count += 1
        if a.outcome in ("failed", "requires_action"):
            last_decline[a.failure] = a.at
    return count


def _summarise(cohort, strategy, attempts, outcomes, runtime) -> StrategyResult:
    failed = len(cohort.failures)
    recovered = [f for f in cohort.failures if outcomes.get(f.index, ("lost",))[0] == "recovered"]
    still_open = sum(1 for o in outcomes.values() if o[0] == "open")
    tries = [a for a in attempts if a.source != "stripe_auto" and a.outcome != "not_sent"]
    violations, cards = network_violations(attempts)
    days = [
        (outcomes[f.index][1] - f.at).total_seconds() / 86400
        for f in recovered
        if outcomes[f.index][1]
    ]

    def rate(tracks):
        group = [f for f in cohort.failures if f.track in tracks]
        won = [f for f in group if f in recovered]
        return (len(won) / len(group)) if group else 0.0

    via: dict[str, int] = {}
    for f in recovered:
        v = outcomes[f.index][2] or "other"
        via[v] = via.get(v, 0) + 1
    metrics = {
        "failed": failed,
        "recovered": len(recovered),
        "still_open": still_open,
        "recovery_rate": len(recovered) / failed if failed else 0.0,
        "rate_soft": rate({"soft"}),
        "rate_card": rate({"card_update", "hard", "authentication"}),
        "recovered_revenue": sum(f.amount for f in recovered),
        "attempts": len(tries),
        "attempts_per_case": len(tries) / failed if failed else 0.0,
        "hard_retries": _same_card_retries(cohort, attempts, {"hard"}),
        "card_update_retries": _same_card_retries(
            cohort, attempts, {"card_update", "authentication"}
        ),
        "budget_violations": violations,
        "budget_violation_cards": cards,
        "median_days_to_recovery": statistics.median(days) if days else 0.0,
        "via_retry": via.get("recoup_retry", 0) + via.get("retry", 0),
        "via_card_updater": via.get("card_updater", 0),
        "via_customer": via.get("customer", 0),
        "messages": None,
    }
    result = StrategyResult(strategy, metrics, runtime)
    if still_open:
        result.notes.append(
            f"{still_open} cases were still open with nothing scheduled when time ran out "
            "(counted as not recovered)"
        )
    return result


# ---------------------------------------------------------------- output

ROWS = [
    ("failed", "failed payments", "{:d}"),
    ("recovered", "recovered", "{:d}"),
    ("recovery_rate", "recovery rate", "pct"),
    ("rate_soft", "  soft declines", "pct"),
    ("rate_card", "  card update / hard / auth", "pct"),
    ("recovered_revenue", "recovered revenue", "money"),
    ("via_retry", "  by a retry (same card)", "{:d}"),
    ("via_card_updater", "  after a card-updater refresh", "{:d}"),
    ("via_customer", "  after the customer's new card", "{:d}"),
    ("median_days_to_recovery", "median days to recovery", "{:.1f}"),
    ("attempts", "attempts after the failure", "{:d}"),
    ("attempts_per_case", "attempts per case", "{:.2f}"),
    ("hard_retries", "retries on hard declines", "{:d}"),
    ("card_update_retries", "same-card retries, card-update/auth", "{:d}"),
    ("budget_violations", "network-budget violations", "{:d}"),
    ("budget_violation_cards", "  cards over a network limit", "{:d}"),
    ("messages", "dunning messages due (no thank-yous)", "{:d}"),
    ("runtime", "runtime", "{:.1f} s"),
]


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "pct":
        return f"{value * 100:.1f}%"
    if spec == "money":
        return f"${value / 100:,.2f}"
    return spec.format(value)


def format_table(cohort: Cohort, results: list[StrategyResult], *, database: str = "") -> str:
    width = 37
    col = 13
    head = (
        f"Recoup strategy simulation: seed {cohort.seed}, {len(cohort.customers)} monthly "
        f"subscribers, failures over {cohort.days} days, each followed to the end of its "
        f"{cohort.window_days}-day window ({(cohort.end - cohort.start).days} simulated days)"
        + (f"; database {database}" if database else "")
    )
    card_events = {
        k: sum(1 for e in cohort.card_events if e.kind == k) for k in ("updater", "customer")
    }
    sub = (
        f"Same cohort for every strategy: {len(cohort.failures)} failures; "
        f"{card_events['updater']} card-updater refreshes, {card_events['customer']} customers saving a new card"
    )
    lines = [head, sub, "", " " * width + "".join(f"{r.strategy:>{col}}" for r in results)]
    for key, label, spec in ROWS:
        values = [r.runtime if key == "runtime" else r.metrics.get(key) for r in results]
        lines.append(f"{label:<{width}}" + "".join(f"{_fmt(v, spec):>{col}}" for v in values))
    for r in results:
        for note in r.notes:
            lines.append(f"note ({r.strategy}): {note}")
    return "\n".join(lines)


def write_csv(path: Path, cohort: Cohort, results: list[StrategyResult]) -> None:
    keys = [k for k, _, _ in ROWS if k != "runtime"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["strategy", "seed", "customers", "days", *keys, "runtime_s"])
        for r in results:
            writer.writerow(
                [r.strategy, cohort.seed, len(cohort.customers), cohort.days]
                + [("" if r.metrics.get(k) is None else round(r.metrics[k], 4)) for k in keys]
                + [round(r.runtime, 2)]
            )


def write_chart(path: Path, cohort: Cohort, results: list[StrategyResult]) -> None:
    """A PNG bar chart of the strategies side by side (matplotlib, from the `demo` extra)."""
    panels = [
        ("Recovery rate", [r.metrics["recovery_rate"] * 100 for r in results], "{:.1f}%"),
        ("Recovered revenue", [r.metrics["recovered_revenue"] / 100 for r in results], "${:,.0f}"),
        ("Attempts per case", [r.metrics["attempts_per_case"] for r in results], "{:.2f}"),
    ]
    names = [r.strategy for r in results]
    title = f"Recoup simulation, seed {cohort.seed}, {len(cohort.customers)} customers, {len(cohort.failures)} failures"
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to a file
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(12, 4.5))
    for ax, (label, values, fmt) in zip(axes, panels, strict=True):
        bars = ax.bar(names, values, color=[_hex(n) for n in names])
        ax.set_title(label)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                fmt.format(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
            )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_COLORS = {"recoup": (46, 139, 87), "fixed": (230, 145, 56), "none": (140, 140, 140)}


def _hex(name: str) -> str:
    return "#{:02x}{:02x}{:02x}".format(*_COLORS.get(name, (90, 90, 90)))
