"""The webhook's side: verify an event's signature and store it exactly once."""

from __future__ import annotations

import json
from contextlib import nullcontext

import stripe
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from common.bodies import BodyRejected, json_loads_bounded
from common.bulk import binding_cursor
from common.errors import ApplicationError
from stores.models import Store

from .. import event_shapes
from ..models import StripeEvent
from ..stripe_payloads import (
    ts,
)

MAX_BODY = 1024 * 1024  # Stripe events are well under this
MALFORMED = "malformed: "  # the error of an event not shaped as Stripe sends it


class WebhookRejected(ApplicationError):
    """A delivery we refuse: the message is the one-line reason sent back."""


def stripe_event_verify(*, store: Store, body: bytes, signature: str) -> dict:
    """Check the Stripe-Signature header against the store's secret; return the event."""
    if not store.stripe_webhook_secret:
        raise WebhookRejected(
            "This store has no webhook signing secret configured.", code="no_secret"
        )
    if not signature:
        raise WebhookRejected("Missing Stripe-Signature header.", code="no_signature")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("Body is not UTF-8 JSON.", code="bad_body") from exc
    try:
        stripe.WebhookSignature.verify_header(
            text,
            signature,
            store.stripe_webhook_secret,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE,
        )
    except stripe.SignatureVerificationError as exc:
        reason = str(exc.user_message or exc).split("\n")[0]
        raise WebhookRejected(
            f"Signature verification failed: {reason}", code="bad_signature"
        ) from exc
    except (TypeError, ValueError) as exc:
        # A header the SDK cannot even compare (`v1=ü`: compare_digest takes ASCII only).
        raise WebhookRejected(
            "Signature verification failed: malformed Stripe-Signature header.",
            code="bad_signature",
        ) from exc
    try:
        event = json_loads_bounded(text, max_bytes=MAX_BODY)
    except BodyRejected as exc:
        raise WebhookRejected(str(exc), code="bad_body") from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookRejected("Body is not a Stripe event (needs id and type).", code="bad_body")
    if event_shapes.stripe_id(event["id"]) or event_shapes.text(100)(event["type"]):
        raise WebhookRejected(
            "Body is not a Stripe event (id must be a Stripe id, type a string).", code="bad_body"
        )
    if not isinstance(event.get("data"), dict) or not isinstance(event["data"].get("object"), dict):
        raise WebhookRejected("Event has no data.object.", code="bad_body")
    return event


def stripe_event_store(
    *, store: Store, event: dict, body: str | None = None
) -> tuple[StripeEvent | None, bool]:
    """Store an event exactly once. Returns (event, created); (None, False) for a duplicate.

    The unique constraint on (store, event_id) decides under concurrency: of fifty
    simultaneous deliveries exactly one INSERT succeeds.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return None, _event_insert(store=store, event=event, body=body)
    # Outside a transaction (the webhook view) the INSERT is its own statement: no
    # BEGIN/COMMIT round trips. Inside one, a savepoint keeps a duplicate harmless.
    guard = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with guard:
            row = StripeEvent.objects.create(
                store=store,
                event_id=str(event["id"])[:255],
                type=str(event["type"])[:100],
                payload=event,
                stripe_created=ts(event.get("created")),
                received_at=timezone.now(),
            )
    except IntegrityError:
        return None, False
    return row, True


_INSERT = (
    "INSERT INTO recovery_stripeevent (store_id, event_id, type, payload, stripe_created,"
    " received_at, outcome, error, attempts) VALUES (%s, %s, %s, %s::jsonb, %s, %s,"
    " 'pending', '', 0) ON CONFLICT (store_id, event_id) DO NOTHING RETURNING id"
)


def _event_insert(*, store: Store, event: dict, body: str | None) -> bool:
    """The webhook's one statement on PostgreSQL: the verified body itself as the JSONB
    payload (not the parsed event serialised again), a duplicate answered by the
    unique index without an error. True when the row is new.

    One round trip per event. Django's connection health check (CONN_HEALTH_CHECKS)
    would add a `SELECT 1` before it on every request; here the INSERT is the check:
    on a connection that turns out dead it is sent once more on a new one. That is
    safe because the statement is idempotent (a row stored before the connection died
    is found by the unique index, and the second answer says duplicate).
    """
    params = [
        store.pk,
        event["id"],
        event["type"],
        body if body is not None else json.dumps(event),
        ts(event.get("created")),
        timezone.now(),
    ]
    try:
        return _insert_once(params)
    except (OperationalError, InterfaceError):
        raw = connection.connection
        if raw is not None and not raw.closed and not raw.broken:
            raise  # the database answered (a timeout, a lock): not a dropped connection
        connection.close()
        return _insert_once(params)


def _insert_once(params: list) -> bool:
    # Parameters bound by the server, not spliced into the SQL: PostgreSQL does not parse
    # the body twice (once as a quoted literal, once as JSON).
    with binding_cursor(check_health=False) as cursor:
        cursor.execute(_INSERT, params)
        return cursor.fetchone() is not None
