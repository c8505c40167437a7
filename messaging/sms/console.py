from __future__ import annotations

import sys
import uuid

from . import SmsResult


class SmsBackend:
    """Prints each SMS to stdout (development)."""

    name = "console"

    def __init__(self, stream=None, **kwargs):
        self.stream = stream or sys.stdout

    def send(self, *, to: str, body: str, status_callback: str = "") -> SmsResult:
        self.stream.write(f"--- SMS to {to}\n{body}\n---\n")
        self.stream.flush()
        return SmsResult(provider=self.name, provider_id=f"console-{uuid.uuid4().hex[:12]}")
