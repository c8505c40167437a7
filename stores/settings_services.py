"""Writes behind the settings pages that no other app owns: escalation thresholds, the
hold policy, the store's Stripe keys, and the connection checks (network: call outside
transactions)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from common.errors import ApplicationError
from messaging.sms import SmsError, get_backend
from orders.models import HoldPolicy
from recovery.gateways.stripe import stripe_client
from support.models import SupportPolicy

from .models import Store


@transaction.atomic
def escalation_policy_update(
    *,
    store: Store,
    high_value_mrr_threshold: int,
    churn_risk_threshold: int,
    ltv_threshold: int,
    target_response_minutes: int,
    route_on_reply: bool,
) -> None:
    if high_value_mrr_threshold < 0 or ltv_threshold < 0:
        raise ApplicationError("Thresholds cannot be negative.")
    if not 1 <= churn_risk_threshold <= 100:
        raise ApplicationError("The churn-risk threshold is a score from 1 to 100.")
    if not 5 <= target_response_minutes <= 7 * 24 * 60:
        raise ApplicationError("The target response time must be between 5 minutes and 7 days.")
    Store.objects.filter(pk=store.pk).update(
        high_value_mrr_threshold=high_value_mrr_threshold,
        churn_risk_threshold=churn_risk_threshold,
    )
    store.high_value_mrr_threshold = high_value_mrr_threshold
    store.churn_risk_threshold = churn_risk_threshold
    SupportPolicy.objects.update_or_create(
        store=store,
        defaults={
            "ltv_threshold": ltv_threshold,
            "target_response_minutes": target_response_minutes,
            "route_on_reply": route_on_reply,
        },
    )


@transaction.atomic
def hold_policy_update(*, store: Store, brief_hold_hours: int, retry_margin_hours: int):
    if not 1 <= brief_hold_hours <= 24 * 14:
        raise ApplicationError("Hold constrained stock for 1 hour to 14 days.")
    if not 0 <= retry_margin_hours <= 72:
        raise ApplicationError("The margin after a retry is 0 to 72 hours.")
    policy, _ = HoldPolicy.objects.update_or_create(
        store=store,
        defaults={"brief_hold_hours": brief_hold_hours, "retry_margin_hours": retry_margin_hours},
    )
    return policy


@transaction.atomic
def store_stripe_keys_update(
    *, store: Store, secret_key: str = "", webhook_secret: str = ""
) -> Store:
    """Set the Stripe keys (blank keeps the current one). A secret key switches the store
    from the sandbox to the Stripe gateway."""
    secret_key, webhook_secret = (secret_key or "").strip(), (webhook_secret or "").strip()
    if secret_key and not secret_key.startswith(("sk_", "rk_")):
        raise ApplicationError(
            "The Stripe secret key starts with sk_ (or rk_ for a restricted key)."
        )
    if webhook_secret and not webhook_secret.startswith("whsec_"):
        raise ApplicationError("The webhook signing secret starts with whsec_.")
    store = Store.objects.select_for_update().get(pk=store.pk)
    fields = []
    if secret_key:
        store.stripe_secret_key = secret_key
        store.gateway = Store.Gateway.STRIPE
        fields += ["stripe_secret_key", "gateway"]
    if webhook_secret:
        store.stripe_webhook_secret = webhook_secret
        fields.append("stripe_webhook_secret")
    if fields:
        store.save(update_fields=fields)
    return store


@dataclass
class CheckResult:
    ok: bool
    message: str


def stripe_connection_check(*, store: Store) -> CheckResult:
    """Ask Stripe who this key belongs to (a read; charges nothing)."""
    import stripe

    if not store.stripe_secret_key:
        return CheckResult(False, "No Stripe secret key yet: add one below.")
    try:
        account = stripe_client(store, timeout=10).v1.accounts.retrieve_current().to_dict()
    except stripe.AuthenticationError:
        return CheckResult(False, "Stripe rejected the key: it is wrong or was rolled.")
    except stripe.PermissionError:
        return CheckResult(
            True,
            "The key works but may not read the account (a restricted key); retries can still run.",
        )
    except stripe.RateLimitError:
        # Stripe's 429, or this store's request budget booked up by its other work.
        return CheckResult(False, "Stripe is busy for this account (rate limit): check again soon.")
    except stripe.StripeError as exc:
        return CheckResult(False, f"Stripe could not be reached: {exc.user_message or exc}")
    name = (
        (account.get("settings") or {}).get("dashboard", {}).get("display_name")
        or account.get("business_profile", {}).get("name")
        or account.get("id")
    )
    mode = "live" if store.stripe_secret_key.startswith(("sk_live", "rk_live")) else "test"
    return CheckResult(True, f"Connected to Stripe account {name} ({mode} mode).")


def postmark_status() -> CheckResult:
    if getattr(settings, "POSTMARK_SERVER_TOKEN", ""):
        return CheckResult(True, "Postmark server token set; email goes through Postmark.")
    return CheckResult(
        False,
        f"No POSTMARK_SERVER_TOKEN: email uses {settings.EMAIL_BACKEND.rsplit('.', 2)[-2]} "
        "(development only).",
    )


def twilio_status() -> CheckResult:
    sid = getattr(settings, "TWILIO_ACCOUNT_SID", "")
    token = getattr(settings, "TWILIO_AUTH_TOKEN", "")
    sender = getattr(settings, "TWILIO_FROM", "") or getattr(
        settings, "TWILIO_MESSAGING_SERVICE_SID", ""
    )
    if sid and token and sender:
        return CheckResult(True, f"Twilio account {sid[:6]}… sends SMS from {sender}.")
    return CheckResult(
        False,
        "Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM): no SMS.",
    )


def test_email_send(*, store: Store, to: str) -> CheckResult:
    """A plain test email through the configured backend (Postmark in production)."""
    from django.core.mail import EmailMessage

    to = (to or "").strip()
    if "@" not in to:
        return CheckResult(False, "Give an email address to send the test to.")
    try:
        EmailMessage(
            subject=f"Recoup test email for {store.name}",
            body="This is a test from Recoup's settings page. Email sending works.",
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[to],
        ).send()
    except Exception as exc:  # the provider's error, shown to the operator
        return CheckResult(False, f"Sending failed: {exc}")
    return CheckResult(True, f"Test email sent to {to}.")


def test_sms_send(*, store: Store, to: str) -> CheckResult:
    """A test SMS through the messaging app's SMS backend (Twilio in production)."""

    status = twilio_status()
    if not status.ok:
        return status
    to = (to or "").strip()
    if not to.startswith("+") or not to[1:].isdigit() or len(to) < 8:
        return CheckResult(False, "Give the phone number in international format (+4915…).")
    try:
        result = get_backend().send(to=to, body=f"Recoup test SMS for {store.name}.")
    except SmsError as exc:
        return CheckResult(False, f"Twilio refused the test: {exc}")
    return CheckResult(True, f"Test SMS sent to {to} ({result.provider_id or result.provider}).")


@transaction.atomic
def store_stripe_customer_data_update(
    *,
    store: Store,
    customer_timezone_key: str,
    sms_consent_key: str,
    stripe_requests_per_second: int | None,
) -> Store:
    """Where the store keeps customer facts in Stripe metadata, and its Stripe request
    budget (None: Stripe's default for the key's mode). Read by customer events from now
    on; customers already known keep their facts until Stripe next reports them."""
    values = {
        "customer_timezone_key": customer_timezone_key,
        "sms_consent_key": sms_consent_key,
        "stripe_requests_per_second": stripe_requests_per_second,
    }
    Store.objects.filter(pk=store.pk).update(**values)
    for field, value in values.items():
        setattr(store, field, value)
    return store
