"""Stripe intake: verify and store events once, then apply them to our records.

Storing is one INSERT guarded by a unique constraint, so the webhook answers at once;
intake workers (`stripe_events_work`, a django-q2 schedule) claim stored events from the
table and apply them. An authentic event whose fields are not what Stripe sends is kept,
marked failed with the reason, and writes nothing (`recovery.event_shapes`).

The package, by what each part does:
- `inbox`: the webhook's signature check and the one INSERT;
- `processing`: applying one stored event (the handler registry, the locks, shared helpers);
- `invoices`, `payments`, `customers`: the handlers, by family of Stripe event;
- `worker`: the intake workers that claim stored events and apply them.
"""

from . import customers, invoices, payments  # noqa: F401  (register their handlers)
from .inbox import MAX_BODY, WebhookRejected, stripe_event_store, stripe_event_verify
from .processing import HANDLERS, MALFORMED, handles, stripe_event_process
from .worker import (
    stripe_event_reprocess_pending,
    stripe_events_claim,
    stripe_events_work,
)

__all__ = [
    "HANDLERS",
    "MALFORMED",
    "MAX_BODY",
    "WebhookRejected",
    "handles",
    "stripe_event_process",
    "stripe_event_reprocess_pending",
    "stripe_event_store",
    "stripe_event_verify",
    "stripe_events_claim",
    "stripe_events_work",
]
