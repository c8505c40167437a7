"""Tenancy: every URL pattern of the project, walked from the URLconf, answers 404 to a
logged-in member of another store (and to their API token) — not a sample of them.

Patterns that cannot name another store's data are exempt, each with its reason, and the
test fails if the URLconf grows a pattern that is neither walked nor exempt."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from orders.models import Order
from stores.services import api_token_create
from support.models import QueueItem
from tests.dashboard.conftest import make_case, make_customer, make_subscription

# Patterns an outsider may reach, and why that is safe.
EXEMPT = {
    # Django admin: its own staff-only login; no store data without is_staff.
    "admin/",
    # Customer-facing token pages: a signed token, not a login, decides (messaging).
    "pay/",
    # Provider webhooks: authenticated by the provider's signature, not by a user.
    "webhooks/",
    # Liveness probe and the public OpenAPI schema: no store data.
    "healthz",
    "api/schema/",
    # The API's catch-all: a JSON 404 for every address no endpoint answers, no data.
    "api/v1/^(?P<path>.*)$",
    "^api/(?P<path>.*)$",
    # Login, logout, password change and reset: about the user, not a store.
    "accounts/",
    # `/` redirects to the user's own store; the switcher 404s for a store not theirs
    # (asserted below).
    "",
    "switch/",
}

# API endpoints scoped to the token's store with no store object in their address:
# an outsider's token sees its own (empty) store; asserted to show none of ours.
TOKEN_SCOPED_LISTS = {"api/v1/cases/", "api/v1/inventory/", "api/v1/orders/"}


def _walk(resolver: URLResolver, prefix: str = ""):
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _walk(entry, route)
        elif isinstance(entry, URLPattern):
            yield route, entry


def _exempt(route: str) -> bool:
    return any(route == e or (e and route.startswith(e)) for e in EXEMPT if e != "") or route == ""


@pytest.fixture
def victim(store, agent):
    """One of everything in `store`, so every parameter of every route has a real value."""
    now = timezone.now()
    customer = make_customer(store)
    sub = make_subscription(store, customer)
    case = make_case(
        store, opened_at=now - dt.timedelta(days=2), customer=customer, subscription=sub
    )
    item = QueueItem.objects.create(
        store=store,
        case=case,
        window_end=case.window_end,
        entered_at=now,
        reasons=[{"code": "high_value_mrr", "label": "High value"}],
    )
    order = Order.objects.create(store=store, customer=customer, number="1001", amount=1000)
    return {
        "store_id": str(store.id),
        "pk": case.pk,
        "case": case,
        "customer": customer,
        "item": item,
        "stripe_customer_id": customer.stripe_id,
        "number": order.number,
    }


def _fill(route: str, victim: dict) -> str:
    """A concrete path for a route, with the victim store's ids."""
    import re

    def value(name: str) -> str:
        if name == "pk":
            if route.startswith("s/<uuid:store_id>/queue/"):
                return str(victim["item"].pk)
            if "customers/" in route:
                return str(victim["customer"].pk)
            return str(victim["pk"])
        if name == "action":
            return {
                "queue": "claim",
                "cases": "retry",
                "connections": "stripe-check",
            }[next(k for k in ("queue", "cases", "connections") if k in route)]
        if name == "purpose":
            return "soft_first_notice"
        if name == "channel":
            return "email"
        if name == "table":
            return "summary"
        return str(victim[name])

    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: value(m.group(1)), route)
    return "/" + path


def test_every_url_pattern_is_walked_or_exempt_and_hides_the_store_from_an_outsider(
    victim, outsider_client, other_store
):
    outsider_token = api_token_create(store=other_store)[1]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {outsider_token}")
    walked, exempt = [], []
    for route, _pattern in _walk(get_resolver()):
        if _exempt(route):
            exempt.append(route)
            continue
        path = _fill(route, victim)
        client = api if route.startswith("api/") else outsider_client
        if route in TOKEN_SCOPED_LISTS:
            response = client.get(path)
            assert response.status_code in (200, 405), (route, response.status_code)
            assert victim["customer"].stripe_id.encode() not in response.content
            walked.append(route)
            continue
        if route == "api/v1/customers/<str:stripe_customer_id>/signals":
            # Reading: 404. Posting: the address names a customer of the token's own store
            # (created there if new), never ours.
            assert client.get(path).status_code == 404
            response = client.post(
                path, {"kind": "cancel_page_visit"}, content_type="application/json"
            )
            assert response.status_code == 201
            assert not victim["customer"].signals.exists()
            walked.append(route)
            continue
        # A method the endpoint does not serve may answer 405 (it says nothing about the
        # store); every endpoint answers 404 to the methods it serves.
        statuses = {m: getattr(client, m)(path).status_code for m in ("get", "post")}
        assert set(statuses.values()) <= {404, 405}, (route, path, statuses)
        assert 404 in statuses.values(), (route, path, statuses)
        if not route.startswith("api/"):
            assert statuses == {"get": 404, "post": 404}, (route, statuses)
        walked.append(route)
    # Every dashboard page is among the walked ones.
    for name in (
        "s/<uuid:store_id>/",
        "s/<uuid:store_id>/cases/<int:pk>/",
        "s/<uuid:store_id>/queue/",
    ):
        assert name in walked
    assert "api/v1/customers/<str:stripe_customer_id>/signals" in walked
    assert len(walked) >= 20, walked


def test_nothing_was_changed_by_the_outsider_walk(victim, outsider_client):
    path = f"/s/{victim['store_id']}/queue/{victim['item'].pk}/claim/"
    assert outsider_client.post(path).status_code == 404
    victim["item"].refresh_from_db()
    assert victim["item"].claimed_by_id is None


def test_anonymous_visitors_are_sent_to_the_login_page(victim, client):
    response = client.get(f"/s/{victim['store_id']}/cases/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/s/")
    assert client.get("/").headers["Location"] == "/accounts/login/"


def test_agents_see_queue_cases_and_customers_but_not_settings(victim, agent_client):
    sid = victim["store_id"]
    for path in (f"/s/{sid}/", f"/s/{sid}/cases/", f"/s/{sid}/queue/", f"/s/{sid}/customers/"):
        assert agent_client.get(path).status_code == 200, path
    for path in (
        f"/s/{sid}/settings/",
        f"/s/{sid}/settings/retry-policy/",
        f"/s/{sid}/settings/escalation/",
        f"/s/{sid}/settings/connections/",
        f"/s/{sid}/settings/templates/",
        f"/s/{sid}/settings/holds/",
    ):
        assert agent_client.get(path).status_code == 404, path
    home = agent_client.get(f"/s/{sid}/").content.decode()
    assert "/settings/" not in home


def test_a_user_in_two_stores_switches_between_them(store, other_store, operator, outsider_client):
    from stores.services import membership_create

    membership_create(store=other_store, username=operator.username, role="agent")
    client = Client()
    client.login(username="olivia", password="pw-olivia-123")
    home = client.get(f"/s/{store.id}/").content.decode()
    assert 'id="store-switch"' in home and "Other Shop" in home
    response = client.get("/switch/", {"store": str(other_store.id)})
    assert response["Location"] == f"/s/{other_store.id}/"
    assert client.get("/").headers["Location"] == f"/s/{other_store.id}/"  # remembered
    # The outsider cannot switch into a store they are not in.
    assert outsider_client.get("/switch/", {"store": str(store.id)}).status_code == 404
