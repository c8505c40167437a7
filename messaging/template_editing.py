"""Template editing: checking, saving, resetting and previewing a store's own wording
of a message (the dashboard's editor and the admin)."""

from __future__ import annotations

from django.db import transaction

from common.errors import ApplicationError
from stores.models import Store

from . import rendering
from .models import Channel, MessageTemplate, Purpose
from .sending import _render_template


def message_template_validate(
    *, channel: str, subject: str = "", body_text: str, body_html: str = ""
) -> dict:
    """Check a template before it is saved. Raises ApplicationError naming the field, the
    line and the reason (`extra`: field, line, reason). Returns facts for the editor:
    for SMS, {"sms_length": SmsLength} measured on the sample data."""
    if channel not in Channel.values:
        raise ApplicationError(f"Channel must be one of {', '.join(Channel.values)}.")
    if not body_text.strip():
        raise ApplicationError(
            "The text body is empty.", code="template_invalid", extra={"field": "body_text"}
        )
    if channel == Channel.EMAIL and not subject.strip():
        raise ApplicationError(
            "An email needs a subject.", code="template_invalid", extra={"field": "subject"}
        )
    fields = [("body_text", body_text, False)]
    if channel == Channel.EMAIL:
        fields += [("subject", subject, False), ("body_html", body_html, True)]
    for field, source, html_body in fields:
        if not source:
            continue
        problem = rendering.template_check(source, html_body=html_body)
        if problem is not None:
            raise ApplicationError(
                f"{field.replace('_', ' ').capitalize()}, line {problem.line}: {problem.reason}",
                code="template_invalid",
                extra={"field": field, "line": problem.line, "reason": problem.reason},
            )
    facts: dict = {}
    if channel == Channel.SMS:
        facts["sms_length"] = rendering.sms_length(
            rendering.render(body_text, dict(rendering.SAMPLE)).strip()
        )
    return facts


@transaction.atomic
def message_template_save(
    *,
    store: Store,
    channel: str,
    purpose: str,
    locale: str = "en",
    subject: str = "",
    body_text: str,
    body_html: str = "",
    actor: str = "",
) -> MessageTemplate:
    """Save the store's own wording for (purpose, channel, locale); a template that does
    not render is refused (ApplicationError with field, line and reason)."""
    if purpose not in Purpose.values:
        raise ApplicationError(f"Unknown purpose {purpose!r}.", code="invalid")
    message_template_validate(
        channel=channel, subject=subject, body_text=body_text, body_html=body_html
    )
    template, _ = MessageTemplate.objects.update_or_create(
        store=store,
        channel=channel,
        purpose=purpose,
        locale=(locale or "en").lower(),
        defaults={
            "subject": subject.strip() if channel == Channel.EMAIL else "",
            "body_text": body_text,
            "body_html": body_html if channel == Channel.EMAIL else "",
            "updated_by": actor[:150],
        },
    )
    return template


def message_template_reset(*, store: Store, channel: str, purpose: str, locale: str = "en") -> None:
    """Go back to Recoup's default wording."""
    MessageTemplate.objects.filter(
        store=store, channel=channel, purpose=purpose, locale=(locale or "en").lower()
    ).delete()


def message_template_preview(*, template: MessageTemplate, sample: dict | None = None) -> dict:
    """Render a template (saved or not: build an unsaved MessageTemplate from the editor's
    fields) on sample data, for the live preview.

    Returns {"subject", "body_text", "body_html", "sms_length" (SMS only)}. `sample`
    overrides any of rendering.SAMPLE's values. Raises ApplicationError like
    `message_template_validate` if it does not render."""
    message_template_validate(
        channel=template.channel,
        subject=template.subject,
        body_text=template.body_text,
        body_html=template.body_html,
    )
    context = dict(rendering.SAMPLE)
    if template.store_id:
        context["store_name"] = template.store.name
    context.update({k: str(v) for k, v in (sample or {}).items() if k in rendering.VARIABLES})
    store = template.store if template.store_id else Store(name=context["store_name"])
    out = _render_template(template, context, store=store)
    if template.channel == Channel.SMS:
        out["sms_length"] = rendering.sms_length(out["body_text"])
    return out
