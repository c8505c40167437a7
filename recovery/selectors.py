from __future__ import annotations

from django.db.models import QuerySet

from stores.models import Store

from .models import RecoveryCase, RetryPolicy


def retry_policy_current(*, store: Store) -> RetryPolicy:
    """The store's newest policy, or the defaults (unsaved) if it never edited one."""
    policy = RetryPolicy.objects.filter(store=store).order_by("-version").first()
    return policy or RetryPolicy(store=store, version=0)


def case_list(*, store: Store, filters: dict | None = None) -> QuerySet[RecoveryCase]:
    filters = filters or {}
    qs = RecoveryCase.objects.filter(store=store).select_related("customer", "invoice", "order")
    if filters.get("customer"):
        qs = qs.filter(customer__stripe_id=filters["customer"])
    if filters.get("status"):
        qs = qs.filter(status=filters["status"])
    if filters.get("track"):
        qs = qs.filter(track=filters["track"])
    return qs.order_by("-opened_at", "-id")
