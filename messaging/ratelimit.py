"""Fixed-window rate limits in Django's cache (shared across processes when the cache
is; per process with the default local-memory cache)."""

from __future__ import annotations

from django.core.cache import cache


def hit(key: str, *, limit: int, window: int) -> bool:
    """Count one request against `key`; True when it is over `limit` in this window."""
    key = f"recoup:rl:{key}"
    cache.add(key, 0, timeout=window)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        count = 1
    return count > limit
