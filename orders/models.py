from django.db import models

from stores.models import Store
from subscriptions.models import Customer, Subscription


class Order(models.Model):
    """An ecommerce order behind a payment: its lines, and the stock held or committed for them."""

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
        # Paid, but part of it could not be committed: the stock went to others meanwhile.
        BACKORDERED = "backordered", "Paid, waiting for stock"
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
        indexes = [
            # "Other orders waiting for this SKU" (hold policy) and "orders awaiting payment"
            # (inventory view): the few orders waiting for money or stock, not all of them.
            models.Index(
                fields=["fulfillment_status"],
                condition=models.Q(fulfillment_status__in=["awaiting_payment", "backordered"]),
                name="order_waiting_idx",
            )
        ]

    def __str__(self) -> str:
        return f"#{self.number}"


class SKU(models.Model):
    """A sellable item and its stock. What it has promised lives in InventoryHold rows."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="skus")
    sku = models.CharField(max_length=64)
    title = models.CharField(max_length=200, blank=True, default="")
    on_hand = models.PositiveIntegerField(default=0, help_text="Units physically in stock.")
    preorder = models.BooleanField(
        default=False, help_text="Sold ahead of stock: holds last until the recovery window ends."
    )
    low_stock_threshold = models.PositiveIntegerField(
        default=5,
        help_text="A hold that would leave fewer units than this available is only brief.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "SKU"
        verbose_name_plural = "SKUs"
        constraints = [
            # Orders and the inventory API address stock by the merchant's SKU code.
            models.UniqueConstraint(fields=["store", "sku"], name="sku_store_code_unique")
        ]

    def __str__(self) -> str:
        return self.sku


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    sku = models.ForeignKey(SKU, on_delete=models.PROTECT, related_name="lines")
    quantity = models.PositiveIntegerField()
    unit_amount = models.PositiveBigIntegerField(default=0, help_text="Minor units.")

    class Meta:
        constraints = [
            # One line per SKU: the API upserts lines by SKU code.
            models.UniqueConstraint(fields=["order", "sku"], name="order_line_sku_unique"),
            models.CheckConstraint(
                condition=models.Q(quantity__gt=0), name="order_line_quantity_positive"
            ),
        ]
        # Lines per SKU ("orders awaiting payment", waiting demand) use the FK index on sku.

    def __str__(self) -> str:
        return f"{self.quantity} × {self.sku_id}"


class HoldPolicy(models.Model):
    """A store's rules for the stock of orders whose payment failed (defaults when absent)."""

    store = models.OneToOneField(Store, on_delete=models.CASCADE, related_name="hold_policy")
    brief_hold_hours = models.PositiveSmallIntegerField(
        default=48, help_text="How long constrained stock stays held before it goes back."
    )
    retry_margin_hours = models.PositiveSmallIntegerField(
        default=2,
        help_text="Ample stock is held this long past the next retry, for its outcome to arrive.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "hold policies"

    def __str__(self) -> str:
        return f"{self.store} hold policy"


class InventoryHold(models.Model):
    """Units of a SKU promised to one order line: held for a failed payment, or committed.

    A held row counts against availability only until `held_until`; reads ignore it after
    that on their own, and the scheduler pass marks it released (housekeeping).
    """

    class Status(models.TextChoices):
        HELD = "held"
        COMMITTED = "committed"
        RELEASED = "released"

    class Rule(models.TextChoices):
        AMPLE = "ample", "Ample stock: held through the next retry or the window"
        CONSTRAINED = "constrained", "Constrained stock: held briefly"
        PREORDER = "preorder", "Preorder: held until the window ends"
        PAID = "paid", "Committed on payment, without a prior hold"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    order_line = models.ForeignKey(OrderLine, on_delete=models.CASCADE, related_name="holds")
    sku = models.ForeignKey(SKU, on_delete=models.PROTECT, related_name="holds")
    case = models.ForeignKey(
        "recovery.RecoveryCase",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="inventory_holds",
    )
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.HELD)
    rule = models.CharField(max_length=12, choices=Rule.choices)
    reason = models.CharField(max_length=300)
    held_until = models.DateTimeField(null=True, blank=True)
    released_early = models.BooleanField(
        default=False, help_text="Released while the order still awaited its payment."
    )
    created_at = models.DateTimeField()
    committed_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # At most one live promise per line: a second hold or commit is refused by the database.
            models.UniqueConstraint(
                fields=["order_line"],
                condition=models.Q(status__in=["held", "committed"]),
                name="hold_one_live_per_line",
            ),
            models.CheckConstraint(
                condition=models.Q(quantity__gt=0), name="hold_quantity_positive"
            ),
            models.CheckConstraint(
                condition=~models.Q(status="held") | models.Q(held_until__isnull=False),
                name="hold_held_has_deadline",
            ),
        ]
        indexes = [
            # Availability: a SKU's committed units and its held units not yet expired.
            models.Index(
                fields=["sku", "status", "held_until"],
                condition=models.Q(status__in=["held", "committed"]),
                name="hold_sku_live_idx",
            ),
            # The scheduler's sweep: held rows whose deadline has passed.
            models.Index(
                fields=["held_until"], condition=models.Q(status="held"), name="hold_expiry_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.sku_id} {self.status}"
