from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test import Client

from recovery.gateways.sandbox import sandbox_payment_record
from recovery.intake import stripe_events_work
from stores.services import api_token_create, membership_create, store_create
from tests import stripe_factory as sf

WEBHOOK_SECRET = "whsec_test_recoup_0123456789"


def requires_postgres():
    return pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL (row locks and real concurrency); set DATABASE_URL=postgres://…",
    )


@pytest.fixture
def store(db):
    return store_create(
        name="Bean Box",
        currency="usd",
        timezone="Europe/Berlin",
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_secret_key="sk_test_beanbox_123456",
        gateway="sandbox",
    )


@pytest.fixture
def other_store(db):
    return store_create(name="Other Shop", stripe_webhook_secret="whsec_other_secret_abc")


@pytest.fixture
def api_token(store) -> str:
    return api_token_create(store=store)[1]


@pytest.fixture
def api(api_token) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token}")


@pytest.fixture
def operator(store):
    return membership_create(
        store=store, username="olivia", role="operator", password="pw-olivia-123"
    )[0].user


@pytest.fixture
def agent(store):
    return membership_create(store=store, username="arjun", role="agent", password="pw-arjun-123")[
        0
    ].user


@pytest.fixture
def outsider(other_store):
    return membership_create(
        store=other_store, username="mallory", role="operator", password="pw-mallory-1"
    )[0].user


class Webhooks:
    """Delivers signed events to a store's webhook endpoint, as Stripe would."""

    def __init__(self, client: Client, store, capture, secret: str = WEBHOOK_SECRET):
        self.client, self.store, self.secret, self.capture = client, store, secret, capture

    def send(
        self,
        event: dict,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        raw: str | None = None,
    ):
        body = raw if raw is not None else json.dumps(event)
        header = sf.sign(body, secret or self.secret, timestamp=timestamp)
        if event and str(event.get("type", "")).startswith("invoice."):
            self.stripe_knows(event["data"]["object"]["id"])
        # The test runs inside a transaction; run on_commit work as a real commit would.
        with self.capture(execute=True):
            response = self.client.post(
                self.store.webhook_path,
                data=body,
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=header,
            )
            # The intake worker takes the stored event from the table, as in production.
            stripe_events_work(until_idle=True)
        return response

    def stripe_knows(self, invoice_id: str) -> None:
        """The sandbox's Stripe holds the invoice's payments (what a read-back finds)."""
        if self.store.gateway != "sandbox":
            return
        for pi in sf.invoice_payment_intents(invoice_id):
            sandbox_payment_record(store=self.store, invoice_id=invoice_id, payment_intent=pi)

    def deliver(self, type_: str, obj: dict, **kwargs):
        event = sf.event(type_, obj, **kwargs)
        response = self.send(event)
        assert response.status_code == 200, response.content
        return event


@pytest.fixture
def webhooks(store, client, django_capture_on_commit_callbacks) -> Webhooks:
    return Webhooks(client, store, django_capture_on_commit_callbacks)


@pytest.fixture
def failed_invoice(webhooks):
    """An invoice whose renewal charge failed with insufficient funds, delivered and processed."""
    invoice = sf.failed_invoice()
    webhooks.deliver("invoice.payment_failed", invoice)
    return invoice


def pytest_sessionstart(session):
    """In CI nothing that needs PostgreSQL may skip: refuse to run on anything else."""
    import os

    if os.environ.get("CI") and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise pytest.UsageError(
            "CI must run the suite on PostgreSQL: set DATABASE_URL=postgres://…"
        )


# ------------------------------------------------------------------ real browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright. Skips with a reason when either is missing
    locally; in CI a missing browser is a failure, never a skip."""
    import os
    import shutil

    executable = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - dev extra not installed
        sync_playwright = None
    if executable is None or sync_playwright is None:
        reason = "needs Debian's chromium and playwright (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    # Playwright's sync API runs an event loop; Django refuses ORM calls from a thread
    # with a running loop unless told this is deliberate (tests only).
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (cookies, storage) per test, desktop width."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
