"""The shape of the Stripe objects Recoup reads, checked before an event writes anything.

An event can be authentic (its signature verifies) and still not be what Stripe sends: a
bug upstream, a replay tool, a hand-written fixture. A customer id given as a number, a
currency as a list or an amount as a string would otherwise be coerced into rows
(`customer '12345'`, currency `"['u"`, amount 0) that poison every figure after them. So
each field Recoup reads is held to the type, length and values Stripe documents; fields
it does not read are not looked at, and a field left out is left to the handler (Stripe
omits includable ones). `event_problem` returns the first mismatch, named by its path
(`data.object.customer: expected a Stripe id`), or "".
"""

from __future__ import annotations

import re
from collections.abc import Callable

Check = Callable[[object], str]  # "" when the value is acceptable, else what is wrong

ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")
CURRENCY = re.compile(r"[A-Za-z]{3}")
LARGEST_AMOUNT = 10**15  # far past any amount Stripe holds; below a 64-bit column's limit
LARGEST_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stripe_id(value) -> str:
    if isinstance(value, str) and ID.fullmatch(value):
        return ""
    return "expected a Stripe id"


def ref(value) -> str:
    """An expandable field: an id, or the object with its id."""
    if isinstance(value, dict):
        return stripe_id(value.get("id"))
    return stripe_id(value)


def text(longest: int) -> Check:
    def check(value) -> str:
        if not isinstance(value, str):
            return "expected a string"
        return f"longer than {longest} characters" if len(value) > longest else ""

    return check


def integer(lowest: int, highest: int) -> Check:
    def check(value) -> str:
        if not _is_int(value):
            return "expected an integer"
        return "" if lowest <= value <= highest else f"outside {lowest}..{highest}"

    return check


def one_of(*values: str) -> Check:
    def check(value) -> str:
        return "" if value in values else f"expected one of {', '.join(values)}"

    return check


def boolean(value) -> str:
    return "" if isinstance(value, bool) else "expected true or false"


def currency(value) -> str:
    return (
        "" if isinstance(value, str) and CURRENCY.fullmatch(value) else "expected a currency code"
    )


def nullable(check: Check) -> Check:
    return lambda value: "" if value is None else check(value)


def shape(fields: dict[str, Check]) -> Check:
    """An object whose listed fields, where present, pass their checks."""

    def check(value) -> str:
        if not isinstance(value, dict):
            return "expected an object"
        for name, field_check in fields.items():
            if name in value:
                problem = field_check(value[name])
                if problem:
                    return f"{name}: {problem}" if ":" not in problem else f"{name}.{problem}"
        return ""

    return check


def list_of(check: Check, *, longest: int = 10_000) -> Check:
    def check_list(value) -> str:
        if not isinstance(value, list):
            return "expected a list"
        if len(value) > longest:
            return f"more than {longest} items"
        for i, item in enumerate(value):
            problem = check(item)
            if problem:
                return f"{i}: {problem}" if ":" not in problem else f"{i}.{problem}"
        return ""

    return check_list


def metadata(value) -> str:
    """Stripe's metadata: up to 50 keys of 40 characters, string values of 500."""
    if not isinstance(value, dict):
        return "expected an object"
    if len(value) > 50:
        return "more than 50 keys"
    for key, item in value.items():
        if len(key) > 40:
            return "a key longer than 40 characters"
        if not isinstance(item, str) or len(item) > 500:
            return f"{key}: expected a string of at most 500 characters"
    return ""


AMOUNT = integer(0, LARGEST_AMOUNT)
SIGNED_AMOUNT = integer(-LARGEST_AMOUNT, LARGEST_AMOUNT)
TIMESTAMP = nullable(integer(0, LARGEST_TIMESTAMP))
SHORT = nullable(text(255))
CODE = nullable(text(64))
CARD_FIELDS: dict[str, Check] = {
    "brand": nullable(text(32)),
    "display_brand": nullable(text(32)),
    "last4": nullable(text(4)),
    "exp_month": nullable(integer(1, 12)),
    "exp_year": nullable(integer(1900, 9999)),
    "fingerprint": nullable(text(64)),
    "country": nullable(text(2)),
}
CARD = shape(CARD_FIELDS)
PAYMENT_METHOD = shape(
    {"id": stripe_id, "customer": nullable(ref), "card": nullable(CARD), "type": SHORT}
)
OUTCOME = shape(
    {
        "reason": CODE,
        "advice_code": CODE,
        "network_advice_code": CODE,
        "network_decline_code": CODE,
        "type": CODE,
    }
)
CHARGE = shape(
    {
        "id": stripe_id,
        "customer": nullable(ref),
        "invoice": nullable(ref),
        "payment_intent": nullable(ref),
        "amount": AMOUNT,
        "amount_captured": AMOUNT,
        "currency": currency,
        "created": TIMESTAMP,
        "failure_code": CODE,
        "failure_message": nullable(text(5000)),
        "outcome": nullable(OUTCOME),
        "payment_method": nullable(ref),
        "payment_method_details": nullable(shape({"card": nullable(CARD), "type": SHORT})),
        "description": nullable(text(5000)),
        "status": CODE,
    }
)
PAYMENT_ERROR = shape(
    {
        "code": CODE,
        "decline_code": CODE,
        "advice_code": CODE,
        "network_advice_code": CODE,
        "network_decline_code": CODE,
        "message": nullable(text(5000)),
        "charge": nullable(ref),
        "payment_method": nullable(lambda v: PAYMENT_METHOD(v) if isinstance(v, dict) else ref(v)),
    }
)
PAYMENT_INTENT = shape(
    {
        "id": stripe_id,
        "customer": nullable(ref),
        "invoice": nullable(ref),
        "amount": AMOUNT,
        "amount_received": AMOUNT,
        "currency": currency,
        "created": TIMESTAMP,
        "status": CODE,
        "latest_charge": nullable(lambda v: CHARGE(v) if isinstance(v, dict) else ref(v)),
        "last_payment_error": nullable(PAYMENT_ERROR),
        "payment_method": nullable(ref),
        "description": nullable(text(5000)),
        "metadata": metadata,
    }
)
PRICE = shape(
    {
        "unit_amount": nullable(AMOUNT),
        "currency": currency,
        "recurring": nullable(
            shape(
                {
                    "interval": one_of("day", "week", "month", "year"),
                    "interval_count": integer(1, 1000),
                }
            )
        ),
    }
)
SUBSCRIPTION_ITEM = shape(
    {
        "price": nullable(PRICE),
        "quantity": nullable(integer(0, 10**9)),
        "current_period_end": TIMESTAMP,
    }
)
SUBSCRIPTION = shape(
    {
        "id": stripe_id,
        "customer": ref,
        "status": one_of(
            "incomplete",
            "incomplete_expired",
            "trialing",
            "active",
            "past_due",
            "canceled",
            "unpaid",
            "paused",
        ),
        "cancel_at_period_end": boolean,
        "canceled_at": TIMESTAMP,
        "ended_at": TIMESTAMP,
        "current_period_end": TIMESTAMP,
        "created": TIMESTAMP,
        "currency": currency,
        "items": shape({"data": list_of(SUBSCRIPTION_ITEM)}),
        "metadata": metadata,
    }
)
INVOICE_LINE = shape(
    {
        "amount": SIGNED_AMOUNT,
        "currency": currency,
        "description": nullable(text(5000)),
        "quantity": nullable(integer(0, 10**9)),
        "subscription": nullable(ref),
    }
)
INVOICE = shape(
    {
        "id": stripe_id,
        "customer": nullable(ref),
        "subscription": nullable(ref),
        "parent": nullable(
            shape(
                {
                    "type": CODE,
                    "subscription_details": nullable(
                        shape({"subscription": nullable(ref), "metadata": nullable(metadata)})
                    ),
                }
            )
        ),
        "status": nullable(one_of("draft", "open", "paid", "uncollectible", "void")),
        "currency": currency,
        "amount_due": AMOUNT,
        "amount_paid": AMOUNT,
        "amount_remaining": AMOUNT,
        "subtotal": SIGNED_AMOUNT,
        "total": SIGNED_AMOUNT,
        "attempt_count": integer(0, 10_000),
        "attempted": boolean,
        "billing_reason": CODE,
        "next_payment_attempt": TIMESTAMP,
        "created": TIMESTAMP,
        "customer_email": nullable(text(512)),
        "customer_name": nullable(text(512)),
        "customer_phone": nullable(text(64)),
        "payment_intent": nullable(ref),
        "lines": shape({"data": list_of(INVOICE_LINE)}),
        "metadata": metadata,
    }
)
ADDRESS = shape(
    {name: nullable(text(200)) for name in ("country", "state", "postal_code", "city", "line1")}
)
CUSTOMER = shape(
    {
        "id": stripe_id,
        "email": nullable(text(512)),
        "name": nullable(text(512)),
        "phone": nullable(text(64)),
        "address": nullable(ADDRESS),
        "metadata": metadata,
        "preferred_locales": nullable(list_of(text(16), longest=50)),
        "invoice_settings": nullable(shape({"default_payment_method": nullable(ref)})),
        "default_source": nullable(ref),
        "created": TIMESTAMP,
    }
)
DISPUTE = shape(
    {
        "id": stripe_id,
        "charge": nullable(ref),
        "payment_intent": nullable(ref),
        "amount": AMOUNT,
        "currency": currency,
        "reason": CODE,
        "status": CODE,
    }
)
SETUP_INTENT = shape(
    {
        "id": stripe_id,
        "customer": nullable(ref),
        "payment_method": nullable(lambda v: PAYMENT_METHOD(v) if isinstance(v, dict) else ref(v)),
        "status": CODE,
    }
)
SOURCE = shape({"id": stripe_id, "customer": nullable(ref), **CARD_FIELDS})  # a legacy Card

OBJECTS: dict[str, Check] = {
    "invoice": INVOICE,
    "payment_intent": PAYMENT_INTENT,
    "charge": CHARGE,
    "customer": CUSTOMER,
    "subscription": SUBSCRIPTION,
    "payment_method": PAYMENT_METHOD,
    "setup_intent": SETUP_INTENT,
    "dispute": DISPUTE,
    "card": SOURCE,
    "source": SOURCE,
}
# The object an event type carries, where its name does not say (charge.dispute.*).
EVENT_OBJECTS = {
    "charge.dispute": "dispute",
    "customer.subscription": "subscription",
    "customer.source": "source",
}

EVENT = shape({"id": stripe_id, "type": text(100), "created": TIMESTAMP})


def event_problem(event: dict) -> str:
    """What in a (signature-verified) event is not shaped as Stripe sends it; ""."""
    problem = EVENT(event)
    if problem:
        return problem
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        return "data.object: expected an object"
    previous = data.get("previous_attributes")
    if previous is not None and not isinstance(previous, dict):
        return "data.previous_attributes: expected an object"
    event_type = event["type"]
    kind = next(
        (o for prefix, o in EVENT_OBJECTS.items() if event_type.startswith(prefix + ".")),
        event_type.split(".", 1)[0],
    )
    check = OBJECTS.get(kind)
    if check is None:
        return ""
    problem = check(data["object"])
    return f"data.object.{problem}" if problem else ""
