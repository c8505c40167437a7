"""Reads for the escalation queue."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Case, F, IntegerField, QuerySet, Value, When

from recovery.models import RecoveryCase
from stores.models import Store

from .churn import ChurnScore, churn_score, customer_lifetime_paid
from .models import CustomerSignal, QueueItem
from .routing import support_policy_for

ACTIVE = [QueueItem.Status.WAITING, QueueItem.Status.CLAIMED, QueueItem.Status.PROMISED]
# Urgency weights: value at risk counts triple in a case's last 2 days, double in its
# last week. Stated on the queue page.
URGENT = dt.timedelta(days=2)
SOON = dt.timedelta(days=7)

VIEWS = {
    "waiting": "Needs an agent",
    "mine": "Mine",
    "promised": "Promised",
    "active": "All open",
    "done": "Done (7 days)",
}


def queue_waiting_count(*, store: Store) -> int:
    # Index: support queue_store_active_idx (store, window_end) WHERE status <> 'done'.
    return QueueItem.objects.filter(store=store, status=QueueItem.Status.WAITING).count()


def queue_items(*, store: Store, view: str, user, now: dt.datetime) -> QuerySet[QueueItem]:
    """The queue, most valuable and most urgent first: value at risk weighted by the time
    left in the case's window."""
    qs = QueueItem.objects.filter(store=store)
    if view == "done":
        qs = qs.filter(status=QueueItem.Status.DONE, resolved_at__gte=now - dt.timedelta(days=7))
    else:
        qs = qs.exclude(status=QueueItem.Status.DONE)
        if view == "waiting":
            qs = qs.filter(status=QueueItem.Status.WAITING)
        elif view == "mine":
            qs = qs.filter(claimed_by=user)
        elif view == "promised":
            qs = qs.filter(status=QueueItem.Status.PROMISED)
    return (
        qs.select_related("case", "case__customer", "claimed_by")
        .annotate(
            urgency=Case(
                When(window_end__lte=now + URGENT, then=Value(3)),
                When(window_end__lte=now + SOON, then=Value(2)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .annotate(priority=F("value_at_risk") * F("urgency"))
        .order_by("-priority", "window_end", "id")
    )


@dataclass
class SupportPanel:
    item: QueueItem | None
    churn: ChurnScore
    target_minutes: int
    age_minutes: int | None
    overdue: bool
    mine: bool
    claimable: bool


def item_age(item: QueueItem, now: dt.datetime) -> int:
    """Minutes the item waited (until its first response, or until now)."""
    end = item.first_response_at or now
    return max(int((end - item.entered_at).total_seconds() // 60), 0)


def case_support_panel(*, case: RecoveryCase, now: dt.datetime, user) -> SupportPanel:
    item = QueueItem.objects.filter(case=case).select_related("claimed_by").first()
    policy = support_policy_for(store=case.store)
    age = item_age(item, now) if item else None
    return SupportPanel(
        item=item,
        churn=churn_score(customer=case.customer, at=now),
        target_minutes=policy.target_response_minutes,
        age_minutes=age,
        overdue=bool(item and not item.first_response_at and age > policy.target_response_minutes),
        mine=bool(item and item.claimed_by_id == user.pk),
        claimable=bool(item and item.status in ACTIVE and item.claimed_by_id is None),
    )


@dataclass
class CustomerSupportFacts:
    """What support knows of one customer, for the customer page."""

    churn: ChurnScore
    lifetime_paid: int  # minor units
    signals: list[CustomerSignal]


def customer_support_facts(*, customer, now: dt.datetime) -> CustomerSupportFacts:
    return CustomerSupportFacts(
        churn=churn_score(customer=customer, at=now),
        lifetime_paid=customer_lifetime_paid(customer=customer),
        signals=list(CustomerSignal.objects.filter(customer=customer).order_by("-at")[:50]),
    )
