"""Signed card-update links: /pay/<token>/.

A token is Django's signing (its own salt, so no other signed value of the project can
stand in for it) over [store id, customer id, case id or 0, the customer's link version,
link ref]. The link ref is a random value drawn for each link made: the message that
carries the link stores it in its `pay_url`, so a visit tells which message (and so which
channel) brought the customer (`link_message`). Tokens made before the ref existed (four
items) stay valid.
It is refused when the signature is wrong, after 14 days, after the case's window ends,
when the customer's `link_version` was bumped (revoking every link sent so far), and
when the customer or case does not belong to the store it names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

from recovery.models import RecoveryCase
from stores.models import Store
from subscriptions.models import Customer

SALT = "recoup.messaging.pay-link.v1"
MAX_AGE = dt.timedelta(days=14)


@dataclass
class PayLink:
    store: Store
    customer: Customer
    case: RecoveryCase | None
    issued_at: dt.datetime
    expires_at: dt.datetime
    token: str
    ref: str = ""  # the link's own random ref ("" for a token made before refs)


class LinkRefused(Exception):
    """reason: tampered | expired | revoked | unknown. `customer` is set when the token
    was genuinely ours (expired or revoked), so a fresh link can go to the contact on file."""

    def __init__(self, reason: str, *, customer: Customer | None = None):
        super().__init__(reason)
        self.reason = reason
        self.customer = customer


def pay_token_make(*, customer: Customer, case: RecoveryCase | None = None) -> str:
    payload = [
        customer.store_id.hex,
        customer.pk,
        case.pk if case else 0,
        customer.link_version,
        secrets.token_urlsafe(6),
    ]
    return signing.dumps(payload, salt=SALT, compress=True)


def pay_url(*, customer: Customer, case: RecoveryCase | None = None) -> str:
    token = pay_token_make(customer=customer, case=case)
    return settings.SITE_URL.rstrip("/") + reverse("pay", args=[token])


def token_fingerprint(token: str) -> str:
    """A short, non-reversible name for a token (rate-limit keys, logs)."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def _records(payload) -> tuple[Store, Customer, RecoveryCase | None] | None:
    try:
        store_hex, customer_pk, case_pk, version = payload[:4]
        if len(payload) not in (4, 5):
            return None
        customer = Customer.objects.select_related("store", "default_payment_method").get(
            pk=int(customer_pk), store_id=str(store_hex)
        )
    except (ValueError, TypeError, Customer.DoesNotExist, Exception):
        return None
    case = None
    if case_pk:
        case = (
            RecoveryCase.objects.select_related("invoice", "subscription", "order")
            .filter(pk=int(case_pk), customer=customer, store_id=customer.store_id)
            .first()
        )
        if case is None:
            return None
    return customer.store, customer, case


def pay_link_resolve(*, token: str, now: dt.datetime) -> PayLink:
    """The link a token stands for, or LinkRefused with the reason."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=MAX_AGE)
        expired = False
    except signing.SignatureExpired:
        payload, expired = signing.loads(token, salt=SALT), True
    except signing.BadSignature as exc:
        raise LinkRefused("tampered") from exc
    found = _records(payload)
    if found is None:
        raise LinkRefused("unknown")
    store, customer, case = found
    issued = dt.datetime.fromtimestamp(signing.b62_decode(token.split(":")[-2]), tz=dt.UTC)
    expires = issued + MAX_AGE
    if case is not None and case.status != RecoveryCase.Status.RECOVERED:
        # A recovered case's link keeps working (to say "all paid"); others end with
        # the recovery window.
        expires = min(expires, case.window_end)
    if int(payload[3]) != customer.link_version:
        raise LinkRefused("revoked", customer=customer)
    if expired or now >= expires:
        raise LinkRefused("expired", customer=customer)
    return PayLink(
        store=store,
        customer=customer,
        case=case,
        issued_at=issued,
        expires_at=expires,
        token=token,
        ref=str(payload[4]) if len(payload) > 4 else "",
    )


def link_message(link: PayLink):
    """The message whose link this is: one of the link's own customer's messages in the
    link's own store (a token can never point at another store's or customer's message)
    whose `pay_url` carries this very token. None when no message or more than one does
    (a link made for a page rather than a message; an old token, without a ref, shared by
    two messages made in the same second)."""
    from .models import Message

    found = list(
        Message.objects.filter(
            store=link.store, customer=link.customer, pay_url__endswith=f"/{link.token}/"
        ).only("pk", "channel", "store_id", "customer_id", "visited_at", "clicked_at")[:2]
    )
    return found[0] if len(found) == 1 else None
