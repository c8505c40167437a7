"""The messaging app's side of recovery's ports (`recovery.ports`), plugged in at app start.

A due message is decided, rendered and recorded in the publisher's transaction (the case is
locked, so one step is recorded once); it is handed to Postmark or Twilio only after that
transaction commits (`messaging.sending`, `messaging.delivery`, `transaction.on_commit`).
"""

from __future__ import annotations

from recovery import ports
from recovery.domain import events

from .consent import consent_sms_from_stripe
from .delivery import messages_send_scheduled
from .sending import message_send_for_case, message_send_predunning, messages_send_for_cases


def _message_due(event: events.MessageDue) -> None:
    message_send_for_case(case=event.case, purpose=event.purpose, at=event.at)


def _messages_due(event: events.MessagesDue) -> None:
    messages_send_for_cases(cases=list(event.cases), purpose=event.purpose, at=event.at)


def connect() -> None:
    ports.subscribe(events.MessageDue, _message_due)
    ports.subscribe(events.MessagesDue, _messages_due)
    ports.messages_send_scheduled.plug(messages_send_scheduled)
    ports.expiry_warning_send.plug(message_send_predunning)
    ports.sms_consent_from_stripe.plug(consent_sms_from_stripe)
