"""Subscription, payment-method and customer events: the facts a case plans from."""

from __future__ import annotations

from subscriptions import services as subs
from subscriptions.models import Customer

from .. import engine, ports
from ..models import RecoveryCase, StripeEvent
from ..services import (
    recovery_case_close,
)
from ..stripe_payloads import (
    obj,
    ref,
)
from .processing import _at, _customer, handles


@handles("customer.subscription.updated", "customer.subscription.created")
def _subscription_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: subscription has no customer"
    subs.subscription_upsert(store=event.store, customer=customer, data=data, at=_at(event))
    return "processed"


@handles("customer.subscription.deleted")
def _subscription_deleted(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: subscription has no customer"
    subscription = subs.subscription_upsert(
        store=event.store, customer=customer, data=data, at=_at(event)
    )
    for case in RecoveryCase.objects.filter(
        subscription=subscription, status=RecoveryCase.Status.OPEN
    ):
        recovery_case_close(
            case=case,
            status=RecoveryCase.Status.CANCELLED,
            reason="subscription cancelled in Stripe",
            at=_at(event),
        )
    return "processed"


def _card_changed(event: StripeEvent, customer: Customer, *, source: str, message: str) -> None:
    engine.customer_card_changed(customer=customer, at=_at(event), source=source, message=message)


@handles("payment_method.automatically_updated")
def _pm_auto_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: payment method has no customer"
    # The updater refreshes a card in place. A customer with no default on record pays with
    # the refreshed card from now on: our retries use the default.
    pm = subs.payment_method_upsert(
        store=event.store,
        customer=customer,
        data=data,
        make_default=customer.default_payment_method_id is None,
    )
    _card_changed(event, customer, source="card_updater", message=f"Card updater refreshed {pm}")
    return "processed"


@handles("payment_method.attached", "payment_method.updated")
def _pm_attached(event: StripeEvent, data: dict) -> str:
    """A card's details (fingerprint, expiry, country), kept for when it becomes the
    default: a `customer.updated` names the new default by id only. Attaching a card is
    not changing the default, so nothing is retried for it."""
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: payment method has no customer"
    subs.payment_method_upsert(store=event.store, customer=customer, data=data)
    return "processed"


@handles("customer.source.updated")
def _source_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: source has no customer"
    pm = subs.payment_method_upsert(store=event.store, customer=customer, data=data)
    previous = obj(obj(event.payload.get("data")).get("previous_attributes"))
    if previous and not ({"exp_month", "exp_year", "last4", "number"} & set(previous)):
        return "processed: no card detail changed"
    _card_changed(event, customer, source="card_updater", message=f"Card source updated: {pm}")
    return "processed"


@handles("setup_intent.succeeded")
def _setup_intent_succeeded(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data.get("customer"))
    if customer is None:
        return "ignored: setup intent has no customer"
    pm_ref = data.get("payment_method")
    if isinstance(pm_ref, dict):
        subs.payment_method_upsert(
            store=event.store, customer=customer, data=pm_ref, make_default=True
        )
    elif pm_ref:
        subs.payment_method_upsert(
            store=event.store,
            customer=customer,
            data={"id": pm_ref, "customer": customer.stripe_id},
            make_default=True,
        )
    _card_changed(event, customer, source="customer", message="Customer saved a new payment method")
    return "processed"


def _customer_facts(event: StripeEvent, customer: Customer, data: dict) -> Customer:
    """What a customer snapshot says of the customer (address, zone, locale, phone, SMS
    consent in the metadata); a changed zone re-plans their open cases from now on.
    Returns the customer as updated."""
    at = _at(event)
    previous = obj(event.payload.get("data")).get("previous_attributes")
    if event.type != "customer.updated" or not isinstance(previous, dict):
        previous = None  # everything in the snapshot is news
    facts = subs.customer_update_from_stripe(customer=customer, data=data, at=at, previous=previous)
    if facts.stale:
        return facts.customer
    ports.sms_consent_from_stripe(
        customer=facts.customer,
        opt_in=facts.sms_consent,
        news=facts.sms_consent_news,
        at=at,
        key=event.store.sms_consent_key,
    )
    if facts.zone_changed:
        engine.customer_zone_changed(customer=facts.customer, at=at)
    return facts.customer


@handles("customer.created", "customer.updated")
def _customer_updated(event: StripeEvent, data: dict) -> str:
    customer = _customer(event, data)
    if customer is None:
        return "ignored: no customer id"
    customer = _customer_facts(event, customer, data)
    previous = obj(obj(event.payload.get("data")).get("previous_attributes"))
    new_default = ref(obj(data.get("invoice_settings")).get("default_payment_method")) or ref(
        data.get("default_source")
    )
    old_default = (
        ref(obj(previous.get("invoice_settings")).get("default_payment_method"))
        if "invoice_settings" in previous
        else None
    )
    if "default_source" in previous:
        old_default = ref(previous.get("default_source"))
    if new_default and old_default is not None and new_default != old_default:
        subs.payment_method_upsert(
            store=event.store,
            customer=customer,
            data={"id": new_default, "customer": customer.stripe_id},
            make_default=True,
        )
        _card_changed(event, customer, source="customer", message="Default payment method changed")
    return "processed"
