"""An agent's personal email to a customer, sent through the messaging service."""

from __future__ import annotations

import datetime as dt

from common.errors import ApplicationError
from messaging.sending import message_send_agent_follow_up
from recovery.models import RecoveryCase


def personal_email_send(
    *, case: RecoveryCase, user, note: str, at: dt.datetime, idempotency_key: str
) -> str:
    """Send the agent's note in the store's agent_follow_up template. Consent and
    suppressions are the messaging service's; it records the Message (and a refusal
    with its reason). Returns a reference to the message."""

    name = user.get_full_name() or user.get_username()
    message = message_send_agent_follow_up(
        case=case, agent_name=name, note=note, at=at, idempotency_key=idempotency_key
    )
    if message.status in ("skipped", "failed", "bounced"):
        raise ApplicationError(
            f"The email was not sent: {message.status_reason or message.get_status_display()}."
        )
    return f"message {message.pk}"
