"""SMS backends, chosen by settings.SMS_BACKEND like Django's email backends.

- messaging.sms.console.SmsBackend: prints each message (development).
- messaging.sms.locmem.SmsBackend: keeps them in `messaging.sms.outbox` (tests).
- messaging.sms.twilio.SmsBackend: sends through Twilio (TWILIO_* settings).

A backend's `send(*, to, body, status_callback="")` returns a SmsResult with the
provider's id, or raises SmsError.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.utils.module_loading import import_string

outbox: list = []  # the locmem backend's sent messages


@dataclass
class SmsResult:
    provider: str
    provider_id: str = ""
    status: str = "sent"


@dataclass
class SmsMessage:
    to: str
    body: str
    status_callback: str = ""


class SmsError(Exception):
    """The provider refused the message (bad number, not permitted, ...)."""

    def __init__(self, message: str, *, code: str = "", permanent: bool = False):
        super().__init__(message)
        self.code = code
        self.permanent = permanent


def get_backend(path: str | None = None, **kwargs):
    return import_string(path or settings.SMS_BACKEND)(**kwargs)
