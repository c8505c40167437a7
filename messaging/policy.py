"""The rules both deciding a message (`messaging.sending`) and delivering it
(`messaging.delivery`) apply: the purposes that are dunning, the SMS steps, the caps, the
gap and the quiet hours read from the settings, what blocks email or SMS to a customer
(`Known`: the same facts read once for a batch of emails), and the line a message adds to
its case's timeline.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator

from django.conf import settings
from django.db.models import Count, Max, Q

from recovery.commands import case_event_record
from recovery.models import RecoveryCase
from stores.models import Store
from subscriptions.models import Customer

from . import rendering, selectors
from .models import Channel, Message, Purpose, Suppression

DUNNING = {
    Purpose.SOFT_FIRST,
    Purpose.SOFT_REMINDER,
    Purpose.SHIPMENT_AT_RISK,
    Purpose.FINAL_NOTICE,
    Purpose.CARD_UPDATE,
    Purpose.AUTHENTICATION,
}
# SMS (opted-in customers only): one concise link message early, one before suspension.
SMS_EARLY = {Purpose.SOFT_FIRST, Purpose.CARD_UPDATE, Purpose.AUTHENTICATION}
SMS_LATE = {Purpose.FINAL_NOTICE}
NO_LINK = {Purpose.RECOVERED}


# ------------------------------------------------------------------ configuration


def _max_per_case(channel: str) -> int:
    if channel == Channel.SMS:
        return int(getattr(settings, "MESSAGING_MAX_SMS_PER_CASE", 2))
    return int(getattr(settings, "MESSAGING_MAX_EMAILS_PER_CASE", 4))


def _min_gap() -> dt.timedelta:
    return dt.timedelta(hours=float(getattr(settings, "MESSAGING_MIN_HOURS_BETWEEN", 48)))


def _quiet_hours() -> tuple[int, int]:
    start, end = getattr(settings, "MESSAGING_SMS_QUIET_HOURS", (21, 8))
    return int(start), int(end)


def quiet_hours_end(*, at: dt.datetime, tz: str) -> dt.datetime | None:
    """When the customer's quiet hours (default 21:00–08:00 local) end, if `at` is in
    them; None if it is daytime for them."""
    start, end = _quiet_hours()
    zone = rendering.zone(tz)
    local = at.astimezone(zone)
    hour = local.hour + local.minute / 60
    quiet = (hour >= start or hour < end) if start > end else (start <= hour < end)
    if not quiet:
        return None
    morning = dt.datetime.combine(local.date(), dt.time(end), tzinfo=zone)
    if morning <= local:
        morning = dt.datetime.combine(
            local.date() + dt.timedelta(days=1), dt.time(end), tzinfo=zone
        )
    return morning.astimezone(dt.UTC)


# ------------------------------------------------------------------ who may be reached


def _case_keys(address: str) -> tuple[str, ...]:
    return (address.upper(), address.lower(), address.casefold())


class Known:
    """What deciding, rendering and delivering a batch of emails reads, read once for the
    batch: suppressed addresses, each case's dunning emails so far, and (as they are
    asked for) the stores' settings and templates."""

    def __init__(self, *, customers, case_ids=()) -> None:
        addresses = {c.email for c in customers if c.email}
        self.suppressed: dict[tuple, Suppression] = {}
        if addresses:
            # The database decides what matches, as `address__iexact` does one at a time
            # (its idea of case is not Python's: SQLite folds only ASCII letters); each
            # row found is then known by every spelling of its case.
            match = functools.reduce(
                operator.or_,
                (Q(address__iexact=a) for a in addresses),
                Q(address__in={a.lower() for a in addresses}),  # as email_suppress stores it
            )
            for row in (
                Suppression.objects.filter(
                    store_id__in={c.store_id for c in customers}, channel=Channel.EMAIL
                )
                .filter(match)
                .order_by("pk")
            ):
                for key in _case_keys(row.address):
                    self.suppressed.setdefault((row.store_id, key), row)
        self.history = {
            row["case_id"]: (row["n"], row["last"])
            for row in Message.objects.filter(
                case_id__in=case_ids,
                channel=Channel.EMAIL,
                purpose__in=DUNNING,
                status__in=selectors.ACTIVE_STATUSES,
            )
            .values("case_id")
            .annotate(n=Count("pk"), last=Max("created_at"))
        }
        self._confs: dict = {}
        self._templates: dict = {}

    def suppression(self, customer: Customer) -> Suppression | None:
        for key in _case_keys(customer.email):
            found = self.suppressed.get((customer.store_id, key))
            if found is not None:
                return found
        return None

    def conf(self, store: Store):
        if store.pk not in self._confs:
            self._confs[store.pk] = selectors.messaging_settings(store=store)
        return self._confs[store.pk]

    def template(self, *, store: Store, purpose: str, channel: str, locale: str):
        key = (store.pk, purpose, channel, locale)
        if key not in self._templates:
            self._templates[key] = selectors.template_for(
                store=store, purpose=purpose, channel=channel, locale=locale
            )
        return self._templates[key]


def _email_blocked(customer: Customer, known: Known | None = None) -> str:
    if not customer.email:
        return "no email address on file"
    if customer.email_opt_out:
        return "the customer opted out of email"
    if known is not None:
        suppressed = known.suppression(customer)
    else:
        # Stored lower-cased (email_suppress); iexact for any other spelling. SQLite's
        # iexact folds only ASCII letters, so the lower-cased form is asked for too.
        suppressed = (
            Suppression.objects.filter(store_id=customer.store_id, channel=Channel.EMAIL)
            .filter(Q(address=customer.email.lower()) | Q(address__iexact=customer.email))
            .order_by("pk")
            .first()
        )
    if suppressed:
        return f"the address is suppressed ({suppressed.get_reason_display().lower()})"
    return ""


def _sms_blocked(customer: Customer) -> str:
    if not customer.sms_opt_in:
        return "the customer has not opted in to SMS"
    if not customer.phone:
        return "no phone number on file"
    if Suppression.objects.filter(
        store_id=customer.store_id, channel=Channel.SMS, address=customer.phone
    ).exists():
        return "the number replied STOP"
    if not selectors.messaging_settings(store=customer.store).sms_enabled:
        return "SMS is turned off for this store"
    return ""


# ------------------------------------------------------------------ the case's timeline


def _case_event(
    *, case: RecoveryCase, kind: str, at: dt.datetime, text: str, message: Message
) -> None:
    if not case.is_open:
        # A closed case's timeline ends with its close (the engine's rule); messages
        # sent after it, such as the thank-you, stay on the Message rows.
        return
    case_event_record(
        case=case,
        kind=kind,
        at=at,
        message=text,
        data={"message": message.pk, "channel": message.channel, "purpose": message.purpose},
    )
