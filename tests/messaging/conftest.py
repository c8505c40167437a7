from __future__ import annotations

import datetime as dt
import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache

from messaging import sms
from recovery.models import RecoveryCase
from subscriptions.models import Customer
from tests import stripe_factory as sf

# A Wednesday, 10:00 in the store's zone (Europe/Berlin, UTC+1).
T0 = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _clean_outboxes():
    sms.outbox.clear()
    cache.clear()  # rate-limit counters
    yield
    sms.outbox.clear()


def open_case(webhooks, **invoice_fields) -> RecoveryCase:
    """Deliver a failed renewal invoice through the signed intake; return its case."""
    invoice = sf.failed_invoice(**invoice_fields)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.select_related("customer", "store").get(
        invoice__stripe_id=invoice["id"]
    )


@pytest.fixture
def case(webhooks, time_machine) -> RecoveryCase:
    """An insufficient-funds renewal failure of Alice's Coffee Club, opened at T0."""
    time_machine.move_to(T0, tick=False)
    return open_case(webhooks)


@pytest.fixture
def card_case(webhooks, time_machine) -> RecoveryCase:
    """An expired card: the card-update track, where the customer must act."""
    time_machine.move_to(T0, tick=False)
    return open_case(webhooks, decline_code="expired_card")


def sms_customer(customer: Customer, *, phone: str = "+4915112345678") -> Customer:
    Customer.objects.filter(pk=customer.pk).update(
        sms_opt_in=True, phone=phone, name="Alice Liddell"
    )
    customer.refresh_from_db()
    return customer


class LocalApi:
    """Records requests; answers each with the next scripted (status, JSON body)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.replies: deque = deque()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                api.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                status, reply = (
                    api.replies.popleft() if api.replies else (500, {"error": "unscripted"})
                )
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def postmark(settings):
    api = LocalApi()
    settings.EMAIL_BACKEND = "messaging.email.PostmarkEmailBackend"
    settings.POSTMARK = {"TOKEN": "server-token-123", "TRACK_OPENS": True}
    settings.POSTMARK_API_BASE = api.url
    settings.POSTMARK_MESSAGE_STREAM = "outbound"
    yield api
    api.stop()
