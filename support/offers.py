"""Retention offers applied through Stripe: a discount (a coupon on the subscription) or a
pause of collection. Network calls: never call these inside a transaction."""

from __future__ import annotations

import datetime as dt

import stripe
from django.utils import timezone

from common.errors import ApplicationError
from recovery.gateways.stripe import stripe_client
from stores.models import Store
from subscriptions.models import Subscription

DISCOUNT = "discount"
PAUSE = "pause"
MAX_PAUSE_DAYS = 90


def subscription_offer_apply(
    *,
    store: Store,
    subscription: Subscription,
    kind: str,
    coupon: str = "",
    pause_days: int = 0,
    idempotency_key: str,
) -> str:
    """Apply the offer and return a sentence describing what was done."""
    if kind == DISCOUNT:
        coupon = (coupon or "").strip()
        if not coupon:
            raise ApplicationError("Give the Stripe coupon id to apply (e.g. SAVE20).")
        params: dict = {"discounts": [{"coupon": coupon}]}
        description = f"coupon {coupon} on subscription {subscription.stripe_id}"
    elif kind == PAUSE:
        if not 1 <= int(pause_days or 0) <= MAX_PAUSE_DAYS:
            raise ApplicationError(f"Pause for 1 to {MAX_PAUSE_DAYS} days.")
        resumes = timezone.now() + dt.timedelta(days=int(pause_days))
        # keep_as_draft: invoices made during the pause wait as drafts, nothing is charged.
        params = {
            "pause_collection": {
                "behavior": "keep_as_draft",
                "resumes_at": int(resumes.timestamp()),
            }
        }
        description = (
            f"collection paused on subscription {subscription.stripe_id} until {resumes:%Y-%m-%d}"
        )
    else:
        raise ApplicationError("An offer is either a discount or a pause.")
    if store.gateway != Store.Gateway.STRIPE:
        return f"{description} (sandbox store: recorded, nothing sent to Stripe)"

    try:
        stripe_client(store).v1.subscriptions.update(
            subscription.stripe_id, params, {"idempotency_key": idempotency_key}
        )
    except stripe.StripeError as exc:
        message = getattr(exc, "user_message", None) or str(exc)
        raise ApplicationError(f"Stripe refused the offer: {message}") from exc
    return description
