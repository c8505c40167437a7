"""Customer messaging's writes, by concern (this module only re-exports them):

- `sending`: the one way a message leaves Recoup. Deciding, rendering and recording a
  due message (`message_send_for_case`, `messages_send_for_cases` for a scheduler
  batch, `message_send_predunning`, `message_send_agent_follow_up`, `message_send`);
- `delivery`: handing recorded messages to Postmark or Twilio after the commit, and
  recording the result (`message_deliver`, `messages_deliver`, and
  `messages_send_scheduled`, the scheduler's sweep for SMS held back by quiet hours);
- `policy`: what both apply: the dunning purposes, caps, gap and quiet hours, what
  blocks email or SMS to a customer, the line a message adds to its case's timeline;
- `consent`: SMS consent (STOP, START, the merchant's statements) and email suppression;
- `provider_events`: Twilio's status callbacks and inbound SMS, Postmark's webhooks;
- `template_editing`: checking, saving, resetting and previewing a store's templates.

Their imports run one way: policy and consent import none of the others; delivery
imports policy and consent; sending imports delivery; provider_events and
template_editing import sending.
"""

from .consent import (
    ConsentChange,
    ConsentRefused,
    consent_sms_from_stripe,
    consent_sms_opt_in,
    consent_sms_opt_out,
    consent_sms_set,
    consent_sms_signup,
    email_suppress,
)
from .delivery import message_deliver, messages_deliver, messages_send_scheduled
from .policy import quiet_hours_end
from .provider_events import postmark_event_record, twilio_inbound_record, twilio_status_record
from .sending import (
    message_send,
    message_send_agent_follow_up,
    message_send_for_case,
    message_send_predunning,
    messages_send_for_cases,
)
from .template_editing import (
    message_template_preview,
    message_template_reset,
    message_template_save,
    message_template_validate,
)

__all__ = [
    "ConsentChange",
    "ConsentRefused",
    "consent_sms_from_stripe",
    "consent_sms_opt_in",
    "consent_sms_opt_out",
    "consent_sms_set",
    "consent_sms_signup",
    "email_suppress",
    "message_deliver",
    "message_send",
    "message_send_agent_follow_up",
    "message_send_for_case",
    "message_send_predunning",
    "message_template_preview",
    "message_template_reset",
    "message_template_save",
    "message_template_validate",
    "messages_deliver",
    "messages_send_for_cases",
    "messages_send_scheduled",
    "postmark_event_record",
    "quiet_hours_end",
    "twilio_inbound_record",
    "twilio_status_record",
]
