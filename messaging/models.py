"""Customer messaging: templates, every message sent (or deliberately not sent), what the
providers reported about it, and the customer's consent."""

from django.db import models

from recovery.domain.events import Purpose as P
from recovery.models import ExpiryWarning, RecoveryCase
from stores.models import Store
from subscriptions.models import Customer


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"


class Purpose(models.TextChoices):
    """Why a message goes out, as the database stores it and the templates are named:
    the values are the domain's one list (`recovery.domain.events.Purpose`)."""

    PREDUNNING = P.PREDUNNING.value, "Pre-dunning: card expiring"
    SOFT_FIRST = P.SOFT_FIRST.value, "Payment failed: first notice"
    SOFT_REMINDER = P.SOFT_REMINDER.value, "Reminder"
    SHIPMENT_AT_RISK = P.SHIPMENT_AT_RISK.value, "Next shipment at risk"
    FINAL_NOTICE = P.FINAL_NOTICE.value, "Final notice"
    CARD_UPDATE = P.CARD_UPDATE.value, "Card update request"
    AUTHENTICATION = P.AUTHENTICATION.value, "Authentication request"
    RECOVERED = P.RECOVERED.value, "Recovered: thank you"
    AGENT = P.AGENT.value, "Agent's personal follow-up"
    FRESH_LINK = P.FRESH_LINK.value, "Fresh card-update link (asked for by the customer)"


class MessageTemplate(models.Model):
    """A store's own wording for one purpose, channel and locale. Without a row, the
    default shipped in templates/messaging/defaults/<locale>/ is used."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="message_templates")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    locale = models.CharField(max_length=16, default="en")
    subject = models.CharField(max_length=300, blank=True, default="")
    body_text = models.TextField()
    body_html = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "channel", "purpose", "locale"],
                name="message_template_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.store} {self.purpose}/{self.channel}/{self.locale}"


class Message(models.Model):
    """One message to one customer on one channel, from the decision to send it to what
    the provider reported. A message that was refused (consent, caps, quiet hours
    elsewhere) is recorded too, with the reason, so the case timeline can say why."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SCHEDULED = "scheduled", "Waiting (quiet hours)"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        BOUNCED = "bounced", "Bounced"
        SKIPPED = "skipped", "Not sent"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="messages")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="messages")
    # Null for pre-dunning (no failure yet), which is keyed by its expiry warning instead.
    case = models.ForeignKey(
        RecoveryCase, null=True, blank=True, on_delete=models.CASCADE, related_name="messages"
    )
    expiry_warning = models.ForeignKey(
        ExpiryWarning, null=True, blank=True, on_delete=models.CASCADE, related_name="messages"
    )
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    # Free-form idempotency key for messages without a natural one (agent follow-ups,
    # fresh links asked for by the customer).
    idempotency_key = models.CharField(max_length=120, blank=True, default="")
    to = models.CharField(max_length=254, blank=True, default="")
    locale = models.CharField(max_length=16, default="en")
    subject = models.CharField(max_length=300, blank=True, default="")
    body_text = models.TextField(blank=True, default="")
    body_html = models.TextField(blank=True, default="")
    pay_url = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.CharField(max_length=300, blank=True, default="")
    provider = models.CharField(max_length=32, blank=True, default="")
    provider_id = models.CharField(max_length=120, blank=True, default="")
    actor = models.CharField(max_length=150, blank=True, default="system")
    created_at = models.DateTimeField()
    scheduled_for = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    # The first visit to the pay page through this message's own link (its token's ref):
    # the touch the customer acted on, which analytics credits a recovery to.
    visited_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Running the same step twice sends once, even with two workers at once.
            models.UniqueConstraint(
                fields=["case", "purpose", "channel"],
                condition=models.Q(case__isnull=False) & models.Q(idempotency_key=""),
                name="message_case_purpose_channel_unique",
            ),
            models.UniqueConstraint(
                fields=["expiry_warning", "channel"],
                condition=models.Q(expiry_warning__isnull=False),
                name="message_expiry_warning_channel_unique",
            ),
            models.UniqueConstraint(
                fields=["store", "idempotency_key", "channel"],
                condition=~models.Q(idempotency_key=""),
                name="message_idempotency_key_unique",
            ),
        ]
        indexes = [
            # messages_send_scheduled: what waits for its time (quiet hours, lost sends).
            models.Index(
                fields=["scheduled_for"],
                condition=models.Q(status__in=["scheduled", "queued"]),
                name="message_due_idx",
            ),
            # Provider callbacks find their message by provider id.
            models.Index(
                fields=["provider_id"],
                condition=~models.Q(provider_id=""),
                name="message_provider_id_idx",
            ),
            # Caps and the case timeline: a case's messages by channel.
            models.Index(fields=["case", "channel", "status"], name="message_case_channel_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} {self.channel} to {self.to or '—'} ({self.status})"


class MessageEvent(models.Model):
    """Append-only: what a provider reported about a message (delivery, bounce, open,
    click, complaint, SMS status), kept raw."""

    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    store = models.ForeignKey(Store, null=True, blank=True, on_delete=models.CASCADE)
    provider = models.CharField(max_length=32)
    kind = models.CharField(max_length=48)
    at = models.DateTimeField()
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["message", "at"], name="message_event_message_idx")]

    def __str__(self) -> str:
        return f"{self.provider} {self.kind} {self.at:%Y-%m-%d %H:%M}"


class Suppression(models.Model):
    """An address we must not write to again: a hard bounce or a spam complaint (email),
    or a STOP (SMS). Keyed by address, so a new address on file works again."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        SPAM_COMPLAINT = "spam_complaint", "Spam complaint"
        STOP = "stop", "Replied STOP"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    address = models.CharField(max_length=254)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["store", "channel", "address"], name="suppression_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.address} ({self.reason})"


class ConsentEvent(models.Model):
    """Append-only: every change to a customer's messaging consent, and who made it."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="consent_events"
    )
    channel = models.CharField(max_length=8, choices=Channel.choices)
    action = models.CharField(max_length=32)  # opt_out, opt_in, suppressed, help
    source = models.CharField(max_length=32)  # twilio_inbound, postmark, admin, ...
    address = models.CharField(max_length=254, blank=True, default="")
    at = models.DateTimeField()
    detail = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.channel} {self.action} via {self.source}"


class MessagingSettings(models.Model):
    """A store's sender identity and pay-page keys. Without a row, defaults apply."""

    store = models.OneToOneField(Store, on_delete=models.CASCADE, related_name="messaging")
    from_name = models.CharField(max_length=100, blank=True, default="")
    from_email = models.EmailField(blank=True, default="")
    reply_to = models.EmailField(blank=True, default="")
    support_email = models.EmailField(blank=True, default="")
    # Stripe.js needs the publishable key (pk_live_…) to show the Payment Element.
    stripe_publishable_key = models.CharField(max_length=255, blank=True, default="")
    sms_enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Messaging settings of {self.store}"
