from django.db import models

from stores.models import Store
from subscriptions.models import Customer, Subscription


class Order(models.Model):
    """An ecommerce order behind a payment. Stock and holds come with the inventory work."""

    class Status(models.TextChoices):
        PENDING = "pending"
        CONFIRMED = "confirmed"
        CANCELLED = "cancelled"

    class PaymentStatus(models.TextChoices):
        PENDING = "pending"
        FAILED = "failed"
        PAID = "paid"
        REFUNDED = "refunded"

    class FulfillmentStatus(models.TextChoices):
        UNFULFILLED = "unfulfilled"
        AWAITING_PAYMENT = "awaiting_payment"
        RELEASED = "released"
        FULFILLED = "fulfilled"
        CANCELLED = "cancelled"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="orders")
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    number = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    payment_status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    fulfillment_status = models.CharField(
        max_length=20, choices=FulfillmentStatus.choices, default=FulfillmentStatus.UNFULFILLED
    )
    amount = models.PositiveBigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    stripe_payment_intent_id = models.CharField(
        max_length=255, blank=True, default="", db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["store", "number"], name="order_store_number_unique")
        ]

    def __str__(self) -> str:
        return f"#{self.number}"
