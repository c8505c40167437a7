"""tests/fake_stripe.py's local Stripe, taught the few more endpoints the dashboard uses:
subscription updates (a discount or a pause), the account behind a key (the connection
check) and paying an invoice out of band. The real stripe SDK talks to it over HTTP."""

from __future__ import annotations

import re

import pytest

from tests.fake_stripe import FakeStripe, Recorded, _error, _missing, _Reply

SUBSCRIPTION = re.compile(r"^/v1/subscriptions/(?P<id>[^/]+)$")
PAY = re.compile(r"^/v1/invoices/(?P<id>[^/]+)/pay$")


class BillingFakeStripe(FakeStripe):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.subscriptions: dict[str, dict] = {}

    def add_subscription(self, sub_id: str) -> dict:
        with self._lock:
            self.subscriptions[sub_id] = {
                "id": sub_id,
                "object": "subscription",
                "status": "active",
            }
            return self.subscriptions[sub_id]

    def handle(self, record: Recorded) -> _Reply:
        auth = record.headers.get("Authorization", "")
        if record.method == "GET" and record.path == "/v1/account":
            if not auth.startswith("Bearer sk_"):
                return _error(401, "invalid_request_error", "Invalid API Key provided.")
            return _Reply(
                200,
                {
                    "id": "acct_fake123",
                    "object": "account",
                    "settings": {"dashboard": {"display_name": "Bean Box Coffee"}},
                },
            )
        if record.method == "POST" and (m := SUBSCRIPTION.match(record.path)):
            with self._lock:
                sub = self.subscriptions.get(m["id"])
                if sub is None:
                    return _missing(m["id"])
                if "discounts[0][coupon]" in record.form:
                    coupon = record.param("discounts[0][coupon]")
                    if coupon != "SAVE20":
                        return _error(400, "invalid_request_error", f"No such coupon: '{coupon}'")
                    sub["discounts"] = [{"coupon": {"id": coupon}}]
                if "pause_collection[behavior]" in record.form:
                    sub["pause_collection"] = {
                        "behavior": record.param("pause_collection[behavior]"),
                        "resumes_at": int(record.param("pause_collection[resumes_at]")),
                    }
                return _Reply(200, dict(sub))
        if (
            record.method == "POST"
            and (m := PAY.match(record.path))
            and record.param("paid_out_of_band") == "true"
        ):
            with self._lock:
                invoice = self.invoices.get(m["id"])
                if invoice is None:
                    return _missing(m["id"])
                invoice.update(status="paid", paid_out_of_band=True, amount_remaining=0)
                return _Reply(200, dict(invoice))
        return super().handle(record)


@pytest.fixture
def billing_stripe(settings):
    server = BillingFakeStripe().start()
    settings.STRIPE_API_BASE = server.url
    yield server
    server.stop()
