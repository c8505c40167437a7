from django.contrib import admin

from common.admin import ReadOnlyAdmin

from .models import ApiToken, LoginLockout, Membership, Store


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Store)
class StoreAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "currency", "timezone", "gateway", "created_at"]
    search_fields = ["name", "id"]
    # Secrets are never shown back in full: only masked read-only values.
    exclude = ["stripe_secret_key", "stripe_webhook_secret"]
    readonly_fields = [
        "id",
        "stripe_secret_key_masked",
        "stripe_webhook_secret_masked",
        "created_at",
    ]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "store", "role", "created_at"]
    list_filter = ["role"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "store", "name", "created_at", "revoked_at"]
    readonly_fields = ["store", "prefix", "key_hash", "created_at"]

    def has_add_permission(self, request):
        return (
            False  # tokens are created with `manage.py create_store` so the raw value is shown once
        )


@admin.register(LoginLockout)
class LoginLockoutAdmin(ReadOnlyAdmin):
    list_display = ["locked_at", "scope", "username", "client_ip", "path", "locked_until"]
    list_filter = ["scope"]
    search_fields = ["username", "client_ip"]
