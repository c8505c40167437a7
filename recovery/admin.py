from django.contrib import admin

from common.admin import ReadOnlyAdmin

from .models import CaseEvent, PaymentAttempt, RecoveryCase, RetryPolicy, StripeEvent


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = [
        "event_id",
        "type",
        "store",
        "outcome",
        "received_at",
        "processed_at",
        "attempts",
    ]
    list_filter = ["outcome", "type"]
    search_fields = ["event_id"]


class AttemptInline(admin.TabularInline):
    model = PaymentAttempt
    extra = 0
    can_delete = False
    fields = [
        "attempted_at",
        "source",
        "outcome",
        "decline_code",
        "advice_code",
        "card_brand",
        "card_last4",
        "reason",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class CaseEventInline(admin.TabularInline):
    model = CaseEvent
    extra = 0
    can_delete = False
    fields = ["at", "kind", "message", "actor"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(RecoveryCase)
class RecoveryCaseAdmin(admin.ModelAdmin):
    """Read-mostly: state changes belong to the services (dashboard actions)."""

    list_display = [
        "id",
        "store",
        "customer",
        "track",
        "status",
        "amount",
        "currency",
        "opened_at",
        "next_action_at",
    ]
    list_filter = ["status", "track", "escalated"]
    search_fields = [
        "customer__stripe_id",
        "customer__email",
        "payment_intent_id",
        "invoice__stripe_id",
    ]
    inlines = [AttemptInline, CaseEventInline]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PaymentAttempt)
class PaymentAttemptAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "store",
        "case",
        "source",
        "outcome",
        "decline_code",
        "card_brand",
        "attempted_at",
    ]
    list_filter = ["source", "outcome"]
    search_fields = ["charge_id", "payment_intent_id", "idempotency_key", "card_fingerprint"]


@admin.register(CaseEvent)
class CaseEventAdmin(ReadOnlyAdmin):
    list_display = ["case", "kind", "at", "actor", "message"]
    list_filter = ["kind"]


@admin.register(RetryPolicy)
class RetryPolicyAdmin(ReadOnlyAdmin):
    list_display = [
        "store",
        "version",
        "max_retries",
        "window_days_month",
        "end_action",
        "created_at",
    ]
