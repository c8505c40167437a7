from django.conf import settings
from django.db import models

from recovery.models import RecoveryCase
from stores.models import Store
from subscriptions.models import Customer


class SupportPolicy(models.Model):
    """A store's escalation settings beyond the two thresholds kept on Store
    (high_value_mrr_threshold, churn_risk_threshold). Defaults when absent."""

    store = models.OneToOneField(Store, on_delete=models.CASCADE, related_name="support_policy")
    ltv_threshold = models.PositiveBigIntegerField(
        default=100_000, help_text="Lifetime paid (minor units) that makes a customer high value."
    )
    target_response_minutes = models.PositiveIntegerField(
        default=240, help_text="How soon an agent should pick up a queue item."
    )
    route_on_reply = models.BooleanField(
        default=True, help_text="A customer who replies to a message goes to a person."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "support policies"

    def __str__(self) -> str:
        return f"{self.store} support policy"


class CustomerSignal(models.Model):
    """Something the merchant's systems (or Stripe) told us about a customer's intent.

    Append-only; the churn score reads the recent ones."""

    class Kind(models.TextChoices):
        DOWNGRADE = "downgrade", "Downgraded recently"
        CANCEL_AT_PERIOD_END = "cancel_at_period_end", "Set to cancel at period end"
        PRICING_PAGE = "pricing_page_visit", "Visited the pricing page"
        CANCEL_PAGE = "cancel_page_visit", "Visited the cancellation page"
        SUPPORT_COMPLAINT = "support_complaint", "Complained to support"
        USAGE_DROP = "usage_drop", "Usage dropped"
        CUSTOM = "custom", "Other signal"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="signals")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    label = models.CharField(max_length=200, blank=True, default="")
    weight = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Points for a custom signal (0-50)."
    )
    at = models.DateTimeField()
    external_id = models.CharField(max_length=100, blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # A merchant resending the same signal (by its own id) records it once.
            models.UniqueConstraint(
                fields=["customer", "external_id"],
                condition=~models.Q(external_id=""),
                name="signal_customer_external_unique",
            )
        ]
        indexes = [
            # The churn score: a customer's signals of the last weeks.
            models.Index(fields=["customer", "at"], name="signal_customer_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.at:%Y-%m-%d}"


class QueueItem(models.Model):
    """A case handed to a person: why, how valuable, who has it, and how it ended."""

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting for an agent"
        CLAIMED = "claimed", "Claimed"
        PROMISED = "promised", "Promise to pay"
        DONE = "done", "Done"

    class Outcome(models.TextChoices):
        NONE = "", "No outcome yet"
        PROMISE = "promise_to_pay", "Promise to pay"
        OFFER = "offer_applied", "Offer applied"
        EMAIL = "personal_email", "Personal email sent"
        RECOVERED = "recovered", "Recovered"
        LOST = "lost", "Lost"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    case = models.OneToOneField(RecoveryCase, on_delete=models.CASCADE, related_name="queue_item")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.WAITING)
    # Why it is here: [{"code", "label"}]; and the churn score with its reasons at routing.
    reasons = models.JSONField(default=list)
    churn_score = models.PositiveSmallIntegerField(default=0)
    churn_reasons = models.JSONField(default=list)
    # The sort key's inputs, copied from the case so the queue reads one table.
    value_at_risk = models.PositiveBigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    window_end = models.DateTimeField()
    entered_at = models.DateTimeField()
    first_response_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    promise_until = models.DateField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True, default="")
    outcome_at = models.DateTimeField(null=True, blank=True)
    outcome_note = models.CharField(max_length=500, blank=True, default="")
    resolved_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The queue page: a store's unresolved items (few next to all cases).
            models.Index(
                fields=["store", "window_end"],
                condition=~models.Q(status="done"),
                name="queue_store_active_idx",
            ),
            # The support pass: promises whose date has come.
            models.Index(
                fields=["promise_until"],
                condition=models.Q(status="promised"),
                name="queue_promise_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Queue item for case {self.case_id} ({self.status})"
