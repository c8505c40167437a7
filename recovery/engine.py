"""The recovery engine: what happens, and when, after a payment fails.

`case_plan` decides a case's next steps (retry, message, step-down, close) and keeps
`next_action`/`next_action_at` at the earliest of them; the scheduler pass
(recovery/scheduler.py) claims due cases and calls `case_process_due`, which acts with
network calls outside any transaction and records the result in short ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from subscriptions.models import Invoice, Subscription
from subscriptions.services import invoice_mark

from . import budgets, ports, retry_stats
from .domain import budgets as budget_rules
from .domain import declines, events, facts, outcomes, planning, timing
from .domain.events import Purpose  # the one list of why a message goes out
from .models import ExpiryWarning, PaymentAttempt, RecoveryCase, RetryPolicy, Track
from .selectors import retry_policy_current
from .stripe_payloads import DeclineInfo

logger = logging.getLogger(__name__)

OUR_SOURCES = list(facts.OUR_SOURCES)  # a retry, a retry after a card change, an agent's
RECONCILE_DELAY = dt.timedelta(minutes=5)
CLAIM_LEASE = dt.timedelta(minutes=10)
DUE_GRACE = planning.DUE_GRACE


# ------------------------------------------------------------------ facts


@dataclass
class BatchFacts:
    """What a scheduler batch (recovery/batch.py) read for all its cases at once, kept
    current as the batch acts; `case_facts` takes a case's facts from it instead of
    asking. `attempts`: ATTEMPT_FACT rows; `touches`: message_due events as (at, data)."""

    attempts: list = field(default_factory=list)
    touches: list = field(default_factory=list)
    earlier_failures: bool = False
    card_rows: dict | None = None  # card_id -> budget rows, shared by the batch
    stats: dict | None = None  # (store_id, group) -> RetryStat counts, shared by the batch


def _facts(case: RecoveryCase) -> BatchFacts | None:
    return getattr(case, "_facts", None)


# What a case's attempt is to planning (facts.Attempt's fields, in order).
ATTEMPT_FACT = (
    "source",
    "outcome",
    "attempted_at",
    "card_brand",
    "card_fingerprint",
    "payment_method_id",
    "card_exp_month",
    "card_exp_year",
)


class _Lazy(Sequence):
    """Rows read on first use, once: a rule that never looks at them costs no query (a
    fraud case's plan reads no attempts; a card that never changed, no card rows)."""

    __slots__ = ("_load", "_rows")

    def __init__(self, load):
        self._load, self._rows = load, None

    def _get(self) -> tuple:
        if self._rows is None:
            self._rows = tuple(self._load())
        return self._rows

    def __getitem__(self, index):
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self):
        return iter(self._get())


class _LazyMap(Mapping):
    """A mapping read on first use, once (the store's learned statistics)."""

    __slots__ = ("_load", "_map")

    def __init__(self, load):
        self._load, self._map = load, None

    def _get(self) -> dict:
        if self._map is None:
            self._map = self._load()
        return self._map

    def __getitem__(self, key):
        return self._get()[key]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self):
        return iter(self._get())


def case_facts(
    case: RecoveryCase, *, plan: bool = False, budget_at: dt.datetime | None = None
) -> facts.CaseFacts:
    """The case as `recovery.domain.planning` decides from it: its row, its customer's
    card and its attempts. `plan`: also what a whole plan needs (earlier cases, message
    touches, the learned statistics and the next card's budget rows at `budget_at`,
    default now); `budget_at` alone: the budget rows only. In a scheduler batch all of it
    comes from the batch's reads; otherwise each set of rows is read (one query) the first
    time a rule looks at it, so a plan asks only what its rules need."""
    batch = _facts(case)
    if batch is not None:
        attempts = tuple(facts.Attempt(*a) for a in batch.attempts)
    else:
        attempts = _Lazy(
            lambda: (facts.Attempt(*a) for a in case.attempts.values_list(*ATTEMPT_FACT))
        )
    pm = case.customer.default_payment_method if case.customer_id else None
    known = dict(
        track=case.track,
        opened_at=case.opened_at,
        window_start=case.window_start,
        window_end=case.window_end,
        customer_since=case.opened_at,  # the customer's own, below, when planning
        decline_code=case.decline_code,
        advice_code=case.advice_code,
        network_advice_code=case.network_advice_code,
        network_decline_code=case.network_decline_code,
        card_brand=case.card_brand,
        step_down_at=case.step_down_at,
        last_attempt_at=case.last_attempt_at,
        card_changed_at=case.card_changed_at,
        card_updater_result=case.card_updater_result,
        escalated=case.escalated,
        dunning_paused=case.dunning_paused,
        dunning_stage=case.dunning_stage,
        retry_reason=case.retry_reason,
        ships=bool(case.order_id or case.subscription_id),
        default_card=facts.Card(pm.brand, pm.fingerprint, pm.stripe_id) if pm else None,
        attempts=attempts,
    )
    # What only a plan or a budget needs is read only for them (the store, the invoice).
    if plan:
        known["customer_since"] = case.customer.first_seen_at
        known["time_zone"] = case.customer.time_zone or case.store.timezone or "UTC"
        known["earlier_failures"] = _earlier_failures(case)
        if batch is not None:
            known["touches"] = tuple(
                facts.Touch(at, d.get("purpose", "")) for at, d in batch.touches
            )
        else:
            known["touches"] = _Lazy(
                lambda: (
                    facts.Touch(at, d.get("purpose", ""))
                    for at, d in case.events.filter(kind="message_due").values_list("at", "data")
                )
            )
        group = _classification(case).decline_group
        if batch is not None and batch.stats is not None:
            known["stats"] = batch.stats.get((case.store_id, group), {})
        else:
            known["stats"] = _LazyMap(
                lambda: retry_stats.stats_for(store_id=case.store_id, group=group)
            )
        budget_at = budget_at or timezone.now()
    if budget_at is not None:
        card_at = budget_at
        known["card_rows"] = _Lazy(
            lambda: _card_rows(
                case, planning.card_for_of(known["default_card"], known["attempts"]), at=card_at
            )
        )
        known["stripe_next_attempt"] = (
            case.invoice.next_payment_attempt if case.invoice_id else None
        )
    return facts.CaseFacts(**known)


def _earlier_failures(case: RecoveryCase) -> bool:
    """Had the customer a case before this one? The history before a case never
    changes: asked once per case object."""
    batch = _facts(case)
    if batch is not None:
        return batch.earlier_failures
    history = case.__dict__.get("_earlier_failures")
    if history is None:
        history = case.__dict__["_earlier_failures"] = RecoveryCase.objects.filter(
            customer_id=case.customer_id, opened_at__lt=case.opened_at
        ).exists()
    return history


def _card_rows(case: RecoveryCase, card: tuple[str, str, str], *, at: dt.datetime) -> list:
    """The budget rows of the card the next retry would use: the batch's, or one query."""
    _brand, fingerprint, pm_id = card
    batch = _facts(case)
    if batch is not None and batch.card_rows is not None:
        card = budget_rules.card_id(
            store_id=case.store_id,
            fingerprint=fingerprint,
            payment_method_id=pm_id,
            customer_id=case.customer_id,
        )
        if card in batch.card_rows:
            return batch.card_rows[card]
    return budgets.budget_rows(
        store_id=case.store_id,
        fingerprint=fingerprint,
        payment_method_id=pm_id,
        customer_id=case.customer_id,
        at=at,
    )


def policy_facts(policy: RetryPolicy) -> facts.Policy:
    return facts.Policy(
        version=policy.version,
        max_retries=policy.max_retries,
        generic_retries_before_card_update=policy.generic_retries_before_card_update,
        first_retry_hours=policy.first_retry_hours,
        learned_timing=policy.learned_timing,
    )


def cadence() -> facts.Cadence:
    """The messaging service's cadence: one source for the gap and the cap."""
    return facts.Cadence(
        min_gap=dt.timedelta(hours=settings.MESSAGING_MIN_HOURS_BETWEEN),
        max_touches=settings.MESSAGING_MAX_EMAILS_PER_CASE,
    )


# ------------------------------------------------------------------ planning


# Saved policy versions never change (an edit saves a new version), so a process may keep
# them: the scheduler asks for a case's policy several times per action.
_POLICY_VERSIONS: dict[tuple, RetryPolicy] = {}


def _policy(case: RecoveryCase) -> RetryPolicy:
    key = (case.store_id, case.policy_version)
    if case.policy_version and key in _POLICY_VERSIONS:
        return _POLICY_VERSIONS[key]
    if not case.policy_version:
        # Opened on the defaults (version 0, never saved): the store's current policy,
        # asked once per case object (a handler and the planner ask several times).
        memo = case.__dict__.get("_current_policy")
        if memo is None:
            memo = case.__dict__["_current_policy"] = retry_policy_current(store=case.store)
        return memo
    policy = RetryPolicy.objects.filter(store_id=case.store_id, version=case.policy_version).first()
    if policy is not None:
        if len(_POLICY_VERSIONS) > 10_000:
            _POLICY_VERSIONS.clear()
        _POLICY_VERSIONS[key] = policy
        return policy
    return retry_policy_current(store=case.store)


# The case's decline, classified (a case row has the decline fields the facts have).
_classification = planning.classification


def _card_for(case: RecoveryCase) -> tuple[str, str, str]:
    """(brand, fingerprint, payment_method_id) of the card the next retry would use."""
    return planning.card_for(case_facts(case))


def card_changed_since_failure(case: RecoveryCase) -> bool:
    """`planning.card_changed_since_failure` of the case as it is now."""
    return planning.card_changed_since_failure(case_facts(case))


def _may_retry_same_card(case: RecoveryCase) -> bool:
    return planning.may_retry_same_card(case_facts(case))


def _budget_verdict(case: RecoveryCase, *, at: dt.datetime) -> budget_rules.BudgetVerdict:
    """May the card the next retry would use take one more attempt at `at`?"""
    return planning.budget_verdict(case_facts(case, budget_at=at), at=at)


def _card_lock(*, store_id, fingerprint: str, payment_method_id: str, customer_id) -> None:
    """Serialise attempts on one card across workers until the transaction ends, so that
    two cases sharing a card cannot both pass its budget check and both charge it."""
    cards_lock(
        [
            budget_rules.card_id(
                store_id=store_id,
                fingerprint=fingerprint,
                payment_method_id=payment_method_id,
                customer_id=customer_id,
            )
        ]
    )


def cards_lock(cards) -> None:
    """Take the cards' locks (`budgets.card_id` tuples) until the transaction ends.
    PostgreSQL: transaction-level advisory locks, taken in one order by every worker so
    that two batches sharing cards wait rather than deadlock. SQLite: writes are already
    serialised by the database lock."""
    if connection.vendor != "postgresql" or not cards:
        return
    keys = sorted({f"recoup-card:{store_id}:{value}" for store_id, _, value in cards})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h"
            " FROM unnest(%s::text[]) AS k ORDER BY h) AS card_locks",
            [keys],
        )


PLAN_FIELDS = (
    "retry_at",
    "retry_reason",
    "message_at",
    "step_down_at",
    "next_action",
    "next_action_at",
    "next_action_reason",
)


def case_plan(
    case: RecoveryCase,
    *,
    now: dt.datetime,
    record: bool = True,
    acting: bool = False,
    writes=None,
) -> RecoveryCase:
    """Recompute the case's plan and its next action; store it. Returns the case.

    acting: the scheduler is about to act on the planned retry; keep its slot if it is
    due and still allowed. writes: a scheduler batch's pending writes (recovery/batch.py):
    the plan and its timeline entry join them instead of being written now."""
    if not case.is_open:
        return case
    policy = _policy(case)
    # Seeded from what the case is (not its database id), so a replay chooses the same
    # slots on any database.
    rng = random.Random(
        f"{case.customer.stripe_id}:{case.window_start.isoformat()}:"
        f"{case.attempt_count}:{case.dunning_stage}"
    )
    if case.step_down_at is None:
        case.step_down_at = (
            case.window_start + (case.window_end - case.window_start) * policy.grace_fraction
        )
    if case.decline_awaited_until is not None:
        # Nothing to time while Stripe has not said why it failed (see below).
        retry_at, retry_reason, message_at, purpose = None, "", None, ""
    else:
        f = case_facts(case, plan=True, budget_at=now)
        rules = policy_facts(policy)
        retry_at, retry_reason = planning.plan_retry(
            f, now=now, policy=rules, rng=rng, due=case.retry_at if acting else None
        )
        message_at, purpose = planning.plan_message(
            f, now=now, cadence=cadence(), retries_used_up=planning.retries_used_up(f, rules)
        )
    steps = [(case.window_end, RecoveryCase.NextAction.CLOSE, "recovery window ends")]
    if case.inflight_key:
        steps.append(
            (
                now + RECONCILE_DELAY,
                RecoveryCase.NextAction.RECONCILE,
                "read back an attempt of unknown outcome",
            )
        )
    else:
        if retry_at:
            steps.append((retry_at, RecoveryCase.NextAction.RETRY, retry_reason))
        if message_at:
            steps.append((message_at, RecoveryCase.NextAction.MESSAGE, purpose))
        if case.stepped_down_at is None and case.subscription_id and case.track != Track.FRAUD:
            steps.append(
                (
                    case.step_down_at,
                    RecoveryCase.NextAction.STEP_DOWN,
                    "grace period ends: restrict access",
                )
            )
    if case.dunning_paused:
        # Paused: nothing automated, except the retry a customer's new card asks for.
        keep = {RecoveryCase.NextAction.CLOSE, RecoveryCase.NextAction.RECONCILE}
        if card_changed_since_failure(case):
            keep.add(RecoveryCase.NextAction.RETRY)
        steps = [s for s in steps if s[1] in keep]
    if case.decline_awaited_until is not None:
        # Stripe has not said why it failed: nothing reaches the card or the customer
        # until it does (recovery.intake reads it back), or until the deadline.
        steps = [
            s
            for s in steps
            if s[1] in (RecoveryCase.NextAction.CLOSE, RecoveryCase.NextAction.RECONCILE)
        ]
        steps.append(
            (
                case.decline_awaited_until,
                RecoveryCase.NextAction.CLASSIFY,
                "waiting for Stripe to say why the payment failed",
            )
        )
    when, action, reason = min(steps, key=lambda s: s[0])
    changed = (case.retry_at, case.next_action, case.next_action_at) != (retry_at, action, when)
    case.retry_at, case.retry_reason = retry_at, (retry_reason if retry_at else retry_reason)[:300]
    case.message_at = message_at
    case.next_action, case.next_action_at, case.next_action_reason = action, when, reason[:300]
    event = None
    if record and changed and action == RecoveryCase.NextAction.RETRY:
        from .services import case_event_build

        event = case_event_build(
            case=case,
            kind="retry_scheduled",
            at=now,
            message=f"Retry planned for {when:%Y-%m-%d %H:%M} UTC: {reason}",
        )
    if writes is not None:
        writes.case_changed(case, PLAN_FIELDS)
        if event is not None:
            writes.events.append(event)
        return case
    RecoveryCase.objects.filter(pk=case.pk).update(**{f: getattr(case, f) for f in PLAN_FIELDS})
    if event is not None:
        event.save(force_insert=True)
    return case


# ------------------------------------------------------------------ hooks from intake/services


def replan_time(at: dt.datetime) -> dt.datetime:
    """When to plan from after a failure reported for `at`: now, or `at` when it is a
    moment ahead (a simulation's clock); a failure reported late plans from now."""
    now = timezone.now()
    return max(at, now) if at > now - dt.timedelta(days=1) else now


def case_after_failure(
    *,
    case: RecoveryCase,
    classification: declines.Classification,
    at: dt.datetime,
    plan: bool = True,
) -> None:
    if not case.is_open:
        return
    if case.track == Track.FRAUD or case.customer.disputed_at:
        case_route_to_person(
            case=case,
            at=at,
            track=Track.FRAUD,
            reason=case.track_reason
            if case.track == Track.FRAUD
            else "the customer has an open dispute: no retries, no dunning",
        )
        return
    if classification.fraud_review and not case.escalated:
        from .services import case_event_record

        RecoveryCase.objects.filter(pk=case.pk).update(
            escalated=True, escalation_reason=f"{classification.code}: fraud review"
        )
        case.escalated, case.escalation_reason = True, f"{classification.code}: fraud review"
        case_event_record(
            case=case,
            kind="escalated",
            at=at,
            message=f"Flagged for fraud review: {classification.reason}",
        )
    if plan:
        case_plan(case, now=replan_time(at))


def case_attempt_seen(
    *,
    case: RecoveryCase,
    attempt: PaymentAttempt,
    created: bool,
    at: dt.datetime,
    replan: bool = False,
) -> None:
    """A failed attempt recorded on the case: counted once, and the case planned with it.
    replan: the case was opened or changed with its plan left to this (`recovery_case_open`
    with plan=False): planned here even when the attempt was known already, and a case
    waiting for its decline gets its waiting plan."""
    counted = created and attempt.outcome != PaymentAttempt.Outcome.NOT_SENT
    if counted:
        RecoveryCase.objects.filter(pk=case.pk).update(
            attempt_count=F("attempt_count") + 1, updated_at=timezone.now()
        )
        RecoveryCase.objects.filter(
            Q(last_attempt_at__isnull=True) | Q(last_attempt_at__lt=at), pk=case.pk
        ).update(last_attempt_at=at)
        case.refresh_from_db(fields=["attempt_count", "last_attempt_at"])
    if not case.is_open:
        return
    if counted and case.decline_awaited_until is None:  # a waiting case waits as planned
        case_plan(case, now=timezone.now())
    elif replan:
        case_plan(case, now=replan_time(at))


def case_after_close(*, case: RecoveryCase, at: dt.datetime) -> None:
    """What a close changes here (the subscription, the thank-you message), then what it
    changes in the apps above (`ports`): the order and its stock in this transaction, the
    escalation queue's item after the commit."""
    from .services import case_event_record

    sub = case.subscription
    if case.status == RecoveryCase.Status.RECOVERED:
        if sub is not None:
            subscriptions_restore([sub.pk])
        ports.publish(events.CaseRecovered(case=case, at=at))
        messaging_due(case=case, purpose=Purpose.RECOVERED, at=at)
    elif case.status == RecoveryCase.Status.LOST:
        if sub is not None:
            policy = _policy(case)
            status = {
                RetryPolicy.EndAction.CANCEL: Subscription.Status.CANCELED,
                RetryPolicy.EndAction.PAUSE: Subscription.Status.PAUSED,
                RetryPolicy.EndAction.UNPAID: Subscription.Status.UNPAID,
            }[policy.end_action]
            Subscription.objects.filter(pk=sub.pk).update(
                status=status,
                access=Subscription.Access.SUSPENDED,
                canceled_at=at if status == Subscription.Status.CANCELED else None,
            )
            case_event_record(
                case=case,
                kind="subscription_" + status,
                at=at,
                message=f"Subscription {sub.stripe_id} set to {status} by policy v{policy.version}",
            )
        ports.publish(events.CaseLost(case=case, at=at))
    elif case.status == RecoveryCase.Status.CANCELLED:
        ports.publish(events.CaseCancelled(case=case, at=at))


def subscriptions_restore(subscription_ids) -> None:
    """Paid: each subscription with no other open case gets its full access back (one
    that was canceled meanwhile stays canceled)."""
    busy = RecoveryCase.objects.filter(
        subscription_id__in=subscription_ids, status=RecoveryCase.Status.OPEN
    ).values_list("subscription_id", flat=True)
    Subscription.objects.filter(pk__in=set(subscription_ids) - set(busy)).exclude(
        status=Subscription.Status.CANCELED
    ).update(status=Subscription.Status.ACTIVE, access=Subscription.Access.FULL)


def case_route_to_person(*, case: RecoveryCase, at: dt.datetime, track: str, reason: str) -> None:
    from .services import case_event_record

    already = case.escalated and case.track == track and case.dunning_paused
    RecoveryCase.objects.filter(pk=case.pk).update(
        track=track,
        track_reason=reason[:300],
        escalated=True,
        escalation_reason=reason[:300],
        dunning_paused=True,
        retry_at=None,
        message_at=None,
        next_action=RecoveryCase.NextAction.CLOSE,
        next_action_at=case.window_end,
        next_action_reason="with a person; closes at window end",
    )
    case.refresh_from_db()
    if not already:
        case_event_record(
            case=case, kind="escalated", at=at, message=f"Routed to a person: {reason}"
        )


def customer_card_changed(*, customer, at: dt.datetime, source: str, message: str) -> None:
    """A new or refreshed card: retry every open case of the customer at once."""
    from .services import case_event_record, open_cases_for_customer

    ExpiryWarning.objects.filter(
        customer=customer, saved_at__isnull=True, expires_on__gte=at.date()
    ).update(saved_at=at)
    for case in open_cases_for_customer(customer=customer).select_related(
        "customer", "store", "invoice"
    ):
        if case.track == Track.FRAUD:
            continue
        # Who changed the card decides the recovery's credit: the updater, or the customer
        # (whose later change replaces an updater result that did not pay).
        updates = {
            "card_changed_at": at,
            "card_updater_result": "updated" if source == "card_updater" else "",
        }
        RecoveryCase.objects.filter(pk=case.pk).update(**updates)
        for k, v in updates.items():
            setattr(case, k, v)
        note = message
        if not card_changed_since_failure(case):
            note = f"{message}: the card that was declined, so no retry on it"
        case_event_record(
            case=case, kind="card_changed", at=at, message=note, data={"source": source}
        )
        case_plan(case, now=max(at, timezone.now()) if at > timezone.now() else timezone.now())


def customer_zone_changed(*, customer, at: dt.datetime) -> None:
    """The customer's time zone changed (Stripe's facts, or the merchant set it): their
    open cases' retries are planned afresh in the new zone, from now on."""
    from .services import open_cases_for_customer

    cases = (
        open_cases_for_customer(customer=customer)
        .select_related("store", "invoice")
        .select_for_update(of=("self",))
        .order_by("pk")
    )
    for case in cases:
        case.customer = customer
        case_plan(case, now=replan_time(at))


# ------------------------------------------------------------------ acting (scheduler)


def messaging_due(*, case: RecoveryCase, purpose: str, at: dt.datetime) -> None:
    """Hand a due message to the messaging service, and record that it was due."""
    ports.publish(events.MessageDue(case=case, purpose=purpose, at=at))
    _message_due_event(case, purpose=purpose, at=at).save(force_insert=True)


def messaging_due_for_cases(
    cases: list[RecoveryCase], *, purpose: str, at: dt.datetime, timeline: list
) -> None:
    """`messaging_due` for a batch whose rows the caller's transaction holds locked; the
    timeline entries are added to `timeline` for the caller to save."""
    ports.publish(events.MessagesDue(cases=tuple(cases), purpose=purpose, at=at))
    timeline += [_message_due_event(case, purpose=purpose, at=at) for case in cases]


def _message_due_event(case: RecoveryCase, *, purpose: str, at: dt.datetime):
    from .services import case_event_build

    return case_event_build(
        case=case,
        kind="message_due",
        at=at,
        message=f"Message due: {purpose}",
        data={"purpose": purpose},
    )


def _hint(case: RecoveryCase, *, now: dt.datetime, key: str):
    from .gateways.sandbox import Hint

    cls = _classification(case)
    local = now.astimezone(timing._zone(case.customer.time_zone or case.store.timezone))
    return Hint(
        decline_group=cls.decline_group,
        track=case.track,
        hours_since_failure=(now - case.window_start).total_seconds() / 3600,
        payday=timing.is_payday(local),
        local_hour=local.hour,
        card_changed=card_changed_since_failure(case),
        decline_code=case.decline_code,
    )


def attempt_key(case: RecoveryCase, number: int) -> str:
    """The idempotency key of the case's `number`th attempt of ours: the gateway sees a
    repeated key as the same request, so a crash between send and record never charges
    twice."""
    return f"recoup-case-{case.pk}-attempt-{number}"


def attempt_in_flight(
    case: RecoveryCase, *, now: dt.datetime, key: str, source: str | None = None, reason: str = ""
) -> PaymentAttempt:
    """The attempt about to be sent, outcome unknown until the gateway answers; not saved."""
    card_changed = card_changed_since_failure(case)
    source = source or (
        PaymentAttempt.Source.CARD_UPDATE if card_changed else PaymentAttempt.Source.RECOUP_RETRY
    )
    brand, fingerprint, pm_id = _card_for(case)
    return PaymentAttempt(
        store_id=case.store_id,
        case=case,
        customer_id=case.customer_id,
        invoice_stripe_id=case.invoice.stripe_id if case.invoice_id else "",
        invoice_attempt_number=(case.invoice.attempt_count + 1) if case.invoice_id else None,
        payment_intent_id=case.payment_intent_id,
        source=source,
        outcome=PaymentAttempt.Outcome.UNKNOWN,
        amount=case.amount,
        currency=case.currency,
        attempted_at=now,
        card_brand=brand,
        card_fingerprint=fingerprint,
        payment_method_id=pm_id,
        idempotency_key=key,
        reason=(reason or case.retry_reason or case.next_action_reason)[:300],
    )


def gateway_charge(case: RecoveryCase, attempt: PaymentAttempt, *, now: dt.datetime, gateway):
    """Send the attempt (outside any transaction). Never raises: an unexpected client
    failure is an unknown outcome, read back before anything else happens to the case."""
    from .gateways.base import ChargeResult

    hint = _hint(case, now=now, key=attempt.idempotency_key)
    try:
        if case.invoice_id:
            return gateway.invoice_pay(
                invoice_id=case.invoice.stripe_id,
                idempotency_key=attempt.idempotency_key,
                payment_method=attempt.payment_method_id,
                amount=case.amount,
                hint=hint,
            )
        return gateway.payment_intent_confirm(
            payment_intent_id=case.payment_intent_id,
            payment_method=attempt.payment_method_id,
            idempotency_key=attempt.idempotency_key,
            amount=case.amount,
            hint=hint,
        )
    except Exception as exc:
        logger.exception("retry of case %s failed unexpectedly", case.pk)
        return ChargeResult(outcome="unknown", message=f"{type(exc).__name__}: {exc}"[:300])


def attempt_record_result(
    *, case: RecoveryCase, attempt: PaymentAttempt, result, at: dt.datetime, actor: str = "system"
) -> None:
    """Record the gateway's answer (a ChargeResult) to an attempt of ours."""
    attempt_resolve(
        case=case,
        attempt=attempt,
        outcome=result.outcome,
        decline=result.decline,
        at=at,
        amount=result.amount,
        message=result.message,
        actor=actor,
        retry_after=result.retry_after,
    )


def case_retry(
    case: RecoveryCase,
    *,
    now: dt.datetime,
    gateway,
    source: str | None = None,
    actor: str = "system",
    reason: str = "",
) -> PaymentAttempt | None:
    """Make one retry: record it in flight, call the gateway outside any transaction,
    record the truth. Returns the attempt, or None if nothing was sent."""
    from .services import case_event_record

    if case.inflight_key:
        return None
    number = planning.attempt_number(
        case.attempts.filter(source__in=OUR_SOURCES).values_list("source", flat=True)
    )
    key = attempt_key(case, number)
    brand, fingerprint, pm_id = _card_for(case)
    with transaction.atomic():
        # Claim the in-flight slot: never two attempts in flight for one case.
        if (
            RecoveryCase.objects.filter(
                pk=case.pk, status=RecoveryCase.Status.OPEN, inflight_key=""
            ).update(inflight_key=key)
            != 1
        ):
            return None
        # Check the card's network budget again under the card's lock: the plan was made
        # earlier, and another worker may have charged the same card since.
        _card_lock(
            store_id=case.store_id,
            fingerprint=fingerprint,
            payment_method_id=pm_id,
            customer_id=case.customer_id,
        )
        verdict = _budget_verdict(case, at=now)
        refused = not verdict.allowed
        if refused:
            transaction.set_rollback(True)  # gives the in-flight slot back
        else:
            # Recorded before the call, in the transaction that holds the card's lock, so
            # the next budget check on this card counts it.
            try:
                with transaction.atomic():
                    attempt = attempt_in_flight(
                        case, now=now, key=key, source=source, reason=reason
                    )
                    attempt.save(force_insert=True)
            except IntegrityError:
                # This key was used before (a crash between send and record): reconcile it.
                attempt = PaymentAttempt.objects.get(store_id=case.store_id, idempotency_key=key)
                if attempt.outcome != PaymentAttempt.Outcome.UNKNOWN:
                    RecoveryCase.objects.filter(pk=case.pk, inflight_key=key).update(
                        inflight_key=""
                    )
                    return None
    if refused:
        case_event_record(
            case=case,
            kind="retry_refused",
            at=now,
            actor=actor,
            message=f"Retry not sent: {verdict.reason}",
        )
        case_plan(case, now=now)
        return None
    case.inflight_key = key
    result = gateway_charge(case, attempt, now=now, gateway=gateway)
    attempt_record_result(case=case, attempt=attempt, result=result, at=now, actor=actor)
    _ = case_event_record
    return attempt


# What an attempt's resolution may fill in from the gateway's answer.
DECLINE_FIELDS = (
    "decline_code",
    "failure_code",
    "failure_message",
    "advice_code",
    "network_decline_code",
    "network_advice_code",
    "charge_id",
)
RESOLVED_FIELDS = ("outcome", "resolved_at", *DECLINE_FIELDS, "card_brand", "card_fingerprint")


def attempt_resolved_fields(attempt: PaymentAttempt, *, outcome: str, decline: DeclineInfo) -> dict:
    """The fields the gateway's answer sets on an attempt of unknown outcome."""
    fields = {"outcome": outcome, "resolved_at": timezone.now()}
    if outcome == PaymentAttempt.Outcome.NOT_SENT:
        # Nothing reached the card: keep no decline details that belong to another attempt.
        return fields
    for name in DECLINE_FIELDS:
        value = getattr(decline, name)
        if value:
            # A gateway's words are kept, cut to what the column holds.
            fields[name] = value[: PaymentAttempt._meta.get_field(name).max_length]
    if decline.card_brand and not attempt.card_brand:
        fields["card_brand"] = decline.card_brand
    if decline.card_fingerprint and not attempt.card_fingerprint:
        fields["card_fingerprint"] = decline.card_fingerprint
    return fields


def attempt_sent(case: RecoveryCase, attempt: PaymentAttempt) -> outcomes.Sent:
    """The attempt as `outcomes.resolve` reads it, with its case's side."""
    return outcomes.Sent(
        source=attempt.source,
        source_label=attempt.get_source_display(),
        attempted_at=attempt.attempted_at,
        case_amount=case.amount,
        case_decline_code=case.decline_code,
        card_changed_at=case.card_changed_at,
        card_updater_result=case.card_updater_result,
    )


def answer_of(
    *,
    outcome: str,
    decline: DeclineInfo,
    amount: int = 0,
    message: str = "",
    retry_after: dt.timedelta | None = None,
) -> outcomes.Answer:
    return outcomes.Answer(
        outcome=outcome,
        decline_code=decline.decline_code,
        failure_code=decline.failure_code,
        amount=amount,
        message=message,
        retry_after=retry_after,
    )


def resolution_timeline(
    case: RecoveryCase, resolution: outcomes.Resolution, *, at: dt.datetime, actor: str = "system"
) -> list:
    """The Resolution's timeline entries, built (not saved)."""
    from .services import case_event_build

    return [
        case_event_build(case=case, kind=kind, at=at, actor=actor, message=message)
        for kind, message in resolution.timeline
    ]


@transaction.atomic
def attempt_resolve(
    *,
    case: RecoveryCase,
    attempt: PaymentAttempt,
    outcome: str,
    decline: DeclineInfo,
    at: dt.datetime,
    amount: int = 0,
    message: str = "",
    actor: str = "system",
    retry_after: dt.timedelta | None = None,
) -> bool:
    """Record what an attempt of ours did: its unknown outcome replaced by the truth,
    once, as `outcomes.resolve` decides. Returns False when the attempt was resolved already
    (then the only further edit is `_paid_elsewhere`'s: our own answer correcting a settle on
    Stripe's word)."""
    from .services import recovery_case_close, recovery_case_open

    case = (
        RecoveryCase.objects.select_for_update(of=("self",))
        .select_related("customer", "store", "invoice")
        .get(pk=case.pk)
    )
    resolution = outcomes.resolve(
        attempt_sent(case, attempt),
        answer_of(
            outcome=outcome,
            decline=decline,
            amount=amount,
            message=message,
            retry_after=retry_after,
        ),
        at=at,
    )
    if outcome == PaymentAttempt.Outcome.UNKNOWN:
        _timeline_save(resolution_timeline(case, resolution, at=at, actor=actor))
        case_plan(case, now=resolution.replan_at)
        return True
    fields = attempt_resolved_fields(attempt, outcome=outcome, decline=decline)
    if outcome == PaymentAttempt.Outcome.NOT_SENT:
        pass
    elif (
        fields.get("charge_id")
        and PaymentAttempt.objects.filter(store_id=case.store_id, charge_id=fields["charge_id"])
        .exclude(pk=attempt.pk)
        .exists()
    ):
        # Another row already holds this charge (recorded history is never rewritten).
        fields.pop("charge_id")
    if case.invoice_id and attempt.invoice_attempt_number and resolution.counted:
        # Stripe counted this attempt on the invoice; keep our count in step so a later
        # read-back compares against the right number.
        Invoice.objects.filter(
            pk=case.invoice_id, attempt_count__lt=attempt.invoice_attempt_number
        ).update(attempt_count=attempt.invoice_attempt_number)
    if not PaymentAttempt.objects.filter(
        pk=attempt.pk, outcome=PaymentAttempt.Outcome.UNKNOWN
    ).update(**fields):
        # Resolved already: read back by another worker (recorded once), or settled as the
        # payment on Stripe's word that the invoice was paid, which our own answer corrects.
        _paid_elsewhere(case=case, attempt=attempt, outcome=outcome, fields=fields, actor=actor)
        return False
    RecoveryCase.objects.filter(pk=case.pk, inflight_key=attempt.idempotency_key).update(
        inflight_key=""
    )
    case.inflight_key = "" if case.inflight_key == attempt.idempotency_key else case.inflight_key
    if outcome == PaymentAttempt.Outcome.NOT_SENT:
        _timeline_save(resolution_timeline(case, resolution, at=at, actor=actor))
        if resolution.next_action_at:
            RecoveryCase.objects.filter(pk=case.pk).update(next_action_at=resolution.next_action_at)
        case_plan(case, now=resolution.replan_at)
        return True
    RecoveryCase.objects.filter(pk=case.pk).update(
        attempt_count=F("attempt_count") + 1, last_attempt_at=at, updated_at=timezone.now()
    )
    case.refresh_from_db()
    if resolution.learn:
        retry_stats.record_outcome(
            store_id=case.store_id,
            group=_classification(case).decline_group,
            failed_at=case.window_start,
            at=at,
            tz=case.customer.time_zone or case.store.timezone,
            success=resolution.paid,
        )
    if resolution.paid:
        if case.invoice_id:
            invoice_mark(invoice=case.invoice, status="paid", at=at, amount_paid=resolution.amount)
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.RECOVERED,
            reason=resolution.close_reason,
            at=at,
            via=resolution.via,
            amount=resolution.amount,
            actor=actor,
        )
        return True
    decline.decline_code = resolution.told_decline_code
    if resolution.card_change_spent:
        RecoveryCase.objects.filter(pk=case.pk).update(card_changed_at=None)
        case.card_changed_at = None
    recovery_case_open(
        store=case.store,
        customer=case.customer,
        amount=case.amount,
        currency=case.currency,
        decline=decline,
        at=at,
        invoice=case.invoice,
        payment_intent_ids=[case.payment_intent_id] if case.payment_intent_id else None,
    )
    _timeline_save(resolution_timeline(case, resolution, at=at, actor=actor))
    # The order decides each line's hold again against the new plan (held through the next
    # retry while stock is ample; a brief hold is never lengthened).
    ports.publish(events.PaymentFailed(case=case, at=at, order=case.order))
    return True


def _timeline_save(entries: list) -> None:
    for entry in entries:
        entry.save(force_insert=True)


def case_reconcile(case: RecoveryCase, *, now: dt.datetime, gateway) -> None:
    """Read back an attempt of unknown outcome and record the truth."""
    attempt = case.attempts.filter(idempotency_key=case.inflight_key).first()
    if attempt is None:
        RecoveryCase.objects.filter(pk=case.pk, inflight_key=case.inflight_key).update(
            inflight_key=""
        )
        return
    try:
        if case.invoice_id:
            read = gateway.invoice_read(invoice_id=case.invoice.stripe_id)
        else:
            read = gateway.payment_intent_read(payment_intent_id=case.payment_intent_id)
    except Exception as exc:
        logger.warning("read-back of case %s failed: %s", case.pk, exc)
        RecoveryCase.objects.filter(pk=case.pk).update(next_action_at=now + RECONCILE_DELAY)
        return
    if read.paid:
        outcome = PaymentAttempt.Outcome.SUCCEEDED
    elif case.invoice_id and read.attempt_count is not None and attempt.invoice_attempt_number:
        outcome = (
            PaymentAttempt.Outcome.FAILED
            if read.attempt_count >= attempt.invoice_attempt_number
            else PaymentAttempt.Outcome.NOT_SENT
        )
    elif read.status == "processing":
        RecoveryCase.objects.filter(pk=case.pk).update(next_action_at=now + RECONCILE_DELAY)
        return
    elif read.decline.has_code and not (
        read.decline.charge_id
        and PaymentAttempt.objects.filter(store_id=case.store_id, charge_id=read.decline.charge_id)
        .exclude(pk=attempt.pk)
        .exists()
    ):
        # A decline we have not seen before: our attempt reached the card.
        outcome = PaymentAttempt.Outcome.FAILED
    else:
        outcome = PaymentAttempt.Outcome.NOT_SENT
    attempt_resolve(
        case=case,
        attempt=attempt,
        outcome=outcome,
        decline=read.decline,
        at=now,
        message=f"read back: {read.status or outcome}",
    )


def case_step_down(case: RecoveryCase, *, now: dt.datetime) -> None:
    from .services import case_event_record

    with transaction.atomic():
        if (
            RecoveryCase.objects.filter(
                pk=case.pk, stepped_down_at__isnull=True, status=RecoveryCase.Status.OPEN
            ).update(stepped_down_at=now)
            != 1
        ):
            return
        case.stepped_down_at = now
        if case.subscription_id:
            Subscription.objects.filter(
                pk=case.subscription_id,
                access__in=[Subscription.Access.FULL, Subscription.Access.GRACE],
            ).update(access=Subscription.Access.RESTRICTED)
        ports.publish(events.AccessRestricted(case=case, at=now))
        case_event_record(
            case=case,
            kind="access_restricted",
            at=now,
            message="Grace period over: access restricted, shipments paused until payment",
        )
        case_plan(case, now=now)


def case_process_due(case: RecoveryCase, *, now: dt.datetime, gateway) -> str:
    """Act on whatever is due for one claimed case. Returns what was done."""
    from .services import recovery_case_close

    if not case.is_open:
        return "closed"
    if case.inflight_key:
        case_reconcile(case, now=now, gateway=gateway)
        case.refresh_from_db()
        return "reconciled"
    if case.window_end <= now:
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.LOST,
            reason="recovery window ended unpaid",
            at=now,
        )
        return "closed"
    action = case.next_action
    if action == RecoveryCase.NextAction.RETRY:
        # Re-check budgets at the moment of acting: other sources may have used them.
        case_plan(case, now=now, record=False, acting=True)
        if case.retry_at and case.retry_at <= now:
            case_retry(case, now=now, gateway=gateway)
            return "retried"
        return "deferred"
    if action == RecoveryCase.NextAction.MESSAGE:
        purpose = case.next_action_reason
        RecoveryCase.objects.filter(pk=case.pk).update(dunning_stage=F("dunning_stage") + 1)
        case.dunning_stage += 1
        messaging_due(case=case, purpose=purpose, at=now)
        case_plan(case, now=now)
        return "messaged"
    if action == RecoveryCase.NextAction.STEP_DOWN:
        case_step_down(case, now=now)
        return "stepped_down"
    if action == RecoveryCase.NextAction.CLASSIFY and case.decline_awaited_until:
        case_classify_without_decline(case, now=now)
        return "classified"
    case_plan(case, now=now)
    return "replanned"


@transaction.atomic
def case_classify_without_decline(case: RecoveryCase, *, now: dt.datetime) -> None:
    """Stripe did not say why the payment failed in time: the case goes on as an unknown
    decline (the table's conservative default). The lookup goes on; its answer, however
    late, reclassifies the case."""
    from .services import case_event_record, decline_classification

    updated = RecoveryCase.objects.filter(
        pk=case.pk, status=RecoveryCase.Status.OPEN, decline_awaited_until__isnull=False
    ).update(decline_awaited_until=None, updated_at=timezone.now())
    if updated != 1:
        return
    case.decline_awaited_until = None
    classification = decline_classification(DeclineInfo())
    case_event_record(
        case=case,
        kind="classified_without_decline",
        at=now,
        message=(
            "Stripe has not said why the payment failed: treated as an unknown decline "
            f"({classification.reason}) until it does."
        ),
    )
    case_after_failure(case=case, classification=classification, at=now)
    from .services import case_classified

    case_classified(case=case, at=now)


ANSWERED_AS = {
    PaymentAttempt.Outcome.FAILED: "was declined",
    PaymentAttempt.Outcome.REQUIRES_ACTION: "asked for authentication",
    PaymentAttempt.Outcome.NOT_SENT: "was refused before any charge",
}


def _paid_elsewhere(
    *, case: RecoveryCase, attempt: PaymentAttempt, outcome: str, fields: dict, actor: str
) -> None:
    """Stripe reported the invoice (or PaymentIntent) paid while this attempt of ours was
    out, and the attempt was settled as the payment (`case_settle_inflight_success`: the
    event cannot say whose payment it was, and it is nearly always ours). If our own
    answer says our charge did not go through, the money came from elsewhere (the
    customer on Stripe's invoice page, Stripe's own retry): the attempt gets its real
    outcome and the case's credit is judged again, as if our answer had come first."""
    from .services import case_event_record, recovered_via_for_success

    if outcome not in ANSWERED_AS:
        return
    if case.status != RecoveryCase.Status.RECOVERED or case.recovered_via != case.credit_for(
        attempt
    ):
        return  # not closed on this attempt's credit
    if not PaymentAttempt.objects.filter(
        pk=attempt.pk, outcome=PaymentAttempt.Outcome.SUCCEEDED, charge_id=""
    ).update(**fields):
        return  # a success with its own charge: the gateway's, not an inference
    if attempt.source == PaymentAttempt.Source.RECOUP_RETRY and case.closed_at:
        # The settle taught the retry statistics a success at the close: taken back.
        key = timing.outcome_key(
            store_id=case.store_id,
            group=_classification(case).decline_group,
            failed_at=case.window_start,
            at=case.closed_at,
            tz=case.customer.time_zone or case.store.timezone,
        )
        # Nothing reached the card when it was not sent: no failure to learn from.
        retry_stats.success_withdrawn(key, failed=outcome != PaymentAttempt.Outcome.NOT_SENT)
    was = case.recovered_via
    via = recovered_via_for_success(case=case, at=case.closed_at or timezone.now())
    if via == was:
        return
    RecoveryCase.objects.filter(pk=case.pk).update(recovered_via=via, updated_at=timezone.now())
    case.recovered_via = via
    labels = dict(RecoveryCase.RecoveredVia.choices)
    case_event_record(
        case=case,
        kind="credit_corrected",
        at=timezone.now(),
        actor=actor,
        message=(
            f"Our {attempt.get_source_display().lower()} {ANSWERED_AS[outcome]}: the payment "
            f"Stripe reported came from elsewhere. Credit: {labels.get(was, was)} → "
            f"{labels.get(via, via)}"
        ),
        data={"attempt": attempt.pk, "was": was, "now": via},
    )


def case_settle_inflight_success(*, case: RecoveryCase, at: dt.datetime, amount: int = 0) -> bool:
    """Stripe reports the payment before our read-back: the attempt in flight succeeded."""
    if not case.inflight_key:
        return False
    attempt = case.attempts.filter(
        idempotency_key=case.inflight_key, outcome=PaymentAttempt.Outcome.UNKNOWN
    ).first()
    if attempt is None:
        return False
    # False if our own answer was recorded first, while this waited on the case's lock:
    # the caller then closes the case on the payment as any other.
    return attempt_resolve(
        case=case,
        attempt=attempt,
        outcome=PaymentAttempt.Outcome.SUCCEEDED,
        decline=DeclineInfo(),
        at=at,
        amount=amount,
        message="confirmed by Stripe's event",
    )
