from django.contrib import admin

from .models import Customer, Invoice, PaymentMethod, Subscription


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["stripe_id", "email", "name", "store", "sms_opt_in", "first_seen_at"]
    list_filter = ["store", "sms_opt_in"]
    search_fields = ["stripe_id", "email", "name"]
    raw_id_fields = ["default_payment_method"]


@admin.register(PaymentMethod)
class PaymentMethodAdmin(admin.ModelAdmin):
    list_display = [
        "stripe_id",
        "customer",
        "brand",
        "last4",
        "exp_month",
        "exp_year",
        "is_default",
    ]
    search_fields = ["stripe_id", "fingerprint"]
    raw_id_fields = ["customer"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "stripe_id",
        "customer",
        "status",
        "product_name",
        "interval",
        "amount",
        "mrr",
        "access",
    ]
    list_filter = ["status", "interval", "access"]
    search_fields = ["stripe_id", "customer__email"]
    raw_id_fields = ["customer"]


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["stripe_id", "customer", "status", "amount_due", "currency", "attempt_count"]
    list_filter = ["status"]
    search_fields = ["stripe_id"]
    raw_id_fields = ["customer", "subscription"]
