"""Writes to customers, cards, subscriptions and invoices, as Stripe reports them.

State only moves forward: each row remembers the Stripe time of the newest event
applied to it, and an older snapshot never overwrites a newer one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from recovery.stripe_payloads import (
    invoice_line_product,
    invoice_payment_intent_ids,
    invoice_subscription_id,
    minor,
    obj,
    subscription_summary,
    ts,
)
from stores.models import Store

from . import facts
from .models import Customer, Invoice, PaymentMethod, Subscription


def _get_or_create(model, *, lookup: dict, defaults: dict, lock: bool = False):
    """get_or_create that survives a concurrent insert of the same Stripe object.

    A row that exists (the usual case: every event after the first) costs one SELECT,
    with no savepoint around it; lock=True takes its row lock in that same SELECT (a row
    created here is this transaction's own). Only an INSERT needs the savepoint, so that
    losing the race to another worker leaves the transaction usable."""
    objects = model.objects.select_for_update() if lock else model.objects
    found = objects.filter(**lookup).first()
    if found is not None:
        return found, False
    return _create_or_get(model, lookup=lookup, defaults=defaults, lock=lock)


def _create_or_get(model, *, lookup: dict, defaults: dict, lock: bool = False):
    """Insert a row just looked for and not found; the row another worker inserted
    first, if it won the race."""
    objects = model.objects.select_for_update() if lock else model.objects
    try:
        with transaction.atomic():
            return model.objects.create(**lookup, **defaults), True
    except IntegrityError:
        found = objects.filter(**lookup).first()
        if found is None:
            raise  # not the race: a row this lookup cannot find was refused
        return found, False


def _phone_region(*, store: Store, country: str = "", card_country: str = "") -> str | None:
    """The country a number written without its +code is dialled in: the customer's
    billing address, else their card's country, else the country of the store's zone."""
    return country or card_country or facts.zone_country(store.timezone)


def customer_upsert(
    *,
    store: Store,
    stripe_id: str,
    email: str = "",
    name: str = "",
    phone: str = "",
    seen_at: dt.datetime | None = None,
) -> Customer:
    seen_at = seen_at or timezone.now()
    known = Customer.objects.filter(store=store, stripe_id=stripe_id).first()
    phone = facts.phone_e164(
        phone, region=_phone_region(store=store, country=known.address_country if known else "")
    )
    customer, created = (
        (known, False)
        if known is not None
        else _create_or_get(
            Customer,
            lookup={"store": store, "stripe_id": stripe_id},
            defaults={
                "email": email[:254],
                "name": name[:200],
                "phone": phone,
                "first_seen_at": seen_at,
                "time_zone_source": facts.STORE,
            },
        )
    )
    if not created:
        changed = []
        for field, value in (("email", email[:254]), ("name", name[:200]), ("phone", phone)):
            if value and not getattr(customer, field):
                setattr(customer, field, value)
                changed.append(field)
        if seen_at < customer.first_seen_at:
            customer.first_seen_at = seen_at
            changed.append("first_seen_at")
        if changed:
            customer.save(update_fields=[*changed, "updated_at"])
    return customer


@dataclass(frozen=True)
class CustomerFacts:
    """What a Stripe customer snapshot changed. `sms_consent`: what the metadata says of
    SMS consent (None: nothing we can read); `sms_consent_news`: whether this snapshot
    brings news of it (a new customer, or the merchant changed that key)."""

    customer: Customer
    stale: bool = False
    zone_changed: bool = False
    sms_consent: bool | None = None
    sms_consent_news: bool = False


# Zones Recoup worked out itself, which newer facts replace (not the merchant's, nor one
# of unknown origin).
DERIVED = frozenset({facts.ADDRESS, facts.CARD_COUNTRY, facts.STORE})


ZONE_FACTS = [
    "time_zone",
    "time_zone_source",
    "time_zone_set_at",
    "address_country",
    "address_state",
    "address_postal_code",
    "metadata",
]


def _zone_guess(customer: Customer, *, card_country: str | None = None) -> facts.ZoneGuess:
    if card_country is None:
        card_country = (
            PaymentMethod.objects.filter(pk=customer.default_payment_method_id)
            .values_list("country", flat=True)
            .first()
            or ""
        )
    return facts.time_zone_guess(
        metadata=customer.metadata,
        key=customer.store.customer_timezone_key,
        country=customer.address_country,
        state=customer.address_state,
        postal_code=customer.address_postal_code,
        card_country=card_country,
    )


def _zone_apply(customer: Customer, zone: facts.ZoneGuess, *, at: dt.datetime) -> list[str]:
    """Set the customer's zone; the fields changed."""
    if (customer.time_zone, customer.time_zone_source) == (zone.zone, zone.source):
        return []
    customer.time_zone, customer.time_zone_source = zone.zone, zone.source
    customer.time_zone_set_at = at
    return ["time_zone", "time_zone_source", "time_zone_set_at"]


def _zone_in_force(customer: Customer) -> str:
    return customer.time_zone or customer.store.timezone


@transaction.atomic
def customer_update_from_stripe(
    *, customer: Customer, data: dict, at: dt.datetime, previous: dict | None = None
) -> CustomerFacts:
    """Apply a Stripe Customer object as of `at` (a customer.created or customer.updated
    event; `previous`: the event's previous_attributes, None when not known): contact
    details, billing address, metadata, locale, phone (E.164) and the time zone they
    imply. An older snapshot than one already applied changes nothing."""
    customer = (
        Customer.objects.select_for_update(of=("self",)).select_related("store").get(pk=customer.pk)
    )
    if customer.stripe_updated and at < customer.stripe_updated:
        return CustomerFacts(customer=customer, stale=True)
    store = customer.store
    address = obj(data.get("address"))
    card_country = (
        PaymentMethod.objects.filter(pk=customer.default_payment_method_id)
        .values_list("country", flat=True)
        .first()
        or ""
    )
    metadata = obj(data.get("metadata"))
    values = {
        "address_country": str(address.get("country") or "").strip().upper()[:2],
        "address_state": str(address.get("state") or "").strip()[:100],
        "address_postal_code": str(address.get("postal_code") or "").strip()[:20],
        "metadata": metadata,
    }
    changed = [k for k, v in values.items() if getattr(customer, k) != v]
    for k in changed:
        setattr(customer, k, values[k])
    for field, value in (
        ("email", str(data.get("email") or "")[:254]),
        ("name", str(data.get("name") or "")[:200]),
    ):
        if value and getattr(customer, field) != value:
            setattr(customer, field, value)
            changed.append(field)
    if data.get("phone"):
        region = _phone_region(
            store=store, country=customer.address_country, card_country=card_country
        )
        phone = facts.phone_e164(str(data["phone"]), region=region)
        if customer.phone != phone:
            customer.phone = phone
            changed.append("phone")
    locale = facts.locale_from_stripe(data.get("preferred_locales"))
    if locale and customer.locale != locale:
        customer.locale = locale
        changed.append("locale")
    zone_before = _zone_in_force(customer)
    zone = facts.time_zone_decide(
        current=facts.ZoneGuess(customer.time_zone, customer.time_zone_source),
        guess=_zone_guess(customer, card_country=card_country),
        metadata_news=facts.metadata_news(
            key=store.customer_timezone_key, metadata=metadata, previous=previous
        ),
        at=at,
        current_at=customer.time_zone_set_at,
    )
    changed += _zone_apply(customer, zone, at=at)
    customer.stripe_updated = at
    customer.save(update_fields=[*changed, "stripe_updated", "updated_at"])
    return CustomerFacts(
        customer=customer,
        zone_changed=_zone_in_force(customer) != zone_before,
        sms_consent=facts.sms_consent_value(metadata.get(store.sms_consent_key)),
        sms_consent_news=facts.metadata_news(
            key=store.sms_consent_key, metadata=metadata, previous=previous
        ),
    )


@transaction.atomic
def customer_time_zone_set(*, customer: Customer, time_zone: str, at: dt.datetime) -> bool:
    """The merchant sets the customer's zone (an IANA name; checked by the caller with
    `facts.zone_valid`). It stands against any zone Stripe's data suggests later. "" gives
    the choice back to those facts. Returns whether the zone in force changed."""
    customer = (
        Customer.objects.select_for_update(of=("self",)).select_related("store").get(pk=customer.pk)
    )
    before = _zone_in_force(customer)
    zone = facts.ZoneGuess(time_zone, facts.API) if time_zone else _zone_guess(customer)
    changed = _zone_apply(customer, zone, at=at)
    if changed:
        customer.save(update_fields=[*changed, "updated_at"])
    return _zone_in_force(customer) != before


def customer_mark_disputed(*, customer: Customer, at: dt.datetime) -> None:
    Customer.objects.filter(pk=customer.pk, disputed_at__isnull=True).update(disputed_at=at)


def _card_values(data: dict, *, customer: Customer) -> dict:
    card = obj(data.get("card")) or (data if data.get("object") == "card" else {})
    return {
        "customer": customer,
        "brand": str(card.get("brand") or card.get("display_brand") or "")[:32].lower(),
        "last4": str(card.get("last4") or "")[:4],
        "exp_month": card.get("exp_month"),
        "exp_year": card.get("exp_year"),
        "fingerprint": str(card.get("fingerprint") or "")[:64],
        "country": str(card.get("country") or "").upper()[:2],
    }


def payment_method_upsert(
    *, store: Store, customer: Customer, data: dict, make_default: bool = False
) -> PaymentMethod:
    """A card from a PaymentMethod (`card` sub-object) or a legacy Card source."""
    values = _card_values(data, customer=customer)
    pm, created = _get_or_create(
        PaymentMethod, lookup={"store": store, "stripe_id": str(data["id"])}, defaults=values
    )
    if not created:
        changed = [k for k, v in values.items() if v not in (None, "") and getattr(pm, k) != v]
        for k in changed:
            setattr(pm, k, values[k])
        if changed:
            pm.save(update_fields=[*changed, "updated_at"])
    if make_default:
        payment_method_set_default(customer=customer, payment_method=pm)
    return pm


@transaction.atomic
def payment_method_set_default(*, customer: Customer, payment_method: PaymentMethod) -> None:
    PaymentMethod.objects.filter(customer=customer, is_default=True).exclude(
        pk=payment_method.pk
    ).update(is_default=False)
    if not payment_method.is_default:
        payment_method.is_default = True
        payment_method.save(update_fields=["is_default", "updated_at"])
    if customer.default_payment_method_id != payment_method.pk:
        customer.default_payment_method = payment_method
        fields = ["default_payment_method"]
        # The facts as stored now: the caller's copy may predate a customer update.
        customer.refresh_from_db(fields=ZONE_FACTS)
        if customer.time_zone_source in DERIVED:
            # The card's country may place a customer whose address does not.
            guess = _zone_guess(customer, card_country=payment_method.country)
            fields += _zone_apply(customer, guess, at=timezone.now())
        customer.save(update_fields=[*fields, "updated_at"])


def subscription_ref(
    *, store: Store, customer: Customer, invoice: dict, at: dt.datetime
) -> Subscription | None:
    """The subscription an invoice belongs to, created from what the invoice says if new."""
    sub_id = invoice_subscription_id(invoice)
    if not sub_id:
        return None
    product = invoice_line_product(invoice)
    line_amount = minor(invoice.get("subtotal") or invoice.get("amount_due"))
    subscription, created = _get_or_create(
        Subscription,
        lookup={"store": store, "stripe_id": sub_id},
        defaults={
            "customer": customer,
            "product_name": product,
            "amount": line_amount,
            "mrr": line_amount,
            "currency": str(invoice.get("currency") or store.currency).lower()[:3],
        },
    )
    expanded = obj(obj(obj(invoice.get("parent")).get("subscription_details")).get("subscription"))
    if expanded.get("items"):
        subscription_upsert(store=store, customer=customer, data=expanded, at=at)
        subscription.refresh_from_db()
    return subscription


def _subscription_values(data: dict, *, customer: Customer) -> dict:
    summary = subscription_summary(data)
    status = str(data.get("status") or Subscription.Status.ACTIVE)
    if status not in Subscription.Status.values:
        status = Subscription.Status.ACTIVE
    return {
        "customer": customer,
        "status": status,
        "cancel_at_period_end": bool(data.get("cancel_at_period_end")),
        "canceled_at": ts(data.get("canceled_at")) or ts(data.get("ended_at")),
        **{k: v for k, v in summary.items() if v not in (None, "")},
    }


def subscription_upsert(
    *, store: Store, customer: Customer, data: dict, at: dt.datetime
) -> Subscription:
    values = _subscription_values(data, customer=customer)
    status = values["status"]
    with transaction.atomic():
        subscription, created = _get_or_create(
            Subscription,
            lookup={"store": store, "stripe_id": str(data["id"])},
            defaults={**values, "stripe_updated": at},
            lock=True,
        )
        if created:
            return subscription
        if subscription.stripe_updated and at < subscription.stripe_updated:
            return subscription  # an older snapshot arriving late
        # A cancelled subscription stays cancelled whatever a late update says.
        if (
            subscription.status == Subscription.Status.CANCELED
            and status != Subscription.Status.CANCELED
        ):
            values.pop("status")
        for k, v in values.items():
            setattr(subscription, k, v)
        subscription.stripe_updated = at
        subscription.save()
        return subscription


@dataclass(frozen=True)
class CustomerImport:
    """A Stripe customer as of `seen_at`, with its default card (a Stripe PaymentMethod)
    and its subscriptions (Stripe Subscription objects)."""

    stripe_id: str
    seen_at: dt.datetime
    email: str = ""
    name: str = ""
    phone: str = ""
    payment_method: dict | None = None
    subscriptions: tuple[dict, ...] = ()


@transaction.atomic
def customers_import(*, store: Store, items: Sequence[CustomerImport]) -> list[Customer]:
    """A store's existing customers at once, each with its default card and subscriptions
    (the demo store's, or a backfill when a store connects): the rows that
    `customer_upsert`, `payment_method_upsert(make_default=True)` and
    `subscription_upsert` write, in a fixed number of statements for customers new to
    Recoup. A customer, card or subscription Recoup already has (or a customer listed
    twice) goes through those upserts instead. Returns the customers in `items`' order."""
    known_customers = set(
        Customer.objects.filter(
            store=store, stripe_id__in=[i.stripe_id for i in items]
        ).values_list("stripe_id", flat=True)
    )
    known_cards = set(
        PaymentMethod.objects.filter(
            store=store,
            stripe_id__in=[str(i.payment_method["id"]) for i in items if i.payment_method],
        ).values_list("stripe_id", flat=True)
    )
    known_subscriptions = set(
        Subscription.objects.filter(
            store=store, stripe_id__in=[str(d["id"]) for i in items for d in i.subscriptions]
        ).values_list("stripe_id", flat=True)
    )
    fresh: list[CustomerImport] = []
    one_by_one: list[CustomerImport] = []
    seen: set[str] = set()
    for item in items:
        ids = {item.stripe_id}
        if item.payment_method:
            ids.add(str(item.payment_method["id"]))
        ids.update(str(d["id"]) for d in item.subscriptions)
        if (
            item.stripe_id in known_customers
            or (item.payment_method and str(item.payment_method["id"]) in known_cards)
            or known_subscriptions.intersection(str(d["id"]) for d in item.subscriptions)
            or seen.intersection(ids)
        ):
            one_by_one.append(item)
        else:
            fresh.append(item)
        seen.update(ids)

    now = timezone.now()
    customers = []
    for item in fresh:
        card_country = _card_values(item.payment_method or {}, customer=None)["country"]
        zone = facts.time_zone_guess(
            metadata={}, key=store.customer_timezone_key, card_country=card_country
        )
        customers.append(
            Customer(
                store=store,
                stripe_id=item.stripe_id,
                email=item.email[:254],
                name=item.name[:200],
                phone=facts.phone_e164(item.phone, region=_phone_region(store=store)),
                first_seen_at=item.seen_at,
                time_zone=zone.zone,
                time_zone_source=zone.source,
                time_zone_set_at=now if zone.source != facts.STORE else None,
            )
        )
    customers = Customer.objects.bulk_create(customers)
    by_id = {c.stripe_id: c for c in customers}
    cards = PaymentMethod.objects.bulk_create(
        [
            PaymentMethod(
                store=store,
                stripe_id=str(item.payment_method["id"]),
                is_default=True,
                **_card_values(item.payment_method, customer=by_id[item.stripe_id]),
            )
            for item in fresh
            if item.payment_method
        ]
    )
    for card in cards:
        card.customer.default_payment_method = card
    Customer.objects.filter(pk__in=[card.customer_id for card in cards]).update(
        default_payment_method=Subquery(
            PaymentMethod.objects.filter(customer=OuterRef("pk"), is_default=True).values("pk")
        )
    )
    Subscription.objects.bulk_create(
        [
            Subscription(
                store=store,
                stripe_id=str(data["id"]),
                stripe_updated=item.seen_at,
                **_subscription_values(data, customer=by_id[item.stripe_id]),
            )
            for item in fresh
            for data in item.subscriptions
        ]
    )
    for item in one_by_one:
        customer = customer_upsert(
            store=store,
            stripe_id=item.stripe_id,
            email=item.email,
            name=item.name,
            phone=item.phone,
            seen_at=item.seen_at,
        )
        if item.payment_method:
            payment_method_upsert(
                store=store, customer=customer, data=item.payment_method, make_default=True
            )
        for data in item.subscriptions:
            subscription_upsert(store=store, customer=customer, data=data, at=item.seen_at)
        by_id[item.stripe_id] = customer
    return [by_id[item.stripe_id] for item in items]


def subscription_mark_past_due(*, subscription: Subscription, at: dt.datetime) -> None:
    Subscription.objects.filter(
        pk=subscription.pk, status__in=[Subscription.Status.ACTIVE, Subscription.Status.TRIALING]
    ).update(status=Subscription.Status.PAST_DUE)


# Forward-only order of invoice states: a paid invoice is never reopened by a late failure.
_INVOICE_RANK = {
    Invoice.Status.DRAFT: 0,
    Invoice.Status.OPEN: 1,
    Invoice.Status.UNCOLLECTIBLE: 2,
    Invoice.Status.PAID: 3,
    Invoice.Status.VOID: 3,
}


def invoice_upsert(
    *,
    store: Store,
    customer: Customer,
    subscription: Subscription | None,
    data: dict,
    at: dt.datetime,
) -> Invoice:
    status = str(data.get("status") or Invoice.Status.OPEN)
    if status not in Invoice.Status.values:
        status = Invoice.Status.OPEN
    pis = invoice_payment_intent_ids(data)
    values = {
        "customer": customer,
        "subscription": subscription,
        "amount_due": minor(data.get("amount_due")),
        "amount_paid": minor(data.get("amount_paid")),
        "currency": str(data.get("currency") or store.currency).lower()[:3],
        "status": status,
        "attempt_count": minor(data.get("attempt_count")),
        "billing_reason": str(data.get("billing_reason") or "")[:64],
        "payment_intent_id": pis[-1] if pis else "",
        "next_payment_attempt": ts(data.get("next_payment_attempt")),
    }
    invoice, created = _get_or_create(
        Invoice,
        lookup={"store": store, "stripe_id": str(data["id"])},
        defaults={**values, "stripe_updated": at},
        lock=True,
    )
    if created:
        return invoice
    newer = invoice.stripe_updated is None or at >= invoice.stripe_updated
    if _INVOICE_RANK[status] < _INVOICE_RANK[invoice.status]:
        values.pop("status")  # never backwards
    if not newer:
        # Only fill gaps and keep the highest attempt count from a late snapshot.
        values = {
            k: v for k, v in values.items() if k == "attempt_count" or not getattr(invoice, k)
        }
        values["attempt_count"] = max(values.get("attempt_count", 0), invoice.attempt_count)
    else:
        values["attempt_count"] = max(values["attempt_count"], invoice.attempt_count)
        values["stripe_updated"] = at
    if not values.get("payment_intent_id"):
        values.pop("payment_intent_id", None)
    for k, v in values.items():
        setattr(invoice, k, v)
    invoice.save()
    return invoice


INVOICE_MARK_FIELDS = ("status", "paid_at", "next_payment_attempt", "amount_paid")


def invoice_mark_apply(
    *, invoice: Invoice, status: str, at: dt.datetime, amount_paid: int | None = None
) -> bool:
    """Set `status` on the instance, never backwards; False if it would go back (nothing
    set). A batch saves the instances together (INVOICE_MARK_FIELDS)."""
    if _INVOICE_RANK[status] < _INVOICE_RANK.get(invoice.status, 0):
        return False
    invoice.status = status
    if status == Invoice.Status.PAID:
        invoice.paid_at = invoice.paid_at or at
        invoice.next_payment_attempt = None
        if amount_paid:
            invoice.amount_paid = amount_paid
    return True


def invoice_mark(
    *, invoice: Invoice, status: str, at: dt.datetime, amount_paid: int | None = None
) -> None:
    if invoice_mark_apply(invoice=invoice, status=status, at=at, amount_paid=amount_paid):
        invoice.save(update_fields=INVOICE_MARK_FIELDS)
