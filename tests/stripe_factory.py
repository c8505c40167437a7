"""Build Stripe payloads from Stripe's own example objects, and sign them as Stripe does."""

from __future__ import annotations

import copy
import itertools
import json
import time
from functools import cache
from pathlib import Path

import stripe

_ids = itertools.count(1)


@cache
def _objects() -> dict:
    return json.loads((Path(__file__).parent / "fixtures/stripe/objects.json").read_text())


def stripe_object(kind: str, **fields) -> dict:
    data = copy.deepcopy(_objects()[kind])
    data.update(fields)
    return data


def uid(prefix: str) -> str:
    return f"{prefix}_test{next(_ids):06d}{int(time.time() * 1000) % 100000:05d}"


# What Stripe holds about each invoice's payments but never puts in a webhook (an
# invoice's `payments` is includable; PaymentIntents and Charges carry no `invoice`):
# invoice id -> its PaymentIntents, newest last, each with `latest_charge` expanded. The
# tests' Stripe worlds (the sandbox's records, tests/fake_stripe.py) answer read-backs
# from it.
STRIPE_SIDE: dict[str, list[dict]] = {}


def invoice_payment_intents(invoice_id: str) -> list[dict]:
    return copy.deepcopy(STRIPE_SIDE.get(invoice_id, []))


def failed_invoice(
    *,
    customer: str = "cus_test_alice",
    subscription: str = "sub_test_alice",
    invoice_id: str | None = None,
    amount: int = 2900,
    attempt_count: int = 1,
    decline_code: str | None = "insufficient_funds",
    advice_code: str | None = None,
    network_advice_code: str | None = None,
    brand: str = "visa",
    fingerprint: str = "fp_visa_alice",
    payment_intent: str | None = None,
    charge: str | None = None,
    next_payment_attempt: int | None = None,
    status: str = "open",
    email: str = "alice@example.com",
    card_country: str = "US",
) -> dict:
    """A current-API invoice after a failed charge, as a webhook carries it: no
    `payments`, so no decline. Its failed PaymentIntent (and Charge) is what Stripe holds
    (`invoice_payment_intents`, `payment_intent_failed`, `charge_failed`)."""
    invoice_id = invoice_id or uid("in")
    payment_intent = payment_intent or uid("pi")
    charge = charge or uid("ch")
    card = {
        "brand": brand,
        "country": card_country,
        "last4": "4242",
        "fingerprint": fingerprint,
        "exp_month": 8,
        "exp_year": 2030,
    }
    charge_obj = stripe_object(
        "charge",
        id=charge,
        amount=amount,
        customer=customer,
        payment_intent=payment_intent,
        paid=False,
        captured=False,
        status="failed",
        description="Subscription update",
        failure_code="card_declined" if decline_code is not None else None,
        failure_message="Your card was declined." if decline_code is not None else None,
        outcome={
            "type": "issuer_declined",
            "reason": decline_code,
            "advice_code": advice_code,
            "network_advice_code": network_advice_code,
            "network_decline_code": None,
            "network_status": "declined_by_network",
            "risk_level": "normal",
            "seller_message": "The bank did not return any further details with this decline.",
        }
        if decline_code is not None
        else None,
        payment_method="pm_" + fingerprint,
        payment_method_details={"type": "card", "card": card},
    )
    pi = stripe_object(
        "payment_intent",
        id=payment_intent,
        amount=amount,
        customer=customer,
        description="Subscription update",
        status="requires_payment_method",
        payment_method=None,
        latest_charge=charge_obj,
        last_payment_error=(
            {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
                "advice_code": advice_code,
                "network_advice_code": network_advice_code,
                "message": "Your card was declined.",
                "charge": charge,
                "payment_method": {
                    "id": "pm_" + fingerprint,
                    "object": "payment_method",
                    "type": "card",
                    "card": card,
                },
            }
            if decline_code is not None
            else None
        ),
    )
    STRIPE_SIDE.setdefault(invoice_id, []).append(pi)
    inv = stripe_object(
        "invoice",
        id=invoice_id,
        customer=customer,
        customer_email=email,
        customer_name="Alice Example",
        amount_due=amount,
        amount_paid=0,
        amount_remaining=amount,
        subtotal=amount,
        total=amount,
        status=status,
        attempted=True,
        attempt_count=attempt_count,
        billing_reason="subscription_cycle",
        next_payment_attempt=next_payment_attempt,
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": subscription},
        },
    )
    inv.pop("payments", None)  # includable: never in a webhook or a plain retrieve
    inv["lines"]["data"][0]["description"] = "1 × Coffee Club (at $29.00 / month)"
    inv["lines"]["data"][0]["invoice"] = invoice_id
    return inv


def payment_intent_failed(invoice: dict) -> dict:
    """The invoice's failed PaymentIntent as `payment_intent.payment_failed` carries it:
    `latest_charge` an id, no `invoice`."""
    pi = invoice_payment_intents(invoice["id"])[-1]
    pi["latest_charge"] = pi["latest_charge"]["id"]
    return pi


def charge_failed(invoice: dict) -> dict:
    """The invoice's failed Charge as `charge.failed` carries it (no `invoice`)."""
    return invoice_payment_intents(invoice["id"])[-1]["latest_charge"]


def paid_invoice(invoice: dict) -> dict:
    paid = copy.deepcopy(invoice)
    paid.update(
        status="paid",
        amount_paid=invoice["amount_due"],
        amount_remaining=0,
        next_payment_attempt=None,
    )
    return paid


def event(
    type_: str,
    obj: dict,
    *,
    created: int | None = None,
    event_id: str | None = None,
    previous_attributes: dict | None = None,
) -> dict:
    data = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return stripe_object(
        "event",
        id=event_id or uid("evt"),
        type=type_,
        created=created if created is not None else int(time.time()),
        api_version="2025-10-29.clover",
        data=data,
    )


def sign(payload: str, secret: str, *, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    sig = stripe.WebhookSignature._compute_signature(f"{ts}.{payload}", secret)
    return f"t={ts},v1={sig}"
