from __future__ import annotations

from django.db.models import Min

from common.errors import NotFound
from recovery.models import RecoveryCase
from stores.models import Store

from . import facts
from .models import Customer, Subscription


def customer_get(*, store: Store, stripe_id: str) -> Customer:
    customer = Customer.objects.filter(store=store, stripe_id=stripe_id).first()
    if customer is None:
        raise NotFound(f"No customer {stripe_id!r} in this store.", code="not_found")
    return customer


def customer_access(*, customer: Customer) -> dict:
    """What the merchant's app should allow this customer right now, and why."""

    open_cases = RecoveryCase.objects.filter(customer=customer, status=RecoveryCase.Status.OPEN)
    summary = open_cases.aggregate(window_end=Min("window_end"), step_down=Min("step_down_at"))
    restricted = open_cases.filter(stepped_down_at__isnull=False).exists()
    subs = list(
        Subscription.objects.filter(customer=customer).values(
            "stripe_id", "status", "access", "product_name"
        )
    )
    if restricted:
        access, reason = (
            Subscription.Access.RESTRICTED,
            "a payment is overdue past its grace period",
        )
    elif summary["window_end"]:
        access, reason = (
            Subscription.Access.GRACE,
            "a payment failed; full access during the grace period",
        )
    elif subs and all(s["access"] == Subscription.Access.SUSPENDED for s in subs):
        access, reason = (
            Subscription.Access.SUSPENDED,
            "the subscription ended after an unpaid recovery window",
        )
    else:
        access, reason = Subscription.Access.FULL, "all payments are up to date"
    return {
        "customer": customer.stripe_id,
        "access": access,
        "reason": reason,
        "open_cases": open_cases.count(),
        "grace_until": summary["step_down"] if access == Subscription.Access.GRACE else None,
        "window_end": summary["window_end"],
        "subscriptions": subs,
    }


def customer_facts(*, customer: Customer, store_zone: str) -> dict:
    """What Recoup knows of the customer for messages and timing: the zone in force (and
    where it came from: "" when set by other means), locale, phone and SMS consent.
    `store_zone`: the customer's store's zone, for customers without one of their own."""
    return {
        "time_zone": customer.time_zone or store_zone,
        "time_zone_source": customer.time_zone_source
        or ("" if customer.time_zone else facts.STORE),
        "locale": customer.locale,
        "phone": customer.phone,
        "sms_opt_in": customer.sms_opt_in,
    }
