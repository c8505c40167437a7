"""Fixtures for the dashboard: logged-in clients and cases laid down as the engine would
leave them (for figures whose inputs a test must control exactly)."""

from __future__ import annotations

import datetime as dt
import itertools
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from recovery.models import PaymentAttempt, RecoveryCase
from subscriptions.models import Customer, Subscription

_seq = itertools.count(1)


def login(user, password: str) -> Client:
    client = Client()
    assert client.login(username=user.username, password=password)
    return client


@pytest.fixture
def operator_client(operator) -> Client:
    return login(operator, "pw-olivia-123")


@pytest.fixture
def agent_client(agent) -> Client:
    return login(agent, "pw-arjun-123")


@pytest.fixture
def outsider_client(outsider) -> Client:
    return login(outsider, "pw-mallory-1")


def make_customer(store, *, email: str | None = None, first_seen: dt.datetime | None = None):
    n = next(_seq)
    return Customer.objects.create(
        store=store,
        stripe_id=f"cus_dash{n:05d}",
        email=email or f"customer{n}@example.com",
        name=f"Customer {n}",
        first_seen_at=first_seen or dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    )


def make_subscription(store, customer, *, mrr: int = 2900, product: str = "Coffee club", **kw):
    n = next(_seq)
    return Subscription.objects.create(
        store=store,
        customer=customer,
        stripe_id=f"sub_dash{n:05d}",
        product_name=product,
        amount=mrr,
        mrr=mrr,
        currency=store.currency,
        **kw,
    )


def make_case(
    store,
    *,
    opened_at: dt.datetime,
    amount: int = 2900,
    status: str = RecoveryCase.Status.OPEN,
    closed_at: dt.datetime | None = None,
    track: str = "soft",
    decline_code: str = "insufficient_funds",
    via: str = "",
    attempts: int = 0,
    customer=None,
    subscription=None,
    window_days: int = 21,
    escalated: bool = False,
) -> RecoveryCase:
    customer = customer or make_customer(store)
    recovered = status == RecoveryCase.Status.RECOVERED
    return RecoveryCase.objects.create(
        store=store,
        customer=customer,
        kind=RecoveryCase.Kind.INVOICE if subscription else RecoveryCase.Kind.PAYMENT,
        subscription=subscription,
        payment_intent_id=f"pi_dash{next(_seq):06d}",
        amount=amount,
        currency=store.currency,
        track=track,
        track_reason="test",
        status=status,
        opened_at=opened_at,
        window_start=opened_at,
        window_end=opened_at + dt.timedelta(days=window_days),
        decline_code=decline_code,
        attempt_count=attempts,
        closed_at=closed_at,
        recovered_via=via if recovered else "",
        recovered_amount=amount if recovered else 0,
        escalated=escalated,
    )


def make_attempt(case, *, at: dt.datetime, outcome="failed", source="recoup_retry", **kw):
    return PaymentAttempt.objects.create(
        store=case.store,
        case=case,
        customer=case.customer,
        source=source,
        outcome=outcome,
        amount=case.amount,
        currency=case.currency,
        attempted_at=at,
        **kw,
    )


@contextmanager
def count_queries():
    """Capture the queries of a block; on failure the message lists them."""
    with CaptureQueriesContext(connection) as ctx:
        yield ctx


def queries_text(ctx) -> str:
    return "\n".join(f"{i}. {q['sql'][:300]}" for i, q in enumerate(ctx.captured_queries, 1))


# A valid retry-policy form, as the settings page posts it.
RETRY_FORM = {
    "max_retries": "3",
    "first_retry_hours": "6",
    "generic_retries_before_card_update": "2",
    "window_days_day": "3",
    "window_days_week": "7",
    "window_days_month": "28",
    "window_days_year": "45",
    "window_days_order": "7",
    "grace_fraction": "40",
    "end_action": "pause",
    "predunning_days": "30",
    "learned_timing": "on",
}
