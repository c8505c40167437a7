"""The card-update page's services: what the page shows, and what happens when the
customer acts on it.

Card data never reaches Recoup. Stripe stores collect a new payment method with Stripe's
Payment Element on a SetupIntent created here (the authentication track confirms the
case's PaymentIntent on-session instead); sandbox stores use a labelled test form whose
"cards" are test payment methods honoured by `SandboxTestCardGateway`.

After a new card: it is saved and made the default (in Stripe, on the customer and their
subscriptions; here, through subscriptions.services), the engine hears of the change,
and every open case of the customer is retried at once when its network budget allows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass, field

import stripe
from django.conf import settings
from django.db import transaction

from recovery import commands
from recovery.gateways import gateway_for
from recovery.gateways.base import ChargeResult
from recovery.gateways.sandbox import SandboxGateway
from recovery.gateways.stripe import stripe_client
from recovery.models import PaymentAttempt, RecoveryCase, Track
from recovery.stripe_payloads import DeclineInfo
from stores.models import Store
from subscriptions.models import Customer, PaymentMethod, Subscription
from subscriptions.services import payment_method_set_default, payment_method_upsert

from . import rendering, selectors
from .links import PayLink, link_message
from .models import Channel, Message, Purpose

logger = logging.getLogger(__name__)


class PayError(Exception):
    """Something the customer can act on (or retry); the message is for them."""


# ------------------------------------------------------------------ sandbox test cards

# Test "cards" for sandbox stores, named like Stripe's test cards.
TEST_CARDS = {
    "works": {"label": "Test card that works", "last4": "4242", "decline": ""},
    "declines": {
        "label": "Test card that is declined",
        "last4": "0002",
        "decline": "generic_decline",
    },
    "insufficient_funds": {
        "label": "Test card with insufficient funds",
        "last4": "9995",
        "decline": "insufficient_funds",
    },
}
TEST_PM_PREFIX = "pm_sandbox_"


class SandboxTestCardGateway(SandboxGateway):
    """The sandbox issuer, plus the pay page's test cards: a payment method
    `pm_sandbox_<card>_…` is approved or declined as its name says; any other card gets
    the sandbox's usual answer."""

    @staticmethod
    def _test_card(payment_method: str) -> dict | None:
        if not payment_method.startswith(TEST_PM_PREFIX):
            return None
        rest = payment_method[len(TEST_PM_PREFIX) :]
        return next(
            (card for name, card in TEST_CARDS.items() if rest.startswith(name + "_")), None
        )

    def _test_result(self, *, object_id: str, key: str, amount: int, card: dict) -> ChargeResult:
        charge_id = "ch_sbx_" + hashlib.sha1(key.encode()).hexdigest()[:20]
        if not card["decline"]:
            with self._lock:
                self._paid[object_id] = True
            return ChargeResult(
                outcome="succeeded", amount=amount, decline=DeclineInfo(charge_id=charge_id)
            )
        return ChargeResult(
            outcome="failed",
            decline=DeclineInfo(
                decline_code=card["decline"],
                failure_code="card_declined",
                charge_id=charge_id,
                failure_message="Sandbox test card declined.",
            ),
        )

    def invoice_pay(self, *, invoice_id, idempotency_key, payment_method="", amount=0, hint=None):
        card = self._test_card(payment_method)
        if card is None:
            return super().invoice_pay(
                invoice_id=invoice_id,
                idempotency_key=idempotency_key,
                payment_method=payment_method,
                amount=amount,
                hint=hint,
            )
        return self._test_result(
            object_id=invoice_id, key=idempotency_key, amount=amount, card=card
        )

    def payment_intent_confirm(
        self, *, payment_intent_id, payment_method, idempotency_key, amount=0, hint=None
    ):
        card = self._test_card(payment_method)
        if card is None:
            return super().payment_intent_confirm(
                payment_intent_id=payment_intent_id,
                payment_method=payment_method,
                idempotency_key=idempotency_key,
                amount=amount,
                hint=hint,
            )
        return self._test_result(
            object_id=payment_intent_id, key=idempotency_key, amount=amount, card=card
        )

    def confirm_on_session(self, *, object_id: str) -> None:
        """The customer passed the (test) authentication: the payment is made."""
        with self._lock:
            self._paid[object_id] = True


def pay_visit_record(*, link: PayLink, now: dt.datetime) -> Message | None:
    """The customer opened the page through a message's link: that message's first visit
    (and first click, if no click was recorded) is now. The message is found from the
    token alone (`link_message`): only the link's own customer's messages in its own store
    can be credited. Idempotent; returns the message, or None."""
    message = link_message(link)
    if message is None or message.visited_at is not None:
        return message
    qs = Message.objects.filter(pk=message.pk)
    qs.filter(visited_at__isnull=True).update(visited_at=now)
    if message.clicked_at is None:
        qs.filter(clicked_at__isnull=True).update(clicked_at=now)
    return message


def pay_gateway(store: Store):
    if store.gateway == Store.Gateway.SANDBOX:
        return SandboxTestCardGateway.for_store(store)
    return gateway_for(store)


# ------------------------------------------------------------------ what the page shows


@dataclass
class PageState:
    """state: due | paid | processing | declined | scheduled | closed | saved."""

    state: str
    mode: str  # card_update | authentication
    case: RecoveryCase | None
    amount: str = ""
    product: str = ""
    order_note: str = ""
    card_last4: str = ""
    next_try: str = ""
    cases: list = field(default_factory=list)


def _focus_case(link: PayLink) -> RecoveryCase | None:
    if link.case is not None:
        return RecoveryCase.objects.select_related(
            "invoice", "subscription", "order", "store", "customer"
        ).get(pk=link.case.pk)
    return (
        commands.open_cases_for_customer(customer=link.customer)
        .exclude(track=Track.FRAUD)
        .select_related("invoice", "subscription", "order", "store", "customer")
        .order_by("window_end")
        .first()
    )


def pay_page_state(*, link: PayLink, now: dt.datetime) -> PageState:
    """What is true for this link right now, in the customer's terms."""
    customer = Customer.objects.select_related("default_payment_method").get(pk=link.customer.pk)
    case = _focus_case(link)
    mode = (
        "authentication"
        if case is not None and case.track == Track.AUTHENTICATION
        else "card_update"
    )
    _, last4 = selectors.card_on_file(customer=customer, case=case)
    state = PageState(state="due", mode=mode, case=case, card_last4=last4)
    tz = customer.time_zone or link.store.timezone
    if case is None:
        state.product = selectors._product(case=None, customer=customer)
        state.state = "saved" if _card_changed_recently(customer, now) else "due"
        return state
    state.amount = rendering.money(case.amount, case.currency)
    state.product = selectors._product(case=case, customer=customer)
    state.order_note, *_ = selectors._order_note(
        case=case, now=now, tz=tz, locale=customer.locale or "en"
    )
    if case.status == RecoveryCase.Status.RECOVERED:
        state.state = "paid"
    elif not case.is_open or customer.disputed_at or case.track == Track.FRAUD:
        state.state = "closed"
    elif case.inflight_key:
        state.state = "processing"
    else:
        last = case.attempts.order_by("-attempted_at", "-id").first()
        changed = case.card_changed_at
        if (
            last is not None
            and last.source in (PaymentAttempt.Source.CARD_UPDATE, PaymentAttempt.Source.CUSTOMER)
            and last.outcome == PaymentAttempt.Outcome.FAILED
            and now - last.attempted_at < dt.timedelta(hours=1)
        ):
            state.state = "declined"
        elif changed and case.retry_at and case.retry_at > now:
            state.state = "scheduled"
            state.next_try = rendering.day(case.retry_at, tz=tz, locale=customer.locale or "en")
    return state


def _card_changed_recently(customer: Customer, now: dt.datetime) -> bool:
    pm = customer.default_payment_method
    return bool(pm and pm.updated_at and now - pm.updated_at < dt.timedelta(minutes=30))


# ------------------------------------------------------------------ after a new card


def _card_saved(*, link: PayLink, pm_data: dict, now: dt.datetime, gateway) -> PaymentMethod:
    customer = link.customer
    with transaction.atomic():
        pm = payment_method_upsert(store=link.store, customer=customer, data=pm_data)
        payment_method_set_default(customer=customer, payment_method=pm)
    commands.customer_new_card_retry(
        customer=customer,
        at=now,
        gateway=gateway,
        message=f"The customer added {pm.brand.title() or 'a card'} •••• {pm.last4} on the pay page",
    )
    return pm


def pay_sandbox_card_submit(*, link: PayLink, card: str, now: dt.datetime) -> PaymentMethod:
    """Sandbox stores: the customer picked a test card on the labelled test form."""
    if link.store.gateway != Store.Gateway.SANDBOX:
        raise PayError("This store takes real cards; the test form is not available.")
    if card not in TEST_CARDS:
        raise PayError("Choose one of the test cards.")
    test = TEST_CARDS[card]
    pm_data = {
        "id": f"{TEST_PM_PREFIX}{card}_{secrets.token_hex(6)}",
        "object": "payment_method",
        "card": {
            "brand": "visa",
            "last4": test["last4"],
            "exp_month": 12,
            "exp_year": now.year + 3,
            "fingerprint": f"fp_sandbox_{card}_{link.customer.pk}",
        },
    }
    return _card_saved(link=link, pm_data=pm_data, now=now, gateway=pay_gateway(link.store))


def pay_sandbox_authentication_submit(*, link: PayLink, approve: bool, now: dt.datetime) -> bool:
    """Sandbox stores, authentication track: the customer passed (or failed) the test
    authentication. Returns whether the payment was made."""
    case = _focus_case(link)
    if case is None or not case.is_open or case.track != Track.AUTHENTICATION:
        return False
    if not approve:
        return False
    gateway = SandboxTestCardGateway.for_store(link.store)
    gateway.confirm_on_session(
        object_id=case.invoice.stripe_id if case.invoice_id else case.payment_intent_id
    )
    _paid_on_session(
        case=case,
        now=now,
        amount=case.amount,
        charge_id="ch_sbx_auth_" + secrets.token_hex(8),
    )
    return True


def _paid_on_session(*, case: RecoveryCase, now: dt.datetime, amount: int, charge_id: str) -> None:
    """The customer confirmed the payment on the page: recovery records it and closes the case."""
    commands.case_paid_on_session(case=case, at=now, amount=amount, charge_id=charge_id)


# ------------------------------------------------------------------ Stripe


def stripe_publishable_key(store: Store) -> str:
    conf = selectors.messaging_settings(store=store)
    return conf.stripe_publishable_key or getattr(settings, "STRIPE_PUBLISHABLE_KEY", "")


def _client(store: Store) -> stripe.StripeClient:
    return stripe_client(store)


def pay_setup_intent(*, link: PayLink) -> dict:
    """A SetupIntent for the Payment Element: {"client_secret", "id"}. Page reloads reuse
    it for a day (idempotency key from the token and the card on file)."""
    customer = link.customer
    key = hashlib.sha256(
        f"{link.token}:{customer.default_payment_method_id or 0}".encode()
    ).hexdigest()[:40]
    try:
        intent = _client(link.store).v1.setup_intents.create(
            {
                "customer": customer.stripe_id,
                "usage": "off_session",
                "automatic_payment_methods": {"enabled": True},
                "metadata": {
                    "recoup_customer": str(customer.pk),
                    "recoup_case": str(link.case.pk if link.case else ""),
                },
            },
            {"idempotency_key": f"recoup-setup-{key}"},
        )
    except stripe.StripeError as exc:
        logger.warning("SetupIntent for customer %s failed: %s", customer.pk, exc)
        raise PayError(
            "We couldn't reach our payment processor. Please try again shortly."
        ) from exc
    return {"id": intent.id, "client_secret": intent.client_secret}


def pay_stripe_setup_complete(*, link: PayLink, setup_intent_id: str, now: dt.datetime) -> str:
    """The Payment Element confirmed a SetupIntent. Checks it with Stripe (it must be this
    customer's, and succeeded), makes its payment method the default in Stripe and here,
    and retries the customer's open cases. Returns the SetupIntent's status."""
    client = _client(link.store)
    customer = link.customer
    try:
        intent = client.v1.setup_intents.retrieve(
            setup_intent_id, {"expand": ["payment_method"]}
        ).to_dict()
    except stripe.StripeError as exc:
        raise PayError("We couldn't confirm your card with our payment processor.") from exc
    if intent.get("customer") != customer.stripe_id:
        raise PayError("This card setup does not belong to this link.")
    status = str(intent.get("status") or "")
    if status == "processing":
        return status
    if status != "succeeded":
        raise PayError("Your card wasn't saved. Please try again or use another card.")
    pm = intent.get("payment_method") or {}
    if isinstance(pm, str):
        pm = client.v1.payment_methods.retrieve(pm).to_dict()
    try:
        client.v1.customers.update(
            customer.stripe_id, {"invoice_settings": {"default_payment_method": pm["id"]}}
        )
        for sub in Subscription.objects.filter(customer=customer).exclude(
            status__in=[Subscription.Status.CANCELED, Subscription.Status.INCOMPLETE_EXPIRED]
        ):
            client.v1.subscriptions.update(sub.stripe_id, {"default_payment_method": pm["id"]})
    except stripe.StripeError as exc:
        logger.warning("making %s the default for %s failed: %s", pm.get("id"), customer.pk, exc)
        raise PayError(
            "Your card was saved, but we couldn't make it your default yet. Please try again."
        ) from exc
    _card_saved(link=link, pm_data=pm, now=now, gateway=pay_gateway(link.store))
    return status


def _case_payment_intent_id(case: RecoveryCase) -> str:
    return case.payment_intent_id or (case.invoice.payment_intent_id if case.invoice_id else "")


def pay_payment_intent(*, link: PayLink) -> dict:
    """Authentication track: the case's PaymentIntent for on-session confirmation:
    {"id", "client_secret", "status"}."""
    case = _focus_case(link)
    pi_id = _case_payment_intent_id(case) if case else ""
    if not pi_id:
        raise PayError("There is no payment to confirm on this link.")
    try:
        intent = _client(link.store).v1.payment_intents.retrieve(pi_id)
    except stripe.StripeError as exc:
        raise PayError(
            "We couldn't reach our payment processor. Please try again shortly."
        ) from exc
    return {"id": intent.id, "client_secret": intent.client_secret, "status": intent.status}


def pay_stripe_payment_complete(*, link: PayLink, payment_intent_id: str, now: dt.datetime) -> str:
    """The customer confirmed the case's PaymentIntent on-session. Reads it back from
    Stripe; when it succeeded, records the payment and closes the case. Returns its
    status."""
    case = _focus_case(link)
    if case is None or _case_payment_intent_id(case) != payment_intent_id:
        raise PayError("This payment does not belong to this link.")
    try:
        intent = _client(link.store).v1.payment_intents.retrieve(payment_intent_id).to_dict()
    except stripe.StripeError as exc:
        raise PayError("We couldn't confirm the payment with our payment processor.") from exc
    status = str(intent.get("status") or "")
    if status == "succeeded":
        charge = intent.get("latest_charge")
        _paid_on_session(
            case=case,
            now=now,
            amount=int(intent.get("amount_received") or case.amount),
            charge_id=(charge.get("id") if isinstance(charge, dict) else charge) or "",
        )
    return status


# ------------------------------------------------------------------ fresh links


def pay_fresh_link_send(
    *, customer: Customer, case: RecoveryCase | None, now: dt.datetime
) -> Message | None:
    """Send a fresh link to the contact details on file (never to an address typed on
    the page). At most one an hour per customer (idempotency key)."""
    from .sending import message_send

    if customer.disputed_at:
        return None
    if case is not None and not case.is_open:
        case = None
    channel = Channel.EMAIL
    if not customer.email or customer.email_opt_out:
        if not (customer.sms_opt_in and customer.phone):
            return None
        channel = Channel.SMS
    return message_send(
        store=customer.store,
        customer=customer,
        case=case,
        purpose=Purpose.FRESH_LINK,
        channel=channel,
        at=now,
        idempotency_key=f"fresh:{customer.pk}:{now:%Y%m%d%H}",
        actor="customer",
    )
