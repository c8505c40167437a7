"""POST /webhooks/stripe/<store_id>/ — the signed front door for Stripe events."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from stores.models import Store

from .intake import WebhookRejected, stripe_event_store, stripe_event_verify
from .tasks import stripe_event_enqueue

MAX_BODY = 1024 * 1024  # Stripe events are well under this


def _reject(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest, store_id: str) -> JsonResponse:
    try:
        store_uuid = uuid.UUID(store_id)
    except ValueError:
        return _reject(404, "unknown_store", "No store has this webhook address.")
    store = Store.objects.filter(pk=store_uuid).only("id", "stripe_webhook_secret").first()
    if store is None:
        return _reject(404, "unknown_store", "No store has this webhook address.")
    if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_BODY:
        return _reject(413, "too_large", "Body larger than 1 MiB.")
    try:
        event = stripe_event_verify(
            store=store, body=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except WebhookRejected as exc:
        return _reject(400, exc.code, exc.message)
    row, created = stripe_event_store(store=store, event=event)
    if created:
        stripe_event_enqueue(row.pk)
    return JsonResponse({"received": True, "duplicate": not created})
