from django.db import models

from recovery.domain import declines, outcomes
from recovery.domain.events import EventKind
from stores.models import Store
from subscriptions.models import Customer, Invoice, Subscription


class Track(models.TextChoices):
    """The recovery tracks (the values are the domain's: `recovery.domain.declines`)."""

    SOFT = declines.SOFT, "Retry (soft decline)"
    CARD_UPDATE = declines.CARD_UPDATE, "Card update"
    HARD = declines.HARD, "Hard decline"
    FRAUD = declines.FRAUD, "Fraud / dispute risk"
    AUTHENTICATION = declines.AUTHENTICATION, "Authentication"


class StripeEvent(models.Model):
    """The durable inbox: every signed event, stored once, kept with its outcome."""

    class Outcome(models.TextChoices):
        PENDING = "pending"
        PROCESSED = "processed"
        IGNORED = "ignored"
        FAILED = "failed"

    # No index of its own: the unique (store, event_id) index starts with the store.
    store = models.ForeignKey(
        Store, on_delete=models.CASCADE, related_name="stripe_events", db_index=False
    )
    event_id = models.CharField(max_length=255)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    stripe_created = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices, default=Outcome.PENDING)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    # Lease of the intake worker that claimed the event; another may take it after this.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Exactly-once storage: fifty deliveries of one event give one row.
            models.UniqueConstraint(
                fields=["store", "event_id"], name="stripe_event_store_id_unique"
            )
        ]
        indexes = [
            # The intake workers' claim (pending, oldest first) and the scheduler's sweep
            # (pending or failed): one small index of the events not done yet. Every index
            # is written by the webhook's INSERT, so the inbox keeps three in all.
            models.Index(
                fields=["received_at"],
                condition=models.Q(outcome__in=["pending", "failed"]),
                name="stripe_event_open_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class RecoveryCase(models.Model):
    """The recovery record for one failed invoice or order payment."""

    class Status(models.TextChoices):
        OPEN = "open"
        RECOVERED = "recovered"
        LOST = "lost"
        CANCELLED = "cancelled"

    class RecoveredVia(models.TextChoices):
        RECOUP_RETRY = "recoup_retry", "Recoup retry"
        STRIPE_RETRY = "stripe_retry", "Stripe retry"
        CUSTOMER = "customer", "Customer (card update / pay page)"
        CARD_UPDATER = "card_updater", "Card updater"
        AGENT = "agent", "Agent"
        OUTSIDE = "outside", "Paid outside Stripe"

    class NextAction(models.TextChoices):
        NONE = "", "Nothing scheduled"
        RETRY = "retry", "Retry payment"
        MESSAGE = "message", "Message customer"
        STEP_DOWN = "step_down", "Restrict access"
        CLOSE = "close", "Close at window end"
        RECONCILE = "reconcile", "Read back an unknown attempt"
        CLASSIFY = "classify", "Classify without Stripe's decline details"

    class Kind(models.TextChoices):
        INVOICE = "invoice", "Subscription invoice"
        PAYMENT = "payment", "Order payment"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="cases")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="cases")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    invoice = models.OneToOneField(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="case"
    )
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.SET_NULL, related_name="cases"
    )
    order = models.ForeignKey(
        "orders.Order", null=True, blank=True, on_delete=models.SET_NULL, related_name="cases"
    )
    payment_intent_id = models.CharField(max_length=255, blank=True, default="")
    amount = models.PositiveBigIntegerField(help_text="Amount at risk, minor units.")
    currency = models.CharField(max_length=3)
    track = models.CharField(max_length=16, choices=Track.choices)
    track_reason = models.CharField(max_length=300, blank=True, default="")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OPEN)
    opened_at = models.DateTimeField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    attempt_count = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    decline_code = models.CharField(max_length=64, blank=True, default="")
    advice_code = models.CharField(max_length=64, blank=True, default="")
    network_decline_code = models.CharField(max_length=16, blank=True, default="")
    network_advice_code = models.CharField(max_length=16, blank=True, default="")
    # The card of the attempt that failed (never its number: Stripe's summary of it).
    card_brand = models.CharField(max_length=32, blank=True, default="")
    card_last4 = models.CharField(max_length=4, blank=True, default="")
    card_fingerprint = models.CharField(max_length=64, blank=True, default="")
    card_exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    card_exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    card_country = models.CharField(max_length=2, blank=True, default="")
    # Opened from an event that did not say why the payment failed (a current-API
    # invoice.payment_failed): no retry and no message until Stripe says, or until the
    # lookup's deadline classifies it conservatively.
    decline_awaited_until = models.DateTimeField(null=True, blank=True)
    next_action = models.CharField(
        max_length=12, choices=NextAction.choices, blank=True, default=""
    )
    next_action_at = models.DateTimeField(null=True, blank=True)
    next_action_reason = models.CharField(max_length=300, blank=True, default="")
    dunning_stage = models.PositiveSmallIntegerField(default=0)
    dunning_paused = models.BooleanField(default=False)
    card_updater_result = models.CharField(max_length=64, blank=True, default="")
    escalated = models.BooleanField(default=False)
    escalation_reason = models.CharField(max_length=300, blank=True, default="")
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    recovered_amount = models.PositiveBigIntegerField(default=0)
    recovered_via = models.CharField(
        max_length=16, choices=RecoveredVia.choices, blank=True, default=""
    )
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_reason = models.CharField(max_length=300, blank=True, default="")
    # The engine's plan; next_action/next_action_at is always the earliest of these.
    retry_at = models.DateTimeField(null=True, blank=True)
    retry_reason = models.CharField(max_length=300, blank=True, default="")
    message_at = models.DateTimeField(null=True, blank=True)
    step_down_at = models.DateTimeField(null=True, blank=True)
    stepped_down_at = models.DateTimeField(null=True, blank=True)
    card_changed_at = models.DateTimeField(null=True, blank=True)
    # Set while a retry is on the wire; cleared when its outcome is recorded. A case with
    # an attempt in flight (or of unknown outcome) is never retried again.
    inflight_key = models.CharField(max_length=120, blank=True, default="")
    # Lease of the worker that claimed the case; another worker may take it after this.
    claimed_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # One case per order payment (invoices are one-to-one above).
            models.UniqueConstraint(
                fields=["store", "payment_intent_id"],
                condition=models.Q(kind="payment"),
                name="case_store_payment_intent_unique",
            ),
        ]
        indexes = [
            # The scheduler pass: open cases whose next action is due.
            models.Index(
                fields=["next_action_at"], condition=models.Q(status="open"), name="case_due_idx"
            ),
            # API and dashboard lists: a store's cases by status, newest first.
            models.Index(fields=["store", "status", "-opened_at"], name="case_store_status_idx"),
            # "Every open case of this customer" on a card change.
            models.Index(fields=["customer", "status"], name="case_customer_status_idx"),
            # The intake: the case of a PaymentIntent or Charge event (any kind of case).
            models.Index(fields=["store", "payment_intent_id"], name="case_store_intent_idx"),
            # Analytics home: cases failed in a period (cohort figures, breakdowns by track,
            # decline code and product, the daily trend), answered from the index alone.
            models.Index(
                fields=["store", "opened_at"],
                include=[
                    "status",
                    "currency",
                    "amount",
                    "recovered_amount",
                    "track",
                    "decline_code",
                    "kind",
                    "subscription",
                ],
                name="case_store_opened_idx",
            ),
            # Analytics home: cases closed in a period (recovered revenue and MRR, median
            # days to recovery, by recovery source and channel, involuntary churn).
            models.Index(
                fields=["store", "closed_at"],
                include=[
                    "status",
                    "currency",
                    "recovered_amount",
                    "recovered_via",
                    "attempt_count",
                    "opened_at",
                    "subscription",
                ],
                condition=models.Q(closed_at__isnull=False),
                name="case_store_closed_idx",
            ),
            # Analytics rollup refresh: a store's cases saved since the last refresh.
            models.Index(fields=["store", "updated_at"], name="case_store_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"Case {self.pk} ({self.track}, {self.status})"

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.OPEN

    def credit_for(self, attempt: "PaymentAttempt") -> str:
        """Who is credited when this attempt paid (`outcomes.credit`: the one rule, whether
        our own answer or Stripe's event closed the case)."""
        return outcomes.credit(attempt.source, card_updater_result=self.card_updater_result)


class PaymentAttempt(models.Model):
    """Append-only: one try to collect money, whoever made it."""

    class Source(models.TextChoices):
        STRIPE_AUTO = "stripe_auto", "Stripe (automatic / Smart Retries)"
        RECOUP_RETRY = "recoup_retry", "Recoup retry"
        CUSTOMER = "customer", "Customer"
        CARD_UPDATE = "card_update", "After a card update"
        AGENT = "agent", "Agent"

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        REQUIRES_ACTION = "requires_action"
        UNKNOWN = "unknown", "Unknown (timeout / server error)"
        NOT_SENT = "not_sent", "Not sent (refused before the network)"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="payment_attempts")
    case = models.ForeignKey(
        RecoveryCase, null=True, blank=True, on_delete=models.PROTECT, related_name="attempts"
    )
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="payment_attempts"
    )
    invoice_stripe_id = models.CharField(max_length=255, blank=True, default="")
    invoice_attempt_number = models.PositiveIntegerField(null=True, blank=True)
    payment_intent_id = models.CharField(max_length=255, blank=True, default="")
    charge_id = models.CharField(max_length=255, blank=True, default="")
    source = models.CharField(max_length=16, choices=Source.choices)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    amount = models.PositiveBigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    attempted_at = models.DateTimeField()
    decline_code = models.CharField(max_length=64, blank=True, default="")
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_message = models.CharField(max_length=500, blank=True, default="")
    advice_code = models.CharField(max_length=64, blank=True, default="")
    network_decline_code = models.CharField(max_length=16, blank=True, default="")
    network_advice_code = models.CharField(max_length=16, blank=True, default="")
    card_brand = models.CharField(max_length=32, blank=True, default="")
    card_fingerprint = models.CharField(max_length=64, blank=True, default="")
    card_last4 = models.CharField(max_length=4, blank=True, default="")
    card_exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    card_exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    card_country = models.CharField(max_length=2, blank=True, default="")
    payment_method_id = models.CharField(max_length=255, blank=True, default="")
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    reason = models.CharField(
        max_length=300, blank=True, default="", help_text="Why it was made then."
    )
    # An "unknown" outcome is resolved exactly once, by reading the payment back.
    resolved_at = models.DateTimeField(null=True, blank=True)
    stripe_event = models.ForeignKey(
        StripeEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # A retry is sent at most once per key: the database refuses a second row.
            models.UniqueConstraint(
                fields=["store", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="attempt_idempotency_unique",
            ),
            models.UniqueConstraint(
                fields=["store", "charge_id"],
                condition=~models.Q(charge_id=""),
                name="attempt_store_charge_unique",
            ),
        ]
        indexes = [
            # Network budgets: attempts on one card in the last 30 days.
            models.Index(
                fields=["store", "card_fingerprint", "attempted_at"], name="attempt_card_budget_idx"
            ),
            models.Index(fields=["case", "attempted_at"], name="attempt_case_idx"),
            # The intake: reports of one charge merged by its invoice's attempt number, or
            # by its invoice or PaymentIntent (recovery.services._attempt_record).
            models.Index(
                fields=["store", "invoice_stripe_id", "invoice_attempt_number"],
                name="attempt_store_invoice_idx",
            ),
            models.Index(fields=["store", "payment_intent_id"], name="attempt_store_intent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.outcome} {self.decline_code}"


class DeclineLookup(models.Model):
    """Reading a failed invoice's decline back from Stripe, for a case opened without it.

    Done by the intake workers after the event's transaction has committed, never in the
    webhook request; a failed read (429, 5xx, timeout) is tried again with back-off. Kept
    after its answer for the record."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    # None: read ahead, from a failure event stored but not processed yet (the intake's
    # read-back thread, so that a burst's reads need not wait for its cases to open);
    # the event's case takes it over when it opens (`lookups.decline_lookup_request`).
    case = models.OneToOneField(
        RecoveryCase, on_delete=models.CASCADE, related_name="lookup", null=True, blank=True
    )
    invoice_stripe_id = models.CharField(max_length=255)
    # The answer to a read ahead (a `FailureRead` as JSON), kept until the case opens.
    answer = models.JSONField(null=True, blank=True)
    requested_at = models.DateTimeField()
    # Past this the case is classified conservatively; a later answer reclassifies it.
    deadline = models.DateTimeField()
    due_at = models.DateTimeField(null=True, blank=True)  # None: answered or given up
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True, default="")
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The intake workers' claim: lookups due, earliest first.
            models.Index(
                fields=["due_at"], condition=models.Q(due_at__isnull=False), name="lookup_due_idx"
            ),
        ]
        constraints = [
            # One read-back per invoice (a case has one invoice): a read ahead and the
            # case's own request meet on this.
            models.UniqueConstraint(
                fields=["store", "invoice_stripe_id"], name="lookup_one_per_invoice"
            ),
        ]

    def __str__(self) -> str:
        return f"decline lookup for {self.invoice_stripe_id}"


class SandboxPayment(models.Model):
    """What the sandbox gateway's Stripe knows of an invoice's payments (the demo and
    `simulate` play Stripe and record here what its API would answer). Never written for
    a store on the real Stripe gateway."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    invoice_stripe_id = models.CharField(max_length=255)
    payment_intent_id = models.CharField(max_length=255)
    # The PaymentIntent as Stripe returns it with `latest_charge` expanded.
    payment_intent = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "payment_intent_id"], name="sandbox_payment_intent_unique"
            )
        ]
        indexes = [
            # The sandbox's answer to GET /v1/invoices/<id> with its payments expanded
            models.Index(fields=["store", "invoice_stripe_id"], name="sandbox_payment_invoice_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.invoice_stripe_id} {self.payment_intent_id}"


class CaseEvent(models.Model):
    """Append-only timeline of everything that happened to a case."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    case = models.ForeignKey(RecoveryCase, on_delete=models.CASCADE, related_name="events")
    # One of the domain's EventKind (the one list, whichever app writes the entry).
    kind = models.CharField(
        max_length=48, choices=[(k.value, k.value.replace("_", " ")) for k in EventKind]
    )
    at = models.DateTimeField()
    message = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150, blank=True, default="system")

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["case", "at"], name="case_event_case_at_idx")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.kind}"


class RetryPolicy(models.Model):
    """A store's recovery policy. Versioned: edits add a row; cases keep the version they used."""

    class EndAction(models.TextChoices):
        CANCEL = "cancel", "Cancel the subscription"
        PAUSE = "pause", "Pause the subscription"
        UNPAID = "unpaid", "Mark the subscription unpaid"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="retry_policies")
    version = models.PositiveIntegerField()
    max_retries = models.PositiveSmallIntegerField(default=4)
    # Recovery window per billing interval, in days.
    window_days_day = models.PositiveSmallIntegerField(default=3)
    window_days_week = models.PositiveSmallIntegerField(default=7)
    window_days_month = models.PositiveSmallIntegerField(default=21)
    window_days_year = models.PositiveSmallIntegerField(default=45)
    window_days_order = models.PositiveSmallIntegerField(default=7)
    # Access step-down: full access for the grace share of the window, then restricted.
    grace_fraction = models.FloatField(default=0.5)
    end_action = models.CharField(max_length=8, choices=EndAction.choices, default=EndAction.CANCEL)
    first_retry_hours = models.PositiveSmallIntegerField(default=4)
    generic_retries_before_card_update = models.PositiveSmallIntegerField(default=2)
    predunning_days = models.PositiveSmallIntegerField(default=30)
    learned_timing = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True, default="system")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "version"], name="retry_policy_store_version_unique"
            )
        ]
        ordering = ["store", "-version"]

    def __str__(self) -> str:
        return f"{self.store} policy v{self.version}"

    def window_days(self, interval: str | None) -> int:
        return {
            "day": self.window_days_day,
            "week": self.window_days_week,
            "month": self.window_days_month,
            "year": self.window_days_year,
        }.get(interval or "", self.window_days_order)


class RetryStat(models.Model):
    """The store's own retry results, by decline group x hours since failure x slot.

    The engine starts from default priors and learns from these counts (Beta posterior).
    """

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    decline_group = models.CharField(max_length=32)
    hours_bucket = models.CharField(max_length=8)
    slot = models.CharField(max_length=12)
    successes = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "decline_group", "hours_bucket", "slot"], name="retry_stat_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.decline_group}/{self.hours_bucket}/{self.slot}: {self.successes}/{self.successes + self.failures}"


class ExpiryWarning(models.Model):
    """Pre-dunning: a default card about to expire, and whether it was replaced in time."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="expiry_warnings")
    payment_method = models.OneToOneField(
        "subscriptions.PaymentMethod", on_delete=models.CASCADE, related_name="expiry_warning"
    )
    expires_on = models.DateField()
    warned_at = models.DateTimeField()
    saved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # Analytics home: the pre-dunning save rate over warnings sent in a period.
            models.Index(fields=["store", "warned_at"], name="expiry_store_warned_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.customer} card expiring {self.expires_on}"
