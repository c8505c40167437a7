"""Pacing: every Stripe request of a store first takes a slot from the store's budget.

Stripe limits requests per account (by default 100/s live, 25/s test; `store.stripe_rate`)
and every worker on every machine shares that limit. Counting requests per second is not
enough: two workers each sending a second's allowance at the end of one second and at the
start of the next send twice the limit within one second. So requests are scheduled (the
GCRA in its virtual-scheduling form): each one reserves the slot `t = max(now, tat)`, moves
the budget's theoretical arrival time on to `tat = t + 1/rate`, and waits until t. Slots
are at least 1/rate apart, so no sliding one-second window holds more than the rate. The
rate used is the store's times a headroom (RECOUP_STRIPE_RATE_HEADROOM, 0.9): network
jitter can bring two requests closer together at Stripe than they were when they left.

A request whose slot is further away than RECOUP_STRIPE_MAX_WAIT_SECONDS reserves nothing
and raises BudgetExhausted, a `stripe.RateLimitError`, which callers already take as "not
sent, try later". A 429 from Stripe moves the budget's tat past its back-off, so that every
worker slows down, not only the one that was refused.

Where a budget lives: in Redis when settings.REDIS_URL is set (one atomic Lua script per
request, on the Redis server's clock), otherwise in the database (`stores.StripeBudget`: a
short transaction of its own per request, the row locked, on this machine's clock, so
machines sharing a database need NTP; the headroom absorbs a skew of a few milliseconds).
A gateway built from a key alone, with no store (tests, tools), is paced within its process.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import redis
import stripe
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from stores.models import Store, StripeBudget

logger = logging.getLogger(__name__)

# After a 429 without a Retry-After: how long the whole budget is held back, and how long
# the refused case waits before its next try. Both are jittered, so that workers or cases
# refused together do not all come back at the same moment.
BUDGET_BACKOFF_SECONDS = (1.0, 2.0)
CASE_RETRY_AFTER_SECONDS = (300.0, 360.0)
# A Retry-After beyond this is taken as this (a bad header must not stop a store for days).
RETRY_AFTER_CAP_SECONDS = 600.0
# A slot overslept by more than its tolerance (Pacer.late_at_most) is given up for a new
# one, this many times at most (then the request goes anyway).
MISSED_SLOTS_AT_MOST = 2
# How much of the headroom's margin one request may take by leaving late. Paced at
# rate x headroom, the limit's rate + 1 requests in a row span 1 / headroom seconds, so
# the margin before Stripe counts one too many in a second is 1 / headroom - 1 (0.11 s at
# 0.9), whatever the rate. A request that leaves late brings itself closer to the ones
# after it by as much; the rest of the margin is for the network and Stripe's own jitter.
LATE_SHARE_OF_MARGIN = 0.25
LATE_AT_LEAST = 0.002

# The pacer's clock: wall-clock seconds, moved on by the monotonic clock from one reading
# at import. Tests that move Django's time (time_machine patches time.time and even
# time.monotonic) move nothing here: requests go out in real time, and so are paced in it.
_WALL_AT_IMPORT = time.time()
_MONOTONIC_AT_IMPORT = time.clock_gettime(time.CLOCK_MONOTONIC)


def real_clock() -> float:
    return _WALL_AT_IMPORT + (time.clock_gettime(time.CLOCK_MONOTONIC) - _MONOTONIC_AT_IMPORT)


class BudgetExhausted(stripe.RateLimitError):
    """Not sent: the store's next free slot is too far away (or its budget unreachable).
    `retry_after`: seconds after which trying again makes sense."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after

    @classmethod
    def booked(cls, wait: float) -> BudgetExhausted:
        return cls(
            f"Not sent: this store's Stripe request budget is booked for the next {wait:.1f} s "
            "(its rate limit); try again later.",
            retry_after=wait,
        )


class BudgetUnavailable(Exception):
    """The shared budget could not be read or written (Redis or the database failed)."""


def gcra_reserve(
    *, tat: float, now: float, interval: float, max_wait: float
) -> tuple[float, float]:
    """(the budget's new tat, this request's wait). Reserves nothing and raises
    BudgetExhausted when the slot is more than max_wait away. RESERVE_LUA is the same."""
    slot = max(now, tat)
    wait = slot - now
    if wait > max_wait:
        raise BudgetExhausted.booked(wait)
    return slot + interval, wait


def gcra_delay(*, tat: float, now: float, seconds: float) -> float:
    """The budget's tat after a back-off: no slot before now + seconds. DELAY_LUA is the same."""
    return max(tat, now + seconds)


class Backend(Protocol):
    """Where budgets live. `now` None: the backend's own clock."""

    def reserve(self, key: str, *, interval: float, max_wait: float, now: float | None) -> float:
        """Reserve the next slot and return the seconds until it; or raise BudgetExhausted."""
        ...

    def delay(self, key: str, *, seconds: float, now: float | None) -> None: ...


class LocalBackend:
    """Budgets in this process's memory (a client with no store)."""

    def __init__(self):
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str, *, interval: float, max_wait: float, now: float | None) -> float:
        with self._lock:
            now = real_clock() if now is None else now
            tat = self._tats.get(key, 0.0)
            self._tats[key], wait = gcra_reserve(
                tat=tat, now=now, interval=interval, max_wait=max_wait
            )
        return wait

    def delay(self, key: str, *, seconds: float, now: float | None) -> None:
        with self._lock:
            now = real_clock() if now is None else now
            self._tats[key] = gcra_delay(tat=self._tats.get(key, 0.0), now=now, seconds=seconds)


class DatabaseBackend:
    """`stores.StripeBudget` rows; the key is the store's id.

    Each request is a transaction of its own that locks the store's row, moves its tat on
    and commits before the wait. It is durable: inside a caller's transaction it would be
    a savepoint, and the row's lock would last until the caller's end, Stripe call
    included, stopping every other worker of the store (Django raises instead; network
    calls are made outside transactions anyway). Tests' own transaction is allowed.

    On PostgreSQL the commit does not wait for its WAL flush (synchronous_commit off, for
    this transaction only): the row lock is held for the statements, not for an fsync, and
    a crash can only lose a few milliseconds of reservations, which are then simply
    made again."""

    def reserve(self, key: str, *, interval: float, max_wait: float, now: float | None) -> float:
        try:
            with transaction.atomic(durable=True):
                self._commit_without_flush()
                tat = self._locked_tat(key)
                now = real_clock() if now is None else now  # read once the lock is held
                tat, wait = gcra_reserve(tat=tat, now=now, interval=interval, max_wait=max_wait)
                StripeBudget.objects.filter(store_id=key).update(tat=tat)
        except DatabaseError as exc:
            raise BudgetUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return wait

    def delay(self, key: str, *, seconds: float, now: float | None) -> None:
        try:
            with transaction.atomic(durable=True):
                self._commit_without_flush()
                tat = self._locked_tat(key)
                now = real_clock() if now is None else now
                tat = gcra_delay(tat=tat, now=now, seconds=seconds)
                StripeBudget.objects.filter(store_id=key).update(tat=tat)
        except DatabaseError as exc:
            raise BudgetUnavailable(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _commit_without_flush() -> None:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")

    @staticmethod
    def _locked_tat(store_id: str) -> float:
        locked = StripeBudget.objects.select_for_update().filter(store_id=store_id)
        tats = list(locked.values_list("tat", flat=True))
        if not tats:
            # The store's first request: another worker may be creating the row too.
            StripeBudget.objects.bulk_create(
                [StripeBudget(store_id=store_id)], ignore_conflicts=True
            )
            tats = list(locked.values_list("tat", flat=True))
        return tats[0]


# KEYS[1]: the budget. ARGV: interval, max wait, now ("": the Redis server's clock).
# Returns {1, wait} with the slot reserved, or {0, wait} with nothing reserved. The key
# expires soon after its tat: a missing key is a budget with nothing booked.
RESERVE_LUA = """
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local slot = math.max(now, tat)
local wait = slot - now
if wait > tonumber(ARGV[2]) then
  return {0, string.format('%.17g', wait)}
end
local new_tat = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
           'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, string.format('%.17g', wait)}
"""
# KEYS[1]: the budget. ARGV: seconds, now ("": the Redis server's clock).
DELAY_LUA = """
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local new_tat = math.max(tat, now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
           'PX', math.ceil((new_tat - now) * 1000) + 1000)
return string.format('%.17g', new_tat)
"""


class RedisBackend:
    """Budgets in Redis, one key per store; one script call (EVALSHA, EVAL when the
    server does not have it yet) per request."""

    PREFIX = "recoup:stripe-budget:"

    def __init__(self, client: redis.Redis):
        self._reserve = client.register_script(RESERVE_LUA)
        self._delay = client.register_script(DELAY_LUA)

    def reserve(self, key: str, *, interval: float, max_wait: float, now: float | None) -> float:
        args = [repr(interval), repr(max_wait), "" if now is None else repr(now)]
        try:
            reserved, wait = self._reserve(keys=[self.PREFIX + key], args=args)
        except redis.RedisError as exc:
            raise BudgetUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if not int(reserved):
            raise BudgetExhausted.booked(float(wait))
        return float(wait)

    def delay(self, key: str, *, seconds: float, now: float | None) -> None:
        args = [repr(seconds), "" if now is None else repr(now)]
        try:
            self._delay(keys=[self.PREFIX + key], args=args)
        except redis.RedisError as exc:
            raise BudgetUnavailable(f"{type(exc).__name__}: {exc}") from exc


_LOCAL = LocalBackend()
_DATABASE = DatabaseBackend()
_redis_backends: dict[str, RedisBackend] = {}


def redis_backend(url: str) -> RedisBackend:
    """One client (a thread-safe connection pool) per address and process."""
    backend = _redis_backends.get(url)
    if backend is None:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        backend = _redis_backends.setdefault(url, RedisBackend(client))
    return backend


class Pacer:
    """Takes slots from one budget: `rate` requests per second times `headroom`; waits at
    most `max_wait` seconds for one. `clock` (seconds) and `sleep` are injectable; with no
    clock the backend's own is used.

    While the shared budget is unavailable (Redis or the database failing, or a test's
    transaction keeping a pool thread's connection from the rows) the requests are paced
    in `fallback`, this process's memory: still within the rate here, not sent blind, and
    not refused for a failure that is not Stripe's. A 429 is handled safely either way.
    """

    def __init__(
        self,
        backend: Backend,
        key: str,
        *,
        rate: float,
        headroom: float = 0.9,
        max_wait: float = 30.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        fallback: Backend | None = None,
    ):
        if rate <= 0 or not 0 < headroom <= 1:
            raise ValueError(f"a rate above 0 and a headroom in (0, 1], not {rate}, {headroom}")
        self.backend, self.key = backend, key
        self.interval = 1.0 / (rate * headroom)
        # At most one interval either way (later, it would crowd the next slot), and at
        # least what a sleep oversleeps on an idle machine.
        share = LATE_SHARE_OF_MARGIN * (1 / headroom - 1)
        self.late_at_most = min(self.interval, max(LATE_AT_LEAST, share))
        self.max_wait, self.clock, self.sleep = max_wait, clock, sleep
        self.fallback = fallback if fallback is not None else _LOCAL

    def take(self) -> float:
        """Wait for this request's slot; returns the seconds waited. Raises BudgetExhausted.

        A slot overslept by more than `late_at_most` (the process starved of CPU) is given
        up and another taken: sent that late, the request would crowd the slots after it
        into less than the headroom leaves."""
        waited = 0.0
        for _ in range(MISSED_SLOTS_AT_MOST + 1):
            wait = self._reserve()
            if wait <= 0:
                break
            due = self._elapsed() + wait
            self.sleep(wait)
            waited += wait
            if self._elapsed() - due <= self.late_at_most:
                break
        return waited

    def _reserve(self) -> float:
        kwargs = {"interval": self.interval, "max_wait": self.max_wait}
        try:
            return self.backend.reserve(self.key, now=self._now(), **kwargs)
        except BudgetUnavailable as exc:
            logger.warning("Stripe budget %s unavailable, paced in this process: %s", self.key, exc)
            return self.fallback.reserve(self.key, now=self._now(), **kwargs)

    def _elapsed(self) -> float:
        """For oversleeping: the injected clock, else a monotonic one no test moves."""
        return self.clock() if self.clock is not None else time.perf_counter()

    def back_off(self, seconds: float) -> None:
        """No request of this budget before `seconds` from now (Stripe said 429)."""
        try:
            self.backend.delay(self.key, seconds=seconds, now=self._now())
        except BudgetUnavailable as exc:
            logger.warning("Stripe budget %s unavailable, paced in this process: %s", self.key, exc)
            self.fallback.delay(self.key, seconds=seconds, now=self._now())

    def _now(self) -> float | None:
        return self.clock() if self.clock is not None else None


def store_pacer(store: Store) -> Pacer:
    """The pacer of the store's shared budget: in Redis with REDIS_URL, else the database."""
    url = settings.REDIS_URL
    return Pacer(
        redis_backend(url) if url else _DATABASE,
        str(store.pk),
        rate=store.stripe_rate,
        headroom=settings.RECOUP_STRIPE_RATE_HEADROOM,
        max_wait=settings.RECOUP_STRIPE_MAX_WAIT_SECONDS,
    )


def key_pacer(api_key: str) -> Pacer:
    """For a client with a key and no store (tests, tools): paced within this process, at
    the default rate of the key's mode."""
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return Pacer(
        _LOCAL,
        f"key:{fingerprint}",
        rate=Store(stripe_secret_key=api_key).stripe_rate,
        headroom=settings.RECOUP_STRIPE_RATE_HEADROOM,
        max_wait=settings.RECOUP_STRIPE_MAX_WAIT_SECONDS,
    )


class PacedHTTPClient(stripe.HTTPClient):
    """The SDK's HTTP client, with a slot taken before each request (the SDK's own network
    retries included) and the budget held back after a 429. Synchronous calls only: the
    SDK's async methods have no fallback client here and fail rather than go unpaced."""

    def __init__(self, inner: stripe.HTTPClient, pacer: Pacer):
        super().__init__()
        self.name = inner.name
        self._inner, self.pacer = inner, pacer

    def request(self, method, url, headers, post_data=None):
        self.pacer.take()
        response = self._inner.request(method, url, headers, post_data)
        self._answered(response)
        return response

    def request_stream(self, method, url, headers, post_data=None):
        self.pacer.take()
        response = self._inner.request_stream(method, url, headers, post_data)
        self._answered(response)
        return response

    def close(self):
        self._inner.close()

    def _answered(self, response) -> None:
        body, status, headers = response
        if status != 429 or _is_lock_timeout(body):
            return
        self.pacer.back_off(budget_backoff_seconds(headers))


def _is_lock_timeout(body) -> bool:
    """Stripe's 429 lock_timeout is contention on one object, not the account's rate."""
    if not isinstance(body, bytes | str):
        return False  # a stream: unread
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == "lock_timeout"


def retry_after_header(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; or None."""
    value = next(
        (v for k, v in (headers or {}).items() if k.lower() == "retry-after"),
        None,
    )
    if value is None:
        return None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            return None
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - real_clock()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def budget_backoff_seconds(headers: Mapping[str, str] | None, rng=random) -> float:
    """How long a 429 holds the store's whole budget back."""
    seconds = retry_after_header(headers)
    return seconds if seconds is not None else rng.uniform(*BUDGET_BACKOFF_SECONDS)


def rate_limit_retry_after(exc: stripe.RateLimitError, rng=random) -> dt.timedelta:
    """When a case whose request was refused for the rate (by Stripe, or by its budget
    here) tries again."""
    if isinstance(exc, BudgetExhausted):
        seconds = exc.retry_after
    else:
        seconds = retry_after_header(exc.headers)
        if seconds is None:
            seconds = rng.uniform(*CASE_RETRY_AFTER_SECONDS)
    return dt.timedelta(seconds=max(seconds, 1.0))
