"""The card-update page end to end on the server: sandbox test cards, and Stripe stores
through the real stripe SDK against a local fake Stripe (SetupIntent, defaults, retry)."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.core import mail

from messaging.links import pay_url
from messaging.models import MessagingSettings
from recovery.models import PaymentAttempt, RecoveryCase
from subscriptions.models import Customer
from tests import stripe_factory as sf
from tests.fake_stripe import FakeStripe, Recorded, _error, _missing, _Reply

from .conftest import T0, open_case

SETUP_INTENTS = re.compile(r"^/v1/setup_intents$")
SETUP_INTENT = re.compile(r"^/v1/setup_intents/(?P<id>[^/]+)$")
CUSTOMER = re.compile(r"^/v1/customers/(?P<id>[^/]+)$")
SUBSCRIPTION = re.compile(r"^/v1/subscriptions/(?P<id>[^/]+)$")


def path_of(url: str) -> str:
    return url.replace("http://127.0.0.1:8000", "")


def follow(client, url, **data):
    return client.post(url, data, follow=True)


# ------------------------------------------------------------------ sandbox


def test_a_test_card_that_works_pays_and_the_case_is_recovered(
    client, card_case, django_capture_on_commit_callbacks
):
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    with django_capture_on_commit_callbacks(execute=True):
        response = follow(client, url, test_card="works")
    page = response.content.decode()
    assert response.status_code == 200
    assert "you're all set" in page and "$29.00" in page and "ending 4242" in page
    card_case.refresh_from_db()
    assert card_case.status == RecoveryCase.Status.RECOVERED
    assert card_case.recovered_via == RecoveryCase.RecoveredVia.CUSTOMER
    attempt = card_case.attempts.get(source=PaymentAttempt.Source.CARD_UPDATE)
    assert attempt.outcome == PaymentAttempt.Outcome.SUCCEEDED
    assert attempt.payment_method_id.startswith("pm_sandbox_works_")
    customer = Customer.objects.select_related("default_payment_method").get(
        pk=card_case.customer_id
    )
    assert customer.default_payment_method.last4 == "4242"
    assert card_case.events.filter(kind="card_changed", data__source="customer").exists()
    assert "Thank you — your Bean Box payment went through" in [m.subject for m in mail.outbox]
    # Reloading the page later tells the same truth and offers nothing to pay.
    again = client.get(url).content.decode()
    assert "you're all set" in again and "test_card" not in again


def test_a_test_card_that_declines_says_so_with_the_next_step(client, card_case):
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    page = follow(client, url, test_card="declines").content.decode()
    assert "That card was declined too" in page
    assert "Next step:" in page and "try another card" in page
    assert "ending 0002" in page
    card_case.refresh_from_db()
    assert card_case.is_open
    attempt = card_case.attempts.get(source=PaymentAttempt.Source.CARD_UPDATE)
    assert (attempt.outcome, attempt.decline_code) == ("failed", "generic_decline")
    # The customer tries again with a card that works.
    page = follow(client, url, test_card="works").content.decode()
    assert "you're all set" in page


def test_every_open_case_of_the_customer_is_retried_at_once(client, webhooks, time_machine):
    time_machine.move_to(T0, tick=False)
    first = open_case(webhooks, decline_code="expired_card")
    second = open_case(webhooks, decline_code="expired_card", subscription="sub_test_alice_2")
    follow(client, path_of(pay_url(customer=first.customer, case=first)), test_card="works")
    assert set(
        RecoveryCase.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)
    ) == {"recovered"}


def test_the_authentication_track_confirms_on_session(client, webhooks, time_machine):
    time_machine.move_to(T0, tick=False)
    case = open_case(webhooks, decline_code="authentication_required")
    assert case.track == "authentication"
    url = path_of(pay_url(customer=case.customer, case=case))
    page = client.get(url).content.decode()
    assert "please confirm your payment" in page and "Approve test authentication" in page
    failed = follow(client, url, authenticate="fail").content.decode()
    assert "authentication wasn't completed" in failed
    case.refresh_from_db()
    assert case.is_open
    page = follow(client, url, authenticate="approve").content.decode()
    assert "you're all set" in page
    case.refresh_from_db()
    assert (case.status, case.recovered_via) == ("recovered", "customer")
    assert case.invoice.status == "paid"
    assert case.attempts.filter(source="customer", outcome="succeeded").count() == 1


# ------------------------------------------------------------------ Stripe


class FakeStripeSetup(FakeStripe):
    """FakeStripe plus what the pay page uses: SetupIntents, customer and subscription
    defaults."""

    def __init__(self):
        super().__init__()
        self.setup_intents: dict[str, dict] = {}

    def succeed_setup(self, setup_intent_id: str, payment_method: dict) -> None:
        with self._lock:
            self.setup_intents[setup_intent_id].update(
                status="succeeded", payment_method=payment_method
            )

    def handle(self, record: Recorded) -> _Reply:
        if not record.headers.get("Authorization", "").startswith("Bearer sk_"):
            return _error(401, "invalid_request_error", "Invalid API Key provided.")
        with self._lock:
            if record.method == "POST" and SETUP_INTENTS.match(record.path):
                sid = f"seti_fake{next(self._ids):06d}"
                self.setup_intents[sid] = {
                    "id": sid,
                    "object": "setup_intent",
                    "client_secret": f"{sid}_secret_abc",
                    "customer": record.param("customer"),
                    "status": "requires_payment_method",
                    "usage": record.param("usage"),
                    "payment_method": None,
                }
                return _Reply(200, self.setup_intents[sid])
            if m := SETUP_INTENT.match(record.path):
                intent = self.setup_intents.get(m["id"])
                return _Reply(200, intent) if intent else _missing(m["id"])
            if record.method == "POST" and (m := CUSTOMER.match(record.path)):
                return _Reply(200, {"id": m["id"], "object": "customer"})
            if record.method == "POST" and (m := SUBSCRIPTION.match(record.path)):
                return _Reply(200, {"id": m["id"], "object": "subscription"})
        return super().handle(record)


@pytest.fixture
def stripe_fake(settings):
    server = FakeStripeSetup().start()
    settings.STRIPE_API_BASE = server.url
    yield server
    server.stop()


@pytest.fixture
def stripe_case(store, webhooks, stripe_fake, time_machine):
    time_machine.move_to(T0, tick=False)
    store.gateway = "stripe"
    store.save(update_fields=["gateway"])
    MessagingSettings.objects.create(store=store, stripe_publishable_key="pk_test_beanbox")
    invoice = sf.failed_invoice(decline_code="expired_card")
    stripe_fake.add_invoice(invoice)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])


NEW_CARD = {
    "id": "pm_new_mastercard",
    "object": "payment_method",
    "customer": "cus_test_alice",
    "card": {
        "brand": "mastercard",
        "last4": "4444",
        "exp_month": 11,
        "exp_year": 2031,
        "fingerprint": "fp_new_mc",
    },
}


def test_stripe_store_collects_the_card_with_a_setup_intent_and_retries(
    client, stripe_case, stripe_fake, django_capture_on_commit_callbacks
):
    url = path_of(pay_url(customer=stripe_case.customer, case=stripe_case))
    response = client.get(url)
    page = response.content.decode()
    assert response.status_code == 200
    assert '<script src="https://js.stripe.com/v3/"></script>' in page
    assert "test_card" not in page and "TEST MODE" not in page
    csp = response["Content-Security-Policy"]
    assert "script-src 'self' https://js.stripe.com" in csp
    assert "frame-src https://js.stripe.com https://hooks.stripe.com" in csp
    created = stripe_fake.requests_to("POST", "/v1/setup_intents")
    assert len(created) == 1
    assert created[0].param("customer") == "cus_test_alice"
    assert created[0].param("usage") == "off_session"
    assert created[0].idempotency_key.startswith("recoup-setup-")
    config = json.loads(re.search(r'data-config="([^"]+)"', page).group(1).replace("&quot;", '"'))
    seti = next(iter(stripe_fake.setup_intents))
    assert config["clientSecret"] == f"{seti}_secret_abc"
    assert config["publishableKey"] == "pk_test_beanbox"

    # Stripe.js confirmed the SetupIntent in the browser; our script posts its id.
    stripe_fake.succeed_setup(seti, NEW_CARD)
    stripe_fake.script("approve")
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(url + "complete/", {"setup_intent": seti}, follow=True)
    assert "you're all set" in done.content.decode()
    [default] = stripe_fake.requests_to("POST", "/v1/customers/cus_test_alice")
    assert default.param("invoice_settings[default_payment_method]") == "pm_new_mastercard"
    [sub] = stripe_fake.requests_to("POST", "/v1/subscriptions/sub_test_alice")
    assert sub.param("default_payment_method") == "pm_new_mastercard"
    [pay] = stripe_fake.requests_to("POST", f"/v1/invoices/{stripe_case.invoice.stripe_id}/pay")
    assert pay.param("payment_method") == "pm_new_mastercard"
    assert pay.idempotency_key == f"recoup-case-{stripe_case.pk}-attempt-1"
    assert stripe_fake.real_charges == 1
    stripe_case.refresh_from_db()
    assert (stripe_case.status, stripe_case.recovered_via) == ("recovered", "customer")
    customer = Customer.objects.select_related("default_payment_method").get(
        pk=stripe_case.customer_id
    )
    assert (customer.default_payment_method.stripe_id, customer.default_payment_method.last4) == (
        "pm_new_mastercard",
        "4444",
    )


def test_stripe_completion_is_read_back_and_never_trusted(client, stripe_case, stripe_fake):
    url = path_of(pay_url(customer=stripe_case.customer, case=stripe_case))
    client.get(url)
    seti = next(iter(stripe_fake.setup_intents))
    # Not confirmed in Stripe: the page says so and nothing changes.
    response = client.post(url + "complete/", {"setup_intent": seti})
    assert response.status_code == 400
    assert "wasn't saved" in html.unescape(response.content.decode())
    # Someone else's SetupIntent: refused.
    stripe_fake.setup_intents["seti_other"] = {
        "id": "seti_other",
        "object": "setup_intent",
        "customer": "cus_someone_else",
        "status": "succeeded",
        "payment_method": NEW_CARD,
    }
    response = client.post(url + "complete/", {"setup_intent": "seti_other"})
    assert response.status_code == 400
    assert stripe_fake.requests_to("POST", "/v1/customers/cus_test_alice") == []
    assert stripe_fake.real_charges == 0
    stripe_case.refresh_from_db()
    assert stripe_case.is_open and stripe_case.card_changed_at is None


def test_stripe_store_without_a_publishable_key_says_so_kindly(client, stripe_case):
    MessagingSettings.objects.filter(store=stripe_case.store).update(stripe_publishable_key="")
    page = client.get(path_of(pay_url(customer=stripe_case.customer, case=stripe_case)))
    assert "hasn't finished setting up card updates" in html.unescape(page.content.decode())
    assert "js.stripe.com" not in page["Content-Security-Policy"]


def test_stripe_authentication_is_confirmed_on_session_and_read_back(
    client, store, webhooks, stripe_fake, time_machine, django_capture_on_commit_callbacks
):
    time_machine.move_to(T0, tick=False)
    store.gateway = "stripe"
    store.save(update_fields=["gateway"])
    MessagingSettings.objects.create(store=store, stripe_publishable_key="pk_test_beanbox")
    invoice = sf.failed_invoice(decline_code="authentication_required")
    stripe_fake.add_invoice(invoice)
    webhooks.deliver("invoice.payment_failed", invoice)
    case = RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])
    assert case.track == "authentication"
    pi_id = case.payment_intent_id or case.invoice.payment_intent_id
    stripe_fake.payment_intents[pi_id].update(
        status="requires_action", client_secret=f"{pi_id}_secret_xyz"
    )
    url = path_of(pay_url(customer=case.customer, case=case))
    page = client.get(url).content.decode()
    assert "please confirm your payment" in page
    config = json.loads(re.search(r'data-config="([^"]+)"', page).group(1).replace("&quot;", '"'))
    assert (config["kind"], config["clientSecret"], config["status"]) == (
        "payment",
        f"{pi_id}_secret_xyz",
        "requires_action",
    )
    assert stripe_fake.requests_to("POST", "/v1/setup_intents") == []
    # Someone else's PaymentIntent id: refused.
    assert client.post(url + "complete/", {"payment_intent": "pi_other"}).status_code == 400
    # Still waiting for the bank in Stripe: nothing is recorded.
    client.post(url + "complete/", {"payment_intent": pi_id})
    case.refresh_from_db()
    assert case.is_open
    # The customer passed 3-D Secure in the browser; Stripe says it succeeded.
    stripe_fake.payment_intents[pi_id].update(
        status="succeeded", amount_received=2900, latest_charge="ch_on_session"
    )
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(url + "complete/", {"payment_intent": pi_id}, follow=True)
    assert "you're all set" in done.content.decode()
    case.refresh_from_db()
    assert (case.status, case.recovered_via, case.recovered_amount) == (
        "recovered",
        "customer",
        2900,
    )
    attempt = case.attempts.get(source="customer")
    assert (attempt.outcome, attempt.charge_id) == ("succeeded", "ch_on_session")
    assert case.invoice.status == "paid"
    assert stripe_fake.real_charges == 0  # no off-session charge was made
