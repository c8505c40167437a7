"""Recovery's ports: how the decision core reaches the apps above it without importing them.

Recovery imports nothing of messaging, orders, support or analytics (import-linter holds it;
see pyproject.toml). Those apps import recovery's events and commands, and each plugs its
side in at start, in its AppConfig.ready():

- **Events** (`recovery.domain.events`): recovery `publish`es what happened to a case; each
  subscriber runs either at once, in the publisher's transaction (orders: stock changes with
  the close, in the lock order case, then order, then SKUs, then holds; messaging records
  the due message, and delivers it after the commit), or after the commit (support: the
  queue item leaves with the case's result, not under the case's lock).
- **Asks** (`Port`): one function that another app provides, for what recovery needs answered
  or done: the order behind a Stripe object, the pass's jobs of the other apps, an expiry
  warning, SMS consent read from Stripe.

A port nobody plugged, or an event nobody subscribes to that must be handled, is a wiring
error: the system check (`recovery.E001`) reports it at start, and the call or the publish
raises (never a silent skip).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from .domain import events

_subscribers: dict[type, list[tuple[Callable[[Any], None], bool]]] = {}


def subscribe(event_type: type, handler: Callable[[Any], None], *, on_commit: bool = False):
    """Run `handler(event)` for every published `event_type`: in the publisher's transaction,
    or after it commits (`on_commit`). Subscribing the same handler twice is a no-op."""
    handlers = _subscribers.setdefault(event_type, [])
    if (handler, on_commit) not in handlers:
        handlers.append((handler, on_commit))


def publish(event) -> None:
    """Hand `event` to its subscribers, in the order they subscribed. An event the product
    must handle (HANDLED) with no subscriber raises: stock or a message silently left
    unchanged would be worse than a failed write."""
    handlers = _subscribers.get(type(event), ())
    if not handlers and type(event) in HANDLED:
        raise ImproperlyConfigured(
            f"nothing subscribes to {type(event).__name__}: the app that handles it subscribes "
            "in its AppConfig.ready(); is it in INSTALLED_APPS?"
        )
    for handler, on_commit in handlers:
        if on_commit:
            transaction.on_commit(partial(handler, event))
        else:
            handler(event)


def subscribers(event_type: type) -> list[Callable[[Any], None]]:
    return [handler for handler, _ in _subscribers.get(event_type, ())]


class Port:
    """One thing recovery asks of another app; that app plugs the function in at start."""

    def __init__(self, name: str, provider: str):
        self.name = name
        self.provider = provider
        self._fn: Callable | None = None

    def plug(self, fn: Callable) -> None:
        self._fn = fn

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            raise ImproperlyConfigured(
                f"recovery's port {self.name!r} is not plugged: the {self.provider} app "
                "plugs it in its AppConfig.ready(); is it in INSTALLED_APPS?"
            )
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Port {self.name} ({self.provider})>"


# The order behind a Stripe object: renewal_order(store, subscription, invoice data) and
# payment_order(store, PaymentIntent or Charge data), each an Order or None.
renewal_order = Port("renewal_order", "orders")
payment_order = Port("payment_order", "orders")
# The scheduler pass's jobs of the other apps, each (now=) -> how many it did.
holds_expire = Port("holds_expire", "orders")
messages_send_scheduled = Port("messages_send_scheduled", "messaging")
queue_settle_closed = Port("queue_settle_closed", "support")
rollups_refresh = Port("rollups_refresh", "analytics")
# Pre-dunning's warning to a customer whose default card expires soon.
expiry_warning_send = Port("expiry_warning_send", "messaging")
# A Stripe customer's SMS consent (its metadata), recorded on our customer.
sms_consent_from_stripe = Port("sms_consent_from_stripe", "messaging")

PORTS = (
    renewal_order,
    payment_order,
    holds_expire,
    messages_send_scheduled,
    queue_settle_closed,
    rollups_refresh,
    expiry_warning_send,
    sms_consent_from_stripe,
)
# Events that must have a subscriber for the product to be whole.
HANDLED = (
    events.CaseClassified,
    events.PaymentFailed,
    events.AccessRestricted,
    *events.CASE_CLOSED,
    events.MessageDue,
    events.MessagesDue,
    events.OrderPaid,
    events.CaseNoted,
)


def wiring_problems() -> list[str]:
    """What is not plugged or not subscribed (the system check reports it)."""
    problems = [f"port {p.name!r} ({p.provider}) is not plugged" for p in PORTS if p._fn is None]
    problems += [f"nothing subscribes to {e.__name__}" for e in HANDLED if not subscribers(e)]
    return problems
