from django.db import models

from stores.models import Store

from . import facts


class TimeZoneSource(models.TextChoices):
    METADATA = facts.METADATA, "the Stripe customer's metadata"
    API = facts.API, "set by the merchant through the API"
    ADDRESS = facts.ADDRESS, "the billing address"
    CARD_COUNTRY = facts.CARD_COUNTRY, "the card's country"
    STORE = facts.STORE, "the store's zone (nothing known of the customer)"


class Customer(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="customers")
    stripe_id = models.CharField(max_length=255)
    email = models.EmailField(blank=True, default="")
    phone = models.CharField(max_length=32, blank=True, default="")
    name = models.CharField(max_length=200, blank=True, default="")
    sms_opt_in = models.BooleanField(default=False)
    # The time of the newest SMS consent statement applied (a change or a repeat of the
    # state in force): an older one arriving late changes nothing.
    sms_consent_at = models.DateTimeField(null=True, blank=True)
    email_opt_out = models.BooleanField(default=False)
    disputed_at = models.DateTimeField(null=True, blank=True)
    locale = models.CharField(max_length=16, blank=True, default="en")
    # "" (with source "store" or none yet): the store's zone, whatever it is at the time.
    time_zone = models.CharField(max_length=64, blank=True, default="")
    time_zone_source = models.CharField(
        max_length=16, choices=TimeZoneSource.choices, blank=True, default=""
    )
    time_zone_set_at = models.DateTimeField(null=True, blank=True)
    # The billing address as Stripe has it (what the time zone and phone region come from).
    address_country = models.CharField(max_length=2, blank=True, default="")
    address_state = models.CharField(max_length=100, blank=True, default="")
    address_postal_code = models.CharField(max_length=20, blank=True, default="")
    first_seen_at = models.DateTimeField()
    # Bumped to revoke every link already sent to this customer.
    link_version = models.PositiveIntegerField(default=1)
    default_payment_method = models.ForeignKey(
        "PaymentMethod", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The Stripe customer's metadata, as of `stripe_updated`.
    metadata = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Created time of the newest customer.* event applied: an older one changes nothing.
    stripe_updated = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "stripe_id"], name="customer_store_stripe_unique"
            )
        ]

    def __str__(self) -> str:
        return self.email or self.stripe_id

    @property
    def first_name(self) -> str:
        return (self.name or "").split(" ")[0] or "there"


class PaymentMethod(models.Model):
    """A stored card as Stripe describes it. Never a card number: ids, brand, last4, expiry."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="payment_methods")
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="payment_methods"
    )
    stripe_id = models.CharField(max_length=255)
    brand = models.CharField(max_length=32, blank=True, default="")
    last4 = models.CharField(max_length=4, blank=True, default="")
    exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True, default="", db_index=True)
    country = models.CharField(max_length=2, blank=True, default="", help_text="Issuing country.")
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "stripe_id"], name="payment_method_store_stripe_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.brand} •••• {self.last4}"


class Subscription(models.Model):
    class Status(models.TextChoices):
        INCOMPLETE = "incomplete"
        TRIALING = "trialing"
        ACTIVE = "active"
        PAST_DUE = "past_due"
        UNPAID = "unpaid"
        PAUSED = "paused"
        CANCELED = "canceled"
        INCOMPLETE_EXPIRED = "incomplete_expired"

    class Interval(models.TextChoices):
        DAY = "day"
        WEEK = "week"
        MONTH = "month"
        YEAR = "year"

    class Access(models.TextChoices):
        FULL = "full", "Full access"
        GRACE = "grace", "Grace period (full access)"
        RESTRICTED = "restricted", "Restricted (shipments paused, read-only)"
        SUSPENDED = "suspended", "Suspended"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="subscriptions")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="subscriptions")
    stripe_id = models.CharField(max_length=255)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.ACTIVE)
    product_name = models.CharField(max_length=200, blank=True, default="")
    plan_name = models.CharField(max_length=200, blank=True, default="")
    interval = models.CharField(max_length=8, choices=Interval.choices, default=Interval.MONTH)
    interval_count = models.PositiveSmallIntegerField(default=1)
    amount = models.PositiveBigIntegerField(default=0, help_text="Per billing period, minor units.")
    currency = models.CharField(max_length=3, default="usd")
    mrr = models.PositiveBigIntegerField(default=0, help_text="Monthly-normalised, minor units.")
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    access = models.CharField(max_length=12, choices=Access.choices, default=Access.FULL)
    canceled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Created time of the newest Stripe event applied, so a late event cannot roll state back.
    stripe_updated = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "stripe_id"], name="subscription_store_stripe_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.product_name or self.stripe_id} ({self.status})"


class Invoice(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        OPEN = "open"
        PAID = "paid"
        UNCOLLECTIBLE = "uncollectible"
        VOID = "void"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="invoices")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="invoices")
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.SET_NULL, related_name="invoices"
    )
    stripe_id = models.CharField(max_length=255)
    amount_due = models.PositiveBigIntegerField(default=0)
    amount_paid = models.PositiveBigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    attempt_count = models.PositiveIntegerField(default=0)
    billing_reason = models.CharField(max_length=64, blank=True, default="")
    payment_intent_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    next_payment_attempt = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    stripe_updated = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "stripe_id"], name="invoice_store_stripe_unique"
            )
        ]

    def __str__(self) -> str:
        return self.stripe_id
