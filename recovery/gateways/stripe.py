"""StripeGateway: retries through the stripe SDK's StripeClient.

The client is built per use from the store's key; STRIPE_API_BASE (when set) points it
at another address — a local sandbox or a test server — read at that moment, never at
import. The SDK's own network retries are off: an ambiguous result is handled by the
engine, which reads the object back before anything else happens to the case. Each of
its requests first takes a slot from the store's shared request budget (stripe_pacing).
"""

from __future__ import annotations

import stripe
from django.conf import settings

from recovery.stripe_payloads import (
    DeclineInfo,
    decline_from_error,
    decline_from_invoice,
    decline_from_invoice_payments,
    decline_from_payment_intent,
)
from stores.models import Store

from .base import ChargeResult, FailureRead, ReadBack
from .stripe_pacing import (
    BudgetExhausted,
    PacedHTTPClient,
    Pacer,
    key_pacer,
    rate_limit_retry_after,
    store_pacer,
)

# A failed invoice read back with its payments (an includable field) and each payment's
# PaymentIntent: the intent's `last_payment_error` holds the decline, its advice and
# network codes and the card. One retrieve by id, which Stripe answers in the same time
# however many invoices the account holds (a list filtered by invoice need not).
INVOICE_FAILURE_EXPAND = ["payments.data.payment.payment_intent"]

TIMEOUT_SECONDS = 20
# Error codes of a payment the customer must confirm on-session (3-D Secure). Paying an
# invoice answers with the second when the invoice's PaymentIntent needs that action.
CUSTOMER_ACTION_CODES = frozenset(
    {"authentication_required", "invoice_payment_intent_requires_action"}
)


def stripe_client(store: Store, *, timeout: float = TIMEOUT_SECONDS) -> stripe.StripeClient:
    """A client for the store's key, paced by the store's budget shared by all workers; a
    request it cannot send within the max wait raises stripe_pacing.BudgetExhausted, a
    stripe.RateLimitError (not sent)."""
    return _paced_client(store.stripe_secret_key, store_pacer(store), timeout=timeout)


def _paced_client(api_key: str, pacer: Pacer, *, timeout: float) -> stripe.StripeClient:
    base = settings.STRIPE_API_BASE
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base} if base else None,
        max_network_retries=0,
        http_client=PacedHTTPClient(stripe.new_default_http_client(timeout=timeout), pacer),
    )


def _error_result(exc: stripe.StripeError) -> ChargeResult:
    if isinstance(exc, stripe.CardError):
        body = (exc.json_body or {}).get("error", {}) if isinstance(exc.json_body, dict) else {}
        decline = decline_from_error(body)
        pi = body.get("payment_intent")
        if isinstance(pi, dict):
            decline.merge(decline_from_payment_intent(pi))
        # Only the customer, on-session, can finish these: never a decline to retry.
        needs_customer = (
            decline.failure_code in CUSTOMER_ACTION_CODES
            or decline.decline_code == "authentication_required"
            or (isinstance(pi, dict) and pi.get("status") == "requires_action")
        )
        outcome = "requires_action" if needs_customer else "failed"
        return ChargeResult(outcome=outcome, decline=decline, message=str(exc.user_message or exc))
    if isinstance(exc, stripe.RateLimitError):
        # Stripe's 429 (its Retry-After honoured) or our own budget refusing to send: never
        # a decline.
        return ChargeResult(
            outcome="not_sent",
            message=str(exc) if isinstance(exc, BudgetExhausted) else "rate limited by Stripe",
            retry_after=rate_limit_retry_after(exc),
        )
    if isinstance(
        exc, stripe.InvalidRequestError | stripe.AuthenticationError | stripe.PermissionError
    ):
        # Refused before any charge (bad id, invoice already paid, key revoked...).
        body = (exc.json_body or {}).get("error", {}) if isinstance(exc.json_body, dict) else {}
        return ChargeResult(
            outcome="not_sent",
            decline=decline_from_error(body),
            message=str(exc.user_message or exc),
        )
    # APIConnectionError (timeout), APIError (5xx) and anything else: the charge may
    # have happened. The engine reads the object back before acting again.
    return ChargeResult(outcome="unknown", message=f"{type(exc).__name__}: {exc}"[:300])


class StripeGateway:
    name = "stripe"

    def __init__(
        self, *, store: Store | None = None, api_key: str = "", timeout: float = TIMEOUT_SECONDS
    ):
        """`store`: its key, paced by its shared budget. A key alone (tests, tools) is paced
        within this process only."""
        if store is not None:
            api_key = store.stripe_secret_key
        if not api_key:
            raise ValueError("This store has no Stripe secret key; add one in settings.")
        pacer = store_pacer(store) if store is not None else key_pacer(api_key)
        self.client = _paced_client(api_key, pacer, timeout=timeout)

    @staticmethod
    def _off_session(method, object_id: str, payment_method: str, idempotency_key: str) -> dict:
        """One off-session charge call with our idempotency key; the object as a dict."""
        params: dict = {"off_session": True}
        if payment_method:
            params["payment_method"] = payment_method
        return method(object_id, params, {"idempotency_key": idempotency_key}).to_dict()

    def invoice_pay(
        self,
        *,
        invoice_id: str,
        idempotency_key: str,
        payment_method: str = "",
        amount: int = 0,
        hint=None,
    ) -> ChargeResult:
        try:
            data = self._off_session(
                self.client.v1.invoices.pay, invoice_id, payment_method, idempotency_key
            )
        except stripe.StripeError as exc:
            return _error_result(exc)
        if data.get("status") == "paid":
            return ChargeResult(
                outcome="succeeded",
                decline=decline_from_invoice(data),
                amount=int(data.get("amount_paid") or 0),
            )
        return ChargeResult(
            outcome="failed",
            decline=decline_from_invoice(data),
            message=f"invoice is {data.get('status')}",
        )

    def payment_intent_confirm(
        self,
        *,
        payment_intent_id: str,
        payment_method: str,
        idempotency_key: str,
        amount: int = 0,
        hint=None,
    ) -> ChargeResult:
        try:
            data = self._off_session(
                self.client.v1.payment_intents.confirm,
                payment_intent_id,
                payment_method,
                idempotency_key,
            )
        except stripe.StripeError as exc:
            return _error_result(exc)
        status = data.get("status")
        decline = decline_from_payment_intent(data)
        if status == "succeeded":
            return ChargeResult(
                outcome="succeeded", decline=decline, amount=int(data.get("amount_received") or 0)
            )
        if status == "requires_action":
            return ChargeResult(outcome="requires_action", decline=decline)
        if status == "processing":
            return ChargeResult(outcome="unknown", decline=decline, message="payment is processing")
        return ChargeResult(outcome="failed", decline=decline)

    def invoice_read(self, *, invoice_id: str) -> ReadBack:
        data = self.client.v1.invoices.retrieve(invoice_id).to_dict()
        return ReadBack(
            paid=data.get("status") == "paid",
            attempt_count=int(data.get("attempt_count") or 0),
            status=str(data.get("status") or ""),
            decline=decline_from_invoice(data),
        )

    def payment_intent_read(self, *, payment_intent_id: str) -> ReadBack:
        data = self.client.v1.payment_intents.retrieve(payment_intent_id).to_dict()
        return ReadBack(
            paid=data.get("status") == "succeeded",
            status=str(data.get("status") or ""),
            decline=decline_from_payment_intent(data)
            if data.get("last_payment_error")
            else DeclineInfo(),
        )

    def invoice_failure_read(self, *, invoice_id: str) -> FailureRead:
        """One read: `GET /v1/invoices/<id>` with its payments and their PaymentIntents
        expanded (an invoice's `payments` never comes in a webhook)."""
        invoice = self.client.v1.invoices.retrieve(
            invoice_id, {"expand": INVOICE_FAILURE_EXPAND}
        ).to_dict()
        payments = invoice.get("payments") if isinstance(invoice.get("payments"), dict) else {}
        decline, ids, paid = decline_from_invoice_payments(payments.get("data") or [])
        return FailureRead(
            decline=decline, payment_intent_ids=ids, paid=paid or invoice.get("status") == "paid"
        )
