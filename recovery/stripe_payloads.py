"""Read Stripe object shapes: the current API first, older shapes where that is cheap.

Everything here is pure: dicts in, plain values out. Nothing is trusted to be present.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


def ref(value: Any) -> str:
    """An id whether the field holds the id or the expanded object."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def ts(value: Any) -> dt.datetime | None:
    if value in (None, "", 0):
        return None
    try:
        return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def minor(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def invoice_subscription_id(invoice: dict) -> str:
    parent = obj(invoice.get("parent"))
    sub = ref(obj(parent.get("subscription_details")).get("subscription"))
    if sub:
        return sub
    return ref(invoice.get("subscription"))  # API versions before 2025-03-31


def invoice_payment_intent_ids(invoice: dict) -> list[str]:
    ids = []
    for item in obj(invoice.get("payments")).get("data") or []:
        payment = obj(obj(item).get("payment"))
        pi = ref(payment.get("payment_intent"))
        if pi:
            ids.append(pi)
    legacy = ref(invoice.get("payment_intent"))
    if legacy:
        ids.append(legacy)
    return list(dict.fromkeys(ids))


def invoice_line_product(invoice: dict) -> str:
    for line in obj(invoice.get("lines")).get("data") or []:
        line = obj(line)
        desc = line.get("description")
        if desc:
            return str(desc)[:200]
    return ""


@dataclass
class DeclineInfo:
    decline_code: str = ""
    failure_code: str = ""
    failure_message: str = ""
    advice_code: str = ""
    network_decline_code: str = ""
    network_advice_code: str = ""
    charge_id: str = ""
    payment_intent_id: str = ""
    payment_method_id: str = ""
    card_brand: str = ""
    card_last4: str = ""
    card_fingerprint: str = ""
    card_exp_month: int | None = None
    card_exp_year: int | None = None
    card_country: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def has_code(self) -> bool:
        return bool(self.decline_code or self.failure_code or self.advice_code)

    def merge(self, other: DeclineInfo) -> DeclineInfo:
        for name in self.__dataclass_fields__:
            if name == "extra":
                continue
            if not getattr(self, name) and getattr(other, name):
                setattr(self, name, getattr(other, name))
        return self


def _card_from_details(info: DeclineInfo, card: dict) -> None:
    info.card_brand = info.card_brand or str(card.get("brand") or card.get("network") or "")
    info.card_last4 = info.card_last4 or str(card.get("last4") or "")[:4]
    info.card_fingerprint = info.card_fingerprint or str(card.get("fingerprint") or "")
    info.card_exp_month = info.card_exp_month or card.get("exp_month")
    info.card_exp_year = info.card_exp_year or card.get("exp_year")
    info.card_country = info.card_country or str(card.get("country") or "")[:2].upper()


def decline_from_error(error: dict) -> DeclineInfo:
    """A `last_payment_error` or an API error body."""
    error = obj(error)
    info = DeclineInfo(
        decline_code=str(error.get("decline_code") or ""),
        failure_code=str(error.get("code") or ""),
        failure_message=str(error.get("message") or "")[:500],
        advice_code=str(error.get("advice_code") or ""),
        network_decline_code=str(error.get("network_decline_code") or ""),
        network_advice_code=str(error.get("network_advice_code") or ""),
        charge_id=ref(error.get("charge")),
    )
    pm = obj(error.get("payment_method"))
    info.payment_method_id = ref(error.get("payment_method"))
    _card_from_details(info, obj(pm.get("card")))
    return info


def decline_from_charge(charge: dict) -> DeclineInfo:
    charge = obj(charge)
    outcome = obj(charge.get("outcome"))
    info = DeclineInfo(
        decline_code=str(outcome.get("reason") or "")
        if outcome.get("type") == "issuer_declined"
        else "",
        failure_code=str(charge.get("failure_code") or ""),
        failure_message=str(charge.get("failure_message") or "")[:500],
        advice_code=str(outcome.get("advice_code") or ""),
        network_decline_code=str(outcome.get("network_decline_code") or ""),
        network_advice_code=str(outcome.get("network_advice_code") or ""),
        charge_id=str(charge.get("id") or ""),
        payment_intent_id=ref(charge.get("payment_intent")),
        payment_method_id=ref(charge.get("payment_method")),
    )
    if (
        not info.decline_code
        and outcome.get("reason")
        and outcome.get("type") in ("blocked", "invalid")
    ):
        info.decline_code = str(outcome.get("reason"))
    _card_from_details(info, obj(obj(charge.get("payment_method_details")).get("card")))
    return info


def decline_from_payment_intent(pi: dict) -> DeclineInfo:
    pi = obj(pi)
    info = decline_from_error(obj(pi.get("last_payment_error")))
    info.payment_intent_id = str(pi.get("id") or "")
    info.payment_method_id = info.payment_method_id or ref(pi.get("payment_method"))
    latest = pi.get("latest_charge")
    if isinstance(latest, dict):
        info.merge(decline_from_charge(latest))
    elif latest and not info.charge_id:
        info.charge_id = str(latest)
    return info


def decline_from_invoice(invoice: dict) -> DeclineInfo:
    """Whatever an invoice carries about its last failed payment (often only ids)."""
    info = DeclineInfo()
    for item in obj(invoice.get("payments")).get("data") or []:
        pi = obj(obj(obj(item).get("payment"))).get("payment_intent")
        if isinstance(pi, dict):
            info.merge(decline_from_payment_intent(pi))
    if isinstance(invoice.get("payment_intent"), dict):  # older, expanded
        info.merge(decline_from_payment_intent(invoice["payment_intent"]))
    if isinstance(invoice.get("charge"), dict):  # older, expanded
        info.merge(decline_from_charge(invoice["charge"]))
    elif invoice.get("charge") and not info.charge_id:
        info.charge_id = str(invoice["charge"])
    if not info.payment_intent_id:
        pis = invoice_payment_intent_ids(invoice)
        info.payment_intent_id = pis[-1] if pis else ""
    if isinstance(invoice.get("last_payment_error"), dict):
        info.merge(decline_from_error(invoice["last_payment_error"]))
    return info


def decline_from_invoice_payments(payments: list) -> tuple[DeclineInfo, list[str], bool]:
    """Read an invoice's payments (its `payments.data`, or `GET /v1/invoice_payments`),
    each with its PaymentIntent expanded (and its `latest_charge` where that is): the decline of the most recent failed payment, every
    PaymentIntent id, and whether one of them paid the invoice."""
    payments = [obj(p) for p in payments or []]
    # Newest first, as Stripe lists them; `created` decides where it is given.
    payments.sort(key=lambda p: int(p.get("created") or 0), reverse=True)
    ids, paid, info = [], False, DeclineInfo()
    for item in payments:
        payment = obj(item.get("payment"))
        pi = payment.get("payment_intent")
        if ref(pi):
            ids.append(ref(pi))
        paid = paid or item.get("status") == "paid" or obj(pi).get("status") == "succeeded"
        if isinstance(pi, dict) and not info.has_code:
            found = decline_from_payment_intent(pi)
            if found.has_code:
                info = found
    return info, list(dict.fromkeys(reversed(ids))), paid


def interval_monthly_factor(interval: str, count: int) -> float:
    count = max(int(count or 1), 1)
    per_month = {"day": 365.25 / 12, "week": 52.0 / 12, "month": 1.0, "year": 1 / 12}.get(
        interval, 1.0
    )
    return per_month / count


def subscription_summary(sub: dict) -> dict:
    """Product, plan, interval and amounts from a subscription's items."""
    sub = obj(sub)
    items = obj(sub.get("items")).get("data") or []
    amount = 0
    interval, count, product, plan_name, currency = (
        "month",
        1,
        "",
        "",
        str(sub.get("currency") or "usd"),
    )
    period_start = ts(sub.get("current_period_start"))
    period_end = ts(sub.get("current_period_end"))
    for item in items:
        item = obj(item)
        price = obj(item.get("price")) or obj(item.get("plan"))
        recurring = obj(price.get("recurring"))
        interval = str(recurring.get("interval") or price.get("interval") or interval)
        count = int(recurring.get("interval_count") or price.get("interval_count") or count)
        quantity = int(item.get("quantity") or 1)
        amount += minor(price.get("unit_amount", price.get("amount"))) * quantity
        currency = str(price.get("currency") or currency)
        product_ref = price.get("product")
        if isinstance(product_ref, dict):
            product = product or str(product_ref.get("name") or "")
        plan_name = plan_name or str(price.get("nickname") or "")
        # Since 2025-03-31 the period lives on each item.
        period_start = period_start or ts(item.get("current_period_start"))
        period_end = period_end or ts(item.get("current_period_end"))
    mrr = round(amount * interval_monthly_factor(interval, count))
    return {
        "amount": amount,
        "interval": interval if interval in ("day", "week", "month", "year") else "month",
        "interval_count": count,
        "currency": currency.lower()[:3],
        "product_name": product or str(obj(sub.get("metadata")).get("product_name") or ""),
        "plan_name": plan_name,
        "mrr": mrr,
        "current_period_start": period_start,
        "current_period_end": period_end,
    }
