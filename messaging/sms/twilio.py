"""Twilio through the twilio SDK's Client.

Settings, read when a backend is built: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, and either
TWILIO_MESSAGING_SERVICE_SID (preferred: sender pools, opt-out handling) or TWILIO_FROM;
TWILIO_API_BASE points the client at another address (a local test server).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from . import SmsError, SmsResult

# Twilio error codes that no retry will fix: invalid or unreachable "To", opted out.
PERMANENT_CODES = {21211, 21214, 21408, 21610, 21612, 21614, 30003, 30005, 30006, 30007}


class SmsBackend:
    name = "twilio"

    def __init__(self, *, http_client=None, **kwargs):
        sid, token = settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN
        if not sid or not token:
            raise ImproperlyConfigured(
                "SMS_BACKEND is Twilio: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN."
            )
        if not settings.TWILIO_MESSAGING_SERVICE_SID and not settings.TWILIO_FROM:
            raise ImproperlyConfigured(
                "Set TWILIO_MESSAGING_SERVICE_SID (or TWILIO_FROM, a number you own in E.164)."
            )
        self.client = Client(sid, token, http_client=http_client)
        if settings.TWILIO_API_BASE:
            self.client.api.base_url = settings.TWILIO_API_BASE

    def send(self, *, to: str, body: str, status_callback: str = "") -> SmsResult:
        params = {"to": to, "body": body}
        if settings.TWILIO_MESSAGING_SERVICE_SID:
            params["messaging_service_sid"] = settings.TWILIO_MESSAGING_SERVICE_SID
        else:
            params["from_"] = settings.TWILIO_FROM
        if status_callback:
            params["status_callback"] = status_callback
        try:
            message = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise SmsError(
                f"Twilio refused the message: {exc.msg}",
                code=str(exc.code or ""),
                permanent=exc.code in PERMANENT_CODES,
            ) from exc
        except TwilioException as exc:
            raise SmsError(f"Twilio could not be reached: {exc}") from exc
        return SmsResult(provider=self.name, provider_id=message.sid, status=message.status or "")
