from __future__ import annotations

import hashlib
import secrets
import zoneinfo

from django.contrib.auth import get_user_model
from django.db import transaction

from common.errors import ApplicationError

from .models import ApiToken, Membership, Store

TOKEN_PREFIX = "rk_"


def _token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def store_create(
    *,
    name: str,
    currency: str = "usd",
    timezone: str = "UTC",
    stripe_secret_key: str = "",
    stripe_webhook_secret: str = "",
    gateway: str | None = None,
) -> Store:
    name = (name or "").strip()
    if not name:
        raise ApplicationError("A store needs a name.")
    currency = (currency or "").strip().lower()
    if len(currency) != 3 or not currency.isalpha():
        raise ApplicationError(
            f"Currency must be a three-letter ISO code such as usd, not {currency!r}."
        )
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ApplicationError(
            f"Unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin."
        ) from exc
    if stripe_secret_key and not stripe_secret_key.startswith(("sk_", "rk_")):
        raise ApplicationError("The Stripe secret key should start with sk_ or rk_.")
    if stripe_webhook_secret and not stripe_webhook_secret.startswith("whsec_"):
        raise ApplicationError("The Stripe webhook signing secret should start with whsec_.")
    if gateway is None:
        gateway = Store.Gateway.STRIPE if stripe_secret_key else Store.Gateway.SANDBOX
    return Store.objects.create(
        name=name,
        currency=currency,
        timezone=timezone,
        gateway=gateway,
        stripe_secret_key=stripe_secret_key,
        stripe_webhook_secret=stripe_webhook_secret,
    )


def api_token_create(*, store: Store, name: str = "default") -> tuple[ApiToken, str]:
    """Create a token; the raw value is returned once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        store=store, name=name, prefix=raw[:10], key_hash=_token_hash(raw)
    )
    return token, raw


def api_token_lookup(raw: str) -> ApiToken | None:
    if not raw or not raw.startswith(TOKEN_PREFIX):
        return None
    return (
        ApiToken.objects.select_related("store")
        .filter(key_hash=_token_hash(raw), revoked_at__isnull=True)
        .first()
    )


@transaction.atomic
def membership_create(
    *, store: Store, username: str, role: str, email: str = "", password: str | None = None
) -> tuple[Membership, str | None]:
    """Create (or reuse) a user and give them a role in the store.

    Returns the membership and the password if one was generated.
    """
    if role not in Membership.Role.values:
        raise ApplicationError(f"Role must be one of {', '.join(Membership.Role.values)}.")
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username, defaults={"email": email})
    generated = None
    if created:
        if password is None:
            password = generated = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save(update_fields=["password"])
    elif password:
        user.set_password(password)
        user.save(update_fields=["password"])
    membership, _ = Membership.objects.update_or_create(
        user=user, store=store, defaults={"role": role}
    )
    return membership, generated
