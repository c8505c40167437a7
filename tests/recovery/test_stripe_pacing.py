"""Every Stripe call of a store is paced within its account's rate (recovery/gateways/
stripe_pacing.py): the algorithm with an injected clock, its database and Redis budgets,
and the real stripe SDK against the local Stripe (tests/fake_stripe.py). No test sleeps:
the pacer's clock and sleep are injected, or the one request a test makes has nothing to
wait for.
"""

import datetime as dt
import email.utils
import os
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import stripe
from django.db import connection, transaction

from recovery.gateways import gateway_for
from recovery.gateways.stripe import StripeGateway, _paced_client, stripe_client
from recovery.gateways.stripe_pacing import (
    BudgetExhausted,
    DatabaseBackend,
    LocalBackend,
    Pacer,
    RedisBackend,
    budget_backoff_seconds,
    gcra_reserve,
    real_clock,
    retry_after_header,
    store_pacer,
)
from stores.models import StripeBudget
from tests import stripe_factory as sf
from tests.conftest import requires_postgres
from tests.fake_stripe import FakeStripe, _error

START = 1_000_000.0  # the injected clock's epoch seconds


class Clock:
    """An injected clock whose sleep moves it on (and remembers each wait)."""

    def __init__(self, now: float = START):
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def most_in_any_second(times: list[float]) -> int:
    """The most requests in any closed one-second window (a window ending at a request)."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] < t - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def bursty_arrivals(seed: int = 7, n: int = 300) -> list[float]:
    """Requests of several workers: bursts of up to 40 at once, quiet spells in between."""
    rng = random.Random(seed)
    times, t = [], START
    while len(times) < n:
        t += rng.choice([0.0, 0.01, 0.3, 2.0, 5.0])
        times += [t] * rng.randint(1, 40)
    return times[:n]


def slots(backend, key: str, arrivals: list[float], *, interval: float) -> list[float]:
    """When each request goes out: its arrival plus the wait its reservation gives."""
    return [
        now + backend.reserve(key, interval=interval, max_wait=1e9, now=now) for now in arrivals
    ]


# ------------------------------------------------------------------ the algorithm


def test_requests_are_spaced_by_the_rate_times_the_headroom():
    clock = Clock()
    pacer = Pacer(LocalBackend(), "s", rate=10, headroom=0.9, clock=clock, sleep=clock.sleep)

    sent = []
    for _ in range(5):
        pacer.take()
        sent.append(clock.now - START)

    assert sent == pytest.approx([0, 1 / 9, 2 / 9, 3 / 9, 4 / 9])
    assert clock.slept == pytest.approx([1 / 9] * 4)  # the first had nothing to wait for


def test_no_sliding_second_ever_holds_more_than_the_limit_however_requests_arrive():
    arrivals = bursty_arrivals()
    sent = slots(LocalBackend(), "s", arrivals, interval=1 / (25 * 0.9))

    assert most_in_any_second(sent) <= 25
    assert most_in_any_second(arrivals) > 25  # the bursts alone would have tripped Stripe
    assert all(s >= a for s, a in zip(sent, arrivals, strict=True))
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) == pytest.approx(1 / 22.5)


def test_a_quiet_budget_banks_no_burst():
    clock = Clock()
    pacer = Pacer(LocalBackend(), "s", rate=10, headroom=1, clock=clock, sleep=clock.sleep)
    pacer.take()
    clock.now += 60  # a minute of nothing

    assert pacer.take() == 0
    assert pacer.take() == pytest.approx(0.1)  # at once the rate again, not 600 saved up


def test_a_slot_beyond_the_max_wait_is_refused_and_reserves_nothing():
    clock = Clock()
    pacer = Pacer(
        LocalBackend(), "s", rate=1, headroom=1, max_wait=2, clock=clock, sleep=lambda s: None
    )
    assert [pacer.take() for _ in range(3)] == [0, 1, 2]

    with pytest.raises(BudgetExhausted) as refused:
        pacer.take()
    assert refused.value.retry_after == 3
    assert isinstance(refused.value, stripe.RateLimitError)  # callers: not sent, try later
    with pytest.raises(BudgetExhausted):  # the refusal took no slot: still 3 s away
        pacer.take()
    clock.now += 1
    assert pacer.take() == 2


def test_a_slot_overslept_by_more_than_an_interval_is_given_up_for_another():
    """Sent 0.3 s after its slot, a request would crowd the three slots after it."""
    clock = Clock()
    backend = LocalBackend()
    on_time = Pacer(backend, "s", rate=10, headroom=1, clock=clock, sleep=clock.sleep)
    on_time.take()
    starved = iter([0.3])

    def oversleep(seconds):  # the process gets the CPU back late, once
        clock.now += seconds + next(starved, 0.0)

    late = Pacer(backend, "s", rate=10, headroom=1, clock=clock, sleep=oversleep)

    assert late.take() == pytest.approx(0.1)  # its slot at 0.1 missed, it goes at 0.4
    assert clock.now - START == pytest.approx(0.4)
    assert on_time.take() == pytest.approx(0.1)  # the next slot is 0.5, not 0.2


@pytest.mark.parametrize(("late", "given_up"), [(0.020, False), (0.035, True)])
def test_a_request_late_for_its_slot_takes_at_most_a_quarter_of_the_headroom(late, given_up):
    """At 25/s with a 0.9 headroom, 26 requests in a row span 1.11 s: 0.11 s from a 429.
    A request may leave 28 ms late (a quarter of that); later, it takes another slot."""
    clock = Clock()
    backend = LocalBackend()
    Pacer(backend, "s", rate=25, headroom=0.9, clock=clock, sleep=clock.sleep).take()
    starved = iter([late])

    def oversleep(seconds):
        clock.now += seconds + next(starved, 0.0)

    pacer = Pacer(backend, "s", rate=25, headroom=0.9, clock=clock, sleep=oversleep)
    assert pacer.late_at_most == pytest.approx(0.25 * (1 / 0.9 - 1))
    pacer.take()
    interval = 1 / 22.5
    # Given up: it goes at its second slot (2 intervals), on time; else late at its first.
    expected = 2 * interval if given_up else interval + late
    assert clock.now - START == pytest.approx(expected)


def test_gcra_reserve_is_pure():
    assert gcra_reserve(tat=0, now=10, interval=0.5, max_wait=1) == (10.5, 0)
    assert gcra_reserve(tat=10.5, now=10, interval=0.5, max_wait=1) == (11.0, 0.5)
    with pytest.raises(BudgetExhausted):
        gcra_reserve(tat=11.5, now=10, interval=0.5, max_wait=1)


def test_a_429_holds_the_whole_budget_back():
    clock = Clock()
    backend = LocalBackend()
    first = Pacer(backend, "s", rate=10, headroom=1, clock=clock, sleep=clock.sleep)
    second = Pacer(backend, "s", rate=10, headroom=1, clock=clock, sleep=clock.sleep)
    first.take()

    first.back_off(5)

    assert second.take() == pytest.approx(5)  # another worker of the store waits too


def test_retry_after_is_read_in_seconds_or_as_a_date_and_capped():
    in_90_s = email.utils.formatdate(real_clock() + 90, usegmt=True)

    assert retry_after_header({"Retry-After": "7"}) == 7
    assert retry_after_header({"retry-after": "2.5"}) == 2.5
    assert retry_after_header({"Retry-After": in_90_s}) == pytest.approx(90, abs=2)
    assert retry_after_header({"Retry-After": "86400"}) == 600
    assert retry_after_header({"Retry-After": "soon"}) is None
    assert retry_after_header({"Retry-After": "nan"}) is None
    assert retry_after_header({}) is None
    assert 1 <= budget_backoff_seconds({}) <= 2  # no header: a jittered second or two


# ------------------------------------------------------------------ the database budget


def test_two_stores_database_budgets_are_independent(store, other_store):
    clock = Clock()
    backend = DatabaseBackend()
    ours = Pacer(backend, str(store.pk), rate=10, headroom=1, clock=clock, sleep=lambda s: None)
    theirs = Pacer(
        backend, str(other_store.pk), rate=5, headroom=1, clock=clock, sleep=lambda s: None
    )

    assert [ours.take() for _ in range(3)] == pytest.approx([0, 0.1, 0.2])
    assert [theirs.take() for _ in range(2)] == pytest.approx([0, 0.2])
    assert ours.take() == pytest.approx(0.3)

    tats = dict(StripeBudget.objects.values_list("store_id", "tat"))
    assert tats == {
        store.pk: pytest.approx(START + 0.4),
        other_store.pk: pytest.approx(START + 0.4),
    }


def test_the_database_budget_paces_bursts_as_the_algorithm_does(store):
    arrivals = bursty_arrivals(n=120)
    interval = 1 / 22.5

    assert slots(DatabaseBackend(), str(store.pk), arrivals, interval=interval) == pytest.approx(
        slots(LocalBackend(), "s", arrivals, interval=interval)
    )


def test_a_database_reservation_is_one_lock_and_one_update(store, django_assert_num_queries):
    backend = DatabaseBackend()
    backend.reserve(str(store.pk), interval=0.1, max_wait=30, now=START)  # creates the row

    # savepoint (the test's transaction around it), SELECT ... FOR UPDATE, UPDATE, release;
    # on PostgreSQL also SET LOCAL synchronous_commit = off
    with django_assert_num_queries(4 + (connection.vendor == "postgresql")):
        backend.reserve(str(store.pk), interval=0.1, max_wait=30, now=START)


def test_the_database_budget_never_runs_inside_the_callers_transaction(store):
    """Inside it the budget row's lock would last until the caller's end, its Stripe call
    included: every other worker of the store would wait on it."""
    with transaction.atomic(), pytest.raises(RuntimeError, match="durable"):
        DatabaseBackend().reserve(str(store.pk), interval=0.1, max_wait=30, now=START)


def test_a_refused_reservation_leaves_the_database_budget_as_it_was(store):
    StripeBudget.objects.create(store=store, tat=START + 100)

    with pytest.raises(BudgetExhausted):
        DatabaseBackend().reserve(str(store.pk), interval=0.1, max_wait=30, now=START)

    assert StripeBudget.objects.get(store=store).tat == START + 100


@requires_postgres()
@pytest.mark.django_db(transaction=True)
def test_workers_reserving_at_once_on_postgresql_each_get_their_own_slot(store):
    barrier = threading.Barrier(8)

    def worker(_):
        try:
            barrier.wait(timeout=30)
            return [
                DatabaseBackend().reserve(str(store.pk), interval=0.01, max_wait=30, now=START)
                for _ in range(10)
            ]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = sorted(w for ws in pool.map(worker, range(8)) for w in ws)

    assert waits == pytest.approx([i * 0.01 for i in range(80)])


# ------------------------------------------------------------------ the Redis budget


@pytest.fixture
def redis_client():
    url = os.environ.get("REDIS_URL_FOR_TESTS", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"needs Redis at {url} (set REDIS_URL_FOR_TESTS): {exc}")
    client.test_url = url
    yield client
    client.close()


@pytest.fixture
def budget_key(redis_client):
    """A Redis budget of this test's own, removed afterwards."""
    key = f"test-{uuid.uuid4().hex}"
    yield key
    redis_client.delete(RedisBackend.PREFIX + key)


def test_the_redis_budget_paces_bursts_as_the_algorithm_does(redis_client, budget_key):
    arrivals = bursty_arrivals(n=120)
    interval = 1 / 22.5

    sent = slots(RedisBackend(redis_client), budget_key, arrivals, interval=interval)

    assert sent == pytest.approx(slots(LocalBackend(), "s", arrivals, interval=interval), abs=1e-5)
    assert most_in_any_second(sent) <= 25


def test_two_redis_budgets_are_independent_and_expire_once_idle(redis_client, budget_key):
    backend = RedisBackend(redis_client)
    other = budget_key + "-other"
    try:
        assert backend.reserve(budget_key, interval=0.5, max_wait=30, now=START) == 0
        assert backend.reserve(budget_key, interval=0.5, max_wait=30, now=START) == 0.5
        assert backend.reserve(other, interval=0.5, max_wait=30, now=START) == 0
        # Kept a second past its tat, then gone: a missing key is a budget with nothing booked.
        assert 1000 < redis_client.pttl(RedisBackend.PREFIX + budget_key) <= 2000
    finally:
        redis_client.delete(RedisBackend.PREFIX + other)


def test_a_redis_slot_beyond_the_max_wait_is_refused_and_reserves_nothing(redis_client, budget_key):
    backend = RedisBackend(redis_client)
    for _ in range(3):
        backend.reserve(budget_key, interval=1, max_wait=2, now=START)

    with pytest.raises(BudgetExhausted) as refused:
        backend.reserve(budget_key, interval=1, max_wait=2, now=START)

    assert refused.value.retry_after == pytest.approx(3)
    assert backend.reserve(budget_key, interval=1, max_wait=2, now=START + 1) == pytest.approx(2)


def test_a_429_holds_the_redis_budget_back(redis_client, budget_key):
    backend = RedisBackend(redis_client)
    backend.reserve(budget_key, interval=0.1, max_wait=30, now=START)

    backend.delay(budget_key, seconds=5, now=START)

    assert backend.reserve(budget_key, interval=0.1, max_wait=30, now=START) == pytest.approx(5)


def test_clients_reserving_at_once_in_redis_each_get_their_own_slot(redis_client, budget_key):
    backend = RedisBackend(redis_client)
    barrier = threading.Barrier(8)

    def worker(_):
        barrier.wait(timeout=30)
        return [
            backend.reserve(budget_key, interval=0.01, max_wait=30, now=START) for _ in range(25)
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = sorted(w for ws in pool.map(worker, range(8)) for w in ws)

    assert waits == pytest.approx([i * 0.01 for i in range(200)], abs=1e-5)


def test_the_redis_budget_runs_on_the_servers_clock(redis_client, budget_key):
    """With no injected clock every machine reads one clock, the Redis server's."""
    backend = RedisBackend(redis_client)
    waits = [backend.reserve(budget_key, interval=0.2, max_wait=30, now=None) for _ in range(3)]

    # Each reservation's wait is the gap to the previous slot less the time since.
    assert waits[0] == 0
    assert waits[1] == pytest.approx(0.2, abs=0.05) and waits[2] == pytest.approx(0.4, abs=0.05)


# ------------------------------------------------------------------ through the stripe SDK


class TimedStripe(FakeStripe):
    """The local Stripe, noting the injected clock's time when each request arrives."""

    def __init__(self, clock=None, *, retry_after: str | None = None, lock_timeout=False):
        super().__init__()
        self.clock, self.arrivals = clock, []
        self.retry_after, self.lock_timeout = retry_after, lock_timeout

    def handle(self, record):
        if self.clock is not None:
            self.arrivals.append(self.clock())
        if self.lock_timeout:
            return _error(429, "invalid_request_error", "Lock timeout", code="lock_timeout")
        reply = super().handle(record)
        if reply.status == 429 and self.retry_after is not None:
            reply.headers["Retry-After"] = self.retry_after
        return reply


@pytest.fixture
def local_stripe(settings):
    servers = []

    def start(*args, **kwargs) -> TimedStripe:
        server = TimedStripe(*args, **kwargs).start()
        settings.STRIPE_API_BASE = server.url
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def stripe_store(store):
    store.gateway = "stripe"
    store.save(update_fields=["gateway"])
    return store


def test_paced_calls_reach_stripe_spaced_by_the_stores_rate(local_stripe, stripe_store):
    clock = Clock()
    fake = local_stripe(clock)
    invoice = fake.add_invoice(sf.failed_invoice())
    pacer = Pacer(
        DatabaseBackend(),
        str(stripe_store.pk),
        rate=stripe_store.stripe_rate,  # a test key: 25/s
        headroom=0.9,
        clock=clock,
        sleep=clock.sleep,
    )
    client = _paced_client(stripe_store.stripe_secret_key, pacer, timeout=5)

    for _ in range(6):
        client.v1.invoices.retrieve(invoice["id"])

    gaps = [b - a for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
    assert len(fake.arrivals) == 6
    assert gaps == pytest.approx([1 / 22.5] * 5)
    assert StripeBudget.objects.get(store=stripe_store).tat == pytest.approx(START + 6 / 22.5)


def test_every_client_of_a_store_takes_its_slots_from_the_stores_budget(local_stripe, stripe_store):
    fake = local_stripe()
    invoice = fake.add_invoice(sf.failed_invoice())

    stripe_client(stripe_store).v1.invoices.retrieve(invoice["id"])
    after_one = StripeBudget.objects.get(store=stripe_store).tat
    gateway_for(stripe_store).invoice_read(invoice_id=invoice["id"])

    after_two = StripeBudget.objects.get(store=stripe_store).tat
    assert after_one == pytest.approx(real_clock() + 1 / 22.5, abs=0.5)
    assert after_two == pytest.approx(after_one + 1 / 22.5, abs=0.5)
    assert len(fake.requests) == 2


def test_with_redis_configured_the_stores_budget_is_in_redis(
    local_stripe, stripe_store, settings, redis_client
):
    settings.REDIS_URL = redis_client.test_url
    key = RedisBackend.PREFIX + str(stripe_store.pk)
    fake = local_stripe()
    invoice = fake.add_invoice(sf.failed_invoice())
    try:
        assert isinstance(store_pacer(stripe_store).backend, RedisBackend)
        stripe_client(stripe_store).v1.invoices.retrieve(invoice["id"])

        assert float(redis_client.get(key)) == pytest.approx(real_clock() + 1 / 22.5, abs=0.5)
        assert not StripeBudget.objects.exists()
    finally:
        redis_client.delete(key)


def test_a_429_is_not_sent_with_stripes_retry_after_and_holds_every_worker_back(
    local_stripe, stripe_store
):
    fake = local_stripe(retry_after="7")
    invoice = fake.add_invoice(sf.failed_invoice())
    fake.script("429")

    result = StripeGateway(store=stripe_store, timeout=5).invoice_pay(
        invoice_id=invoice["id"], idempotency_key="recoup-test-429"
    )

    assert (result.outcome, result.retry_after) == ("not_sent", dt.timedelta(seconds=7))
    assert result.decline.decline_code == "" and fake.real_charges == 0
    # The store's next request, from any worker, goes out no sooner than in 7 s.
    held_until = StripeBudget.objects.get(store=stripe_store).tat
    assert held_until - real_clock() == pytest.approx(7, abs=0.5)


def test_a_429_without_retry_after_waits_minutes_for_the_case_and_seconds_for_the_budget(
    local_stripe, stripe_store
):
    fake = local_stripe()
    invoice = fake.add_invoice(sf.failed_invoice())
    fake.script("429")

    result = StripeGateway(store=stripe_store, timeout=5).invoice_pay(
        invoice_id=invoice["id"], idempotency_key="recoup-test-429"
    )

    assert result.outcome == "not_sent"
    assert dt.timedelta(minutes=5) <= result.retry_after <= dt.timedelta(minutes=6)
    held_for = StripeBudget.objects.get(store=stripe_store).tat - real_clock()
    assert 0.5 < held_for <= 2


def test_a_lock_timeout_429_does_not_hold_the_budget_back(local_stripe, stripe_store):
    """Stripe's lock_timeout is contention on one object, not the account's rate."""
    fake = local_stripe(lock_timeout=True)

    with pytest.raises(stripe.RateLimitError):
        stripe_client(stripe_store).v1.invoices.retrieve("in_locked")

    held_for = StripeBudget.objects.get(store=stripe_store).tat - real_clock()
    assert held_for < 0.5
    assert len(fake.requests) == 1


def test_a_request_the_budget_cannot_place_in_time_is_not_sent_at_all(local_stripe, stripe_store):
    fake = local_stripe()
    invoice = fake.add_invoice(sf.failed_invoice())
    fake.script("approve")
    StripeBudget.objects.create(store=stripe_store, tat=real_clock() + 100)  # booked up
    gateway = StripeGateway(store=stripe_store, timeout=5)

    result = gateway.invoice_pay(invoice_id=invoice["id"], idempotency_key="recoup-test-busy")

    assert result.outcome == "not_sent"
    assert result.retry_after.total_seconds() == pytest.approx(100, abs=1)
    assert "request budget" in result.message
    with pytest.raises(stripe.RateLimitError):  # a read: the caller tries again later
        gateway.invoice_read(invoice_id=invoice["id"])
    assert fake.requests == [] and fake.real_charges == 0
