"""Templates render in a restricted context; one that does not render is refused with
its line and reason; the dashboard previews them on sample data."""

from __future__ import annotations

import pytest
from django.core import mail

from common.errors import ApplicationError
from messaging import rendering
from messaging.models import Channel, MessageTemplate, Purpose
from messaging.selectors import template_for, templates_for_store
from messaging.sending import message_send_for_case
from messaging.template_editing import (
    message_template_preview,
    message_template_reset,
    message_template_save,
)

from .conftest import T0


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ("Hi {{ first_name }},\n\n{% if order_note %}\n{{ order_note }}\n", 3, "Unclosed tag"),
        ("Hi {{ first_name }},\nYour card:\n{{ secret_key }}", 3, "unknown variable 'secret_key'"),
        ("Hi\n{{ store_name.owner.email }}", 2, "'store_name' is plain text"),
        ("{% load static %}Hi", 1, "Invalid block tag"),
        ("Hi\n\n{% include 'base.html' %}", 3, "Invalid block tag"),
        ("Hi {{ first_name|safe }}", 1, "Invalid filter: 'safe'"),
        ("{% if customer.email %}x{% endif %}", 1, "unknown variable 'customer'"),
    ],
)
def test_a_broken_template_is_refused_with_its_line_and_reason(store, body, line, reason):
    with pytest.raises(ApplicationError) as refused:
        message_template_save(
            store=store,
            channel=Channel.EMAIL,
            purpose=Purpose.SOFT_FIRST,
            subject="Your payment",
            body_text=body,
        )
    assert refused.value.code == "template_invalid"
    assert refused.value.extra["field"] == "body_text"
    assert refused.value.extra["line"] == line
    assert reason in refused.value.extra["reason"]
    assert f"line {line}" in refused.value.message
    assert not MessageTemplate.objects.exists()


def test_subject_and_html_are_checked_too(store):
    with pytest.raises(ApplicationError) as refused:
        message_template_save(
            store=store,
            channel=Channel.EMAIL,
            purpose=Purpose.SOFT_FIRST,
            subject="{{ amount",
            body_text="Hi {{ first_name }}",
        )
    assert refused.value.extra["field"] == "subject"
    with pytest.raises(ApplicationError) as refused:
        message_template_save(
            store=store,
            channel=Channel.EMAIL,
            purpose=Purpose.SOFT_FIRST,
            subject="Hi",
            body_text="Hi",
            body_html="<p>Hi</p>\n<p>{{ password }}</p>",
        )
    assert (refused.value.extra["field"], refused.value.extra["line"]) == ("body_html", 2)


def test_a_saved_template_is_used_for_the_next_message(
    card_case, django_capture_on_commit_callbacks
):
    message_template_save(
        store=card_case.store,
        channel=Channel.EMAIL,
        purpose=Purpose.CARD_UPDATE,
        subject="{{ first_name }}, a quick card update for {{ store_name }}",
        body_text="Hi {{ first_name|upper }}! {{ amount }} for {{ product }}.\n\n{{ pay_url }}\n",
        actor="olivia",
    )
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    email = mail.outbox[0]
    assert email.subject == "Alice, a quick card update for Bean Box"
    assert email.body.startswith("Hi ALICE! $29.00 for Coffee Club.")
    message_template_reset(
        store=card_case.store, channel=Channel.EMAIL, purpose=Purpose.CARD_UPDATE
    )
    assert (
        template_for(store=card_case.store, purpose=Purpose.CARD_UPDATE, channel=Channel.EMAIL).pk
        is None
    )


def test_html_in_variables_is_escaped_in_the_html_body(store):
    template = MessageTemplate(
        store=store,
        channel=Channel.EMAIL,
        purpose=Purpose.SOFT_FIRST,
        subject="Hi",
        body_text="Hi",
        body_html="<p>Hi {{ first_name }}</p>",
    )
    out = message_template_preview(template=template, sample={"first_name": "<script>x</script>"})
    assert "<script>" not in out["body_html"] and "&lt;script&gt;" in out["body_html"]


def test_preview_renders_on_sample_data_and_states_sms_segments(store):
    email = message_template_preview(
        template=template_for(store=store, purpose=Purpose.SHIPMENT_AT_RISK, channel=Channel.EMAIL),
        sample={"first_name": "Sam"},
    )
    assert email["subject"] == "Your next Bean Box shipment is waiting on payment"
    assert email["body_text"].startswith("Hi Sam,")
    assert "We're holding your items until 3 March." in email["body_text"]
    assert "Update payment details" in email["body_html"]

    text = MessageTemplate(
        store=store,
        channel=Channel.SMS,
        purpose=Purpose.FINAL_NOTICE,
        body_text="{{ store_name }}: pay {{ amount }} 🙏",
    )
    out = message_template_preview(template=text)
    assert out["body_text"] == "Bean Box: pay $29.00 🙏"
    assert out["sms_length"].encoding == "UCS-2"
    assert str(out["sms_length"]) == "1 segment (23 UCS-2 units)"  # the emoji takes two


def test_sms_segments_follow_gsm7_and_ucs2_rules():
    assert rendering.sms_length("a" * 160).segments == 1
    assert rendering.sms_length("a" * 161).segments == 2
    assert rendering.sms_length("a" * 306).segments == 2
    assert rendering.sms_length("a" * 307).segments == 3
    assert rendering.sms_length("€" * 80).units == 160  # extension characters count twice
    assert rendering.sms_length("é" * 70).encoding == "GSM-7"
    assert rendering.sms_length("ł" * 70).segments == 1
    assert rendering.sms_length("ł" * 71).segments == 2


def test_every_default_renders_and_every_default_sms_fits_two_segments(store):
    items = templates_for_store(store=store)
    assert len(items) == len(Purpose.values) * 2
    for item in items:
        template = item["template"]
        assert rendering.template_check(template.body_text) is None, item
        assert rendering.template_check(template.subject) is None, item
        if item["channel"] == Channel.SMS:
            # With a real link (~150 characters), the SMS stays within two segments.
            text = rendering.render(
                template.body_text,
                dict(rendering.SAMPLE, pay_url="https://recoup.example.com/pay/" + "x" * 120 + "/"),
            )
            assert rendering.sms_length(text).segments <= 2, (item["purpose"], text)
            assert item["sms_length"].segments <= 2


def test_money_is_formatted_from_minor_units():
    assert rendering.money(2900, "usd") == "$29.00"
    assert rendering.money(123456, "eur") == "€1,234.56"
    assert rendering.money(3000, "jpy") == "¥3,000"
    assert rendering.money(995, "pln") == "9.95 PLN"
