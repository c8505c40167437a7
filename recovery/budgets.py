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

from django.db.models import Count, Q

from . import declines
from .models import PaymentAttempt

DAY = dt.timedelta(days=1)
LIMITS = {
    # brand: [(window, max attempts)]
    "visa": [(dt.timedelta(days=30), 15)],
    "mastercard": [(DAY, 10), (dt.timedelta(days=30), 35)],
}
# Unknown brands get the strictest of both.
DEFAULT_LIMITS = [(DAY, 10), (dt.timedelta(days=30), 15)]
STRIPE_CLEARANCE = DAY


@dataclass(frozen=True)
class BudgetVerdict:
    allowed: bool
    reason: str
    not_before: dt.datetime | None = None  # earliest time a retry would be allowed


def card_key(*, fingerprint: str, payment_method_id: str, customer_id: int | None) -> Q:
    if fingerprint:
        return Q(card_fingerprint=fingerprint)
    if payment_method_id:
        return Q(payment_method_id=payment_method_id)
    return Q(customer_id=customer_id)


def budget_check(
    *,
    store_id,
    brand: str,
    fingerprint: str,
    payment_method_id: str = "",
    customer_id: int | None = None,
    at: dt.datetime,
    since_card_change: dt.datetime | None = None,
    stripe_next_attempt: dt.datetime | None = None,
) -> BudgetVerdict:
    """May one more attempt be made on this card at `at`? One aggregate query."""
    brand = (brand or "").lower()
    limits = LIMITS.get(brand, DEFAULT_LIMITS)
    counted = PaymentAttempt.objects.filter(
        card_key(
            fingerprint=fingerprint, payment_method_id=payment_method_id, customer_id=customer_id
        ),
        store_id=store_id,
        attempted_at__gt=at - dt.timedelta(days=30),
        attempted_at__lte=at,
    ).exclude(outcome=PaymentAttempt.Outcome.NOT_SENT)
    window_counts = {
        f"n{i}": Count("id", filter=Q(attempted_at__gt=at - window))
        for i, (window, _) in enumerate(limits)
    }
    since = since_card_change or (at - dt.timedelta(days=30))
    stop = Q(advice_code="do_not_try_again") | Q(network_advice_code__in=["03", "3", "21"])
    agg = counted.aggregate(
        **window_counts,
        stop=Count("id", filter=stop & Q(attempted_at__gt=since)),
    )
    last = (
        counted.order_by("-attempted_at").values_list("attempted_at", "network_advice_code").first()
    )
    if agg["stop"]:
        return BudgetVerdict(
            False, "the network said never to retry this card (do-not-retry advice)"
        )
    for i, (window, limit) in enumerate(limits):
        used = agg[f"n{i}"] + (
            1 if stripe_next_attempt and at - window < stripe_next_attempt <= at + window else 0
        )
        if used >= limit:
            name = "24 h" if window == DAY else f"{window.days} days"
            oldest = (
                counted.filter(attempted_at__gt=at - window)
                .order_by("attempted_at")
                .values_list("attempted_at", flat=True)
                .first()
            )
            return BudgetVerdict(
                False,
                f"{brand or 'card'} budget used: {used} of {limit} attempts in {name}",
                not_before=(oldest + window) if oldest else None,
            )
    if last and last[1] in declines.MASTERCARD_RETRY_AFTER:
        until = last[0] + declines.MASTERCARD_RETRY_AFTER[last[1]]
        if at < until:
            return BudgetVerdict(
                False,
                f"Mastercard advice {last[1]}: wait until {until:%Y-%m-%d %H:%M} UTC",
                not_before=until,
            )
    if stripe_next_attempt and abs(stripe_next_attempt - at) < STRIPE_CLEARANCE:
        return BudgetVerdict(
            False,
            "Stripe's own retry is scheduled within 24 h; leaving the card to it",
            not_before=stripe_next_attempt + STRIPE_CLEARANCE,
        )
    return BudgetVerdict(True, "within network budgets")
