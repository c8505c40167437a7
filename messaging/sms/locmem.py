from __future__ import annotations

import uuid

from . import SmsMessage, SmsResult


class SmsBackend:
    """Keeps each SMS in `messaging.sms.outbox` (tests), like Django's locmem email."""

    name = "locmem"

    def __init__(self, **kwargs):
        pass

    def send(self, *, to: str, body: str, status_callback: str = "") -> SmsResult:
        from messaging import sms

        sms.outbox.append(SmsMessage(to=to, body=body, status_callback=status_callback))
        return SmsResult(provider=self.name, provider_id=f"SMlocmem{uuid.uuid4().hex[:24]}")
