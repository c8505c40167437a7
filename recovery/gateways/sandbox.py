"""SandboxGateway: an in-process issuer for the demo, development and simulations.

The issuer model is simple and stated (README, "The sandbox's issuer model"): the chance
that a retry is approved depends on the decline group, the hours since the failure, a
payday slot for insufficient funds, and whether the card was changed. Cards that need an
update are never approved until they are changed. Outcomes are a pure function of the
idempotency key, so the same request always gets the same answer — like Stripe's
idempotency — and a run is reproducible from its seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass

from django.utils import timezone

from recovery.models import SandboxPayment
from recovery.stripe_payloads import DeclineInfo, decline_from_invoice_payments

from .base import ChargeResult, FailureRead, ReadBack

# Approval chance of a retry on the same card, by decline group and hours since failure.
BASE_APPROVAL = {
    "insufficient_funds": [(24, 0.16), (96, 0.12), (10_000, 0.10)],
    "do_not_honor": [(24, 0.30), (96, 0.18), (10_000, 0.10)],
    "try_again": [(6, 0.60), (48, 0.45), (10_000, 0.25)],
    "velocity": [(24, 0.10), (96, 0.40), (10_000, 0.30)],
    "other_soft": [(24, 0.30), (96, 0.20), (10_000, 0.12)],
    "unknown": [(24, 0.25), (96, 0.15), (10_000, 0.10)],
}
PAYDAY_BOOST = 2.6  # insufficient funds on the 1st, 15th, month end or a Friday
NIGHT_PENALTY = 0.6  # issuers approve less between 22:00 and 06:00 local
AFTER_CARD_CHANGE = 0.88  # a fresh card is usually approved


@dataclass
class Hint:
    decline_group: str = "unknown"
    track: str = "soft"
    hours_since_failure: float = 0.0
    payday: bool = False
    local_hour: int = 12
    card_changed: bool = False
    decline_code: str = ""
    seed: int = 0


def _uniform(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def approval_probability(hint: Hint) -> float:
    if hint.card_changed:
        return AFTER_CARD_CHANGE
    if hint.track in ("card_update", "hard", "fraud", "authentication"):
        return 0.0
    curve = BASE_APPROVAL.get(hint.decline_group, BASE_APPROVAL["unknown"])
    p = next(prob for limit, prob in curve if hint.hours_since_failure <= limit)
    if hint.decline_group == "insufficient_funds" and hint.payday:
        p *= PAYDAY_BOOST
    if hint.local_hour >= 22 or hint.local_hour < 6:
        p *= NIGHT_PENALTY
    return min(p, 0.95)


class SandboxGateway:
    name = "sandbox"
    _paid: dict[str, bool] = {}
    _lock = threading.Lock()

    def __init__(self, *, seed: int = 0, store_id=None):
        self.seed = seed
        self.store_id = store_id

    @classmethod
    def for_store(cls, store) -> SandboxGateway:
        return cls(
            seed=int(str(store.pk).replace("-", "")[:8], 16) if store.pk else 0, store_id=store.pk
        )

    def _charge(
        self, *, object_id: str, idempotency_key: str, amount: int, hint: Hint | None
    ) -> ChargeResult:
        hint = hint or Hint()
        if hint.track == "authentication" and not hint.card_changed:
            return ChargeResult(
                outcome="requires_action",
                decline=DeclineInfo(
                    decline_code="authentication_required", failure_code="authentication_required"
                ),
            )
        approved = _uniform(idempotency_key, self.seed) < approval_probability(hint)
        charge_id = "ch_sbx_" + hashlib.sha1(idempotency_key.encode()).hexdigest()[:20]
        if approved:
            with self._lock:
                self._paid[object_id] = True
            return ChargeResult(
                outcome="succeeded", amount=amount, decline=DeclineInfo(charge_id=charge_id)
            )
        code = hint.decline_code or "generic_decline"
        return ChargeResult(
            outcome="failed",
            decline=DeclineInfo(
                decline_code=code,
                failure_code="card_declined",
                charge_id=charge_id,
                failure_message="Sandbox issuer declined the retry.",
            ),
        )

    def invoice_pay(
        self,
        *,
        invoice_id: str,
        idempotency_key: str,
        payment_method: str = "",
        amount: int = 0,
        hint: Hint | None = None,
    ) -> ChargeResult:
        return self._charge(
            object_id=invoice_id, idempotency_key=idempotency_key, amount=amount, hint=hint
        )

    def payment_intent_confirm(
        self,
        *,
        payment_intent_id: str,
        payment_method: str,
        idempotency_key: str,
        amount: int = 0,
        hint: Hint | None = None,
    ) -> ChargeResult:
        return self._charge(
            object_id=payment_intent_id, idempotency_key=idempotency_key, amount=amount, hint=hint
        )

    def invoice_read(self, *, invoice_id: str) -> ReadBack:
        paid = self._paid.get(invoice_id, False)
        return ReadBack(paid=paid, status="paid" if paid else "open")

    def payment_intent_read(self, *, payment_intent_id: str) -> ReadBack:
        paid = self._paid.get(payment_intent_id, False)
        return ReadBack(paid=paid, status="succeeded" if paid else "requires_payment_method")

    def invoice_failure_read(self, *, invoice_id: str) -> FailureRead:
        """What the invoice's read back would answer: the payments its Stripe
        (the demo, `simulate`, a test's world) recorded with `sandbox_payment_record`."""
        rows = SandboxPayment.objects.filter(store_id=self.store_id, invoice_stripe_id=invoice_id)
        payments = [
            {
                "object": "invoice_payment",
                "created": int(row.created_at.timestamp()),
                "status": "paid" if row.payment_intent.get("status") == "succeeded" else "open",
                "payment": {"type": "payment_intent", "payment_intent": _as_read(row)},
            }
            for row in rows.order_by("-created_at", "-pk")  # newest first, as Stripe lists
        ]
        decline, ids, paid = decline_from_invoice_payments(payments)
        return FailureRead(
            decline=decline, payment_intent_ids=ids, paid=paid or self._paid.get(invoice_id, False)
        )


def _as_read(row: SandboxPayment) -> dict:
    """The PaymentIntent as the invoice's read gives it: its `latest_charge` an id (only
    the intent is expanded)."""
    pi = dict(row.payment_intent)
    if isinstance(pi.get("latest_charge"), dict):
        pi["latest_charge"] = pi["latest_charge"].get("id")
    return pi


def sandbox_payment_record(
    *, store, invoice_id: str, payment_intent: dict, at: dt.datetime | None = None
) -> None:
    """The sandbox's Stripe learns of an invoice's payment: the PaymentIntent as Stripe
    holds it (with `last_payment_error` and `latest_charge` expanded). Its webhook events
    carry none of this, exactly as Stripe's do; the read-back finds it here."""
    SandboxPayment.objects.update_or_create(
        store=store,
        payment_intent_id=str(payment_intent["id"]),
        defaults={
            "invoice_stripe_id": invoice_id,
            "payment_intent": payment_intent,
            "created_at": at or timezone.now(),
        },
    )
