from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

from recovery.stripe_payloads import DeclineInfo


@dataclass
class ChargeResult:
    """What one attempt produced.

    outcome: succeeded | failed | requires_action | unknown (timeout, 5xx: the money
    may or may not have moved; read it back before doing anything else) | not_sent
    (refused before reaching the network, e.g. 429 — safe to try again later).
    """

    outcome: str
    decline: DeclineInfo = field(default_factory=DeclineInfo)
    amount: int = 0
    message: str = ""
    retry_after: dt.timedelta | None = None


@dataclass
class ReadBack:
    """The truth about an invoice or PaymentIntent, read from the gateway."""

    paid: bool
    attempt_count: int | None = None
    status: str = ""
    decline: DeclineInfo = field(default_factory=DeclineInfo)


@dataclass
class FailureRead:
    """What Stripe says about an invoice's failed payment, read back.

    decline.has_code: Stripe said why. paid: the invoice was paid meanwhile (a late read
    opens nothing). payment_intent_ids: the invoice's payments, oldest first."""

    decline: DeclineInfo = field(default_factory=DeclineInfo)
    payment_intent_ids: list[str] = field(default_factory=list)
    paid: bool = False


class PaymentGateway(Protocol):
    name: str

    def invoice_pay(
        self,
        *,
        invoice_id: str,
        idempotency_key: str,
        payment_method: str = "",
        amount: int = 0,
        hint=None,
    ) -> ChargeResult: ...

    def payment_intent_confirm(
        self,
        *,
        payment_intent_id: str,
        payment_method: str,
        idempotency_key: str,
        amount: int = 0,
        hint=None,
    ) -> ChargeResult: ...

    def invoice_read(self, *, invoice_id: str) -> ReadBack: ...

    def payment_intent_read(self, *, payment_intent_id: str) -> ReadBack: ...

    def invoice_failure_read(self, *, invoice_id: str) -> FailureRead:
        """Raises on a failed read (network, 429, 5xx): the caller tries again later."""
        ...
