"""SMS consent given at signup (the merchant's checkout box), through messaging's service."""

from __future__ import annotations

import datetime as dt

from messaging import sms
from messaging.consent import consent_sms_opt_out, consent_sms_signup
from messaging.models import ConsentEvent, Purpose, Suppression
from messaging.sending import message_send_for_case
from subscriptions.models import Customer

from .conftest import T0

PHONE = "+4915112345678"


def test_signup_consent_opts_in_and_is_recorded(card_case, django_capture_on_commit_callbacks):
    customer = card_case.customer
    Customer.objects.filter(pk=customer.pk).update(phone=PHONE)
    at = T0 - dt.timedelta(days=200)
    assert consent_sms_signup(customer=customer, at=at, source="signup", detail="checkout box")
    customer.refresh_from_db()
    assert customer.sms_opt_in is True
    event = ConsentEvent.objects.get(customer=customer)
    assert (event.channel, event.action, event.source, event.address, event.at) == (
        "sms",
        "opt_in",
        "signup",
        PHONE,
        at,
    )
    # Given twice, it is recorded once.
    assert consent_sms_signup(customer=customer, at=T0, source="signup")
    assert ConsentEvent.objects.filter(customer=customer).count() == 1
    # And texts now reach the customer.
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    assert [m.to for m in sms.outbox] == [PHONE]


def test_no_signup_consent_without_a_number(card_case):
    customer = card_case.customer
    Customer.objects.filter(pk=customer.pk).update(phone="")
    assert consent_sms_signup(customer=customer, at=T0, source="signup") is False
    assert Customer.objects.get(pk=customer.pk).sms_opt_in is False
    assert not ConsentEvent.objects.filter(customer=customer).exists()


def test_signup_consent_does_not_lift_a_stop(card_case):
    customer = card_case.customer
    Customer.objects.filter(pk=customer.pk).update(phone=PHONE)
    consent_sms_opt_out(phone=PHONE, at=T0, source="twilio_inbound", detail="STOP")
    assert consent_sms_signup(customer=customer, at=T0, source="signup") is False
    assert Customer.objects.get(pk=customer.pk).sms_opt_in is False
    assert Suppression.objects.filter(channel="sms", address=PHONE).exists()
    assert list(
        ConsentEvent.objects.filter(customer=customer).values_list("action", flat=True)
    ) == ["opt_out"]
