"""When a case retries next and which message it sends next, and why: pure functions.

Everything is decided from `facts.CaseFacts` (what the case is and what happened to it),
the policy and the clock; nothing is read or written here. `recovery.engine.case_plan`
reads the facts, calls `plan_retry` and `plan_message`, and stores the plan.

The rules, in the order `plan_retry` applies them:
1. Fraud, or a person has the case (and no new card): no automated retry.
2. Card-update, hard and authentication tracks: only once the payment method changed
   after the last failure; then at once (within the card's budgets).
3. At most `retry_allowance` retries of ours (the policy's, one more for a loyal customer
   with a clean history, two for a new customer failing again, the policy's generic
   limit for do-not-honour declines).
4. Never sooner than the decline's own wait (Mastercard advice, velocity), one hour after
   the failure or the last attempt, the card's network budgets and 24 h clear of
   Stripe's own retry.
5. Among the daytime slots left in the window in the customer's zone, the one with the
   best sampled chance (`timing.choose`: paydays for insufficient funds, learned results).
"""

from __future__ import annotations

import datetime as dt
import random

from . import budgets, declines, timing
from .events import Purpose
from .facts import FAILED, NOT_SENT, OUR_SOURCES, Attempt, Cadence, Card, CaseFacts, Policy

# A pass acting on a chosen retry slot comes a little after it (the every-minute pass,
# claims, leases): the slot still holds within this grace; later, a new one is chosen.
DUE_GRACE = dt.timedelta(hours=1)
TOUCH_WINDOW = dt.timedelta(days=14)  # 5+ emails in 14 days reads as harassment

SOFT_FIRST, SOFT_REMINDER = Purpose.SOFT_FIRST, Purpose.SOFT_REMINDER
SHIPMENT_AT_RISK, FINAL_NOTICE = Purpose.SHIPMENT_AT_RISK, Purpose.FINAL_NOTICE
CARD_UPDATE, AUTHENTICATION = Purpose.CARD_UPDATE, Purpose.AUTHENTICATION


def classification(f: CaseFacts) -> declines.Classification:
    """The decline's classification, from anything with the case's decline fields (the
    facts, or the case row itself)."""
    return declines.classify(
        decline_code=f.decline_code,
        advice_code=f.advice_code,
        network_advice_code=f.network_advice_code,
        network_decline_code=f.network_decline_code,
        card_brand=f.card_brand,
    )


def our_retries(f: CaseFacts) -> int:
    """Retries of ours that reached the network."""
    return sum(1 for a in f.attempts if a.source in OUR_SOURCES and a.outcome != NOT_SENT)


def attempt_number(sources) -> int:
    """The number of the case's next attempt of ours, given the sources of its attempts so
    far: one more than every attempt of ours recorded, sent or not, so that an idempotency
    key (`engine.attempt_key`) is never used for two attempts."""
    return 1 + sum(1 for source in sources if source in OUR_SOURCES)


def retry_allowance(f: CaseFacts, policy: Policy) -> tuple[int, str]:
    """How many retries this case gets, and why: patience for loyal customers, less
    for a new customer's repeated failure."""
    allowed = policy.max_retries
    note = f"{allowed} retries by policy v{policy.version}"
    tenure = f.opened_at - f.customer_since
    if tenure >= dt.timedelta(days=365) and not f.earlier_failures:
        allowed += 1
        note = f"{allowed} retries: a customer of {tenure.days // 30} months with a clean history"
    elif tenure < dt.timedelta(days=60) and f.earlier_failures:
        allowed = min(allowed, 2)
        note = f"{allowed} retries: a new customer failing again moves to a card update sooner"
    if classification(f).decline_group == "do_not_honor":
        allowed = min(allowed, policy.generic_retries_before_card_update)
        note = f"{allowed} retries for {f.decline_code or 'a generic decline'}, then a card-update request"
    return allowed, note


def retries_used_up(f: CaseFacts, policy: Policy) -> bool:
    """A soft case with no retries left: only a new card can pay."""
    return f.track == declines.SOFT and our_retries(f) >= retry_allowance(f, policy)[0]


def card_for(f: CaseFacts) -> tuple[str, str, str]:
    """(brand, fingerprint, payment_method_id) of the card the next retry would use: the
    customer's default, else the card of the latest attempt that names one."""
    return card_for_of(f.default_card, f.attempts)


def card_for_of(pm: Card | None, attempts: tuple[Attempt, ...]) -> tuple[str, str, str]:
    """`card_for` from the default card and the attempts alone."""
    if pm is not None and (pm.fingerprint or pm.payment_method_id):
        return pm.brand, pm.fingerprint, pm.payment_method_id
    for a in sorted(attempts, key=lambda a: a.at, reverse=True):
        if a.fingerprint or a.payment_method_id:
            return a.brand, a.fingerprint, a.payment_method_id
    return "", "", ""


def failed_card(f: CaseFacts) -> tuple | None:
    """(fingerprint, payment method, exp month, exp year) of the card the case's latest
    failed attempt was made on, where Stripe told which; None when it has not."""
    rows = [
        (a.at, a.fingerprint, a.payment_method_id, a.exp_month, a.exp_year)
        for a in f.attempts
        if a.outcome == FAILED and (a.fingerprint or a.payment_method_id)
    ]
    return max(rows, key=lambda r: r[:3])[1:] if rows else None


def card_changed_since_failure(f: CaseFacts) -> bool:
    """Has the customer's card changed since the case's last failure? A change recorded
    before the failure does not count, and neither does one that names the card that
    failed: a card saved in the same second as the failure, or a `customer.updated` that
    arrives late, sets the default to the very payment method that was declined (or, on
    the hard track, to the same card number). The card updater refreshes a card in place
    (same payment method, new details), so its change counts."""
    since = f.last_attempt_at or f.opened_at
    if not f.card_changed_at or f.card_changed_at < since:
        return False
    if f.card_updater_result == "updated":
        return True
    pm = f.default_card
    failed = failed_card(f)
    if pm is None or failed is None:
        # Which card failed is not known (Stripe has not said): a change in the very
        # second of the failure is the card the failure was made on.
        return f.card_changed_at > since
    fingerprint, pm_id, _exp_month, _exp_year = failed
    if pm.payment_method_id and pm.payment_method_id == pm_id:
        return False  # the very payment method that was declined
    if pm.fingerprint and pm.fingerprint == fingerprint:
        # The same card number saved again: what an incorrect CVC or postal code, an
        # expired card's new date, or a card confirmed for off-session use needs; never a
        # cure for a lost, stolen or do-not-honour card.
        return f.track not in (declines.HARD, declines.FRAUD)
    return True


def may_retry_same_card(f: CaseFacts) -> bool:
    if f.track == declines.SOFT:
        return True
    # card_update / hard / authentication: only once the payment method changed after
    # the last failure.
    return card_changed_since_failure(f)


def budget_verdict(f: CaseFacts, *, at: dt.datetime) -> budgets.BudgetVerdict:
    """May the card the next retry would use take one more attempt at `at`?"""
    brand, _fingerprint, _pm_id = card_for(f)
    return budgets.budget_verdict(
        list(f.card_rows),
        brand=brand,
        at=at,
        since_card_change=f.card_changed_at if card_changed_since_failure(f) else None,
        stripe_next_attempt=f.stripe_next_attempt,
    )


def plan_retry(
    f: CaseFacts,
    *,
    now: dt.datetime,
    policy: Policy,
    rng: random.Random,
    due: dt.datetime | None = None,
) -> tuple[dt.datetime | None, str]:
    """When to retry next, and why. `due`: the slot chosen earlier that a pass is now
    acting on; it is kept if every rule still allows a retry at `now`."""
    if f.track == declines.FRAUD:
        return None, "with a person: no automated retries"
    card_changed = card_changed_since_failure(f)
    if f.escalated and f.dunning_paused and not card_changed:
        # A new card is the customer asking to be charged: that retry still goes out.
        return None, "with a person: no automated retries"
    if not may_retry_same_card(f):
        return None, f"{f.track}: no retry on the same card until the payment method changes"
    verdict = budget_verdict(f, at=now)
    if card_changed:
        if verdict.allowed:
            return now, "payment method changed: retry at once"
        if verdict.not_before and verdict.not_before < f.window_end:
            return verdict.not_before, f"payment method changed; {verdict.reason}"
        return None, verdict.reason
    done = our_retries(f)
    allowed, note = retry_allowance(f, policy)
    if done >= allowed:
        return None, f"{done} of {allowed} retries used ({note})"
    cls = classification(f)
    not_before = now
    if not verdict.allowed:
        if verdict.not_before is None:
            return None, verdict.reason
        not_before = verdict.not_before
    if cls.retry_after and f.last_attempt_at:
        not_before = max(not_before, f.last_attempt_at + cls.retry_after)
    if done == 0:
        not_before = max(not_before, f.window_start + dt.timedelta(hours=1))
    elif f.last_attempt_at:
        not_before = max(not_before, f.last_attempt_at + dt.timedelta(hours=1))
    if due is not None and due <= now < due + DUE_GRACE and not_before <= now:
        # The pass acting on a chosen slot comes a little after it: choosing again would
        # only find later slots and put the retry off for ever.
        return now, f.retry_reason or f"retry {done + 1} of {allowed}"
    options = timing.candidates(
        now=now,
        failed_at=f.window_start,
        not_before=not_before,
        until=f.window_end,
        tz=f.time_zone,
        group=cls.decline_group,
        first=done == 0,
        first_within=dt.timedelta(hours=policy.first_retry_hours),
    )
    if f.stripe_next_attempt:
        options = [o for o in options if abs(o - f.stripe_next_attempt) >= budgets.STRIPE_CLEARANCE]
    choice = timing.choose(
        group=cls.decline_group,
        failed_at=f.window_start,
        options=options,
        tz=f.time_zone,
        rng=rng,
        stats=f.stats,
        learned=policy.learned_timing,
    )
    if choice is None:
        return None, "no allowed retry slot left in the window" + (
            f" ({verdict.reason})" if not verdict.allowed else ""
        )
    return choice.at, f"retry {done + 1} of {allowed}: {choice.reason}"


def plan_message(
    f: CaseFacts, *, now: dt.datetime, cadence: Cadence, retries_used_up: bool = False
) -> tuple[dt.datetime | None, str]:
    """The next message and its purpose. retries_used_up: a soft case has no retries
    left, so only a new card can pay; it is asked for as on the card-update track."""
    if f.dunning_paused or f.track == declines.FRAUD:
        return None, ""
    min_gap, max_touches = cadence.min_gap, cadence.max_touches
    touches = sorted(f.touches, key=lambda t: t.at)
    last_touch = touches[-1].at if touches else None
    earliest = (last_touch + min_gap) if last_touch else now
    if (
        f.track == declines.SOFT
        and retries_used_up
        and not any(t.purpose == CARD_UPDATE for t in touches)
    ):
        # The retries ran out: only a new card can pay now, so ask for one even if the
        # reminders are used up, but never more than max_touches in any TOUCH_WINDOW.
        at = max(now, earliest)
        if len(touches) >= max_touches:
            at = max(at, touches[-max_touches].at + TOUCH_WINDOW)
        return at, CARD_UPDATE
    stage = f.dunning_stage
    if stage >= max_touches:
        return None, ""
    needs_card = f.track in (declines.CARD_UPDATE, declines.HARD) or (
        f.track == declines.SOFT and retries_used_up
    )
    if stage == 0:
        if f.track == declines.AUTHENTICATION:
            return max(now, earliest), AUTHENTICATION
        if needs_card:
            return max(now, earliest), CARD_UPDATE
        # Soft: technical recovery first: after the first retry failed, or 24 h.
        first_failed = any(a.source in OUR_SOURCES and a.outcome == FAILED for a in f.attempts)
        when = now if first_failed else f.opened_at + dt.timedelta(hours=24)
        return max(when, earliest), SOFT_FIRST
    final_at = (f.step_down_at or f.window_end) - dt.timedelta(hours=24)
    if stage == max_touches - 1 or earliest + min_gap > final_at:
        if earliest > (f.step_down_at or f.window_end):
            return None, ""
        return max(earliest, final_at), FINAL_NOTICE
    purpose = SHIPMENT_AT_RISK if stage == 1 and f.ships else SOFT_REMINDER
    if needs_card:
        purpose = CARD_UPDATE
    if f.track == declines.AUTHENTICATION:
        purpose = AUTHENTICATION
    return max(earliest, now + dt.timedelta(hours=72) if not last_touch else earliest), purpose
