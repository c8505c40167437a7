import uuid
import zoneinfo

from django.conf import settings
from django.db import models

from common.crypto import EncryptedTextField, mask


class Store(models.Model):
    """The tenant: one merchant account. Every domain row belongs to exactly one store."""

    class Gateway(models.TextChoices):
        SANDBOX = "sandbox", "Sandbox (no real money)"
        STRIPE = "stripe", "Stripe"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, default="usd")
    timezone = models.CharField(max_length=64, default="UTC")
    gateway = models.CharField(max_length=16, choices=Gateway.choices, default=Gateway.SANDBOX)
    stripe_secret_key = EncryptedTextField(blank=True, default="")
    stripe_webhook_secret = EncryptedTextField(blank=True, default="")
    # Escalation thresholds (minor units / 0-100 score).
    high_value_mrr_threshold = models.PositiveIntegerField(default=50_000)
    churn_risk_threshold = models.PositiveSmallIntegerField(default=60)
    # Stripe's request budget for this account, shared by every worker on every machine.
    # Blank: Stripe's documented default for the key's mode (100/s live, 25/s test).
    stripe_requests_per_second = models.PositiveSmallIntegerField(null=True, blank=True)
    # Where the merchant keeps customer facts in Stripe customer metadata.
    customer_timezone_key = models.CharField(max_length=64, default="timezone")
    sms_consent_key = models.CharField(max_length=64, default="sms_opt_in")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def tzinfo(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def stripe_live(self) -> bool:
        return self.stripe_secret_key.startswith(("sk_live_", "rk_live_"))

    @property
    def stripe_rate(self) -> int:
        """Requests per second this store's Stripe account allows."""
        if self.stripe_requests_per_second:
            return self.stripe_requests_per_second
        return 100 if self.stripe_live else 25

    @property
    def webhook_path(self) -> str:
        return f"/webhooks/stripe/{self.id}/"

    @property
    def stripe_secret_key_masked(self) -> str:
        return mask(self.stripe_secret_key)

    @property
    def stripe_webhook_secret_masked(self) -> str:
        return mask(self.stripe_webhook_secret)


class StripeBudget(models.Model):
    """One store's Stripe request budget, shared by every worker, when there is no Redis
    (recovery/gateways/stripe_pacing.py). `tat` is the GCRA's theoretical arrival time:
    the earliest moment, in seconds since the epoch, at which the store's next request may
    be sent. Locked and moved forward by one short transaction per request."""

    store = models.OneToOneField(
        Store, on_delete=models.CASCADE, primary_key=True, related_name="stripe_budget"
    )
    tat = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"Stripe budget of {self.store_id}"


class Membership(models.Model):
    class Role(models.TextChoices):
        OPERATOR = "operator", "Operator"
        AGENT = "agent", "Support agent"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "store"], name="membership_user_store_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.store} ({self.role})"


class ApiToken(models.Model):
    """A store-scoped API token for the merchant's systems. Only its SHA-256 is kept."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.store})"


class RateCounter(models.Model):
    """A fixed-window request counter shared by every process on every machine: the rate
    limits' store when there is no Redis (stores/ratelimit.py)."""

    key = models.CharField(max_length=200, unique=True)
    count = models.PositiveIntegerField(default=0)
    window_ends = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.count} until {self.window_ends:%H:%M:%S}"


class LoginLockout(models.Model):
    """A login limit that tripped: a username, or a client address, refused until
    `locked_until`. Kept for operators to see (the Connections page, the admin)."""

    class Scope(models.TextChoices):
        USERNAME = "username", "username"
        ADDRESS = "address", "client address"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    username = models.CharField(max_length=150, blank=True, default="", db_index=True)
    client_ip = models.CharField(max_length=64, blank=True, default="")
    path = models.CharField(max_length=200, blank=True, default="")
    locked_at = models.DateTimeField()
    locked_until = models.DateTimeField()

    class Meta:
        ordering = ["-locked_at"]

    def __str__(self) -> str:
        who = self.username if self.scope == self.Scope.USERNAME else self.client_ip
        return f"{self.get_scope_display()} {who} locked until {self.locked_until:%Y-%m-%d %H:%M}"
