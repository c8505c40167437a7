"""Card-network retry budgets, counted per card across every source.

Visa: at most 15 reattempts in 30 days. Mastercard: at most 10 in 24 hours and 35 in
30 days. Never after a do-not-retry signal; wait as Mastercard advice 24–30 says; and
when Stripe's own Smart Retries have one scheduled, count it and keep 24 h clear of it.
Attempts count whoever made them: Stripe's automatic retries seen in events, ours, the
customer's. An attempt that never reached the network (not_sent) does not count.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from . import declines

DAY = dt.timedelta(days=1)
LIMITS = {
    # brand: [(window, max attempts)]
    "visa": [(dt.timedelta(days=30), 15)],
    "mastercard": [(DAY, 10), (dt.timedelta(days=30), 35)],
}
# Unknown brands get the strictest of both.
DEFAULT_LIMITS = [(DAY, 10), (dt.timedelta(days=30), 15)]
STRIPE_CLEARANCE = DAY
LONGEST = dt.timedelta(days=30)
DO_NOT_RETRY_NETWORK_ADVICE = ("03", "3", "21")


@dataclass(frozen=True)
class BudgetVerdict:
    allowed: bool
    reason: str
    not_before: dt.datetime | None = None  # earliest time a retry would be allowed


def card_id(*, store_id, fingerprint: str, payment_method_id: str, customer_id) -> tuple:
    """The card a budget counts: its fingerprint, else its payment method, else the
    customer (the strictest reading when nothing identifies the card)."""
    if fingerprint:
        return (store_id, "fingerprint", fingerprint)
    if payment_method_id:
        return (store_id, "payment_method", payment_method_id)
    return (store_id, "customer", customer_id)


# What a budget needs of each attempt on the card: (attempted_at, advice_code,
# network_advice_code), attempts that never reached the network left out.
BUDGET_ROW = ("attempted_at", "advice_code", "network_advice_code")


def budget_verdict(
    rows: list,
    *,
    brand: str,
    at: dt.datetime,
    since_card_change: dt.datetime | None = None,
    stripe_next_attempt: dt.datetime | None = None,
) -> BudgetVerdict:
    """The verdict from the card's attempts (`BUDGET_ROW` tuples); no query."""
    brand = (brand or "").lower()
    limits = LIMITS.get(brand, DEFAULT_LIMITS)
    # Attempts dated after `at` count too: another worker's pass, or Stripe, may be a
    # little ahead of this one's clock.
    counted = sorted(r for r in rows if at - LONGEST < r[0])
    since = since_card_change or (at - LONGEST)
    if any(
        r[0] > since and (r[1] == "do_not_try_again" or r[2] in DO_NOT_RETRY_NETWORK_ADVICE)
        for r in counted
    ):
        return BudgetVerdict(
            False, "the network said never to retry this card (do-not-retry advice)"
        )
    for window, limit in limits:
        inside = [r[0] for r in counted if r[0] > at - window]
        used = len(inside) + (
            1 if stripe_next_attempt and at - window < stripe_next_attempt <= at + window else 0
        )
        if used >= limit:
            name = "24 h" if window == DAY else f"{window.days} days"
            return BudgetVerdict(
                False,
                f"{brand or 'card'} budget used: {used} of {limit} attempts in {name}",
                not_before=(inside[0] + window) if inside else None,
            )
    last = counted[-1] if counted else None
    if last and last[2] in declines.MASTERCARD_RETRY_AFTER:
        until = last[0] + declines.MASTERCARD_RETRY_AFTER[last[2]]
        if at < until:
            return BudgetVerdict(
                False,
                f"Mastercard advice {last[2]}: wait until {until:%Y-%m-%d %H:%M} UTC",
                not_before=until,
            )
    if stripe_next_attempt and abs(stripe_next_attempt - at) < STRIPE_CLEARANCE:
        return BudgetVerdict(
            False,
            "Stripe's own retry is scheduled within 24 h; leaving the card to it",
            not_before=stripe_next_attempt + STRIPE_CLEARANCE,
        )
    return BudgetVerdict(True, "within network budgets")
