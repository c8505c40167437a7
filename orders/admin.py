from django.contrib import admin

from .models import Order


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
