"""Provider callbacks: Twilio (status, inbound) and Postmark (delivery, bounce, open,
click, spam complaint). Each is verified before anything changes; a forged callback gets
a 4xx and changes nothing."""

from __future__ import annotations

import base64
import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from common.bodies import BodyRejected, json_loads_bounded

from . import provider_events

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


TWILIO_MAX_BODY = 64 * 1024
# The parameters Recoup reads from Twilio's callbacks, with the longest Twilio sends.
TWILIO_FIELDS = {
    "MessageSid": 64,
    "SmsSid": 64,
    "MessageStatus": 32,
    "SmsStatus": 32,
    "ErrorCode": 16,
    "From": 32,
    "Body": 1600,
}


def _twilio_refused(request: HttpRequest) -> HttpResponse | None:
    """A 4xx for a callback that is too large, forged, or not shaped as Twilio's; None
    for one to record. Size first: the signature check reads the whole form."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > TWILIO_MAX_BODY:
        return HttpResponse("body too large", status=413)
    if not _twilio_verified(request):
        return HttpResponse("invalid signature", status=403)
    if any("\x00" in value for value in request.POST.values()):
        return HttpResponse("a parameter contains a NUL character", status=400)
    for name, longest in TWILIO_FIELDS.items():
        if len(request.POST.get(name, "")) > longest:
            return HttpResponse(f"{name} is longer than {longest} characters", status=400)
    return None


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    if refused := _twilio_refused(request):
        return refused
    provider_events.twilio_status_record(data=request.POST.dict(), at=timezone.now())
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    if refused := _twilio_refused(request):
        return refused
    keyword, customers = provider_events.twilio_inbound_record(
        data=request.POST.dict(), at=timezone.now()
    )
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


POSTMARK_MAX_BODY = 512 * 1024
# The fields Recoup reads from a Postmark webhook, with the type and length Postmark sends.
POSTMARK_STRINGS = {
    "RecordType": 48,
    "MessageID": 120,
    "Email": 254,
    "Recipient": 254,
    "Type": 64,
    "DeliveredAt": 64,
    "ReceivedAt": 64,
    "BouncedAt": 64,
}


def _refused(message: str, *, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": {"code": "bad_body", "message": message}}, status=status)


def _postmark_shape_problem(data: dict) -> str:
    """Why a record is not one Postmark would send, in the fields Recoup reads; ""."""
    for name, longest in POSTMARK_STRINGS.items():
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a string."
        if value is not None and len(value) > longest:
            return f"{name} is longer than {longest} characters."
    metadata = data.get("Metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "Metadata must be an object."
    ours = (metadata or {}).get("recoup_message")
    if ours is not None and not (isinstance(ours, str | int) and not isinstance(ours, bool)):
        return "Metadata.recoup_message must be a message id."
    if data.get("Inactive") is not None and not isinstance(data["Inactive"], bool):
        return "Inactive must be true or false."
    return ""


@csrf_exempt
@require_POST
def postmark_webhook(request: HttpRequest) -> HttpResponse:
    if not _postmark_verified(request):
        response = HttpResponse("invalid credentials", status=401)
        response["WWW-Authenticate"] = 'Basic realm="postmark"'
        return response
    try:
        data = json_loads_bounded(request.body, max_bytes=POSTMARK_MAX_BODY)
    except BodyRejected as exc:
        return _refused(str(exc), status=413 if "larger" in str(exc) else 400)
    if not isinstance(data, dict):
        return _refused("Expected one webhook record (a JSON object).")
    problem = _postmark_shape_problem(data)
    if problem:
        return _refused(problem)
    message = provider_events.postmark_event_record(data=data, at=timezone.now())
    return JsonResponse({"ok": True, "matched": message is not None})
