"""An agent's personal follow-up goes through message_send too; the admin edits
templates through the same validation."""

from __future__ import annotations

from django.core import mail

from messaging.models import Message, MessageTemplate
from messaging.sending import message_send_agent_follow_up

from .conftest import T0


def test_an_agents_note_is_sent_once_per_submission(card_case, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = message_send_agent_follow_up(
            case=card_case,
            agent_name="Arjun",
            note="I noticed the renewal didn't go through — can I help?",
            at=T0,
            idempotency_key="form-1",
        )
        again = message_send_agent_follow_up(
            case=card_case, agent_name="Arjun", note="same", at=T0, idempotency_key="form-1"
        )
        message_send_agent_follow_up(
            case=card_case, agent_name="Arjun", note="Second note", at=T0, idempotency_key="form-2"
        )
    assert first.pk == again.pk
    assert [m.subject for m in mail.outbox] == ["A note from Arjun at Bean Box"] * 2
    assert "I noticed the renewal didn't go through — can I help?" in mail.outbox[0].body
    assert Message.objects.filter(case=card_case, purpose="agent_follow_up").count() == 2
    assert first.actor == "Arjun"


def test_admin_refuses_a_template_that_does_not_render(admin_client, store):
    response = admin_client.post(
        "/admin/messaging/messagetemplate/add/",
        {
            "store": store.pk,
            "channel": "email",
            "purpose": "soft_first_notice",
            "locale": "en",
            "subject": "Hi {{ first_name }}",
            "body_text": "Hello\n{% if amount %}{{ amount }}",
            "body_html": "",
            "updated_by": "",
        },
    )
    assert response.status_code == 200
    assert "Body text, line 2" in response.content.decode()
    assert not MessageTemplate.objects.exists()
    ok = admin_client.post(
        "/admin/messaging/messagetemplate/add/",
        {
            "store": store.pk,
            "channel": "sms",
            "purpose": "final_notice",
            "locale": "en",
            "subject": "",
            "body_text": "{{ store_name }}: {{ amount }} due. {{ pay_url }}",
            "body_html": "",
            "updated_by": "",
        },
    )
    assert ok.status_code == 302
    saved = MessageTemplate.objects.get()
    assert (saved.channel, saved.purpose, saved.updated_by) == ("sms", "final_notice", "admin")
