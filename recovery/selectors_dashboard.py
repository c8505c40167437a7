"""Reads for the dashboard's case pages: the filtered list and the case timeline."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from django.db.models import Q, QuerySet
from django.utils import timezone

from analytics.selectors import message_model
from orders.models import InventoryHold
from stores.models import Store

from .models import RecoveryCase

SORTS = {
    "newest": ("-opened_at", "-id"),
    "oldest": ("opened_at", "id"),
    "amount": ("-amount", "-id"),
    "window": ("window_end", "id"),
}
# A case number as typed in the search box: ASCII digits only (str.isdigit takes "²"),
# and at most 18 of them, which always fits the bigint primary key.
CASE_ID = re.compile(r"[0-9]{1,18}")


def cases_filtered(*, store: Store, filters: dict) -> QuerySet[RecoveryCase]:
    """A store's cases by the list page's filters, as recovery.forms.CaseFilterForm
    cleans them (amounts in minor units, days bounded, `escalated` a bool)."""
    qs = RecoveryCase.objects.filter(store=store).select_related("customer", "subscription")
    if filters.get("status"):
        qs = qs.filter(status=filters["status"])
    if filters.get("track"):
        qs = qs.filter(track=filters["track"])
    if filters.get("decline_code"):
        qs = qs.filter(decline_code=filters["decline_code"])
    if filters.get("escalated") is not None:
        qs = qs.filter(escalated=filters["escalated"])
    if filters.get("amount_min") is not None:
        qs = qs.filter(amount__gte=filters["amount_min"])
    if filters.get("amount_max") is not None:
        qs = qs.filter(amount__lte=filters["amount_max"])
    tz = store.tzinfo
    if filters.get("opened_from"):
        qs = qs.filter(opened_at__gte=dt.datetime.combine(filters["opened_from"], dt.time(), tz))
    if filters.get("opened_to"):
        end = dt.datetime.combine(filters["opened_to"] + dt.timedelta(days=1), dt.time(), tz)
        qs = qs.filter(opened_at__lt=end)
    if filters.get("q"):
        q = filters["q"]
        match = Q(customer__stripe_id=q) | Q(customer__email__iexact=q)
        if q.startswith("in_"):
            match |= Q(invoice__stripe_id=q)
        if q.startswith("pi_"):
            match |= Q(payment_intent_id=q)
        if CASE_ID.fullmatch(q):
            match |= Q(pk=int(q))
        qs = qs.filter(match)
    return qs.order_by(*SORTS.get(filters.get("sort") or "newest", SORTS["newest"]))


@dataclass
class Entry:
    at: dt.datetime
    kind: str  # attempt | message | event | note | hold
    title: str
    detail: str = ""
    actor: str = ""
    css: str = ""
    obj: object = None


def case_timeline(*, case: RecoveryCase) -> list[Entry]:
    """Attempts, messages, holds and events of a case in time order. Uses the case's
    prefetched attempts and events; messages and holds cost one query each."""
    entries: list[Entry] = []
    for a in case.attempts.all():
        code = a.decline_code or a.failure_code
        detail = []
        if code:
            detail.append(f"decline {code}")
        if a.advice_code:
            detail.append(f"advice {a.advice_code}")
        if a.network_advice_code:
            detail.append(f"network advice {a.network_advice_code}")
        if a.card_brand or a.card_last4:
            detail.append(f"{a.card_brand} •••• {a.card_last4}".strip())
        if a.reason:
            detail.append(f"why then: {a.reason}")
        entries.append(
            Entry(
                at=a.attempted_at,
                kind="attempt",
                title=f"{a.get_source_display()}: {a.get_outcome_display()}",
                detail=" · ".join(detail),
                css=f"attempt {a.outcome}",
                obj=a,
            )
        )
    for e in case.events.all():
        kind = "note" if e.kind == "note" else "event"
        entries.append(
            Entry(
                at=e.at,
                kind=kind,
                title=e.message,
                detail=e.kind.replace("_", " "),
                actor=e.actor if e.actor != "system" else "",
                css=kind,
                obj=e,
            )
        )
    for m in _messages(case):
        steps = []
        for label, when in (
            ("sent", m.sent_at),
            ("delivered", m.delivered_at),
            ("opened", m.opened_at),
            ("clicked", m.clicked_at),
            ("failed", m.failed_at),
        ):
            if when:
                steps.append(f"{label} {timezone.localtime(when):%b %-d %H:%M}")
        entries.append(
            Entry(
                at=m.sent_at or m.scheduled_for or m.created_at,
                kind="message",
                title=f"{m.get_channel_display()} · {m.get_purpose_display()}: {m.get_status_display()}",
                detail=" · ".join(x for x in [m.subject, ", ".join(steps), m.status_reason] if x),
                actor=m.actor if m.actor != "system" else "",
                css="message",
                obj=m,
            )
        )
    for h in _holds(case):
        what = f"{h.quantity} × {h.sku.sku}"
        entries.append(
            Entry(
                at=h.created_at,
                kind="hold",
                title=f"Stock {h.get_status_display().lower()}: {what}",
                detail=h.reason
                + (
                    f" · until {timezone.localtime(h.held_until):%b %-d %H:%M}"
                    if h.held_until and h.status == "held"
                    else ""
                )
                + (" · released early" if h.released_early else ""),
                css="hold",
                obj=h,
            )
        )
    entries.sort(key=lambda e: e.at)
    return entries


def _messages(case: RecoveryCase):
    Message = message_model()
    if Message is None:
        return []
    return list(Message.objects.filter(case=case).order_by("created_at", "id"))


def _holds(case: RecoveryCase):
    if not case.order_id:
        return []
    return list(
        InventoryHold.objects.filter(case=case).select_related("sku").order_by("created_at")
    )
