from django.contrib import admin

from common.admin import ReadOnlyAdmin

from .models import SKU, HoldPolicy, InventoryHold, Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    raw_id_fields = ["sku"]
    fields = ["sku", "quantity", "unit_amount"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = [
        "number",
        "store",
        "customer",
        "status",
        "payment_status",
        "fulfillment_status",
        "amount",
    ]
    list_filter = ["status", "payment_status", "fulfillment_status"]
    search_fields = ["number", "stripe_payment_intent_id"]
    raw_id_fields = ["customer", "subscription"]
    inlines = [OrderLineInline]


@admin.register(SKU)
class SKUAdmin(admin.ModelAdmin):
    list_display = ["sku", "title", "store", "on_hand", "preorder", "low_stock_threshold"]
    list_filter = ["preorder"]
    search_fields = ["sku", "title"]


@admin.register(HoldPolicy)
class HoldPolicyAdmin(admin.ModelAdmin):
    list_display = ["store", "brief_hold_hours", "retry_margin_hours", "updated_at"]


@admin.register(InventoryHold)
class InventoryHoldAdmin(ReadOnlyAdmin):
    """Holds change only through orders.services (locks, timeline): read-only here."""

    list_display = [
        "sku",
        "quantity",
        "status",
        "rule",
        "held_until",
        "released_early",
        "case",
        "created_at",
    ]
    list_filter = ["status", "rule", "released_early"]
    search_fields = ["sku__sku", "order_line__order__number"]
    raw_id_fields = ["order_line", "sku", "case"]
