"""The churn-risk score: points for each signal, capped at 100, every point with its reason.

A person reading the queue must see *why* a customer looks like leaving, so the score is
a sum of named parts rather than a model's output. Weights are stated here and on the
settings page; signals older than their lookback no longer count.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.apps import apps
from django.db.models import Count, Max, Q, Sum

from orders.models import Order
from recovery.models import RecoveryCase
from subscriptions.models import Customer, Invoice, Subscription

from .models import CustomerSignal

SIGNAL_LOOKBACK = dt.timedelta(days=30)
FAILURE_LOOKBACK = dt.timedelta(days=180)
ENGAGEMENT_LOOKBACK = dt.timedelta(days=30)
SHORT_TENURE = dt.timedelta(days=90)

# Points per kind of posted signal (a kind counts once, however often it was posted).
SIGNAL_POINTS = {
    CustomerSignal.Kind.DOWNGRADE: 20,
    CustomerSignal.Kind.CANCEL_AT_PERIOD_END: 30,
    CustomerSignal.Kind.CANCEL_PAGE: 25,
    CustomerSignal.Kind.PRICING_PAGE: 10,
    CustomerSignal.Kind.SUPPORT_COMPLAINT: 15,
    CustomerSignal.Kind.USAGE_DROP: 15,
}
CUSTOM_DEFAULT_POINTS = 10
CUSTOM_MAX_POINTS = 50
REPEATED_FAILURE_POINTS = {2: 10, 3: 20}  # failed payments in 180 days: points
SHORT_TENURE_POINTS = 10
NO_ENGAGEMENT_POINTS = 15
NO_ENGAGEMENT_MIN_MESSAGES = 2


@dataclass(frozen=True)
class Reason:
    code: str
    label: str
    points: int

    def as_dict(self) -> dict:
        return {"code": self.code, "label": self.label, "points": self.points}


@dataclass
class ChurnScore:
    score: int = 0
    reasons: list[Reason] = field(default_factory=list)

    def as_list(self) -> list[dict]:
        return [r.as_dict() for r in self.reasons]


def _message_model():
    """messaging.Message once the messaging app has it; None before."""
    try:
        return apps.get_model("messaging", "Message")
    except LookupError:
        return None


def _engagement(customer: Customer, at: dt.datetime) -> tuple[int, int]:
    """(messages sent in the lookback, of them opened or clicked)."""
    Message = _message_model()
    if Message is None:
        return 0, 0
    names = {f.name for f in Message._meta.get_fields()}
    case_field = "customer" if "customer" in names else "case__customer"
    sent_field = "sent_at" if "sent_at" in names else "created_at"
    engaged = Q()
    for name in ("opened_at", "clicked_at"):
        if name in names:
            engaged |= Q(**{f"{name}__isnull": False})
    agg = Message.objects.filter(
        **{case_field: customer, f"{sent_field}__gte": at - ENGAGEMENT_LOOKBACK}
    ).aggregate(
        sent=Count("pk", filter=Q(**{f"{sent_field}__isnull": False})),
        engaged=Count("pk", filter=engaged) if engaged else Count("pk", filter=Q(pk__in=[])),
    )
    return agg["sent"] or 0, agg["engaged"] or 0


def churn_score(*, customer: Customer, at: dt.datetime) -> ChurnScore:
    """The customer's churn risk at `at`, 0-100, with the reasons that make it up."""

    reasons: list[Reason] = []
    signals = (
        CustomerSignal.objects.filter(customer=customer, at__gt=at - SIGNAL_LOOKBACK, at__lte=at)
        .values("kind", "label", "weight")
        .order_by("kind", "label")
        .annotate(last=Max("at"))
    )
    seen_kinds = set()
    for row in signals:
        kind = row["kind"]
        if kind == CustomerSignal.Kind.CUSTOM:
            points = min(
                row["weight"] if row["weight"] is not None else CUSTOM_DEFAULT_POINTS,
                CUSTOM_MAX_POINTS,
            )
            label = row["label"] or "Other signal from the merchant"
            reasons.append(Reason(f"custom:{label}", f"{label} ({row['last']:%b %-d})", points))
            continue
        if kind in seen_kinds:
            continue
        seen_kinds.add(kind)
        label = CustomerSignal.Kind(kind).label
        reasons.append(Reason(kind, f"{label} ({row['last']:%b %-d})", SIGNAL_POINTS[kind]))

    subs = Subscription.objects.filter(customer=customer).aggregate(
        cancelling=Count("pk", filter=Q(cancel_at_period_end=True)),
    )
    if subs["cancelling"] and CustomerSignal.Kind.CANCEL_AT_PERIOD_END not in seen_kinds:
        reasons.append(
            Reason(
                CustomerSignal.Kind.CANCEL_AT_PERIOD_END,
                "Subscription set to cancel at period end (Stripe)",
                SIGNAL_POINTS[CustomerSignal.Kind.CANCEL_AT_PERIOD_END],
            )
        )

    failures = RecoveryCase.objects.filter(
        customer=customer, opened_at__gt=at - FAILURE_LOOKBACK, opened_at__lte=at
    ).count()
    for threshold, points in sorted(REPEATED_FAILURE_POINTS.items(), reverse=True):
        if failures >= threshold:
            reasons.append(
                Reason("repeated_failures", f"{failures} failed payments in 180 days", points)
            )
            break

    tenure = at - customer.first_seen_at
    if tenure < SHORT_TENURE:
        reasons.append(
            Reason("short_tenure", f"Customer for {max(tenure.days, 0)} days", SHORT_TENURE_POINTS)
        )

    sent, engaged = _engagement(customer, at)
    if sent >= NO_ENGAGEMENT_MIN_MESSAGES and engaged == 0:
        reasons.append(
            Reason(
                "no_engagement",
                f"Opened or clicked none of {sent} recent messages",
                NO_ENGAGEMENT_POINTS,
            )
        )

    reasons.sort(key=lambda r: -r.points)
    return ChurnScore(score=min(sum(r.points for r in reasons), 100), reasons=reasons)


def customer_lifetime_paid(*, customer: Customer) -> int:
    """What the customer has paid so far (paid invoices and paid orders), minor units."""

    invoices = (
        Invoice.objects.filter(customer=customer, status=Invoice.Status.PAID).aggregate(
            total=Sum("amount_paid")
        )["total"]
        or 0
    )
    orders = (
        Order.objects.filter(customer=customer, payment_status=Order.PaymentStatus.PAID).aggregate(
            total=Sum("amount")
        )["total"]
        or 0
    )
    return invoices + orders
