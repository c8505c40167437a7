"""SMS consent (STOP and START, the merchant's checkout box, their Stripe metadata, our
API) and email suppression (hard bounces, spam complaints), each change recorded as a
`ConsentEvent`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Max

from common.errors import ApplicationError
from subscriptions.models import Customer

from .models import Channel, ConsentEvent, Suppression


def _consent_event(
    *,
    store_id,
    customer: Customer | None,
    channel: str,
    action: str,
    source: str,
    address: str,
    at: dt.datetime,
    detail: str = "",
) -> None:
    ConsentEvent.objects.create(
        store_id=store_id,
        customer=customer,
        channel=channel,
        action=action,
        source=source,
        address=address,
        at=at,
        detail=detail[:300],
    )


@transaction.atomic
def consent_sms_opt_out(*, phone: str, at: dt.datetime, source: str, detail: str = "") -> int:
    """STOP from a number: no more SMS to any customer with that number."""
    customers = list(Customer.objects.select_for_update().filter(phone=phone))
    for customer in customers:
        Customer.objects.filter(pk=customer.pk).update(sms_opt_in=False)
        Suppression.objects.get_or_create(
            store_id=customer.store_id,
            channel=Channel.SMS,
            address=phone,
            defaults={"reason": Suppression.Reason.STOP, "created_at": at},
        )
        _consent_event(
            store_id=customer.store_id,
            customer=customer,
            channel=Channel.SMS,
            action="opt_out",
            source=source,
            address=phone,
            at=at,
            detail=detail,
        )
    return len(customers)


@transaction.atomic
def consent_sms_opt_in(*, phone: str, at: dt.datetime, source: str, detail: str = "") -> int:
    """START from a number that had replied STOP: SMS resumes for those customers (and
    only them: START never opts in someone who never opted in)."""
    stores = list(
        Suppression.objects.filter(
            channel=Channel.SMS, address=phone, reason=Suppression.Reason.STOP
        ).values_list("store_id", flat=True)
    )
    customers = list(Customer.objects.filter(phone=phone, store_id__in=stores))
    for customer in customers:
        Customer.objects.filter(pk=customer.pk).update(sms_opt_in=True)
        _consent_event(
            store_id=customer.store_id,
            customer=customer,
            channel=Channel.SMS,
            action="opt_in",
            source=source,
            address=phone,
            at=at,
            detail=detail,
        )
    Suppression.objects.filter(channel=Channel.SMS, address=phone, store_id__in=stores).delete()
    return len(customers)


class ConsentRefused(ApplicationError):
    """Consent that cannot be given: the number replied STOP, or there is no number."""

    status_code = 409


@dataclass(frozen=True)
class ConsentChange:
    """The outcome of a consent statement: the customer's SMS consent now, whether this
    statement changed it (an event was recorded), and why not when it did not; `refused`:
    an opt-in that cannot be (STOP, no number), as opposed to one already in force or
    superseded."""

    opted_in: bool
    changed: bool
    reason: str = ""
    refused: bool = False


def _sms_consent_known_at(customer: Customer) -> dt.datetime | None:
    """The time of the newest statement of the customer's SMS consent: the last change,
    whoever made it (a STOP too), or a later repeat of the state in force."""
    changed = ConsentEvent.objects.filter(
        customer=customer, channel=Channel.SMS, action__in=("opt_in", "opt_out")
    ).aggregate(at=Max("at"))["at"]
    return max(filter(None, (changed, customer.sms_consent_at)), default=None)


@transaction.atomic
def consent_sms_set(
    *, customer: Customer, opt_in: bool, at: dt.datetime, source: str, detail: str = ""
) -> ConsentChange:
    """A statement of the customer's SMS consent as of `at` (the merchant's checkout box,
    their metadata in Stripe, their systems through our API). Recorded only when it
    changes something; one older than the last change (from any source) changes nothing,
    so statements arriving in any order end in the same state. A number that replied
    STOP stays suppressed whatever is said here: only the customer lifts that, by
    replying START. A customer without a number cannot opt in."""
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    last = _sms_consent_known_at(customer)
    if last is not None and at < last:
        return ConsentChange(
            customer.sms_opt_in,
            False,
            f"superseded: consent was stated later, at {last:%Y-%m-%d %H:%M:%S} UTC",
        )
    if customer.sms_opt_in == opt_in:
        Customer.objects.filter(pk=customer.pk).update(sms_consent_at=at)
        return ConsentChange(opt_in, False, "unchanged")
    if opt_in:
        if not customer.phone:
            return ConsentChange(False, False, "no valid phone number on file", refused=True)
        if Suppression.objects.filter(
            store_id=customer.store_id, channel=Channel.SMS, address=customer.phone
        ).exists():
            return ConsentChange(
                False,
                False,
                "the number replied STOP: only the customer can resume texts, by replying START",
                refused=True,
            )
    Customer.objects.filter(pk=customer.pk).update(sms_opt_in=opt_in, sms_consent_at=at)
    _consent_event(
        store_id=customer.store_id,
        customer=customer,
        channel=Channel.SMS,
        action="opt_in" if opt_in else "opt_out",
        source=source,
        address=customer.phone,
        at=at,
        detail=detail,
    )
    return ConsentChange(opt_in, True)


def consent_sms_signup(
    *, customer: Customer, at: dt.datetime, source: str, detail: str = ""
) -> bool:
    """The customer agreed to texts about their payments when they signed up (a consent
    box at the merchant's checkout): SMS may reach their number from now on, unless the
    number replied STOP or there is none (`consent_sms_set`). Returns whether the
    customer is opted in now."""
    return consent_sms_set(
        customer=customer, opt_in=True, at=at, source=source, detail=detail
    ).opted_in


def consent_sms_from_stripe(
    *, customer: Customer, opt_in: bool | None, news: bool, at: dt.datetime, key: str
) -> ConsentChange | None:
    """SMS consent as the merchant keeps it in the Stripe customer's metadata (`key`), from
    a customer event of `at`. `news`: the event created the customer or changed that key.
    An unchanged value repeated by an unrelated update is read only while nothing is on
    record for the customer: once consent changed (a STOP, our API), only a change of
    the metadata speaks again. None when the metadata says nothing we can read."""
    if opt_in is None:
        return None
    if not news and _sms_consent_known_at(customer) is not None:
        return None
    return consent_sms_set(
        customer=customer,
        opt_in=opt_in,
        at=at,
        source="stripe_metadata",
        detail=f"Stripe customer metadata {key}",
    )


@transaction.atomic
def email_suppress(
    *, store_id, address: str, reason: str, at: dt.datetime, source: str = "postmark"
) -> None:
    """Stop email to an address: a hard bounce (the address is dead) or a spam
    complaint (the person does not want it: their customers also opt out of email)."""
    Suppression.objects.get_or_create(
        store_id=store_id,
        channel=Channel.EMAIL,
        address=address.lower(),
        defaults={"reason": reason, "created_at": at},
    )
    for customer in Customer.objects.filter(store_id=store_id, email__iexact=address):
        if reason == Suppression.Reason.SPAM_COMPLAINT:
            Customer.objects.filter(pk=customer.pk).update(email_opt_out=True)
        _consent_event(
            store_id=store_id,
            customer=customer,
            channel=Channel.EMAIL,
            action="opt_out" if reason == Suppression.Reason.SPAM_COMPLAINT else "suppressed",
            source=source,
            address=address,
            at=at,
            detail=reason,
        )
