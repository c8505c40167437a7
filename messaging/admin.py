from django.contrib import admin

from common.admin import ReadOnlyAdmin
from common.errors import ApplicationError

from .models import (
    ConsentEvent,
    Message,
    MessageEvent,
    MessageTemplate,
    MessagingSettings,
    Suppression,
)


@admin.register(MessageTemplate)
class MessageTemplateAdmin(admin.ModelAdmin):
    """Edits go through message_template_save, so a template that does not render is
    refused with its line and reason."""

    list_display = ("store", "purpose", "channel", "locale", "updated_at", "updated_by")
    list_filter = ("channel", "purpose", "locale")
    search_fields = ("store__name", "subject", "body_text")

    def save_model(self, request, obj, form, change):
        from .template_editing import message_template_save

        saved = message_template_save(
            store=obj.store,
            channel=obj.channel,
            purpose=obj.purpose,
            locale=obj.locale,
            subject=obj.subject,
            body_text=obj.body_text,
            body_html=obj.body_html,
            actor=request.user.get_username(),
        )
        obj.pk = saved.pk

    def get_form(self, request, obj=None, **kwargs):
        from django import forms

        from .template_editing import message_template_validate

        base = super().get_form(request, obj, **kwargs)

        class Form(base):
            def clean(self):
                data = super().clean()
                try:
                    message_template_validate(
                        channel=data.get("channel", ""),
                        subject=data.get("subject", ""),
                        body_text=data.get("body_text", ""),
                        body_html=data.get("body_html", ""),
                    )
                except ApplicationError as exc:
                    raise forms.ValidationError(exc.message) from exc
                return data

        return Form


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "store", "purpose", "channel", "to", "status", "case")
    list_filter = ("status", "channel", "purpose")
    search_fields = ("to", "provider_id", "customer__stripe_id")
    raw_id_fields = ("case", "customer", "expiry_warning")


@admin.register(MessageEvent)
class MessageEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "provider", "kind", "message")
    list_filter = ("provider", "kind")


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("store", "channel", "address", "reason", "created_at")
    list_filter = ("channel", "reason")
    search_fields = ("address",)


@admin.register(ConsentEvent)
class ConsentEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "store", "customer", "channel", "action", "source")
    list_filter = ("channel", "action", "source")


@admin.register(MessagingSettings)
class MessagingSettingsAdmin(admin.ModelAdmin):
    list_display = ("store", "from_name", "from_email", "sms_enabled")
