"""Reads for messaging: the wording in force, a message's context, a case's messages,
the storefront banner."""

from __future__ import annotations

import datetime as dt
import re

from django.conf import settings
from django.db.models import QuerySet

from orders.selectors import case_order_summary
from recovery.models import ExpiryWarning, RecoveryCase, Track
from stores.models import Store
from subscriptions.models import Customer, PaymentMethod, Subscription

from . import rendering
from .models import Channel, Message, MessageTemplate, MessagingSettings, Purpose

ACTIVE_STATUSES = [
    Message.Status.QUEUED,
    Message.Status.SCHEDULED,
    Message.Status.SENDING,
    Message.Status.SENT,
    Message.Status.DELIVERED,
    Message.Status.BOUNCED,
]


def messaging_settings(*, store: Store) -> MessagingSettings:
    """The store's sender identity and keys, or the defaults (unsaved)."""
    found = MessagingSettings.objects.filter(store=store).first()
    return found or MessagingSettings(store=store)


def template_default(*, purpose: str, channel: str, locale: str = "en") -> MessageTemplate:
    """Recoup's shipped wording as an unsaved MessageTemplate."""
    wording = rendering.default_wording(purpose=purpose, locale=locale or "en")
    if wording is None:
        raise ValueError(f"No default wording for {purpose!r}")
    if channel == Channel.SMS:
        return MessageTemplate(
            channel=channel, purpose=purpose, locale=locale, subject="", body_text=wording.sms
        )
    return MessageTemplate(
        channel=channel,
        purpose=purpose,
        locale=locale,
        subject=wording.subject,
        body_text=wording.body_text,
        body_html=wording.body_html,
    )


def template_for(
    *, store: Store, purpose: str, channel: str, locale: str = "en"
) -> MessageTemplate:
    """The wording in force: the store's own for the customer's locale (or its language),
    then the store's English, then Recoup's default."""
    locale = (locale or "en").lower()
    candidates = [locale, locale.split("-")[0], "en"]
    rows = {
        t.locale: t
        for t in MessageTemplate.objects.filter(
            store=store, purpose=purpose, channel=channel, locale__in=candidates
        )
    }
    for loc in candidates:
        if loc in rows:
            return rows[loc]
    default = template_default(purpose=purpose, channel=channel, locale=locale)
    default.store = store
    return default


def templates_for_store(*, store: Store, locale: str = "en") -> list[dict]:
    """Every purpose x channel with the wording in force, for the settings page."""
    out = []
    for purpose in Purpose.values:
        for channel in Channel.values:
            template = template_for(store=store, purpose=purpose, channel=channel, locale=locale)
            item = {
                "purpose": purpose,
                "purpose_label": Purpose(purpose).label,
                "channel": channel,
                "template": template,
                "is_default": template.pk is None,
            }
            if channel == Channel.SMS:
                text = rendering.render(template.body_text, dict(rendering.SAMPLE))
                item["sms_length"] = rendering.sms_length(text)
            out.append(item)
    return out


def product_label(name: str) -> str:
    """A product as a person says it: Stripe's line descriptions read
    "1 × Coffee Club (at $29.00 / month)"; customers know it as "Coffee Club"."""
    name = re.sub(r"^\s*\d+\s*[×x]\s*", "", name or "")
    return re.sub(r"\s*\(at [^)]*\)\s*$", "", name).strip()


def card_on_file(*, customer: Customer, case: RecoveryCase | None) -> tuple[str, str]:
    """(brand, last4) of the card a message or page talks about: the default card, or
    the card the failed payment was tried on."""
    pm = customer.default_payment_method
    if pm is not None and pm.last4:
        return pm.brand, pm.last4
    if case is not None:
        attempt = case.attempts.exclude(card_last4="").order_by("-attempted_at").first()
        if attempt is not None:
            return attempt.card_brand, attempt.card_last4
    return "", ""


def _product(*, case: RecoveryCase | None, customer: Customer) -> str:
    if case is not None:
        if case.subscription_id and case.subscription:
            sub = case.subscription
            return product_label(sub.product_name or sub.plan_name) or "your subscription"
        if case.order_id and case.order:
            lines = list(case.order.lines.select_related("sku").order_by("id")[:3])
            if lines:
                first = lines[0].sku.title or lines[0].sku.sku
                more = case.order.lines.count() - 1
                return f"{first} and {more} more item{'s' if more > 1 else ''}" if more else first
            return f"order {case.order.number}"
        return "your order" if case.kind == RecoveryCase.Kind.PAYMENT else "your subscription"
    sub = (
        Subscription.objects.filter(
            customer=customer,
            status__in=[Subscription.Status.ACTIVE, Subscription.Status.TRIALING],
        )
        .order_by("-created_at")
        .first()
    )
    return (product_label(sub.product_name or sub.plan_name) if sub else "") or "your subscription"


def _order_note(
    *, case: RecoveryCase, now: dt.datetime, tz: str, locale: str
) -> tuple[str, str, dt.datetime | None]:
    """(a sentence on what happens to the order or shipment, held-until date, when the
    first held item is released)."""
    if case.order_id:
        summary = case_order_summary(case=case, now=now) or {}
        held = [line["held_until"] for line in summary.get("lines", []) if line["held_until"]]
        if held:
            until = rendering.day(min(held), tz=tz, locale=locale)
            return f"We're holding your items until {until}.", until, min(held)
        if summary.get("fulfillment_status") == "awaiting_payment" or summary.get("lines"):
            return "We'll send your order as soon as the payment goes through.", "", None
        return "", "", None
    if case.subscription_id:
        if case.stepped_down_at:
            return "Your next shipment is paused until the payment goes through.", "", None
        when = rendering.day(case.step_down_at or case.window_end, tz=tz, locale=locale)
        note = f"Your subscription carries on as normal until {when} while you sort it out."
        return note, "", None
    return "", "", None


HELD_WITHOUT_DATE = "We're holding your items for you while you sort it out."


def _one_deadline(
    case: RecoveryCase,
    *,
    note: str,
    held_until: str,
    hold: dt.datetime | None,
    tz: str,
    locale: str,
) -> tuple[str, str, str]:
    """(final_date, order_note, held_until) stating one date between them: a customer told
    "sorted by 4 December" and "holding your items until 14 December" cannot tell which
    matters. The date is the first one the case's policy acts on: a subscription's
    step-down (access restricted) or its order's items released, whichever comes first,
    else the window's end. A hold that ends later is mentioned without its date."""
    dates = []
    if case.subscription_id and case.step_down_at and not case.stepped_down_at:
        dates.append(case.step_down_at)
    if hold is not None:
        dates.append(hold)
    final = rendering.day(min(dates) if dates else case.window_end, tz=tz, locale=locale)
    if held_until and held_until != final:
        return final, HELD_WITHOUT_DATE, ""
    return final, note, held_until


def message_context(
    *,
    store: Store,
    customer: Customer,
    case: RecoveryCase | None = None,
    payment_method: PaymentMethod | None = None,
    pay_url: str = "",
    now: dt.datetime,
    extra: dict | None = None,
    conf: MessagingSettings | None = None,
) -> dict[str, str]:
    """The documented variables (rendering.VARIABLES) for one message, all strings."""
    tz = customer.time_zone or store.timezone
    locale = customer.locale or "en"
    conf = conf or messaging_settings(store=store)
    pm = payment_method or customer.default_payment_method
    ctx = {name: "" for name in rendering.VARIABLES}
    ctx.update(
        first_name=customer.first_name,
        store_name=store.name,
        product=_product(case=case, customer=customer),
        pay_url=pay_url,
        support_email=conf.support_email,
    )
    brand, last4 = (
        (pm.brand, pm.last4) if payment_method else card_on_file(customer=customer, case=case)
    )
    ctx["card_brand"] = (brand or "card").replace("_", " ").title() if last4 else ""
    ctx["card_last4"] = last4
    if pm is not None:
        if pm.exp_month and pm.exp_year:
            ctx["card_expiry"] = f"{pm.exp_month:02d}/{pm.exp_year}"
    if case is not None:
        ctx["amount"] = rendering.money(case.amount, case.currency)
        note, held_until, hold = _order_note(case=case, now=now, tz=tz, locale=locale)
        ctx["final_date"], ctx["order_note"], ctx["held_until"] = _one_deadline(
            case, note=note, held_until=held_until, hold=hold, tz=tz, locale=locale
        )
        if case.order_id and case.order:
            ctx["order_number"] = case.order.number
    else:
        sub = (
            Subscription.objects.filter(customer=customer, status=Subscription.Status.ACTIVE)
            .order_by("-created_at")
            .first()
        )
        if sub is not None:
            ctx["amount"] = rendering.money(sub.amount, sub.currency)
    for key, value in (extra or {}).items():
        if key in ctx:
            ctx[key] = str(value)
    return ctx


def case_messages(*, case: RecoveryCase) -> QuerySet[Message]:
    return Message.objects.filter(case=case).order_by("created_at", "id")


def messages_count(*, case: RecoveryCase, channel: str) -> int:
    return Message.objects.filter(case=case, channel=channel, status__in=ACTIVE_STATUSES).count()


def expiry_warning_for(*, payment_method: PaymentMethod) -> ExpiryWarning | None:
    return ExpiryWarning.objects.filter(payment_method=payment_method).first()


# ------------------------------------------------------------------ storefront banner


def customer_banner(*, customer: Customer, now: dt.datetime) -> dict:
    """What the merchant's storefront should show this customer: whether to show a
    banner, how urgent it is, its text and the customer's own card-update link."""
    from .links import pay_url

    cases = list(
        RecoveryCase.objects.filter(customer=customer, status=RecoveryCase.Status.OPEN)
        .exclude(track=Track.FRAUD)
        .select_related("subscription", "order", "store")
        .order_by("window_end", "id")
    )
    hidden = {
        "customer": customer.stripe_id,
        "show": False,
        "severity": "none",
        "text": "",
        "update_url": None,
        "amount": None,
        "currency": None,
        "open_cases": 0,
        "expires_at": None,
    }
    if customer.disputed_at or not cases:
        return hidden
    case = next((c for c in cases if c.stepped_down_at), None) or cases[0]
    total = sum(c.amount for c in cases if c.currency == case.currency)
    amount = rendering.money(total, case.currency)
    product = _product(case=case, customer=customer)
    tz = customer.time_zone or case.store.timezone
    if case.stepped_down_at:
        severity = "critical"
        text = f"Your payment of {amount} for {product} is overdue and your account is paused. Update your payment details to pick up where you left off."
    elif case.track == Track.AUTHENTICATION:
        severity = "warning"
        text = f"Your bank asks you to confirm your payment of {amount} for {product}. It takes a few seconds."
    elif case.track in (Track.CARD_UPDATE, Track.HARD):
        severity = "warning"
        text = f"We couldn't charge your card for {product} ({amount}). Please add a new card to keep everything running."
    else:
        severity = "info"
        until = rendering.day(
            case.step_down_at or case.window_end, tz=tz, locale=customer.locale or "en"
        )
        text = f"Your payment of {amount} for {product} didn't go through. Nothing changes until {until}; a quick card update sorts it."
    return {
        "customer": customer.stripe_id,
        "show": True,
        "severity": severity,
        "text": text,
        "update_url": pay_url(customer=customer, case=case),
        "amount": total,
        "currency": case.currency,
        "open_cases": len(cases),
        "expires_at": min(case.window_end, now + dt.timedelta(days=14)),
    }


def site_url() -> str:
    return settings.SITE_URL.rstrip("/")
