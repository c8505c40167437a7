"""Messages leave through message_send only: the engine decides when, messaging decides
how (channels, consent, caps, quiet hours) and sends each step once."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core import mail
from django.db import connection

from messaging import sms
from messaging.delivery import messages_send_scheduled
from messaging.models import Message, Purpose
from messaging.sending import message_send_for_case
from recovery.models import CaseEvent, ExpiryWarning, RecoveryCase
from recovery.predunning import predunning_pass
from recovery.scheduler import run_due
from subscriptions.models import Customer, PaymentMethod
from tests.conftest import requires_postgres

from .conftest import T0, open_case, sms_customer

HOUR = dt.timedelta(hours=1)


def test_card_update_request_goes_out_at_once_with_the_customers_own_link(
    card_case, time_machine, django_capture_on_commit_callbacks
):
    time_machine.move_to(T0 + dt.timedelta(minutes=5), tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        run_due(now=T0 + dt.timedelta(minutes=5))

    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["alice@example.com"]
    assert email.subject == "Please update your card for Bean Box"
    assert "Hi Alice," in email.body
    assert "$29.00" in email.body and "Coffee Club" in email.body
    assert "http://127.0.0.1:8000/pay/" in email.body
    html = email.alternatives[0][0]
    assert "Update payment details" in html and "/pay/" in html
    message = Message.objects.get(case=card_case)
    assert (message.purpose, message.channel, message.status) == (
        Purpose.CARD_UPDATE,
        "email",
        Message.Status.SENT,
    )
    assert message.sent_at == T0 + dt.timedelta(minutes=5)
    assert message.pay_url in email.body
    assert CaseEvent.objects.filter(case=card_case, kind="message_sent").count() == 1
    # Only the customer who opted in gets SMS: Alice did not.
    assert sms.outbox == []


def test_the_same_step_twice_sends_once(card_case, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
        second = message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    assert [m.pk for m in first] == [m.pk for m in second]
    assert len(mail.outbox) == 1
    assert Message.objects.filter(case=card_case).count() == 1


@requires_postgres()
@pytest.mark.django_db(transaction=True)
def test_two_workers_on_the_same_step_send_once(store):
    from recovery.services import recovery_case_open
    from recovery.stripe_payloads import DeclineInfo
    from subscriptions.services import customer_upsert

    customer = customer_upsert(
        store=store, stripe_id="cus_race", email="race@example.com", seen_at=T0
    )
    case, _ = recovery_case_open(
        store=store,
        customer=customer,
        amount=2900,
        currency="usd",
        decline=DeclineInfo(decline_code="expired_card", payment_intent_id="pi_race"),
        at=T0,
    )
    barrier = threading.Barrier(4)
    errors = []

    def worker():
        try:
            barrier.wait()
            message_send_for_case(case=case, purpose=Purpose.CARD_UPDATE, at=T0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(mail.outbox) == 1
    assert Message.objects.filter(case=case).count() == 1


def test_soft_decline_waits_for_technical_recovery(
    case, time_machine, django_capture_on_commit_callbacks
):
    """No message while the first retry has not failed and 24 h have not passed."""
    assert case.track == "soft"
    assert case.message_at is not None and case.message_at > T0 + 2 * HOUR
    at = T0 + 2 * HOUR
    time_machine.move_to(at, tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=case, purpose=Purpose.SOFT_FIRST, at=at)
    # When it is due, it reads as a quick fix, never a threat.
    body = mail.outbox[0].body
    assert "quick fix" in body and "$29.00" in body
    assert "Your subscription carries on as normal until" in body


def test_quiet_hours_hold_sms_until_the_customers_morning(
    webhooks, time_machine, django_capture_on_commit_callbacks
):
    evening = dt.datetime(2026, 3, 4, 21, 30, tzinfo=dt.UTC)  # 22:30 in Berlin
    time_machine.move_to(evening, tick=False)
    Customer.objects.create(
        store=webhooks.store,
        stripe_id="cus_test_alice",
        email="alice@example.com",
        name="Alice Liddell",
        phone="+4915112345678",
        sms_opt_in=True,
        time_zone="Europe/Berlin",
        first_seen_at=evening - dt.timedelta(days=400),
    )
    case = open_case(webhooks, decline_code="expired_card")
    with django_capture_on_commit_callbacks(execute=True):
        run_due(now=evening + dt.timedelta(minutes=1))
    assert len(mail.outbox) == 1  # email is not held back
    assert sms.outbox == []
    text = Message.objects.get(case=case, channel="sms")
    morning = dt.datetime(2026, 3, 5, 7, 0, tzinfo=dt.UTC)  # 08:00 in Berlin
    assert (text.status, text.scheduled_for) == (Message.Status.SCHEDULED, morning)

    time_machine.move_to(morning - dt.timedelta(minutes=1), tick=False)
    assert messages_send_scheduled(now=morning - dt.timedelta(minutes=1)) == 0
    assert sms.outbox == []

    time_machine.move_to(morning, tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        run_due(now=morning)
    assert len(sms.outbox) == 1
    assert sms.outbox[0].to == "+4915112345678"
    assert "Bean Box" in sms.outbox[0].body and "/pay/" in sms.outbox[0].body
    text.refresh_from_db()
    assert (text.status, text.sent_at) == (Message.Status.SENT, morning)
    # Running the sweep again sends nothing more.
    assert messages_send_scheduled(now=morning + HOUR) == 0
    assert len(sms.outbox) == 1


def test_a_stop_while_waiting_for_morning_cancels_the_sms(
    webhooks, time_machine, django_capture_on_commit_callbacks
):
    from messaging.consent import consent_sms_opt_out

    night = dt.datetime(2026, 3, 4, 23, 0, tzinfo=dt.UTC)
    time_machine.move_to(night, tick=False)
    case = open_case(webhooks, decline_code="expired_card")
    sms_customer(case.customer)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=case, purpose=Purpose.CARD_UPDATE, at=night)
    consent_sms_opt_out(phone="+4915112345678", at=night + HOUR, source="test")
    assert messages_send_scheduled(now=night + 9 * HOUR) == 0
    assert sms.outbox == []
    text = Message.objects.get(case=case, channel="sms")
    assert text.status == Message.Status.SKIPPED
    assert "not opted in" in text.status_reason


def test_sms_goes_to_opted_in_customers_once_early_and_for_the_final_notice(
    card_case, django_capture_on_commit_callbacks
):
    sms_customer(card_case.customer)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
        message_send_for_case(case=card_case, purpose=Purpose.SOFT_REMINDER, at=T0 + 50 * HOUR)
        message_send_for_case(case=card_case, purpose=Purpose.FINAL_NOTICE, at=T0 + 100 * HOUR)
    assert [m.body.split(":")[0] for m in sms.outbox] == ["Bean Box", "Bean Box"]
    assert "couldn't be charged" in sms.outbox[0].body
    assert "last reminder" in sms.outbox[1].body
    assert len(mail.outbox) == 3


def test_caps_per_case_and_the_gap_between_touches(
    card_case, settings, django_capture_on_commit_callbacks
):
    settings.MESSAGING_MAX_SMS_PER_CASE = 1
    sms_customer(card_case.customer)
    purposes = [
        Purpose.CARD_UPDATE,
        Purpose.SOFT_REMINDER,
        Purpose.SHIPMENT_AT_RISK,
        Purpose.FINAL_NOTICE,
        Purpose.SOFT_FIRST,
    ]
    with django_capture_on_commit_callbacks(execute=True):
        for n, purpose in enumerate(purposes):
            message_send_for_case(case=card_case, purpose=purpose, at=T0 + n * 49 * HOUR)
        # Too soon after the last one: refused, with the reason recorded.
        too_soon = message_send_for_case(
            case=card_case, purpose=Purpose.AUTHENTICATION, at=T0 + 4 * 49 * HOUR + HOUR
        )
    assert len(mail.outbox) == 4  # at most 4 emails per case
    assert len(sms.outbox) == 1  # the cap of 1 SMS held the final notice's SMS back
    fifth = Message.objects.get(case=card_case, purpose=Purpose.SOFT_FIRST, channel="email")
    assert fifth.status == Message.Status.SKIPPED
    assert fifth.status_reason == "at most 4 email messages per case"
    final_sms = Message.objects.get(case=card_case, purpose=Purpose.FINAL_NOTICE, channel="sms")
    assert final_sms.status_reason == "at most 1 sms messages per case"
    assert too_soon[0].status == Message.Status.SKIPPED
    assert CaseEvent.objects.filter(case=card_case, kind="message_skipped").count() >= 2


def test_nothing_after_the_case_closes_or_a_dispute_opens(
    card_case, webhooks, django_capture_on_commit_callbacks
):
    RecoveryCase.objects.filter(pk=card_case.pk).update(status=RecoveryCase.Status.LOST)
    card_case.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        closed = message_send_for_case(case=card_case, purpose=Purpose.FINAL_NOTICE, at=T0)
    assert closed[0].status == Message.Status.SKIPPED
    other = open_case(
        webhooks, customer="cus_test_bob", email="bob@example.com", decline_code="expired_card"
    )
    Customer.objects.filter(pk=other.customer_id).update(disputed_at=T0)
    with django_capture_on_commit_callbacks(execute=True):
        disputed = message_send_for_case(case=other, purpose=Purpose.CARD_UPDATE, at=T0)
    assert disputed[0].status_reason == "the customer has an open dispute: no messages"
    assert mail.outbox == []


def test_email_opt_out_is_respected_and_sms_steps_in(card_case, django_capture_on_commit_callbacks):
    sms_customer(card_case.customer)
    Customer.objects.filter(pk=card_case.customer_id).update(email_opt_out=True)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.SOFT_REMINDER, at=T0)
    assert mail.outbox == []
    assert len(sms.outbox) == 1  # email cannot reach her: the reminder goes by SMS


def test_recovery_sends_a_thank_you(card_case, time_machine, django_capture_on_commit_callbacks):
    from recovery.services import recovery_case_close

    with django_capture_on_commit_callbacks(execute=True):
        recovery_case_close(
            case=card_case,
            status=RecoveryCase.Status.RECOVERED,
            reason="paid",
            at=T0,
            via="customer",
        )
    assert [m.subject for m in mail.outbox] == ["Thank you — your Bean Box payment went through"]
    assert "/pay/" not in mail.outbox[0].body  # nothing to do: no link


def test_predunning_warns_once_per_expiring_card(
    card_case, time_machine, django_capture_on_commit_callbacks
):
    customer = card_case.customer
    subscription = card_case.subscription
    subscription.status = "active"
    subscription.save(update_fields=["status"])
    pm = PaymentMethod.objects.create(
        store=card_case.store,
        customer=customer,
        stripe_id="pm_expiring",
        brand="visa",
        last4="1111",
        exp_month=3,
        exp_year=2026,
        is_default=True,
    )
    Customer.objects.filter(pk=customer.pk).update(default_payment_method=pm)
    with django_capture_on_commit_callbacks(execute=True):
        assert predunning_pass(now=T0) == 1
        assert predunning_pass(now=T0 + HOUR) == 0
    warning = ExpiryWarning.objects.get(payment_method=pm)
    sent = Message.objects.get(expiry_warning=warning)
    assert sent.case is None and sent.purpose == Purpose.PREDUNNING
    assert [m.subject for m in mail.outbox] == ["Your card for Bean Box expires soon"]
    assert "ending 1111" in mail.outbox[0].body and "03/2026" in mail.outbox[0].body
    # The hook again for the same warning: the same message, nothing sent.
    from messaging.sending import message_send_predunning

    again = message_send_predunning(
        customer=customer, payment_method=pm, purpose=Purpose.PREDUNNING, at=T0
    )
    assert again.pk == sent.pk and len(mail.outbox) == 1
