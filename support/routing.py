"""The routing policy: which cases go to a person, and why (read-only).

A case goes to the escalation queue when any of these holds:
- fraud or dispute risk (the fraud track, or an open dispute);
- high value: the subscription's MRR reaches Store.high_value_mrr_threshold, or the
  customer's lifetime paid amount reaches SupportPolicy.ltv_threshold;
- churn risk: the explainable churn score reaches Store.churn_risk_threshold;
- the customer replied to a message (reported by messaging; see services).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from recovery.models import RecoveryCase, Track
from stores.models import Store

from .churn import ChurnScore, churn_score, customer_lifetime_paid
from .models import SupportPolicy

MONTHS_AT_STAKE = 12


def support_policy_for(*, store: Store) -> SupportPolicy:
    """The store's support policy, or the defaults (unsaved) if it never set one."""
    return SupportPolicy.objects.filter(store=store).first() or SupportPolicy(store=store)


def money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


def value_at_risk(*, case: RecoveryCase) -> int:
    """What losing this customer costs: the amount due, or the next year of the
    subscription when that is more."""
    mrr = case.subscription.mrr if case.subscription_id else 0
    return max(case.amount, mrr * MONTHS_AT_STAKE)


@dataclass
class Routing:
    reasons: list[dict] = field(default_factory=list)
    churn: ChurnScore = field(default_factory=ChurnScore)

    @property
    def route(self) -> bool:
        return bool(self.reasons)


def case_routing(*, case: RecoveryCase, at: dt.datetime) -> Routing:
    """Evaluate the store's routing policy for one open case."""
    store = case.store
    policy = support_policy_for(store=store)
    reasons = []
    customer = case.customer
    # The fraud track (fraudulent, disputes) stops all dunning, so a person must act. A
    # lost or stolen card is only flagged for review by the engine: its card-update
    # request must go on, so the flag alone does not take the case from automation.
    if case.track == Track.FRAUD or customer.disputed_at:
        why = case.track_reason
        if customer.disputed_at and case.track != Track.FRAUD:
            why = f"the customer opened a dispute on {customer.disputed_at:%b %-d}"
        reasons.append({"code": "fraud", "label": f"Fraud or dispute risk: {why}"})
    mrr = case.subscription.mrr if case.subscription_id else 0
    if mrr and mrr >= store.high_value_mrr_threshold:
        reasons.append(
            {
                "code": "high_value_mrr",
                "label": f"High value: MRR {money(mrr, case.currency)} "
                f"(threshold {money(store.high_value_mrr_threshold, case.currency)})",
            }
        )
    else:
        paid = customer_lifetime_paid(customer=customer)
        if policy.ltv_threshold and paid >= policy.ltv_threshold:
            reasons.append(
                {
                    "code": "high_value_ltv",
                    "label": f"High value: paid {money(paid, case.currency)} so far "
                    f"(threshold {money(policy.ltv_threshold, case.currency)})",
                }
            )
    churn = churn_score(customer=customer, at=at)
    if churn.score >= store.churn_risk_threshold:
        reasons.append(
            {
                "code": "churn_risk",
                "label": f"Churn risk {churn.score} (threshold {store.churn_risk_threshold})",
            }
        )
    return Routing(reasons=reasons, churn=churn)
