"""Pre-dunning: warn before a stored card expires, and count the saves."""

from __future__ import annotations

import calendar
import datetime as dt

from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from subscriptions.models import PaymentMethod, Subscription

from . import ports
from .domain.events import Purpose
from .models import ExpiryWarning, RetryPolicy
from .selectors import retry_policy_current


def card_expires_on(exp_month: int, exp_year: int) -> dt.date:
    return dt.date(exp_year, exp_month, calendar.monthrange(exp_year, exp_month)[1])


def predunning_pass(*, now: dt.datetime | None = None, limit: int = 1000) -> int:
    """Default cards on active subscriptions that expire soon get one warning each."""
    now = now or timezone.now()
    today = now.date()
    # No store warns further ahead than its policy's predunning_days (or the default, for
    # a store without a saved policy): cards expiring after the longest of them (most
    # cards, years away) are not read at all.
    longest = RetryPolicy.objects.aggregate(m=Max("predunning_days"))["m"] or 0
    default = RetryPolicy._meta.get_field("predunning_days").default
    horizon = today + dt.timedelta(days=max(longest, default))
    candidates = (
        PaymentMethod.objects.filter(
            is_default=True,
            exp_year__isnull=False,
            exp_month__isnull=False,
            expiry_warning__isnull=True,
            customer__subscriptions__status__in=[
                Subscription.Status.ACTIVE,
                Subscription.Status.TRIALING,
            ],
        )
        # Only cards expiring between this month and the horizon's: the pass runs every
        # minute, and most cards expire years from now.
        .filter(
            Q(exp_year__lt=horizon.year) | Q(exp_year=horizon.year, exp_month__lte=horizon.month)
        )
        .filter(Q(exp_year__gt=today.year) | Q(exp_year=today.year, exp_month__gte=today.month))
        .select_related("customer", "store")
        .distinct()[:limit]
    )
    warned = 0
    policies: dict = {}
    for pm in candidates:
        expires = card_expires_on(pm.exp_month, pm.exp_year)
        if pm.store_id not in policies:
            policies[pm.store_id] = retry_policy_current(store=pm.store)
        if not today <= expires <= today + dt.timedelta(days=policies[pm.store_id].predunning_days):
            continue
        try:
            with transaction.atomic():
                ExpiryWarning.objects.create(
                    store_id=pm.store_id,
                    customer=pm.customer,
                    payment_method=pm,
                    expires_on=expires,
                    warned_at=now,
                )
        except IntegrityError:
            continue  # another worker warned first
        warned += 1
        ports.expiry_warning_send(
            customer=pm.customer, payment_method=pm, purpose=Purpose.PREDUNNING, at=now
        )
    return warned
