"""The domain's names: why a message goes out (Purpose).

The database's choices (`messaging.models.Purpose`) and the templates take their values
from here, so planning and messaging speak of one list.
"""

from __future__ import annotations

from enum import StrEnum


class Purpose(StrEnum):
    """Why a message goes out."""

    PREDUNNING = "predunning_expiry"
    SOFT_FIRST = "soft_first_notice"
    SOFT_REMINDER = "soft_reminder"
    SHIPMENT_AT_RISK = "shipment_at_risk"
    FINAL_NOTICE = "final_notice"
    CARD_UPDATE = "card_update_request"
    AUTHENTICATION = "authentication_request"
    RECOVERED = "recovered_thanks"
    AGENT = "agent_follow_up"
    FRESH_LINK = "fresh_link"
