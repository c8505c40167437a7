"""The scheduler's retries and messages, a claimed batch at a time.

A pass claims up to `scheduler.BATCH` due cases. Their due retries are planned, sent and
recorded together: what planning needs is read for the whole batch in a handful of
queries (`facts_load`), and the writes go out in bulk. The guarantees are those of
`engine.case_retry`, batch-wide:

- each attempt is recorded (outcome unknown) before the gateway is called, in the
  transaction that holds its card's lock and re-checks the card's network budget with
  every attempt counted, the batch's own included;
- never two attempts in flight for one case: the in-flight key is set on the locked row;
- at most one attempt per card per batch: a second case on the card is decided after the
  first one's answer is recorded (it may say never, or wait, for the whole card);
- the gateway is called outside any transaction, up to RECOUP_GATEWAY_CONCURRENCY calls
  at once;
- declines and payments are recorded together under the cases' row locks, in the
  batch's order, each before the next case is planned (as `engine.attempt_resolve`
  records one: a paid case is closed, its subscription restored, its thank-you sent);
  anything else (an unknown outcome, a refusal before the network, a fraud signal, a
  case changed while its call was out, a paid order, whose stock is settled in the
  close) is recorded by `engine.attempt_resolve`, one case at a time, as ever;
- if recording the answers fails, the attempts stay unknown with their keys in flight,
  and the next pass reads them back before anything else happens to those cases.

Due dunning messages are sent together too (`messages_process`). Everything else a pass
does (step-downs, closings, read-backs) goes through `engine.case_process_due`, one case
at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min
from django.utils import timezone

from common.bulk import rows_insert, rows_update
from subscriptions.models import Invoice
from subscriptions.services import INVOICE_MARK_FIELDS, invoice_mark_apply

from . import budgets, engine, ports, retry_stats
from .domain import events, outcomes, planning
from .domain.budgets import card_id
from .domain.events import Purpose
from .domain.timing import outcome_key
from .models import CaseEvent, PaymentAttempt, RecoveryCase, Track
from .services import (
    case_close_event,
    case_close_fields,
    case_event_build,
    case_failure_changes,
    decline_classification,
)
from .stripe_payloads import DeclineInfo

logger = logging.getLogger(__name__)

# How long after recording its attempts a batch may go on sending them: well inside the
# claim lease (engine.CLAIM_LEASE), which the recording renews.
SEND_WITHIN = dt.timedelta(minutes=4)

# The attempts as the engine's facts read them, with their case.
ATTEMPT_FACT_FIELDS = ("case_id", *engine.ATTEMPT_FACT)
FAILURE_FIELDS = (
    "inflight_key",
    "attempt_count",
    "last_attempt_at",
    "card_changed_at",
    "amount",
    "track",
    "track_reason",
    "decline_code",
    "advice_code",
    "updated_at",
)


class Writes:
    """Case fields and timeline entries a batch writes together."""

    def __init__(self) -> None:
        self.cases: dict[int, tuple[RecoveryCase, set]] = {}
        self.events: list[CaseEvent] = []

    def case_changed(self, case: RecoveryCase, fields) -> None:
        entry = self.cases.setdefault(case.pk, (case, set()))
        if entry[0] is not case:  # a fresher copy of the same row replaces the older one
            entry = self.cases[case.pk] = (case, entry[1])
        entry[1].update(fields)

    def flush(self, *, open_only: bool = False) -> None:
        """Write it all. `open_only`: the case fields only to rows still open (a case
        closed meanwhile, by a webhook, keeps its close)."""
        groups: dict[frozenset, list] = defaultdict(list)
        for case, fields in self.cases.values():
            groups[frozenset(fields)].append(case)
        where = {"status": RecoveryCase.Status.OPEN} if open_only else None
        for fields, cases in groups.items():
            rows_update(cases, sorted(fields), where=where)
        if self.events:
            rows_insert(self.events)
        self.cases, self.events = {}, []


def _card(case: RecoveryCase) -> tuple:
    brand, fingerprint, pm_id = engine._card_for(case)
    return card_id(
        store_id=case.store_id,
        fingerprint=fingerprint,
        payment_method_id=pm_id,
        customer_id=case.customer_id,
    )


def facts_load(cases: list[RecoveryCase], *, now: dt.datetime) -> None:
    """Attach `engine.BatchFacts` to each case: four queries for the whole batch."""
    ids = [c.pk for c in cases]
    attempts = defaultdict(list)
    for case_id, *row in PaymentAttempt.objects.filter(case_id__in=ids).values_list(
        *ATTEMPT_FACT_FIELDS
    ):
        attempts[case_id].append(tuple(row))
    touches = defaultdict(list)
    for case_id, at, data in CaseEvent.objects.filter(
        case_id__in=ids, kind="message_due"
    ).values_list("case_id", "at", "data"):
        touches[case_id].append((at, data))
    first_opened = dict(
        RecoveryCase.objects.filter(customer_id__in={c.customer_id for c in cases})
        .values_list("customer_id")
        .annotate(first=Min("opened_at"))
        .values_list("customer_id", "first")
    )
    stats = retry_stats.stats_for_stores({c.store_id for c in cases})
    for case in cases:
        case._facts = engine.BatchFacts(
            attempts=attempts[case.pk],
            touches=touches[case.pk],
            earlier_failures=first_opened.get(case.customer_id, case.opened_at) < case.opened_at,
            stats=stats,
        )
    card_rows = budgets.budget_rows_for_cards({_card(c) for c in cases}, at=now)
    for case in cases:
        case._facts.card_rows = card_rows


def _due(cases: list[RecoveryCase], *, now: dt.datetime, action: str) -> tuple[list, list]:
    """(the claimed cases whose next action is `action` and can be taken as a batch, the
    rest): open, nothing in flight, the window still running."""
    due, rest = [], []
    for case in cases:
        ready = case.is_open and not case.inflight_key and case.window_end > now
        (due if ready and case.next_action == action else rest).append(case)
    return due, rest


def retries_process(
    cases: list[RecoveryCase], *, now: dt.datetime, gateways: dict, report, released: set
):
    """Act on the batch's due retries. Returns the cases left for one-at-a-time handling,
    which reads its facts afresh: the batch's may be out of date by then. The ids of the
    cases whose claim the batch gave back with its last write are added to `released`."""
    rest = _retries_process(cases, now=now, gateways=gateways, report=report, released=released)
    for case in rest:
        case.__dict__.pop("_facts", None)
    return rest


def _retries_process(
    cases: list[RecoveryCase], *, now: dt.datetime, gateways: dict, report, released: set
):
    due, rest = _due(cases, now=now, action=RecoveryCase.NextAction.RETRY)
    if not due:
        return rest
    try:
        facts_load(due, now=now)
    except Exception:
        logger.exception("reading the facts of a batch of %s retries failed", len(due))
        return rest + due
    writes = Writes()
    send = []
    for case in due:
        try:
            # Re-check at the moment of acting: other sources may have used the budget.
            engine.case_plan(case, now=now, record=False, acting=True, writes=writes)
        except Exception:
            logger.exception("planning case %s failed in the scheduler pass", case.pk)
            rest.append(case)  # the one-at-a-time path records the error
            continue
        if case.retry_at and case.retry_at <= now:
            send.append(case)
        else:
            report.count("deferred")
    # The plans of the retries to send go out with their attempts' own writes, one
    # statement per case; the others' (not due yet) first, before any card lock is taken,
    # as every path takes a case's row before its card's lock.
    with_attempts = Writes()
    for case in send:
        if case.pk in writes.cases:
            with_attempts.cases[case.pk] = writes.cases.pop(case.pk)
    try:
        with transaction.atomic():
            writes.flush(open_only=True)
            sending, handled_alone = _attempts_record(send, now=now, writes=with_attempts)
    except Exception:
        logger.exception(
            "recording a batch of %s retries failed; trying them one by one", len(send)
        )
        for case in send:  # rolled back: nothing of this batch is in flight
            case.inflight_key = ""
        return rest + send
    rest += handled_alone
    results, late = [], []
    for (case, attempt), result in zip(
        sending, _sends(sending, now=now, gateways=gateways), strict=True
    ):
        if result is None:
            late.append((case, attempt))
        else:
            results.append((case, attempt, result))
            report.count("retried")
    _results_record(results, now=now, released=released)
    if late:
        try:
            _attempts_unsent(late, now=now)
        except Exception:  # left unknown and in flight: the next pass reads them back
            logger.exception("giving back %s unsent attempts failed", len(late))
        report.actions["deferred"] = report.actions.get("deferred", 0) + len(late)
    return rest


def messages_process(cases: list[RecoveryCase], *, now: dt.datetime, report, released: set):
    """Act on the batch's due messages together, as `engine.case_process_due` acts on one:
    the dunning stage moves on, the messaging service is handed each purpose's cases at
    once (`engine.messaging_due_for_cases`: emails decided and recorded together,
    delivered in one provider batch after the commit) and each case is planned again.
    The cases' rows are locked for the whole step, as `messaging.sending.message_send`
    locks one. Returns the cases left for one-at-a-time handling."""
    due, rest = _due(cases, now=now, action=RecoveryCase.NextAction.MESSAGE)
    if not due:
        return rest
    try:
        with transaction.atomic():
            mine, changed = _messages_record(due, now=now)
    except Exception:
        logger.exception("sending a batch of %s messages failed; trying them one by one", len(due))
        return rest + due
    for _ in mine:
        report.count("messaged")
    released.update(c.pk for c in mine)
    for case in changed:
        case.__dict__.pop("_facts", None)
    return rest + changed


def _messages_record(due: list[RecoveryCase], *, now: dt.datetime) -> tuple[list, list]:
    """In the caller's transaction. Returns (the cases messaged, the claimed cases that
    changed since the claim, left to the one-at-a-time path)."""
    claimed = {c.pk: c for c in due}
    fresh = {
        c.pk: c
        for c in RecoveryCase.objects.select_for_update(of=("self",))
        .select_related(
            "store",
            "customer",
            "customer__default_payment_method",
            "invoice",
            "order",
            "subscription",
        )
        .filter(pk__in=list(claimed))
        .order_by("pk")
    }
    mine, changed = [], []
    for pk, case in claimed.items():
        row = fresh.get(pk)
        if row is None or (
            row.status,
            row.inflight_key,
            row.next_action,
            row.next_action_reason,
            row.dunning_stage,
        ) != (
            case.status,
            case.inflight_key,
            case.next_action,
            case.next_action_reason,
            case.dunning_stage,
        ):
            changed.append(case)
        else:
            mine.append(row)
    if not mine:
        return [], changed
    facts_load(mine, now=now)
    writes = Writes()
    by_purpose = defaultdict(list)
    for case in mine:
        case.dunning_stage += 1
        writes.case_changed(case, {"dunning_stage", "claimed_until"})
        case.claimed_until = None  # done with: the claim goes back with this write
        by_purpose[case.next_action_reason].append(case)
    for purpose, group in by_purpose.items():
        engine.messaging_due_for_cases(group, purpose=purpose, at=now, timeline=writes.events)
        for case in group:
            case._facts.touches.append((now, {"purpose": purpose}))
    for case in mine:
        engine.case_plan(case, now=now, writes=writes)
    writes.flush()
    return mine, changed


def _sends(sending: list, *, now: dt.datetime, gateways: dict) -> list:
    """Call the gateway for each recorded attempt, up to RECOUP_GATEWAY_CONCURRENCY calls
    in the air at once (each is a network round trip to Stripe: one after another, a
    batch of 200 would take minutes). Returns each one's answer in order, or None for an
    attempt not sent before the deadline."""
    deadline = time.monotonic() + SEND_WITHIN.total_seconds()

    def send(item):
        case, attempt = item
        if time.monotonic() >= deadline:
            # The gateway is slow: what is not sent by now goes back, recorded as not
            # sent, before the cases' lease could run out and another worker read them
            # back while they were still to be sent.
            return None
        gateway = gateways[case.store_id]  # the scheduler resolved each store's gateway
        return engine.gateway_charge(case, attempt, now=now, gateway=gateway)

    workers = min(len(sending), max(1, int(settings.RECOUP_GATEWAY_CONCURRENCY)))
    if workers <= 1:
        return [send(item) for item in sending]
    # The calls touch no database: the cases and their cards were read before.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recoup-gateway") as pool:
        return list(pool.map(send, sending))


def _attempts_unsent(late: list, *, now: dt.datetime) -> None:
    """Attempts recorded in flight that the batch did not send: not sent, keys cleared."""
    with transaction.atomic():
        for case, attempt in late:
            if not PaymentAttempt.objects.filter(pk=attempt.pk, outcome="unknown").update(
                outcome=PaymentAttempt.Outcome.NOT_SENT, resolved_at=timezone.now()
            ):
                # Settled meanwhile as the payment, on Stripe's word that the invoice was
                # paid: never sent, it was not ours (the credit is judged again).
                engine.attempt_resolve(
                    case=case,
                    attempt=attempt,
                    outcome=PaymentAttempt.Outcome.NOT_SENT,
                    decline=DeclineInfo(),
                    at=now,
                    message="not sent before the batch's deadline",
                )
                continue
            # Put off a little, like any case a pass could not finish: not claimed again
            # by this pass, retried by a later one with the next key.
            RecoveryCase.objects.filter(pk=case.pk, inflight_key=attempt.idempotency_key).update(
                inflight_key="", next_action_at=now + engine.RECONCILE_DELAY
            )


def _attempts_record(cases: list[RecoveryCase], *, now: dt.datetime, writes: Writes):
    """In the caller's transaction: lock the cases and their cards, re-check every card's
    budget, record the attempts in flight, and write `writes` (the batch's plans) with
    them. Returns ([(case, attempt)] to send, cases left to the one-at-a-time path)."""
    if not cases:
        writes.flush()
        return [], []
    # The one rule for the number (`planning.attempt_number`), from the batch's facts ...
    numbers = {
        c.pk: planning.attempt_number(source for source, *_ in c._facts.attempts) for c in cases
    }
    keys = {c.pk: engine.attempt_key(c, numbers[c.pk]) for c in cases}
    locked = {
        pk: (default_pm, changed)
        for pk, default_pm, changed in RecoveryCase.objects.select_for_update(of=("self",))
        .filter(pk__in=[c.pk for c in cases], status=RecoveryCase.Status.OPEN, inflight_key="")
        .order_by("pk")
        .values_list("pk", "customer__default_payment_method_id", "card_changed_at")
    }
    # An attempt of ours recorded since the batch read its facts (a retry from the pay
    # page or an agent, which take no claim) would make this key a used one: the
    # one-at-a-time path decides that case afresh. Counted per case under the rows' locks
    # (the case index; the keys' own index is partial, and with a long IN list and young
    # statistics PostgreSQL may scan all of it).
    ours = dict(
        PaymentAttempt.objects.filter(case_id__in=list(locked), source__in=engine.OUR_SOURCES)
        .values_list("case_id")
        .annotate(n=Count("pk"))
        .values_list("case_id", "n")
    )
    # ... and again from what is recorded under the rows' locks (ours counted, plus one): a
    # different number means a used key.
    alone = [c for c in cases if c.pk in locked and ours.get(c.pk, 0) + 1 != numbers[c.pk]]
    moved = [
        c
        for c in cases
        if c.pk in locked
        and c not in alone
        and locked[c.pk] != (c.customer.default_payment_method_id, c.card_changed_at)
    ]
    alone += moved  # the card changed since the claim: decided afresh, one at a time
    # The others closed, or have an attempt in flight, since the claim.
    for case in cases:
        if case.pk not in locked or case in alone:
            # Not this batch's to plan: a closed case keeps its close, and the
            # one-at-a-time path plans the others afresh.
            writes.cases.pop(case.pk, None)
    cases = [c for c in cases if c.pk in locked and c not in alone]
    cards = {c.pk: _card(c) for c in cases}
    engine.cards_lock(cards.values())
    rows = budgets.budget_rows_for_cards(set(cards.values()), at=now)
    sending, charged = [], set()
    for case in cases:
        if cards[case.pk] in charged:
            # One attempt per card per batch: the next case on the card is decided after
            # this one's answer (a do-not-retry or wait advice binds the card), by the
            # one-at-a-time path once the batch is recorded.
            alone.append(case)
            continue
        case._facts.card_rows = rows
        verdict = engine._budget_verdict(case, at=now)
        if not verdict.allowed:
            writes.events.append(
                case_event_build(
                    case=case,
                    kind="retry_refused",
                    at=now,
                    message=f"Retry not sent: {verdict.reason}",
                )
            )
            engine.case_plan(case, now=now, writes=writes)
            continue
        attempt = engine.attempt_in_flight(case, now=now, key=keys[case.pk])
        charged.add(cards[case.pk])
        rows[cards[case.pk]].append((now, "", ""))
        case._facts.attempts.append(_attempt_fact(attempt))
        case.inflight_key = keys[case.pk]
        sending.append((case, attempt))
    rows_insert([a for _, a in sending])
    # The lease runs from now, not from the pass's start: the sends come next.
    lease = timezone.now() + engine.CLAIM_LEASE
    for case, _ in sending:
        case.claimed_until = lease
        writes.case_changed(case, ("inflight_key", "claimed_until"))
    writes.flush()
    return sending, alone


def _answered(result) -> bool:
    """A plain decline or a payment: recorded with the batch."""
    return result.outcome in (
        PaymentAttempt.Outcome.FAILED,
        PaymentAttempt.Outcome.REQUIRES_ACTION,
        PaymentAttempt.Outcome.SUCCEEDED,
    )


def _results_record(results: list, *, now: dt.datetime, released: set) -> None:
    """Record the gateway's answers: declines and payments together, the rest one at a
    time."""
    answered = [r for r in results if _answered(r[2])]
    alone = [r for r in results if not _answered(r[2])]
    stats: dict[tuple, tuple[int, int]] = {}
    orders = []
    try:
        with transaction.atomic():
            more, orders, written = _answers_record(answered, now=now, stats=stats)
            alone += more
        released.update(written)
    except Exception:
        logger.exception(
            "recording %s answers failed; their attempts stay unknown and are read back",
            len(answered),
        )
        stats, orders = {}, []
    if orders:
        for case in orders:
            try:
                with transaction.atomic():
                    # Each line's hold is decided again against the new plan.
                    ports.publish(events.PaymentFailed(case=case, at=now, order=case.order))
            except Exception:
                logger.exception("deciding the holds of case %s's order failed", case.pk)
    for case, attempt, result in alone:
        try:
            engine.attempt_record_result(case=case, attempt=attempt, result=result, at=now)
        except Exception:
            logger.exception("recording the retry of case %s failed", case.pk)
    try:
        retry_stats.record_outcomes(stats)
    except Exception:  # learning only: the attempts themselves are recorded
        logger.exception("adding the batch's results to the retry statistics failed")


def _answers_record(answered: list, *, now: dt.datetime, stats: dict) -> tuple[list, list, list]:
    """In the caller's transaction: the declines and payments of the batch, as
    `engine.attempt_resolve` records one. Returns the results it left to the
    one-at-a-time path, the declined cases whose orders' holds are to be decided again
    (after the commit, one order at a time: stock rows are locked in one order per order,
    never across a batch), and the ids of the cases whose claim its writes gave back."""
    if not answered:
        return [], [], []
    # Read again under the rows' locks: the case, its customer, their card and the
    # invoice, which webhooks may have changed while the calls were out.
    fresh = {
        c.pk: c
        for c in RecoveryCase.objects.select_for_update(of=("self",))
        .select_related("customer", "customer__default_payment_method", "invoice")
        .filter(pk__in=[case.pk for case, _, _ in answered])
        .order_by("pk")
    }
    alone, mine = [], []
    for case, attempt, result in answered:
        row = fresh.get(case.pk)
        if (
            row is None
            or not row.is_open
            or row.inflight_key != attempt.idempotency_key
            # A new card, or the card updater's refresh of the same one: planned afresh.
            or row.customer.default_payment_method_id != case.customer.default_payment_method_id
            or row.card_changed_at != case.card_changed_at
        ):
            alone.append((case, attempt, result))  # changed while the call was out
            continue
        _claimed_relations(row, case)
        row._facts = case._facts
        # Decided as one case at a time decides it (`outcomes.resolve`), from the fresh row.
        resolution = outcomes.resolve(
            engine.attempt_sent(row, attempt),
            engine.answer_of(
                outcome=result.outcome,
                decline=result.decline,
                amount=result.amount,
                message=result.message,
                retry_after=result.retry_after,
            ),
            at=now,
        )
        if resolution.paid:
            if row.order_id:
                # The order's stock and shipment are settled in the close's transaction.
                alone.append((case, attempt, result))
            else:
                mine.append((row, attempt, result, resolution))
            continue
        if row.customer.disputed_at or row.track == Track.FRAUD:
            alone.append((case, attempt, result))
            continue
        # What the case will be told (a copy: the attempt keeps the gateway's own words).
        told = dataclasses.replace(result.decline, decline_code=resolution.told_decline_code)
        classification = decline_classification(told)
        if classification.track == Track.FRAUD or classification.fraud_review:
            alone.append((case, attempt, result))  # to a person: attempt_resolve routes it
            continue
        mine.append((row, attempt, result, resolution))
    charges = {r.decline.charge_id for _, _, r, _ in mine if r.decline.charge_id}
    taken = set(
        PaymentAttempt.objects.filter(
            store_id__in={c.store_id for c, _, _, _ in mine}, charge_id__in=charges
        )
        .exclude(charge_id="")  # the unique index's condition (see `_attempts_record`)
        .exclude(pk__in=[a.pk for _, a, _, _ in mine])
        .values_list("store_id", "charge_id")
    )
    writes = Writes()
    invoices = {}
    orders, closed, paid_invoices = [], [], []
    updated_at = timezone.now()
    # In the batch's order, each answer recorded before the next case is planned, as one
    # case at a time would: a plan learns from the answers before it, not after.
    for case, attempt, result, resolution in mine:
        fields = engine.attempt_resolved_fields(
            attempt, outcome=result.outcome, decline=result.decline
        )
        if (case.store_id, fields.get("charge_id")) in taken:
            fields.pop("charge_id")  # another row holds this charge; history stays
        for name, value in fields.items():
            setattr(attempt, name, value)
        if case.invoice_id and attempt.invoice_attempt_number:
            invoices[case.invoice_id] = attempt.invoice_attempt_number
        if resolution.learn:
            key = outcome_key(
                store_id=case.store_id,
                group=engine._classification(case).decline_group,
                failed_at=case.window_start,
                at=now,
                tz=case.customer.time_zone or case.store.timezone,
            )
            success = int(resolution.paid)
            s_, f_ = stats.get(key, (0, 0))
            stats[key] = (s_ + success, f_ + 1 - success)
            # Later plans in this batch learn from it, as they would one case at a time.
            learned = case._facts.stats.setdefault(key[:2], {})
            s_, f_ = learned.get(key[2:], (0, 0))
            learned[key[2:]] = (s_ + success, f_ + 1 - success)
        if resolution.paid:
            if _payment_record(case, resolution, now=now, writes=writes):
                paid_invoices.append(case.invoice)
            closed.append(case)
        else:
            _decline_record(
                case, attempt, result, resolution, now=now, writes=writes, updated_at=updated_at
            )
            if case.order_id:
                orders.append(case)
    rows_update([a for _, a, _, _ in mine], engine.RESOLVED_FIELDS)
    # Stripe counted these attempts on the invoices; keep our counts in step so that a
    # later read-back compares against the right number.
    rows_update(
        [Invoice(pk=pk, attempt_count=n) for pk, n in invoices.items()],
        ["attempt_count"],
        rising=True,
    )
    rows_update(paid_invoices, INVOICE_MARK_FIELDS)
    writes.flush()
    if closed:
        # As `engine.case_after_close` does for a recovered case without an order.
        engine.subscriptions_restore([c.subscription_id for c in closed if c.subscription_id])
        engine.messaging_due_for_cases(
            closed, purpose=Purpose.RECOVERED, at=now, timeline=writes.events
        )
        writes.flush()
    # A declined order's case keeps its claim until its holds are decided again.
    held = {c.pk for c in orders}
    return alone, orders, [c.pk for c, _, _, _ in mine if c.pk not in held]


def _claimed_relations(row: RecoveryCase, claimed: RecoveryCase) -> None:
    """Give the fresh row the claimed copy's store, order and subscription, read at the
    claim: the batch's answers decide nothing from what they hold that a webhook during
    the call could change (an order's stock is settled one at a time, a subscription is
    restored by its id)."""
    row.store = claimed.store
    for name in ("order", "subscription"):
        if getattr(row, f"{name}_id") is not None and (
            getattr(row, f"{name}_id") == getattr(claimed, f"{name}_id")
        ):
            setattr(row, name, getattr(claimed, name))


def _decline_record(
    case,
    attempt,
    result,
    resolution: outcomes.Resolution,
    *,
    now: dt.datetime,
    writes: Writes,
    updated_at: dt.datetime,
) -> None:
    """The case's side of a decline in the batch (`resolution`): its new track, plan and
    timeline."""
    decline = result.decline
    decline.decline_code = resolution.told_decline_code
    classification = decline_classification(decline)
    updates, event = case_failure_changes(
        case=case, decline=decline, classification=classification, at=now, amount=case.amount
    )
    if event is not None:
        writes.events.append(event)
    updates.update(
        inflight_key="",
        attempt_count=case.attempt_count + 1,
        last_attempt_at=now,
        updated_at=updated_at,
    )
    if not case.order_id:
        updates["claimed_until"] = None  # done with: the claim goes back with this write
    if resolution.card_change_spent:
        updates["card_changed_at"] = None
    for name, value in updates.items():
        setattr(case, name, value)
    writes.case_changed(case, updates)
    _facts_after_decline(case, attempt)
    engine.case_plan(case, now=engine.replan_time(now), writes=writes)
    writes.events += engine.resolution_timeline(case, resolution, at=now)


def _payment_record(
    case, resolution: outcomes.Resolution, *, now: dt.datetime, writes: Writes
) -> bool:
    """The case's side of a payment in the batch (`resolution`): closed as recovered (as
    `services.recovery_case_close` closes one). Returns whether its invoice is to be saved
    as paid."""
    updates = case_close_fields(
        case,
        status=RecoveryCase.Status.RECOVERED,
        reason=resolution.close_reason,
        via=resolution.via,
        amount=resolution.amount,
    )
    updates.update(
        inflight_key="",
        attempt_count=case.attempt_count + 1,
        last_attempt_at=now,
        closed_at=now,
        claimed_until=None,
    )
    for name, value in updates.items():
        setattr(case, name, value)
    writes.case_changed(case, updates)
    writes.events.append(
        case_close_event(case, at=now, reason=resolution.close_reason, actor="system")
    )
    return bool(case.invoice_id) and invoice_mark_apply(
        invoice=case.invoice, status=Invoice.Status.PAID, at=now, amount_paid=resolution.amount
    )


def _attempt_fact(attempt: PaymentAttempt) -> tuple:
    """The attempt as `facts_load` reads it (ATTEMPT_FACT_FIELDS after the case id)."""
    return tuple(getattr(attempt, name) for name in ATTEMPT_FACT_FIELDS[1:])


def _facts_after_decline(case: RecoveryCase, attempt: PaymentAttempt) -> None:
    """The batch's facts, as they are once the decline is recorded."""
    facts = case._facts
    facts.attempts = [
        a
        for a in facts.attempts
        if not (a[0] == attempt.source and a[2] == attempt.attempted_at and a[1] == "unknown")
    ] + [_attempt_fact(attempt)]
    rows = facts.card_rows.get(_card(case)) if facts.card_rows is not None else None
    if rows is not None:
        # The attempt's advice now known (a do-not-retry or wait advice binds the card).
        for i in range(len(rows) - 1, -1, -1):
            if rows[i] == (attempt.attempted_at, "", ""):
                rows[i] = (attempt.attempted_at, attempt.advice_code, attempt.network_advice_code)
                break
