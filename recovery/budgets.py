"""The card budgets' reads: each card's attempts that count, for `domain.budgets`' verdict.

The rules (Visa, Mastercard, do-not-retry advice, Stripe's own retries) are pure and live
in `recovery.domain.budgets`; this module reads the rows they count.
"""

from __future__ import annotations

import datetime as dt

from django.db.models import Q

from .domain.budgets import BUDGET_ROW, LONGEST, BudgetVerdict, budget_verdict
from .models import PaymentAttempt


def card_key(*, fingerprint: str, payment_method_id: str, customer_id: int | None) -> Q:
    if fingerprint:
        return Q(card_fingerprint=fingerprint)
    if payment_method_id:
        return Q(payment_method_id=payment_method_id)
    return Q(customer_id=customer_id)


def budget_rows(*, store_id, fingerprint: str, payment_method_id: str, customer_id, at) -> list:
    """The card's attempts that count in the 30 days up to `at`. One query."""
    return list(
        PaymentAttempt.objects.filter(
            card_key(
                fingerprint=fingerprint,
                payment_method_id=payment_method_id,
                customer_id=customer_id,
            ),
            store_id=store_id,
            attempted_at__gt=at - LONGEST,
        )
        .exclude(outcome=PaymentAttempt.Outcome.NOT_SENT)
        .values_list(*BUDGET_ROW)
    )


def budget_rows_for_cards(cards: set[tuple], *, at) -> dict[tuple, list]:
    """budget_rows for many cards (`card_id` tuples) in one query, by card."""
    out: dict[tuple, list] = {card: [] for card in cards}
    if not cards:
        return out
    match = Q()
    by_store: dict = {}
    for store_id, kind, value in cards:
        by_store.setdefault(store_id, {}).setdefault(kind, set()).add(value)
    for store_id, kinds in by_store.items():
        either = Q()
        if "fingerprint" in kinds:
            either |= Q(card_fingerprint__in=kinds["fingerprint"])
        if "payment_method" in kinds:
            either |= Q(payment_method_id__in=kinds["payment_method"])
        if "customer" in kinds:
            either |= Q(customer_id__in=kinds["customer"])
        match |= Q(either, store_id=store_id)
    rows = (
        PaymentAttempt.objects.filter(match, attempted_at__gt=at - LONGEST)
        .exclude(outcome=PaymentAttempt.Outcome.NOT_SENT)
        .values_list(
            "store_id", "card_fingerprint", "payment_method_id", "customer_id", *BUDGET_ROW
        )
    )
    for store_id, fingerprint, pm_id, customer_id, *row in rows:
        for card in (
            (store_id, "fingerprint", fingerprint),
            (store_id, "payment_method", pm_id),
            (store_id, "customer", customer_id),
        ):
            if card in out:
                out[card].append(tuple(row))
    return out


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
    rows: list | None = None,
) -> BudgetVerdict:
    """May one more attempt be made on this card at `at`? `rows`: the card's
    `budget_rows`, when the caller read them already (a scheduler batch reads them for
    all its cards at once); otherwise one query."""
    if rows is None:
        rows = budget_rows(
            store_id=store_id,
            fingerprint=fingerprint,
            payment_method_id=payment_method_id,
            customer_id=customer_id,
            at=at,
        )
    return budget_verdict(
        rows,
        brand=brand,
        at=at,
        since_card_change=since_card_change,
        stripe_next_attempt=stripe_next_attempt,
    )
