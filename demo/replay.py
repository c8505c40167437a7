"""The demo store: a coffee subscription shop replayed through the real code paths.

`demo_seed` creates "Bean Box Coffee (demo)" with a catalogue, 2,000 customers with
subscriptions, cards and orders, then replays 90 days of billing in simulated time
(time_machine), ending now:

- the store's existing customers (who joined before the period), with their cards and
  subscriptions, enter at once through `subscriptions.services.customers_import`, as when
  a store connects; those who join during the period through the services the Stripe
  intake uses (`customer_upsert`, `payment_method_upsert`, `subscription_upsert`). Some
  ticked the SMS box at signup: `messaging.consent.consent_sms_signup` records that
  consent, so opted-in customers get texts as well as email. The catalogue and every
  order go through `skus_upsert` and `order_upsert`, as the merchant's API would;
- every payment outcome reaches Recoup as a Stripe-shaped event (built from Stripe's own
  example objects in `demo_stripe_objects.json`), signed, verified, stored and processed
  by `recovery.intake` exactly as the webhook and its worker do: failed renewals
  (`invoice.payment_failed`, `invoice.payment_action_required`: as Stripe's, they carry
  no decline; the demo's Stripe records each invoice's PaymentIntent and Charge with
  `sandbox_payment_record` first, and the worker reads the decline back from the
  sandbox, `recovery.lookups.decline_lookups_run`), one-off order payments
  (`payment_intent.succeeded` / `.payment_failed`), Stripe's own Smart Retries
  (`invoice.payment_failed` / `invoice.paid`), card-updater refreshes
  (`payment_method.automatically_updated`) and disputes (`charge.dispute.created`);
- Recoup's retries, messages, step-downs, holds and closings come from the scheduler
  itself (`recovery.scheduler.run_due(now=...)`), run whenever a case is due (and at least
  once a simulated day, for pre-dunning and hold expiry); the sandbox issuer decides every
  retry (`demo.simulation.SimulationGateway`: the sandbox's approval model, keyed by
  invoice so a seed gives the same history on any database);
- customers react to what Recoup sent them: after a message is due (or a pre-dunning
  warning), some of them save a new card on the pay page, which goes through the services
  the pay page uses (`payment_method_upsert(make_default=True)` and
  `engine.customer_card_changed`);
- the escalation queue is alive: a few wholesale cafés pay over the store's high-value
  MRR threshold; after a failed payment some customers look at the pricing and cancel
  pages and downgrade or set their subscription to cancel at period end (Stripe's
  `customer.subscription.updated`, then the signals the merchant posts, recorded by
  `support.services.customer_signal_record` as the signals API does), and some answer a
  dunning email (`case_customer_replied`). The demo's `agent` works the queue a few
  working hours after each item enters, with the services behind the queue's buttons
  (claim, note, promise to pay, offer, personal email, charge now, lost, hand back);
  customers keep or break their promises. Each scheduler pass is followed by the
  worker's `support.services.support_pass`, so the seed ends as the worker would leave it.

Nothing is written around the services, so every number on the dashboard is one the
product produced. What the replay does not import: renewals and orders whose first charge
succeeded without Recoup's help (Recoup has nothing to do for them), except one-off
orders, whose paid payments commit stock.

Deterministic with a seed: the same seed gives the same history. Messages are recorded as
sent but not printed (locmem email/SMS backends during the replay).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min, Sum
from django.test.utils import override_settings
from django.utils import timezone

from analytics.services import rollup_refresh
from common.crypto import fernet
from common.errors import ApplicationError
from messaging import sms
from messaging.consent import consent_sms_signup
from messaging.links import LinkRefused, pay_link_resolve
from messaging.models import Message
from messaging.paypage import pay_visit_record
from orders.models import SKU, InventoryHold, Order
from orders.services import LineInput, SkuInput, order_upsert, skus_upsert
from recovery import commands, engine
from recovery.domain import declines, timing
from recovery.gateways.sandbox import Hint, sandbox_payment_record
from recovery.intake import stripe_event_process, stripe_event_store, stripe_event_verify
from recovery.lookups import decline_lookups_run
from recovery.models import (
    CaseEvent,
    ExpiryWarning,
    PaymentAttempt,
    RecoveryCase,
    StripeEvent,
    Track,
)
from recovery.scheduler import run_due
from recovery.services import open_cases_for_customer, retry_policy_update
from stores.models import ApiToken, Store
from stores.services import api_token_create, membership_create, store_create
from subscriptions import services as subs
from subscriptions.models import Customer, Invoice, Subscription
from support.models import QueueItem
from support.selectors import ACTIVE as ACTIVE_QUEUE
from support.services import (
    case_customer_replied,
    customer_signal_record,
    queue_item_claim,
    queue_item_return_to_automation,
    queue_outcome_email,
    queue_outcome_lost,
    queue_outcome_offer,
    queue_outcome_promise,
    queue_outcome_recovered,
    support_pass,
)

logger = logging.getLogger(__name__)

DEMO_STORE_NAME = "Bean Box Coffee (demo)"
DEMO_PASSWORD = "recoup-demo"
DEMO_TOKEN_NAME = "demo"
DEFAULT_CUSTOMERS = 2000
DEFAULT_DAYS = 90
DEFAULT_SEED = 7

PASS_GRID = dt.timedelta(hours=1)  # passes on the hour: late by less than the engine DUE_GRACE
HEARTBEAT = dt.timedelta(hours=24)  # at least one pass a day: pre-dunning, hold expiry


# ---------------------------------------------------------------- the shop


@dataclass(frozen=True)
class Plan:
    key: str
    product: str
    nickname: str
    amount: int
    interval: str
    interval_count: int
    sku: str
    quantity: int
    weight: float


PLANS = [
    Plan("club-1", "Coffee Club", "1 bag a month", 1800, "month", 1, "BEAN-HOUSE-250", 1, 40),
    Plan("club-2", "Coffee Club", "2 bags a month", 3200, "month", 1, "BEAN-ETH-250", 2, 22),
    Plan("espresso", "Espresso Lovers", "every 2 weeks", 1600, "week", 2, "BEAN-ESP-500", 1, 14),
    Plan("decaf", "Decaf Club", "1 bag a month", 1800, "month", 1, "BEAN-DECAF-250", 1, 6),
    Plan("office", "Office Pack", "2 kg a month", 8900, "month", 1, "BEAN-OFFICE-1000", 2, 8),
    Plan("annual", "Coffee Club", "12 bags a year", 19000, "year", 1, "BEAN-HOUSE-250", 1, 10),
]

# (code, title, on hand, preorder, low-stock threshold, unit price)
CATALOGUE = [
    ("BEAN-HOUSE-250", "House Blend, 250 g", 1400, False, 40, 1600),
    ("BEAN-ETH-250", "Ethiopia Guji, 250 g", 900, False, 30, 1900),
    ("BEAN-ESP-500", "Espresso Forte, 500 g", 600, False, 25, 2400),
    ("BEAN-DECAF-250", "Swiss Water Decaf, 250 g", 70, False, 15, 1700),
    ("BEAN-OFFICE-1000", "Office Blend, 1 kg", 260, False, 20, 4200),
    ("BEAN-GESHA-100", "Panama Gesha micro-lot, 100 g", 14, False, 5, 3800),
    ("GEAR-GRINDER", "Hand grinder, steel burrs", 9, False, 4, 8900),
    ("GEAR-V60", "V60 dripper", 45, False, 8, 2600),
    ("GEAR-FILTERS", "Paper filters, 100", 320, False, 30, 600),
    ("MUG-ENAMEL", "Enamel mug", 28, False, 6, 1400),
    ("PRE-HOLIDAY-500", "Holiday Reserve 500 g (preorder, ships in December)", 120, True, 0, 3400),
]
# One-off orders: what people buy besides their subscription (weights).
SHOP_BASKETS = [
    ([("BEAN-ETH-250", 1)], 20),
    ([("BEAN-HOUSE-250", 2)], 14),
    ([("GEAR-FILTERS", 2)], 12),
    ([("GEAR-V60", 1), ("GEAR-FILTERS", 1)], 8),
    ([("MUG-ENAMEL", 2)], 7),
    ([("BEAN-GESHA-100", 1)], 6),
    ([("GEAR-GRINDER", 1)], 5),
    ([("BEAN-DECAF-250", 1)], 5),
    ([("PRE-HOLIDAY-500", 1)], 12),
    ([("PRE-HOLIDAY-500", 2), ("MUG-ENAMEL", 1)], 3),
]
SHOP_ORDERS_PER_CUSTOMER = 0.08  # one-off orders per customer over the period
SHOP_ORDER_FAILURE = 0.10  # charged off-session at dispatch, some decline

# Decline codes of failed renewals (DOMAIN.md's mix: mostly insufficient funds and generic
# declines, then card data, lost/stolen, authentication, a little fraud). Expired cards
# also fail on their own, when a card reaches its expiry before anyone replaced it.
DECLINE_MIX: list[tuple[tuple[str, str], float]] = [
    (("insufficient_funds", ""), 32),
    (("do_not_honor", ""), 12),
    (("generic_decline", ""), 12),
    (("try_again_later", ""), 5),
    (("processing_error", ""), 2),
    (("card_velocity_exceeded", ""), 2),
    (("expired_card", ""), 3),
    (("incorrect_cvc", ""), 3),
    (("incorrect_number", ""), 1),
    (("card_not_supported", ""), 1),
    (("lost_card", ""), 2),
    (("stolen_card", ""), 1.5),
    (("pickup_card", ""), 1),
    (("restricted_card", ""), 1),
    (("generic_decline", "do_not_try_again"), 1.5),
    (("fraudulent", ""), 1.2),
    (("merchant_blacklist", ""), 0.3),
    (("authentication_required", ""), 6),
]
RENEWAL_FAILURE = 0.04  # base chance that a renewal's first charge fails
# The period's first failures show every track once, so even a small demo has them all.
SHOWCASE = [
    ("insufficient_funds", ""),
    ("expired_card", ""),
    ("lost_card", ""),
    ("authentication_required", ""),
    ("fraudulent", ""),
    ("do_not_honor", ""),
]
RISKY_SHARE, RISKY_FACTOR = 0.10, 3.0  # a few customers fail far more often
SMS_CONSENT = 0.45  # customers with a phone who agree to payment texts at signup
SMS_CONSENT_TEXT = "Ticked 'Text me about my orders and payments' at checkout"
STRIPE_SMART_RETRY = 0.15  # soft failures where Stripe's own retry is also scheduled
DISPUTE_SHARE = 0.01  # failures followed by a dispute on the customer's earlier charge
# After a failure, the card updater sometimes delivers a new card on its own.
UPDATER_AFTER = {"expired_card": 0.4, "lost_card": 0.25, "stolen_card": 0.25, "pickup_card": 0.15}
UPDATER_BEFORE_EXPIRY = 0.35  # expiring cards refreshed by the updater before they lapse
# Chance that a customer saves a new card on the pay page after a message of this purpose.
REACTION = {
    "card_update_request": 0.30,
    "authentication_request": 0.42,
    "soft_first_notice": 0.10,
    "soft_reminder": 0.08,
    "shipment_at_risk": 0.14,
    "final_notice": 0.18,
    "predunning_expiry": 0.33,
}
# High-value accounts: a few cafés buy wholesale, an MRR over the store's high-value
# threshold (Store.high_value_mrr_threshold, $500 by default). Drawn by a generator of
# their own, so the rest of the plan stays as it was; their business cards run into
# limits more often (risky). The first of their renewals in the period fails, so even a
# small demo has a high-value case in the queue.
WHOLESALE = Plan(
    "wholesale", "Café Wholesale", "12 kg a month", 62000, "month", 1, "BEAN-OFFICE-1000", 12, 0
)
WHOLESALE_SHARE = 0.03
# After a failed renewal some customers think of leaving: they look at the pricing and
# cancellation pages (the merchant's site posts these as churn signals, as
# POST /api/v1/customers/<id>/signals does), and either set the subscription to cancel
# at the end of the period or downgrade it (in Stripe). The first failure after the
# showcase always does, so a small demo has one too.
CHURN_AFTER_FAILURE = 0.25
CHURN_DOWNGRADE = 0.4  # of them, those who downgrade rather than cancel (when they can)
DOWNGRADE_TO = {"club-2": "club-1", "office": "club-2", "wholesale": "office"}
# The demo's agent works the escalation queue: picks an item up a few hours after it
# entered (within working hours, store time), claims it, notes what they did, then
# promises, offers, personal emails, charges and outcomes as the queue's buttons do.
AGENT_USERNAME = "agent"
AGENT_HOURS = (8, 19)  # working day, the store's time zone; Monday to Saturday
AGENT_PICKUP_MEDIAN_HOURS = (3.0, 18.0)  # high-value items first, then the rest
AGENT_PICKUP_MAX_HOURS = 96.0
# Some customers answer a dunning email (support.services.case_customer_replied, as
# messaging reports a reply): a person reads it.
REPLY = {
    "soft_first_notice": 0.06,
    "soft_reminder": 0.06,
    "final_notice": 0.08,
    "card_update_request": 0.05,
}
REPLIES = [
    "Sorry about this, I get paid on Friday. Can you wait until then?",
    "My bank blocked it, I'll call them tomorrow.",
    "Is there a way to pause instead? Money is tight this month.",
    "Please try again next week, thanks.",
    "I didn't know the card had a problem. What do I need to do?",
]
AGENT_COUPON = "STAY20"
# The last day of the replay: a few customers with an open case answer an email or look
# at leaving, hours before "now". The agent has not got to all of them yet, so "Needs an
# agent" shows what arrives in a working day, at its real ages (hours before the end).
RECENT_QUEUE = [(20.0, "reply"), (11.0, "churn"), (6.5, "reply"), (2.5, "churn"), (1.2, "reply")]
BRANDS = [("visa", 0.58), ("mastercard", 0.34), ("amex", 0.08)]
ZONES = [
    ("America/New_York", 0.28),
    ("America/Chicago", 0.14),
    ("America/Denver", 0.05),
    ("America/Los_Angeles", 0.18),
    ("Europe/London", 0.13),
    ("Europe/Berlin", 0.14),
    ("Australia/Sydney", 0.08),
]
FIRST_NAMES = (
    "Olivia Liam Emma Noah Ava Oliver Sophia Elijah Mia Lucas Amelia Mateo Harper Levi "
    "Evelyn Ezra Luna Leo Aria Jack Ella Hudson Nora Theo Zoe Kai Lily Omar Priya Arjun "
    "Mei Hiro Sofia Diego Ines Lars Freya Jonas Lea Tomás Aisha Yusuf Chloé Hugo Greta "
    "Anika Felix Maya Ravi Sara"
).split()
LAST_NAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Lopez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Clark Lewis Walker Hall Young King Wright Scott Green Baker Adams Nelson Hill "
    "Campbell Mitchell Roberts Carter Phillips Evans Turner Müller Schmidt Rossi Dubois "
    "Nakamura Kim Patel Singh Okafor Silva"
).split()


def _pick(rng: random.Random, table):
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights=weights, k=1)[0]


# Numbers 555-0100 to 555-0199 of every North American area code are kept for fiction:
# valid to libphonenumber (Recoup stores phones in E.164 and drops invalid ones), they
# reach no one. 100 a code: one number per customer for the first 2,400.
_AREA_CODES = (201, 202, 212, 213, 303, 305, 312, 404, 415, 503, 512, 602)
_AREA_CODES += (617, 702, 713, 718, 773, 804, 808, 904, 907, 919, 971, 984)


def _fictional_phone(index: int, rng: random.Random) -> str:
    rng.randint(0, 9_999_999)  # the draw the demo made here before: the replay stays the same
    area = _AREA_CODES[index // 100 % len(_AREA_CODES)]
    return f"+1{area}555{100 + index % 100:04d}"


def _month_end(year: int, month: int) -> dt.date:
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    return nxt - dt.timedelta(days=1)


def _add_interval(at: dt.datetime, plan: Plan) -> dt.datetime:
    if plan.interval == "week":
        return at + dt.timedelta(weeks=plan.interval_count)
    if plan.interval == "year":
        return at.replace(year=at.year + plan.interval_count)
    month = at.month - 1 + plan.interval_count
    year, month = at.year + month // 12, month % 12 + 1
    return at.replace(year=year, month=month, day=min(at.day, 28))


# ---------------------------------------------------------------- the people


@dataclass
class Card:
    pm_id: str
    brand: str
    last4: str
    fingerprint: str
    exp_month: int
    exp_year: int

    def expires_on(self) -> dt.date:
        return _month_end(self.exp_year, self.exp_month)


@dataclass
class Person:
    index: int
    stripe_id: str
    name: str
    email: str
    phone: str
    time_zone: str
    joined: dt.datetime
    plan: Plan
    card: Card
    risky: bool
    sms_consent: bool = False  # ticked "text me about my payments" at signup
    generation: int = 0
    renewals: int = 0

    @property
    def sub_id(self) -> str:
        return f"sub_demo_{self.index:05d}"

    def new_card(self, rng: random.Random, at: dt.datetime, *, same_number: bool) -> Card:
        """The card after a refresh (same number: new expiry) or a replacement."""
        self.generation += 1
        years = rng.randint(3, 5)
        card = Card(
            pm_id=self.card.pm_id if same_number else f"pm_demo_{self.index:05d}_{self.generation}",
            brand=self.card.brand if same_number else _pick(rng, BRANDS),
            last4=self.card.last4 if same_number else f"{rng.randint(0, 9999):04d}",
            fingerprint=self.card.fingerprint
            if same_number
            else f"fp{self.index:05d}g{self.generation}",
            exp_month=rng.randint(1, 12),
            exp_year=at.year + years,
        )
        self.card = card
        return card


@dataclass(order=True)
class Happening:
    at: dt.datetime
    seq: int
    kind: str = field(compare=False)
    data: dict = field(compare=False, default_factory=dict)


# ---------------------------------------------------------------- Stripe-shaped objects


@cache
def _stripe_objects() -> dict[str, str]:
    # Stripe's example objects (stripe/openapi fixtures3.json, as in tests/fixtures/stripe):
    # each payload starts from one and sets what the scenario needs, never a made-up shape.
    # Kept as JSON text: a fresh copy from json.loads is several times faster than deepcopy.
    objects = json.loads((Path(__file__).parent / "demo_stripe_objects.json").read_text())
    return {kind: json.dumps(data) for kind, data in objects.items()}


def _obj(kind: str, **fields) -> dict:
    data = json.loads(_stripe_objects()[kind])
    data.update(fields)
    return data


def _ts(at: dt.datetime) -> int:
    return int(at.timestamp())


def _card_json(card: Card) -> dict:
    return {
        "brand": card.brand,
        "display_brand": card.brand,
        "country": "US",
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "fingerprint": card.fingerprint,
        "funding": "credit",
        "last4": card.last4,
        "checks": {
            "address_line1_check": None,
            "address_postal_code_check": None,
            "cvc_check": "pass",
        },
        "networks": {"available": [card.brand], "preferred": None},
        "wallet": None,
    }


def _payment_method(person: Person, card: Card, at: dt.datetime) -> dict:
    pm = _obj(
        "payment_method",
        id=card.pm_id,
        customer=person.stripe_id,
        created=_ts(at),
        metadata={},
        card=_card_json(card),
    )
    pm["billing_details"].update(email=person.email, name=person.name, phone=person.phone)
    return pm


_ERROR_CODES = {
    "expired_card": "expired_card",
    "incorrect_cvc": "incorrect_cvc",
    "incorrect_number": "incorrect_number",
    "processing_error": "processing_error",
    "authentication_required": "authentication_required",
}


# The network's response code that comes with an issuer's decline (ISO 8583, as Visa and
# Mastercard send them; Stripe reports it as `network_decline_code`). None of these makes
# a decline stricter than its code already is (recovery.declines: Visa's category 1).
_NETWORK_DECLINE_CODES = {
    "insufficient_funds": "51",
    "do_not_honor": "05",
    "generic_decline": "05",
    "try_again_later": "19",
    "processing_error": "96",
    "card_velocity_exceeded": "61",
    "expired_card": "54",
    "incorrect_cvc": "N7",
    "incorrect_number": "14",
    "card_not_supported": "57",
    "lost_card": "41",
    "stolen_card": "43",
    "pickup_card": "04",
    "restricted_card": "62",
    "fraudulent": "59",
    "authentication_required": "1A",
}


def _network_codes(card: Card, decline: tuple[str, str]) -> tuple[str | None, str | None]:
    """(network_decline_code, network_advice_code) of a decline on this card: Visa and
    Mastercard report a response code (American Express none here); Mastercard adds its
    merchant advice code 03 ("do not try again") where the issuer advises so."""
    code, advice = decline
    if card.brand not in ("visa", "mastercard"):
        return None, None
    network_advice = "03" if card.brand == "mastercard" and advice == "do_not_try_again" else None
    return _NETWORK_DECLINE_CODES.get(code), network_advice


def _charge(
    *,
    charge_id: str,
    pi_id: str,
    person: Person,
    amount: int,
    at: dt.datetime,
    decline: tuple[str, str] | None,
    description: str,
) -> dict:
    """The Charge of one payment attempt as Stripe holds it (what `latest_charge` expands
    to): the issuer's outcome with its network codes, and the card it was made on."""
    card = person.card
    code, advice = decline or ("", "")
    network_decline, network_advice = _network_codes(card, decline) if decline else (None, None)
    details = _card_json(card)
    details.update(network=card.brand, three_d_secure=None, wallet=None)
    return _obj(
        "charge",
        id=charge_id,
        amount=amount,
        amount_captured=0 if decline else amount,
        captured=not decline,
        paid=not decline,
        status="failed" if decline else "succeeded",
        currency="usd",
        created=_ts(at),
        customer=person.stripe_id,
        description=description,
        payment_intent=pi_id,
        payment_method=card.pm_id,
        failure_code=_ERROR_CODES.get(code, "card_declined") if decline else None,
        failure_message="Your card was declined." if decline else None,
        balance_transaction=None,
        receipt_url=None,
        source=None,
        billing_details={
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": person.email,
            "name": person.name,
            "phone": person.phone or None,
            "tax_id": None,
        },
        outcome={
            "type": "issuer_declined",
            "reason": code,
            "advice_code": advice or None,
            "network_advice_code": network_advice,
            "network_decline_code": network_decline,
            "network_status": "declined_by_network",
            "risk_level": "normal",
            "seller_message": "The bank did not return any further details with this decline.",
        }
        if decline
        else {
            "type": "authorized",
            "reason": None,
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "risk_level": "normal",
            "seller_message": "Payment complete.",
        },
        payment_method_details={"type": "card", "card": details},
    )


def _payment_intent(
    *,
    pi_id: str,
    person: Person,
    amount: int,
    at: dt.datetime,
    charge_id: str,
    decline: tuple[str, str] | None,
    description: str,
    metadata: dict | None = None,
) -> dict:
    """A PaymentIntent as its `payment_intent.*` events carry it (`latest_charge` an id,
    no `invoice`: PaymentIntents have none)."""
    code, advice = decline or ("", "")
    network_decline, network_advice = (
        _network_codes(person.card, decline) if decline else (None, None)
    )
    status = "succeeded"
    if decline:
        status = (
            "requires_action" if code == "authentication_required" else "requires_payment_method"
        )
    return _obj(
        "payment_intent",
        id=pi_id,
        amount=amount,
        amount_received=0 if decline else amount,
        currency="usd",
        created=_ts(at),
        customer=person.stripe_id,
        description=description,
        metadata=metadata or {},
        status=status,
        latest_charge=charge_id,
        payment_method=person.card.pm_id,
        canceled_at=None,
        next_action=None,
        client_secret=f"{pi_id}_secret_demo",
        last_payment_error={
            "type": "card_error",
            "code": _ERROR_CODES.get(code, "card_declined"),
            "decline_code": code,
            "advice_code": advice or None,
            "network_advice_code": network_advice,
            "network_decline_code": network_decline,
            "message": "Your card was declined.",
            "charge": charge_id,
            "payment_method": _payment_method(person, person.card, at),
        }
        if decline
        else None,
    )


def _invoice(
    *,
    inv_id: str,
    person: Person,
    amount: int,
    at: dt.datetime,
    attempt_count: int,
    status: str,
    order_number: str,
    next_payment_attempt: dt.datetime | None,
) -> dict:
    """An invoice as its webhook events carry it: no `payments` (an includable field, in
    no webhook), so no word of why its payment failed. Its PaymentIntent is what the
    demo's Stripe knows (`Replay.stripe_knows`), read back as for a real store."""
    plan = person.plan
    inv = _obj(
        "invoice",
        id=inv_id,
        customer=person.stripe_id,
        customer_email=person.email,
        customer_name=person.name,
        customer_phone=person.phone or None,
        amount_due=amount,
        amount_paid=amount if status == "paid" else 0,
        amount_remaining=0 if status == "paid" else amount,
        amount_overpaid=0,
        subtotal=amount,
        total=amount,
        currency="usd",
        created=_ts(at),
        status=status,
        attempted=True,
        attempt_count=attempt_count,
        auto_advance=True,
        billing_reason="subscription_cycle",
        next_payment_attempt=_ts(next_payment_attempt) if next_payment_attempt else None,
        metadata={"order_id": order_number},
        last_finalization_error=None,
        from_invoice=None,
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": person.sub_id},
        },
    )
    line = inv["lines"]["data"][0]
    line.update(
        amount=amount,
        subtotal=amount,
        invoice=inv_id,
        id=f"il_{inv_id[3:]}",
        description=f"1 × {plan.product}, {plan.nickname} (at ${amount / 100:.2f})",
        period={"start": _ts(at), "end": _ts(_add_interval(at, plan))},
    )
    return inv


def _subscription(person: Person, at: dt.datetime) -> dict:
    plan = person.plan
    end = _add_interval(at, plan)
    item = {
        "id": f"si_demo_{person.index:05d}",
        "object": "subscription_item",
        "created": _ts(at),
        "current_period_start": _ts(at),
        "current_period_end": _ts(end),
        "metadata": {},
        "quantity": 1,
        "price": {
            "id": f"price_demo_{plan.key}",
            "object": "price",
            "active": True,
            "currency": "usd",
            "nickname": plan.nickname,
            "product": {"id": f"prod_demo_{plan.key}", "object": "product", "name": plan.product},
            "recurring": {
                "interval": plan.interval,
                "interval_count": plan.interval_count,
                "usage_type": "licensed",
            },
            "type": "recurring",
            "unit_amount": plan.amount,
        },
    }
    return _obj(
        "subscription",
        id=person.sub_id,
        customer=person.stripe_id,
        status="active",
        created=_ts(at),
        start_date=_ts(at),
        billing_cycle_anchor=_ts(at),
        cancel_at=None,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        currency="usd",
        default_payment_method=person.card.pm_id,
        metadata={"product_name": plan.product},
        items={"object": "list", "data": [item], "has_more": False},
    )


# ---------------------------------------------------------------- the plan


@dataclass
class DemoPlan:
    seed: int
    start: dt.datetime
    end: dt.datetime
    failure_rate: float
    people: list[Person]
    happenings: list[Happening]


def demo_plan(
    *,
    seed: int,
    customers: int,
    days: int,
    end: dt.datetime,
    failure_rate: float = RENEWAL_FAILURE,
) -> DemoPlan:
    """Draw the people and what will happen to them (pure: no database)."""
    rng = random.Random(f"recoup-demo:{seed}")
    consent_rng = random.Random(f"recoup-demo-sms:{seed}")  # leaves the rest of the plan as is
    wholesale = set(
        random.Random(f"recoup-demo-wholesale:{seed}").sample(
            range(customers), min(customers, max(2, round(customers * WHOLESALE_SHARE)))
        )
    )
    start = end - dt.timedelta(days=days)
    people: list[Person] = []
    happenings: list[Happening] = []
    seq = 0

    def add(at: dt.datetime, kind: str, **data) -> None:
        nonlocal seq
        seq += 1
        happenings.append(Happening(at.replace(microsecond=0), seq, kind, data))

    for i in range(customers):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        plan = _pick(rng, [(p, p.weight) for p in PLANS])
        if i in wholesale:
            plan = WHOLESALE
        # Tenure: a few weeks to four years; about one in eight joins during the period.
        if rng.random() < 0.12:
            joined = start + dt.timedelta(seconds=rng.uniform(0, days * 86400 * 0.9))
        else:
            joined = start - dt.timedelta(
                days=_pick(
                    rng,
                    [
                        (rng.uniform(10, 90), 0.25),
                        (rng.uniform(90, 400), 0.4),
                        (rng.uniform(400, 1500), 0.35),
                    ],
                )
            )
        joined = joined.replace(second=0, microsecond=0)
        # Card expiry: most a year or more away, a few expiring within the period.
        if rng.random() < 0.07:
            exp_day = start.date() + dt.timedelta(days=rng.uniform(10, days + 45))
        else:
            exp_day = end.date() + dt.timedelta(days=rng.uniform(120, 4 * 365))
        brand = _pick(rng, BRANDS)
        person = Person(
            index=i,
            stripe_id=f"cus_demo_{i:05d}",
            name=f"{first} {last}",
            email=f"{first}.{last}.{i}@example.com".lower()
            .replace("é", "e")
            .replace("ü", "u")
            .replace("á", "a"),
            phone=_fictional_phone(i, rng) if rng.random() < 0.55 else "",
            time_zone=_pick(rng, ZONES),
            joined=joined,
            plan=plan,
            card=Card(
                pm_id=f"pm_demo_{i:05d}_0",
                brand=brand,
                last4=f"{rng.randint(0, 9999):04d}",
                fingerprint=f"fp{i:05d}g0",
                exp_month=exp_day.month,
                exp_year=exp_day.year,
            ),
            risky=rng.random() < RISKY_SHARE or i in wholesale,
        )
        person.sms_consent = consent_rng.random() < SMS_CONSENT and bool(person.phone)
        people.append(person)
        add(joined, "join", person=i)
        # Renewals inside the period, on the subscription's own cycle.
        renewal = _add_interval(joined, plan)
        while renewal < start:
            renewal = _add_interval(renewal, plan)
        while renewal < end:
            add(renewal, "renewal", person=i)
            renewal = _add_interval(renewal, plan)
        # A card expiring during the period may be refreshed by the updater beforehand.
        expires = person.card.expires_on()
        if start.date() <= expires <= end.date() and rng.random() < UPDATER_BEFORE_EXPIRY:
            before = dt.datetime.combine(expires, dt.time(9, tzinfo=dt.UTC)) - dt.timedelta(
                days=rng.uniform(2, 25)
            )
            at = max(before, start, joined + dt.timedelta(hours=1))
            add(at, "updater", person=i, card=0, generation=0)
        # One-off shop orders (charged off-session at dispatch).
        orders = int(SHOP_ORDERS_PER_CUSTOMER) + (rng.random() < SHOP_ORDERS_PER_CUSTOMER % 1)
        for k in range(orders):
            at = max(start, joined) + dt.timedelta(
                seconds=rng.uniform(0, (end - max(start, joined)).total_seconds())
            )
            add(at, "order", person=i, n=k)
    # The merchant restocks the scarce items once, mid-period.
    add(start + dt.timedelta(days=days * 0.55, hours=9), "restock", sku="BEAN-GESHA-100", units=12)
    add(start + dt.timedelta(days=days * 0.6, hours=9), "restock", sku="GEAR-GRINDER", units=6)
    happenings.sort()
    return DemoPlan(seed, start, end, failure_rate, people, happenings)


# ---------------------------------------------------------------- the replay


@dataclass
class DemoSummary:
    store: Store
    seconds: float
    events: dict
    text: str
    counts: dict = field(default_factory=dict)
    timing: str = ""


class _ErrorLog(logging.Handler):
    """Counts the errors the engine, scheduler and intake log during the replay."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self.first.append(text)


def quiet_messaging_settings() -> dict:
    """Settings that record messages as sent without printing them (locmem backends)."""
    overrides: dict = {"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}
    sms = getattr(settings, "SMS_BACKEND", "")
    if sms:
        from django.utils.module_loading import import_string

        for candidate in (
            getattr(settings, "SMS_LOCMEM_BACKEND", ""),
            sms.replace("console", "locmem").replace("Console", "Locmem"),
        ):
            if not candidate:
                continue
            try:
                import_string(candidate)
            except ImportError:
                continue
            overrides["SMS_BACKEND"] = candidate
            break
    return overrides


class Progress:
    """A plain-stdout progress bar (redrawn in place on a terminal, a line per 10% otherwise)."""

    WIDTH = 30

    def __init__(self, out, label: str):
        self.out, self.label = out, label
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.last_tenth = -1

    def update(self, fraction: float, note: str = "") -> None:
        if self.out is None:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(self.WIDTH * fraction)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = (
            f"{self.label} [{bar}] {fraction * 100:5.1f}%  {note}  "
            f"{time.perf_counter() - self.started:5.1f} s"
        )
        if self.tty:
            self.out.write("\r" + line.ljust(100))
            self.out.flush()
        elif int(fraction * 10) > self.last_tenth:
            self.last_tenth = int(fraction * 10)
            self.out.write(line + "\n")
            self.out.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def done(self) -> None:
        if self.out is not None and self.tty:
            self.out.write("\n")
            self.out.flush()


class Replay:
    """Plays a DemoPlan into a store through the real services, in simulated time."""

    def __init__(
        self, store: Store, plan: DemoPlan, *, traveller, now: dt.datetime, out=None, agent=None
    ):
        from demo.simulation import SimulationGateway

        self.store, self.plan, self.traveller = store, plan, traveller
        self.agent = agent  # the demo's agent user, who works the queue (None: nobody does)
        self.rng = random.Random(f"recoup-demo-replay:{plan.seed}")
        self.gateway = SimulationGateway(seed=plan.seed)
        self.heap: list[Happening] = list(plan.happenings)
        heapq.heapify(self.heap)
        self.seq = len(self.heap) + 1
        self.now = now
        self.events: Counter = Counter()
        self.done: Counter = Counter()
        self.customers: dict[int, object] = {}
        self.last_message_event = 0
        self.last_warning = 0
        self.last_pass: dt.datetime | None = None
        self.gone: set[str] = set()  # subscriptions no longer billed (cancelled, paused)
        self.progress = Progress(out, "Replaying")
        self.failures = 0
        self.due: dt.datetime | None = None
        self.due_stale = True
        self.seconds: Counter = Counter()  # where the replay's time goes, by happening
        self.actions: Counter = Counter()  # what the scheduler passes did
        self.before_period = 0.0  # seconds spent on the customers who joined before it
        self.wholesale_failed = False
        self.churn_episodes = 0
        self.cancelling: set[str] = set()  # subscriptions set to cancel at period end
        self.churning: set[int] = set()  # customers who look at leaving (once each)
        self.last_queue_item = 0

    # ------------------------------------------------------------ plumbing

    def _rand(self, *key) -> random.Random:
        """A generator of its own for one decision, so adding a happening elsewhere never
        changes this one."""
        digest = hashlib.sha256(repr((self.plan.seed, *key)).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _add(self, at: dt.datetime, kind: str, **data) -> None:
        self.seq += 1
        heapq.heappush(
            self.heap, Happening(max(at, self.now).replace(microsecond=0), self.seq, kind, data)
        )

    def _move(self, at: dt.datetime) -> None:
        if at > self.now:
            self.now = at
            self.traveller.move_to(at)

    def _customer(self, person: Person):
        row = self.customers.get(person.index)
        if row is None:
            row = Customer.objects.get(store=self.store, stripe_id=person.stripe_id)
        else:
            row.refresh_from_db()
        self.customers[person.index] = row
        return row

    def stripe_knows(self, inv_id: str, pi: dict, charge: dict) -> None:
        """The demo's Stripe records an invoice's payment: its PaymentIntent with the
        attempt's Charge expanded, which the webhook events never carry and the intake
        worker reads back (`GET /v1/invoices/<id>` with its payments, answered by the sandbox)."""

        sandbox_payment_record(
            store=self.store,
            invoice_id=inv_id,
            payment_intent={**pi, "latest_charge": charge},
            at=self.now,
        )

    def deliver(self, type_: str, obj: dict, *, previous: dict | None = None) -> str:
        """One Stripe event, exactly as the webhook takes it: signed, verified, stored once,
        then processed as the intake worker does, with the declines it reads back."""
        import stripe

        self.events[type_] += 1
        data = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event = _obj(
            "event",
            id=f"evt_demo_{self.events.total():07d}",
            type=type_,
            created=_ts(self.now),
            api_version="2025-10-29.clover",
            livemode=False,
            pending_webhooks=1,
            request={"id": None, "idempotency_key": None},
            data=data,
        )
        body = json.dumps(event)
        t = _ts(self.now)
        sig = stripe.WebhookSignature._compute_signature(
            f"{t}.{body}", self.store.stripe_webhook_secret
        )
        verified = stripe_event_verify(
            store=self.store, body=body.encode(), signature=f"t={t},v1={sig}"
        )
        row, created = stripe_event_store(store=self.store, event=verified)
        if not created:
            return "duplicate"
        outcome = stripe_event_process(event_pk=row.pk)
        # An invoice event says not why its payment failed: the worker reads it back.
        decline_lookups_run(now=self.now)
        return outcome

    # ------------------------------------------------------------ happenings

    def on_join(self, person: Person) -> None:
        customer = subs.customer_upsert(
            store=self.store,
            stripe_id=person.stripe_id,
            email=person.email,
            name=person.name,
            phone=person.phone,
            seen_at=self.now,
        )
        subs.payment_method_upsert(
            store=self.store,
            customer=customer,
            data=_payment_method(person, person.card, self.now),
            make_default=True,
        )
        subs.subscription_upsert(
            store=self.store, customer=customer, data=_subscription(person, self.now), at=self.now
        )
        self.customers[person.index] = customer
        if person.sms_consent:
            self._sms_consent(customer, person.joined)

    def import_existing(self, people: list[Person]) -> None:
        """The store's customers from before the period, imported as Recoup connects to
        it: each with its default card and subscription as Stripe has them (their join
        time is when Recoup first saw them; the rows are created now)."""

        customers = subs.customers_import(
            store=self.store,
            items=[
                subs.CustomerImport(
                    stripe_id=p.stripe_id,
                    seen_at=p.joined,
                    email=p.email,
                    name=p.name,
                    phone=p.phone,
                    payment_method=_payment_method(p, p.card, p.joined),
                    subscriptions=(_subscription(p, p.joined),),
                )
                for p in people
            ],
        )
        for person, customer in zip(people, customers, strict=True):
            self.customers[person.index] = customer
            if person.sms_consent:
                self._sms_consent(customer, person.joined)

    def _sms_consent(self, customer, at: dt.datetime) -> None:
        """The signup form's SMS box, as the merchant's checkout passes it on."""

        consent_sms_signup(customer=customer, at=at, source="signup", detail=SMS_CONSENT_TEXT)

    def on_renewal(self, person: Person) -> None:
        if person.sub_id in self.gone or person.sub_id in self.cancelling:
            return
        person.renewals += 1
        n = person.renewals
        rng = self._rand("renewal", person.index, n)
        if person.card.expires_on() < self.now.date():
            decline = ("expired_card", "")
        elif (first_wholesale := person.plan is WHOLESALE and not self.wholesale_failed) or (
            rng.random() < self.plan.failure_rate * (RISKY_FACTOR if person.risky else 1.0)
        ):
            if first_wholesale:
                self.wholesale_failed = True
            decline = (
                SHOWCASE[self.failures]
                if self.failures < len(SHOWCASE)
                else ("insufficient_funds", "")
                if first_wholesale
                else _pick(rng, DECLINE_MIX)
            )
        else:
            return  # paid at once: nothing for Recoup to do
        self.failures += 1
        self._renewal_failed(person, n, decline, rng)

    def _renewal_failed(self, person: Person, n: int, decline: tuple[str, str], rng) -> None:
        plan = person.plan
        inv_id = f"in_demo_{person.index:05d}_{n:02d}"
        pi_id = f"pi_demo_{person.index:05d}_{n:02d}"
        number = f"R{person.index:05d}-{n:02d}"
        unit = dict((c[0], c[5]) for c in CATALOGUE)[plan.sku]
        # The merchant's system posts the renewal's shipment before the charge.
        order_upsert(
            store=self.store,
            number=number,
            lines=[LineInput(sku=plan.sku, quantity=plan.quantity, unit_amount=unit)],
            customer=person.stripe_id,
            customer_email=person.email,
            subscription=person.sub_id,
            payment_intent=pi_id,
            amount=plan.amount,
        )
        code = decline[0]
        smart_retry = (
            code not in ("authentication_required",)
            and _track_of(decline) == "soft"
            and rng.random() < STRIPE_SMART_RETRY
        )
        stripe_next = (
            self.now + dt.timedelta(days=3, hours=rng.uniform(0, 12)) if smart_retry else None
        )
        charge_id = f"ch_demo_{person.index:05d}_{n:02d}_1"
        payment = dict(
            pi_id=pi_id,
            person=person,
            amount=plan.amount,
            at=self.now,
            decline=decline,
            description="Subscription cycle",
        )
        self.stripe_knows(
            inv_id,
            _payment_intent(charge_id=charge_id, **payment),
            _charge(charge_id=charge_id, **payment),
        )
        inv = _invoice(
            inv_id=inv_id,
            person=person,
            amount=plan.amount,
            at=self.now,
            attempt_count=1,
            status="open",
            order_number=number,
            next_payment_attempt=stripe_next,
        )
        kind = (
            "invoice.payment_action_required"
            if code == "authentication_required"
            else "invoice.payment_failed"
        )
        self.deliver(kind, inv)
        if stripe_next:
            self._add(stripe_next, "stripe_retry", person=person.index, n=n, decline=decline)
        share = UPDATER_AFTER.get(code, 0.0)
        if share and rng.random() < share:
            self._add(
                self.now + dt.timedelta(hours=rng.uniform(6, 240)),
                "updater",
                person=person.index,
                card=1 if code != "expired_card" else 0,
                generation=person.generation,
            )
        if rng.random() < DISPUTE_SHARE:
            self._add(
                self.now + dt.timedelta(hours=rng.uniform(12, 120)),
                "dispute",
                person=person.index,
                n=n,
            )
        churn = self._rand("churn", person.index, n)
        if (
            _track_of(decline) != "fraud"
            and self.failures > len(SHOWCASE)
            and (not self.churn_episodes or churn.random() < CHURN_AFTER_FAILURE)
        ):
            self.churn_episodes += 1
            self.churning.add(person.index)
            path = (
                "downgrade"
                if person.plan.key in DOWNGRADE_TO and churn.random() < CHURN_DOWNGRADE
                else "cancel"
            )
            self._add(
                self.now + dt.timedelta(hours=churn.uniform(2, 48)),
                "churn",
                person=person.index,
                n=n,
                path=path,
            )

    def on_stripe_retry(self, person: Person, n: int, decline: tuple[str, str]) -> None:
        """Stripe's own Smart Retry of the invoice, decided by the same sandbox issuer."""

        inv_id = f"in_demo_{person.index:05d}_{n:02d}"
        invoice = Invoice.objects.filter(store=self.store, stripe_id=inv_id).first()
        case = RecoveryCase.objects.filter(invoice=invoice).first() if invoice else None
        if invoice is None or case is None or not case.is_open or invoice.status != "open":
            return
        cls = declines.classify(decline_code=decline[0], advice_code=decline[1])
        local = self.now.astimezone(timing._zone(person.time_zone))
        number = invoice.attempt_count + 1
        result = self.gateway.invoice_pay(
            invoice_id=f"{inv_id}-stripe",
            idempotency_key=f"stripe-smart-retry-{number}",
            amount=person.plan.amount,
            hint=Hint(
                decline_group=cls.decline_group,
                track=cls.track,
                hours_since_failure=(self.now - case.opened_at).total_seconds() / 3600,
                payday=timing.is_payday(local),
                local_hour=local.hour,
                decline_code=decline[0],
            ),
        )
        paid = result.outcome == "succeeded"
        charge_id = f"ch_demo_{person.index:05d}_{n:02d}_s{number}"
        payment = dict(
            pi_id=f"pi_demo_{person.index:05d}_{n:02d}",
            person=person,
            amount=person.plan.amount,
            at=self.now,
            decline=None if paid else decline,
            description="Subscription cycle",
        )
        self.stripe_knows(
            inv_id,
            _payment_intent(charge_id=charge_id, **payment),
            _charge(charge_id=charge_id, **payment),
        )
        inv = _invoice(
            inv_id=inv_id,
            person=person,
            amount=person.plan.amount,
            at=self.now,
            attempt_count=number,
            status="paid" if paid else "open",
            order_number=f"R{person.index:05d}-{n:02d}",
            next_payment_attempt=None,
        )
        self.deliver("invoice.paid" if paid else "invoice.payment_failed", inv)

    def on_order(self, person: Person, k: int) -> None:
        rng = self._rand("order", person.index, k)
        basket = _pick(rng, SHOP_BASKETS)
        prices = {c[0]: c[5] for c in CATALOGUE}
        lines = [LineInput(sku=s, quantity=q, unit_amount=prices[s]) for s, q in basket]
        amount = sum(line.quantity * line.unit_amount for line in lines)
        number = f"S{person.index:05d}-{k}"
        pi_id = f"pi_demo_order_{person.index:05d}_{k}"
        order_upsert(
            store=self.store,
            number=number,
            lines=lines,
            customer=person.stripe_id,
            customer_email=person.email,
            payment_intent=pi_id,
            amount=amount,
        )
        failed = person.card.expires_on() < self.now.date() or rng.random() < SHOP_ORDER_FAILURE * (
            2 if person.risky else 1
        )
        decline = None
        if failed:
            decline = (
                ("expired_card", "")
                if person.card.expires_on() < self.now.date()
                else _pick(rng, DECLINE_MIX)
            )
        pi = _payment_intent(
            pi_id=pi_id,
            person=person,
            amount=amount,
            at=self.now,
            charge_id=f"ch_demo_order_{person.index:05d}_{k}",
            decline=decline,
            description=f"Order #{number}",
            metadata={"order_id": number},
        )
        self.deliver("payment_intent.payment_failed" if failed else "payment_intent.succeeded", pi)

    def on_updater(self, person: Person, data: dict) -> None:
        """Visa Account Updater / Mastercard ABU: Stripe refreshes the stored card."""
        if person.generation != data.get("generation", 0):
            return  # the customer replaced that card already
        new_number = bool(data.get("card"))
        rng = self._rand("updater", person.index, person.generation)
        old = person.card
        card = person.new_card(rng, self.now, same_number=True)
        if new_number:  # a reissued number: same payment method, new last4 and fingerprint
            card.last4 = f"{rng.randint(0, 9999):04d}"
            card.fingerprint = f"fp{person.index:05d}u{person.generation}"
        self.deliver(
            "payment_method.automatically_updated",
            _payment_method(person, card, self.now),
            previous={
                "card": {"exp_month": old.exp_month, "exp_year": old.exp_year, "last4": old.last4}
            },
        )

    def on_customer_card(self, person: Person, why: str) -> None:
        """The customer saves a new card on the pay page: the services that page calls."""

        customer = self._customer(person)
        if why != "predunning_expiry" and not open_cases_for_customer(customer=customer).exists():
            return  # paid meanwhile: nothing left to fix
        confirm = why == "authentication_request"
        self._visit_pay_link(
            customer, why, self._rand("pay-visit", person.index, person.generation)
        )
        rng = self._rand("customer-card", person.index, person.generation)
        card = person.card if confirm else person.new_card(rng, self.now, same_number=False)
        pm = subs.payment_method_upsert(
            store=self.store, customer=customer, data=_payment_method(person, card, self.now)
        )
        subs.payment_method_set_default(customer=customer, payment_method=pm)
        engine.customer_card_changed(
            customer=customer,
            at=self.now,
            source="customer",
            message=(
                "Customer confirmed the payment on the pay page (bank authentication)"
                if confirm
                else f"Customer saved a new card on the pay page ({pm})"
            ),
        )
        self.done["customer_card"] += 1

    def _visit_pay_link(self, customer, purpose: str, rng) -> None:
        """The customer opens the pay page through one of the messages that asked (email
        or SMS, whichever they read): the page records the visit on that message, as a
        real visit does (the channel the customer acted on)."""

        asked = list(
            Message.objects.filter(customer=customer, purpose=purpose, created_at__lte=self.now)
            .exclude(pay_url="")
            .order_by("-created_at")
            .values_list("pay_url", flat=True)[:2]
        )
        if not asked:
            return
        token = rng.choice(asked).rstrip("/").rsplit("/", 1)[-1]
        try:
            pay_visit_record(link=pay_link_resolve(token=token, now=self.now), now=self.now)
        except LinkRefused:
            pass  # expired: the customer came some other way

    # ------------------------------------------------------------ churn

    def _subscription_now(self, person: Person, **changes) -> tuple[dict, dt.datetime]:
        """The subscription as Stripe has it now (its current period), and the period's end."""

        row = Subscription.objects.get(store=self.store, stripe_id=person.sub_id)
        start = person.joined
        while _add_interval(start, person.plan) <= self.now:
            start = _add_interval(start, person.plan)
        obj = _subscription(person, start)
        obj.update(
            created=_ts(person.joined),
            start_date=_ts(person.joined),
            billing_cycle_anchor=_ts(person.joined),
            status=row.status,
            **changes,
        )
        return obj, _add_interval(start, person.plan)

    def _signals(self, person: Person, n: int, kinds: list[tuple[str, dt.timedelta]]) -> None:
        """The merchant's site posts what the customer did, as the signals API records it."""

        customer = self._customer(person)
        for kind, ago in kinds:
            customer_signal_record(
                store=self.store,
                customer=customer,
                kind=kind,
                at=self.now - ago,
                external_id=f"demo-{person.index:05d}-{n:02d}-{kind}",
                data={"source": "bean-box-site"},
            )
            self.done[f"signal:{kind}"] += 1

    def on_churn(self, person: Person, n: int, path: str) -> None:
        """After a failed payment the customer looks at leaving: a downgrade, or a cancel at
        the end of the period (in Stripe, then the merchant's signals)."""
        if person.sub_id in self.gone or person.sub_id in self.cancelling:
            return
        rng = self._rand("churn-visit", person.index, n)
        pricing = dt.timedelta(minutes=rng.uniform(8, 40))
        if path == "downgrade" and person.plan.key in DOWNGRADE_TO:
            old = person.plan
            person.plan = next(p for p in PLANS if p.key == DOWNGRADE_TO[old.key])
            obj, _ = self._subscription_now(person)
            self.deliver(
                "customer.subscription.updated",
                obj,
                previous={"items": {"object": "list", "data": [], "has_more": False}},
            )
            self._signals(
                person,
                n,
                [
                    ("pricing_page_visit", pricing),
                    ("cancel_page_visit", pricing / 2),
                    ("downgrade", dt.timedelta(0)),
                ],
            )
            return
        obj, period_end = self._subscription_now(person)
        obj.update(cancel_at_period_end=True, cancel_at=_ts(period_end))
        self.deliver("customer.subscription.updated", obj, previous={"cancel_at_period_end": False})
        self.cancelling.add(person.sub_id)
        self._signals(
            person,
            n,
            [
                ("pricing_page_visit", pricing),
                ("cancel_page_visit", pricing / 2),
                ("cancel_at_period_end", dt.timedelta(0)),
            ],
        )
        self._add(period_end - dt.timedelta(minutes=1), "sub_end", person=person.index)

    def on_sub_end(self, person: Person) -> None:
        """The period ends: Stripe cancels a subscription set to cancel at its end."""

        if person.sub_id in self.gone:
            return
        row = Subscription.objects.get(store=self.store, stripe_id=person.sub_id)
        if not row.cancel_at_period_end:
            return
        obj, _ = self._subscription_now(person)
        obj.update(
            status="canceled",
            cancel_at_period_end=True,
            canceled_at=_ts(self.now),
            ended_at=_ts(self.now),
        )
        self.deliver("customer.subscription.deleted", obj)
        self.gone.add(person.sub_id)

    # ------------------------------------------------------------ the agent

    def _working_time(self, at: dt.datetime, rng: random.Random) -> dt.datetime:
        """`at`, or the start of the agent's next working day (store time) if it is outside."""
        zone = self.store.tzinfo
        local = at.astimezone(zone)
        start, end = AGENT_HOURS
        if local.hour >= end:
            local = (local + dt.timedelta(days=1)).replace(hour=start, minute=0)
        elif local.hour < start:
            local = local.replace(hour=start, minute=0)
        elif local.weekday() != 6:
            return at
        else:  # Sunday: Monday morning
            local = local.replace(hour=start, minute=0)
        while local.weekday() == 6:
            local += dt.timedelta(days=1)
        local += dt.timedelta(minutes=rng.uniform(0, 90))
        return local.astimezone(dt.UTC)

    def _queue_watch(self) -> None:
        """New queue items: the agent will pick each up a few working hours later."""

        if self.agent is None:
            return
        rows = list(
            QueueItem.objects.filter(store_id=self.store.pk, pk__gt=self.last_queue_item)
            .order_by("pk")
            .values_list("pk", "entered_at", "value_at_risk")
        )
        for pk, entered, value in rows:
            self.last_queue_item = pk
            rng = self._rand("agent-pickup", pk)
            soon, later = AGENT_PICKUP_MEDIAN_HOURS
            median = soon if value >= self.store.high_value_mrr_threshold else later
            hours = min(rng.lognormvariate(math.log(median), 1.0), AGENT_PICKUP_MAX_HOURS)
            at = self._working_time(entered + dt.timedelta(hours=hours), rng)
            self._add(at, "agent", item=pk, step="claim")

    def _agent_later(self, item_pk: int, step: str, hours: float, rng: random.Random) -> None:
        at = self._working_time(self.now + dt.timedelta(hours=hours), rng)
        self._add(at, "agent", item=item_pk, step=step)

    def on_agent(self, item_pk: int, step: str) -> None:
        """One piece of the agent's work, through the services the queue's buttons call."""

        item = QueueItem.objects.select_related("case", "case__customer").get(pk=item_pk)
        if item.status == QueueItem.Status.DONE or not item.case.is_open:
            return
        if item.claimed_by_id not in (None, self.agent.pk):
            return
        try:
            getattr(self, f"_agent_{step}")(item)
        except ApplicationError as exc:  # refused as the button would be: note why
            self._note(item, f"Could not {step.replace('_', ' ')}: {exc}")
        self.done[f"agent:{step}"] += 1

    def _note(self, item, body: str) -> None:
        commands.case_note_add(
            case=item.case, actor=self.agent.username, body=body[:500], at=self.now
        )

    def _agent_claim(self, item) -> None:
        rng = self._rand("agent-claim", item.pk)
        item = queue_item_claim(item=item, user=self.agent, at=self.now)
        codes = {r["code"] for r in item.reasons}
        case = item.case
        if "fraud" in codes:
            self._note(
                item,
                "Checked the charge history and the dispute; asked the customer to confirm "
                "whether they made the earlier payments.",
            )
            if rng.random() < 0.7:
                self._agent_later(item.pk, "lost_fraud", rng.uniform(4, 40), rng)
            return
        if "churn_risk" in codes:
            self._note(
                item,
                "Customer looked at cancelling right after the failed payment. Reaching out "
                "before the period ends.",
            )
            if rng.random() < 0.3:  # they stay if they can pay a little later
                self._agent_promise(item, rng)
                return
            if case.subscription_id and rng.random() < 0.5:
                queue_outcome_offer(
                    item=item,
                    user=self.agent,
                    kind="discount",
                    coupon=AGENT_COUPON,
                    at=self.now,
                    note="20% off the next three months if they stay",
                )
            self._agent_email(item)
            self._customer_answer(item, rng, kept=0.35, lost=0.35)
            return
        self._note(
            item,
            "High-value account: called the customer's billing contact."
            if {"high_value_mrr", "high_value_ltv"} & codes
            else "Read the customer's reply; answering personally.",
        )
        r = rng.random()
        if r < 0.6:
            self._agent_promise(item, rng)
        elif r < 0.85:
            self._agent_email(item)
            self._customer_answer(item, rng, kept=0.45, lost=0.2)
        else:
            self._agent_charge(item)

    def _agent_promise(self, item, rng: random.Random) -> None:
        """The customer promises to pay by a day; most keep it (they pay on the pay page),
        the others' promise comes due and the agent follows up."""

        today = self.now.astimezone(self.store.tzinfo).date()
        pay_by = today + dt.timedelta(days=rng.randint(2, 10))
        queue_outcome_promise(
            item=item,
            user=self.agent,
            pay_by=pay_by,
            at=self.now,
            note="Customer will move funds to the card before then",
        )
        if rng.random() < 0.6:  # kept: they pay on the pay page before the date
            due = dt.datetime.combine(pay_by, dt.time(17), tzinfo=self.store.tzinfo)
            hours = max((due - self.now).total_seconds() / 3600, 1)
            at = self.now + dt.timedelta(hours=rng.uniform(hours * 0.3, hours))
            self._add(at, "customer_card", person=self._person_of(item), why="promise_kept")
        else:  # broken: the promise comes due, the agent follows up
            after = dt.datetime.combine(
                pay_by + dt.timedelta(days=1), dt.time(9), tzinfo=self.store.tzinfo
            )
            self._add(
                self._working_time(after + dt.timedelta(hours=rng.uniform(0, 6)), rng),
                "agent",
                item=item.pk,
                step="broken_promise",
            )

    def _person_of(self, item) -> int:
        return _index(item.case.customer.stripe_id)

    def _customer_answer(self, item, rng: random.Random, *, kept: float, lost: float) -> None:
        """What the customer does after the agent wrote: pays with a new card, says no (the
        agent records it lost a little later), or says nothing (the agent hands most of
        those back to automated recovery after a few days)."""
        r = rng.random()
        if r < kept:
            at = self.now + dt.timedelta(hours=rng.uniform(2, 60))
            self._add(at, "customer_card", person=self._person_of(item), why="agent_email")
        elif r < kept + lost:
            self._agent_later(item.pk, "lost", rng.uniform(24, 96), rng)
        elif rng.random() < 0.6:
            self._agent_later(item.pk, "hand_back", rng.uniform(48, 120), rng)

    def _agent_hand_back(self, item) -> None:
        if item.status != QueueItem.Status.CLAIMED:
            return  # promised meanwhile: the promise decides
        self._note(item, "No answer from the customer; automated reminders take it from here.")
        queue_item_return_to_automation(item=item, user=self.agent, at=self.now)

    def _agent_email(self, item) -> None:
        first = item.case.customer.name.split(" ")[0] if item.case.customer.name else "there"
        queue_outcome_email(
            item=item,
            user=self.agent,
            note=f"Hi {first}, your last payment for Bean Box did not go through. Reply to "
            "this email or update your card with the link below and I will sort it out.",
            at=self.now,
            idempotency_key=f"demo-email-{int(self.now.timestamp())}",
        )

    def _agent_charge(self, item) -> None:
        self._note(item, "Customer asked us to charge the card on file again now.")
        queue_outcome_recovered(item=item, user=self.agent, at=self.now, gateway=self.gateway)

    def _agent_broken_promise(self, item) -> None:
        self._note(item, "The promised date passed without a payment; following up.")
        self._agent_email(item)
        rng = self._rand("agent-broken", item.pk)
        self._customer_answer(item, rng, kept=0.3, lost=0.4)

    def _agent_lost(self, item) -> None:
        queue_outcome_lost(
            item=item,
            user=self.agent,
            at=self.now,
            why="customer does not want to continue the subscription",
        )

    def _agent_lost_fraud(self, item) -> None:
        queue_outcome_lost(
            item=item,
            user=self.agent,
            at=self.now,
            why="customer confirmed the card was used without their permission",
        )

    def on_reply(self, person: Person, text: str) -> None:
        """The customer answers a dunning email: messaging reports it, a person reads it."""

        case_customer_replied(
            customer=self._customer(person), at=self.now, channel="email", excerpt=text
        )

    def on_recent(self, step: str, k: int) -> None:
        """Hours before the end, one more customer with an open case and a message behind
        it replies or looks at leaving; a person should see them (RECENT_QUEUE)."""

        queued = QueueItem.objects.filter(store_id=self.store.pk, status__in=ACTIVE_QUEUE).values(
            "case__customer_id"
        )
        candidates = list(
            RecoveryCase.objects.filter(
                store=self.store,
                status=RecoveryCase.Status.OPEN,
                invoice__isnull=False,
                messages__isnull=False,
                queue_item__isnull=True,
                # Still days to go: an item whose window ends tonight is not what waits.
                window_end__gt=self.plan.end + dt.timedelta(days=2),
            )
            .exclude(track=Track.FRAUD)
            .exclude(customer_id__in=queued)
            .exclude(customer__subscriptions__stripe_id__in=self.cancelling | self.gone)
            .order_by("pk")
            .values_list("customer__stripe_id", "invoice__stripe_id")
            .distinct()
        )
        if step == "churn":  # a customer looks at leaving once (their own churn may be due)
            candidates = [c for c in candidates if _index(c[0]) not in self.churning]
        if not candidates:
            return
        rng = self._rand("recent", step, k)
        cus, inv = rng.choice(candidates)
        person = self.plan.people[_index(cus)]
        if step == "reply":
            self.on_reply(person, rng.choice(REPLIES))
            return
        self.churning.add(person.index)
        n = int(inv.rsplit("_", 1)[-1])
        path = "downgrade" if person.plan.key in DOWNGRADE_TO and rng.random() < 0.5 else "cancel"
        self.on_churn(person, n, path)

    def on_restock(self, code: str, units: int) -> None:
        on_hand = SKU.objects.get(store=self.store, sku=code).on_hand
        skus_upsert(store=self.store, items=[SkuInput(sku=code, on_hand=on_hand + units)])

    def on_dispute(self, person: Person, n: int) -> None:
        pi_id = f"pi_demo_{person.index:05d}_{n:02d}"
        self.deliver(
            "charge.dispute.created",
            _obj(
                "dispute",
                id=f"dp_demo_{person.index:05d}_{n:02d}",
                amount=person.plan.amount,
                charge=f"ch_demo_{person.index:05d}_{max(n - 1, 0):02d}_paid",
                payment_intent=pi_id,
                created=_ts(self.now),
                currency="usd",
                reason="fraudulent",
                status="needs_response",
                metadata={},
            ),
        )

    # ------------------------------------------------------------ the scheduler

    def run_pass(self, at: dt.datetime) -> None:
        self._move(at)
        t0 = time.perf_counter()
        with transaction.atomic():  # counted with the commit and the deliveries it runs
            report = run_due(now=at, gateways={self.store.pk: self.gateway}, rollups=False)
            # The worker's every-minute support pass: promises due, items of closed cases.
            support = support_pass(now=at)
        self.actions.update({f"support:{k}": v for k, v in support.items() if v})
        t1 = time.perf_counter()
        self.seconds["passes"] += t1 - t0
        self.actions.update(report.actions)
        if report.actions.get("closed"):
            self.refresh_gone()
        self.due_stale = True
        self.done["passes"] += 1
        self.last_pass = at
        self._react()
        self._queue_watch()
        self.seconds["reactions"] += time.perf_counter() - t1

    def _react(self) -> None:
        """Customers who read what Recoup sent: some fix their card on the pay page."""

        rows = list(
            CaseEvent.objects.filter(
                store_id=self.store.pk, kind="message_due", pk__gt=self.last_message_event
            )
            .order_by("pk")
            .values_list("pk", "at", "data", "case__customer__stripe_id", "case_id")
        )
        for pk, at, data, cus, case_id in rows:
            self.last_message_event = pk
            purpose = (data or {}).get("purpose", "")
            chance = REACTION.get(purpose, 0.0)
            rng = self._rand("reaction", cus, purpose, case_id)
            if chance and rng.random() < chance:
                delay = dt.timedelta(hours=min(rng.lognormvariate(1.6, 1.0), 96))
                self._add(at + delay, "customer_card", person=_index(cus), why=purpose)
            reply = self._rand("reply", cus, purpose, case_id)
            if reply.random() < REPLY.get(purpose, 0.0):
                delay = dt.timedelta(hours=min(reply.lognormvariate(1.2, 1.0), 72))
                self._add(at + delay, "reply", person=_index(cus), text=reply.choice(REPLIES))
        warnings = list(
            ExpiryWarning.objects.filter(store_id=self.store.pk, pk__gt=self.last_warning)
            .order_by("pk")
            .values_list("pk", "warned_at", "customer__stripe_id")
        )
        for pk, at, cus in warnings:
            self.last_warning = pk
            rng = self._rand("predunning", cus, pk)
            if rng.random() < REACTION["predunning_expiry"]:
                delay = dt.timedelta(days=rng.uniform(0.2, 12))
                self._add(at + delay, "customer_card", person=_index(cus), why="predunning_expiry")

    def next_due(self) -> dt.datetime | None:
        """The earliest due open case (re-read only after something that can change it)."""

        if self.due_stale:
            self.due = RecoveryCase.objects.filter(
                store=self.store, status=RecoveryCase.Status.OPEN
            ).aggregate(m=Min("next_action_at"))["m"]
            self.due_stale = False
        return self.due

    # ------------------------------------------------------------ the loop

    def next_pass_at(self) -> dt.datetime:
        """When the scheduler runs next: on the grid after the earliest due case, never
        twice at one instant, and at least once a simulated day."""
        last = self.last_pass or self.plan.start
        at = last + HEARTBEAT
        due = self.next_due()
        if due is not None:
            at = min(at, max(_ceil(max(due, self.now), PASS_GRID), last + PASS_GRID))
        return at

    def refresh_gone(self) -> None:
        """Subscriptions ended by a lost case (cancelled, paused, unpaid) are not billed
        again."""

        self.gone = set(
            Subscription.objects.filter(store=self.store)
            .exclude(status__in=[Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE])
            .values_list("stripe_id", flat=True)
        )

    def run(self) -> None:
        plan = self.plan
        people = plan.people
        handlers: dict[str, Callable[[Happening], None]] = {
            "join": lambda h: self.on_join(people[h.data["person"]]),
            "renewal": lambda h: self.on_renewal(people[h.data["person"]]),
            "order": lambda h: self.on_order(people[h.data["person"]], h.data["n"]),
            "stripe_retry": lambda h: self.on_stripe_retry(
                people[h.data["person"]], h.data["n"], h.data["decline"]
            ),
            "updater": lambda h: self.on_updater(people[h.data["person"]], h.data),
            "customer_card": lambda h: self.on_customer_card(
                people[h.data["person"]], h.data["why"]
            ),
            "dispute": lambda h: self.on_dispute(people[h.data["person"]], h.data["n"]),
            "restock": lambda h: self.on_restock(h.data["sku"], h.data["units"]),
            "churn": lambda h: self.on_churn(people[h.data["person"]], h.data["n"], h.data["path"]),
            "sub_end": lambda h: self.on_sub_end(people[h.data["person"]]),
            "agent": lambda h: self.on_agent(h.data["item"], h.data["step"]),
            "reply": lambda h: self.on_reply(people[h.data["person"]], h.data["text"]),
            "recent": lambda h: self.on_recent(h.data["step"], h.data["k"]),
        }
        for k, (hours, step) in enumerate(RECENT_QUEUE):
            at = plan.end - dt.timedelta(hours=hours)
            if at > plan.start:
                self._add(at, "recent", step=step, k=k)

        def play(h: Happening) -> None:
            self._move(h.at)
            events = self.events.total()
            t0 = time.perf_counter()
            with transaction.atomic():
                handlers[h.kind](h)
            # Counted with the commit: the work the product defers to it (message delivery).
            self.seconds[h.kind] += time.perf_counter() - t0
            self.done[h.kind] += 1
            if h.kind in ("customer_card", "churn", "agent", "reply", "recent") or (
                self.events.total() != events
            ):
                self.due_stale = True  # an event or a card change may have planned work
                self._queue_watch()

        # Each happening and each pass commits on its own, as in production: work the
        # product defers to the commit (message delivery) runs at that simulated moment.
        # Before the period there are only the store's existing customers: one import.
        existing, earlier = [], []
        while self.heap and self.heap[0].at < plan.start:
            h = heapq.heappop(self.heap)
            (existing if h.kind == "join" else earlier).append(h)
        if existing:
            self.progress.update(0.0, f"importing {len(existing):,} existing customers")
            self._move(existing[-1].at)
            t0 = time.perf_counter()
            with transaction.atomic():
                self.import_existing([people[h.data["person"]] for h in existing])
            self.seconds["import"] += time.perf_counter() - t0
            self.done["import"] += len(existing)
        for h in earlier:
            play(h)
        self._move(plan.start)
        self.before_period = self.progress.elapsed()
        span = (plan.end - plan.start).total_seconds()
        day = plan.start.date()
        while True:
            next_at = self.heap[0].at if self.heap else None
            pass_at = self.next_pass_at()
            if next_at is not None and next_at <= pass_at and next_at < plan.end:
                at = next_at
                play(heapq.heappop(self.heap))
            elif pass_at < plan.end:
                at = pass_at
                self.run_pass(pass_at)
            else:
                break
            if at.date() != day:
                day = at.date()
                self.progress.update(
                    (at - plan.start).total_seconds() / span,
                    f"{day:%Y-%m-%d}  {self.failures} failed payments",
                )
        self.run_pass(plan.end)  # the present: one last pass at the end of the replay
        self.progress.update(1.0, f"{plan.end:%Y-%m-%d}  {self.failures} failed payments")
        self.progress.done()


def _index(stripe_id: str) -> int:
    return int(stripe_id.rsplit("_", 1)[-1])


def _ceil(at: dt.datetime, grid: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    steps = -(-(at - epoch) // grid)
    return epoch + steps * grid


def _track_of(decline: tuple[str, str]) -> str:
    return declines.classify(decline_code=decline[0], advice_code=decline[1]).track


# ---------------------------------------------------------------- entry points


def demo_store() -> Store | None:
    return Store.objects.filter(name=DEMO_STORE_NAME).order_by("created_at").first()


def demo_is_complete(store: Store) -> bool:
    """The API token is created last: a store without it was interrupted mid-seed."""
    return ApiToken.objects.filter(store=store, name=DEMO_TOKEN_NAME).exists()


def demo_seed(
    *,
    customers: int = DEFAULT_CUSTOMERS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    failure_rate: float = RENEWAL_FAILURE,
    end: dt.datetime | None = None,
    out=None,
) -> tuple[DemoSummary, str]:
    """Create the demo store and replay its history. Returns (summary, API token)."""
    import time_machine

    started = time.perf_counter()
    phases: dict[str, float] = {}
    end = (end or timezone.now()).replace(second=0, microsecond=0)
    plan = demo_plan(seed=seed, customers=customers, days=days, end=end, failure_rate=failure_rate)
    first = min([plan.start] + [h.at for h in plan.happenings[:1]])
    errors = _ErrorLog()
    loggers = [logging.getLogger(n) for n in ("recovery", "orders", "messaging", "subscriptions")]
    for lg in loggers:
        lg.addHandler(errors)
    overrides = quiet_messaging_settings()
    if settings.DEBUG:
        # DEBUG logs every query (on SQLite with an extra QUOTE() round trip each): about
        # 40% of the replay. The store secrets keep DEBUG's development key, which
        # common.crypto derives and caches on first use: derive it before switching off.

        fernet()
        overrides["DEBUG"] = False
    try:
        with (
            override_settings(**overrides),
            time_machine.travel(first, tick=False) as traveller,
        ):
            with transaction.atomic():
                store = store_create(
                    name=DEMO_STORE_NAME,
                    currency="usd",
                    timezone="America/New_York",
                    stripe_webhook_secret="whsec_demo_"
                    + hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest()[:24],
                    gateway=Store.Gateway.SANDBOX,
                )
                retry_policy_update(store=store, changes={}, actor="demo")

                skus_upsert(
                    store=store,
                    items=[
                        SkuInput(
                            sku=code,
                            on_hand=on_hand,
                            title=title,
                            preorder=preorder,
                            low_stock_threshold=threshold,
                        )
                        for code, title, on_hand, preorder, threshold, _ in CATALOGUE
                    ],
                )
                # The agent works the queue during the replay (the operator logs in after).
                agent, _ = membership_create(
                    store=store, username=AGENT_USERNAME, role="agent", password=DEMO_PASSWORD
                )
            phases["setup"] = time.perf_counter() - started
            replay = Replay(store, plan, traveller=traveller, now=first, out=out, agent=agent.user)
            replay.run()
            phases["before the period"] = replay.before_period
            phases["the period"] = replay.progress.elapsed() - replay.before_period
            # The passes left the home page's rollup alone: build it once, at the end.

            t0 = time.perf_counter()
            rollup_refresh(store=store, now=timezone.now(), full=True)
            phases["rollup"] = time.perf_counter() - t0
    finally:
        for lg in loggers:
            lg.removeHandler(errors)
    sent_emails, sent_sms = _empty_outboxes()
    t0 = time.perf_counter()
    with transaction.atomic():
        membership_create(store=store, username="operator", role="operator", password=DEMO_PASSWORD)
        _, token = api_token_create(store=store, name=DEMO_TOKEN_NAME)
    phases["logins"] = time.perf_counter() - t0
    seconds = time.perf_counter() - started
    t0 = time.perf_counter()
    counts = demo_counts(store)
    phases["counts"] = time.perf_counter() - t0
    counts["emails_sent_during_replay"] = sent_emails
    counts["sms_sent_during_replay"] = sent_sms
    counts["errors"] = errors.count
    counts["first_errors"] = errors.first
    events = dict(replay.events)
    text = summary_text(store, counts, events, replay.done, seconds, plan)
    timing = (
        "Where the replay's time went: "
        + ", ".join(
            f"{kind} {secs:.1f} s ({replay.done[kind]})"
            for kind, secs in replay.seconds.most_common()
        )
        + f"; scheduler actions {dict(sorted(replay.actions.items()))}"
        + "\nPhases: "
        + ", ".join(f"{name} {secs:.1f} s" for name, secs in phases.items())
    )
    return DemoSummary(store, seconds, events, text, counts, timing), token


def _empty_outboxes() -> tuple[int, int]:
    """Empty the locmem outboxes the replay filled; returns (emails, SMS) they held."""
    from django.core import mail

    emails = len(getattr(mail, "outbox", None) or [])
    mail.outbox = []
    texts = len(getattr(sms, "outbox", None) or [])
    if hasattr(sms, "outbox"):
        sms.outbox.clear()
    return emails, texts


def demo_counts(store: Store) -> dict:
    """What the product recorded, by the numbers (read back from its own tables)."""

    cases = RecoveryCase.objects.filter(store=store)
    out: dict = {
        "customers": Customer.objects.filter(store=store).count(),
        "subscriptions": dict(
            Subscription.objects.filter(store=store)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by("status")
        ),
        "orders": dict(
            Order.objects.filter(store=store)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by("status")
        ),
        "cases_by_status": dict(
            cases.values_list("status").annotate(n=Count("id")).order_by("status")
        ),
        "cases_by_track": dict(
            cases.values_list("track").annotate(n=Count("id")).order_by("track")
        ),
        "recovered_via": dict(
            cases.filter(status="recovered")
            .values_list("recovered_via")
            .annotate(n=Count("id"))
            .order_by("recovered_via")
        ),
        "escalated": cases.filter(escalated=True).count(),
        "recovered_amount": cases.aggregate(s=Sum("recovered_amount"))["s"] or 0,
        "at_risk_amount": cases.filter(status="open").aggregate(s=Sum("amount"))["s"] or 0,
        "attempts_by_source": dict(
            PaymentAttempt.objects.filter(store=store)
            .values_list("source")
            .annotate(n=Count("id"))
            .order_by("source")
        ),
        "holds": dict(
            InventoryHold.objects.filter(store=store)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by("status")
        ),
        "holds_released_early": InventoryHold.objects.filter(
            store=store, released_early=True
        ).count(),
        "messages_due": CaseEvent.objects.filter(store=store, kind="message_due").count(),
        "expiry_warnings": ExpiryWarning.objects.filter(store=store).count(),
        "expiry_saves": ExpiryWarning.objects.filter(store=store, saved_at__isnull=False).count(),
        "stripe_events": dict(
            StripeEvent.objects.filter(store=store)
            .values_list("outcome")
            .annotate(n=Count("id"))
            .order_by("outcome")
        ),
    }
    out["messages"] = {
        f"{channel}/{status}": n
        for channel, status, n in Message.objects.filter(store=store)
        .values_list("channel", "status")
        .annotate(n=Count("id"))
        .order_by("channel", "status")
    }
    closed = sum(v for k, v in out["cases_by_status"].items() if k in ("recovered", "lost"))
    out["recovery_rate"] = out["cases_by_status"].get("recovered", 0) / closed if closed else 0.0
    return out


def summary_text(store, counts, events, done, seconds, plan) -> str:
    def fmt(d: dict) -> str:
        return ", ".join(f"{k or '-'} {v}" for k, v in d.items()) or "none"

    lines = [
        f"Demo store {store.name}: {counts['customers']} customers, "
        f"{plan.start:%Y-%m-%d} → {plan.end:%Y-%m-%d} replayed in {seconds:.1f} s "
        f"({done['passes']} scheduler passes, {sum(events.values())} Stripe events)",
        f"  cases        {fmt(counts['cases_by_status'])}; recovery rate "
        f"{counts['recovery_rate'] * 100:.1f}% of closed",
        f"  by track     {fmt(counts['cases_by_track'])}; escalated {counts['escalated']}",
        f"  recovered by {fmt(counts['recovered_via'])}; ${counts['recovered_amount'] / 100:,.2f} "
        f"recovered, ${counts['at_risk_amount'] / 100:,.2f} at risk now",
        f"  attempts     {fmt(counts['attempts_by_source'])}",
        f"  stock holds  {fmt(counts['holds'])}; released early {counts['holds_released_early']}",
        f"  messages due {counts['messages_due']}; pre-dunning warnings "
        f"{counts['expiry_warnings']} ({counts['expiry_saves']} saved)",
        f"  subscriptions {fmt(counts['subscriptions'])}",
    ]
    if "messages" in counts:
        lines.insert(
            -1,
            f"  messages     {fmt(counts['messages'])} (recorded, not printed: "
            f"{counts['emails_sent_during_replay']} emails, {counts['sms_sent_during_replay']} SMS)",
        )
    if counts.get("errors"):
        lines.append(
            f"  errors logged during the replay: {counts['errors']}: {counts['first_errors']}"
        )
    return "\n".join(lines)
