"""Provider callbacks: Twilio (status, inbound) and Postmark (delivery, bounce, open,
click, spam complaint). Each is verified before anything changes; a forged callback gets
a 4xx and changes nothing."""

from __future__ import annotations

import base64
import hmac
import json
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from . import services

logger = logging.getLogger(__name__)


def _twilio_verified(request: HttpRequest) -> bool:
    """X-Twilio-Signature over the URL Twilio called and the POST parameters. The URL is
    our public address (SITE_URL) plus the path: behind a proxy, the one Django sees
    may differ from the one Twilio signed."""
    token = settings.TWILIO_AUTH_TOKEN
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature:
        return False
    validator = RequestValidator(token)
    params = request.POST.dict()
    urls = {settings.SITE_URL.rstrip("/") + request.get_full_path(), request.build_absolute_uri()}
    return any(validator.validate(url, params, signature) for url in urls)


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    if not _twilio_verified(request):
        return HttpResponse("invalid signature", status=403)
    services.twilio_status_record(data=request.POST.dict(), at=timezone.now())
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    if not _twilio_verified(request):
        return HttpResponse("invalid signature", status=403)
    keyword, customers = services.twilio_inbound_record(data=request.POST.dict(), at=timezone.now())
    reply = MessagingResponse()
    if keyword == "help":
        stores = sorted({c.store.name for c in customers}) or ["your store"]
        reply.message(
            f"Payment reminders from {', '.join(stores)}. Reply STOP to unsubscribe, "
            "START to resubscribe. Msg&data rates may apply."
        )
    # STOP and START are confirmed by Twilio's own opt-out handling; no second reply.
    return HttpResponse(str(reply), content_type="application/xml")


def _postmark_verified(request: HttpRequest) -> bool:
    """The shared secret, as the password of HTTP Basic auth (set it in the webhook URL,
    https://recoup:<secret>@host/webhooks/postmark/) or in an X-Recoup-Webhook-Secret
    header (Postmark's custom webhook headers)."""
    secret = settings.POSTMARK_WEBHOOK_SECRET
    if not secret:
        return False
    given = request.headers.get("X-Recoup-Webhook-Secret", "")
    auth = request.headers.get("Authorization", "")
    if not given and auth.startswith("Basic "):
        try:
            given = base64.b64decode(auth[6:]).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    return bool(given) and hmac.compare_digest(given.encode(), secret.encode())


@csrf_exempt
@require_POST
def postmark_webhook(request: HttpRequest) -> HttpResponse:
    if not _postmark_verified(request):
        response = HttpResponse("invalid credentials", status=401)
        response["WWW-Authenticate"] = 'Basic realm="postmark"'
        return response
    try:
        data = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "body is not JSON"}, status=400)
    if not isinstance(data, dict):
        return JsonResponse({"error": "expected one webhook record"}, status=400)
    message = services.postmark_event_record(data=data, at=timezone.now())
    return JsonResponse({"ok": True, "matched": message is not None})
