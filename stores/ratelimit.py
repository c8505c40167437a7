"""Fixed-window rate limits that hold across processes and machines: counted in Redis
when REDIS_URL is set (Django's cache, whose increment is atomic there), else in the
database (`RateCounter`, one row per key, incremented in SQL). Never in a process's own
memory: under gunicorn each worker would count on its own, and a limit of five would be
five per worker."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .models import RateCounter

PREFIX = "recoup:rl:"


def _redis() -> bool:
    return bool(getattr(settings, "REDIS_URL", ""))


def hit(key: str, *, limit: int, window: int) -> bool:
    """Count one request against `key`; True when it is over `limit` in this window."""
    return add(key, window=window) > limit


def add(key: str, *, window: int) -> int:
    """Count one against `key` (the window starts with its first count); the count."""
    key = (PREFIX + key)[:200]
    if _redis():
        cache.add(key, 0, timeout=window)
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)
            return 1
    now = timezone.now()
    with transaction.atomic():
        if RateCounter.objects.filter(key=key, window_ends__gt=now).update(count=F("count") + 1):
            return RateCounter.objects.filter(key=key).values_list("count", flat=True).first()
        # No live window: the old one (if any) is over; so are other keys' ended ones.
        RateCounter.objects.filter(window_ends__lte=now).delete()
        try:
            with transaction.atomic():
                RateCounter.objects.create(
                    key=key, count=1, window_ends=now + dt.timedelta(seconds=window)
                )
            return 1
        except IntegrityError:  # another process started the window first
            RateCounter.objects.filter(key=key).update(count=F("count") + 1)
            return RateCounter.objects.filter(key=key).values_list("count", flat=True).first()


def count(key: str) -> int:
    """How many were counted against `key` in its live window."""
    key = (PREFIX + key)[:200]
    if _redis():
        return cache.get(key) or 0
    row = RateCounter.objects.filter(key=key, window_ends__gt=timezone.now())
    return row.values_list("count", flat=True).first() or 0


def clear(key: str) -> None:
    key = (PREFIX + key)[:200]
    if _redis():
        cache.delete(key)
    else:
        RateCounter.objects.filter(key=key).delete()
