"""POST /webhooks/stripe/<store_id>/ — the signed front door for Stripe events."""

from __future__ import annotations

import time
import uuid

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from stores.models import Store

from .intake import MAX_BODY, WebhookRejected, stripe_event_store, stripe_event_verify

# Per-process cache of (store, decrypted secret) for a short time: saves a query and a
# decryption per event. A rotated secret takes effect within SECRET_CACHE_SECONDS.
SECRET_CACHE_SECONDS = 30
_stores: dict[uuid.UUID, tuple[float, Store]] = {}


def _store_for_webhook(store_id: uuid.UUID) -> Store | None:
    now = time.monotonic()
    hit = _stores.get(store_id)
    if hit and now - hit[0] < SECRET_CACHE_SECONDS:
        return hit[1]
    store = Store.objects.filter(pk=store_id).only("id", "stripe_webhook_secret").first()
    if store is not None:
        if len(_stores) > 10_000:
            _stores.clear()
        _stores[store_id] = (now, store)
    return store


def _reject(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0  # the body read is bounded by the check after it


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest, store_id: str) -> JsonResponse:
    try:
        store_uuid = uuid.UUID(store_id)
    except ValueError:
        return _reject(404, "unknown_store", "No store has this webhook address.")
    store = _store_for_webhook(store_uuid)
    if store is None:
        return _reject(404, "unknown_store", "No store has this webhook address.")
    if _content_length(request) > MAX_BODY:
        return _reject(413, "too_large", "Body larger than 1 MiB.")
    body = request.body
    try:
        event = stripe_event_verify(
            store=store, body=body, signature=request.headers.get("Stripe-Signature", "")
        )
    except WebhookRejected as exc:
        return _reject(400, exc.code, exc.message)
    # One INSERT: the intake workers claim the stored event from the table
    # (recovery.intake.stripe_events_work), so nothing else waits on this request.
    _, created = stripe_event_store(store=store, event=event, body=body.decode())
    return JsonResponse({"received": True, "duplicate": not created})
