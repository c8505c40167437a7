import json
import time

import pytest

from recovery.models import PaymentAttempt, RecoveryCase, StripeEvent
from subscriptions.models import Customer, Invoice, Subscription
from tests import stripe_factory as sf


def test_failed_invoice_opens_one_case_with_every_decline_field(webhooks, store):
    invoice = sf.failed_invoice(
        decline_code="insufficient_funds",
        advice_code="try_again_later",
        network_advice_code="24",
        brand="mastercard",
        fingerprint="fp_mc_1",
    )
    webhooks.deliver("invoice.payment_failed", invoice)

    case = RecoveryCase.objects.get(store=store)
    assert case.invoice.stripe_id == invoice["id"]
    assert case.customer.stripe_id == "cus_test_alice"
    assert case.customer.email == "alice@example.com"
    assert case.subscription.stripe_id == "sub_test_alice"
    assert (case.track, case.decline_code, case.status) == ("soft", "insufficient_funds", "open")
    assert case.amount == 2900 and case.currency == "usd"
    assert "insufficient_funds" in case.track_reason
    attempt = PaymentAttempt.objects.get(case=case)
    assert attempt.source == "stripe_auto" and attempt.outcome == "failed"
    assert (attempt.decline_code, attempt.advice_code, attempt.network_advice_code) == (
        "insufficient_funds",
        "try_again_later",
        "24",
    )
    assert (attempt.card_brand, attempt.card_fingerprint, attempt.card_last4) == (
        "mastercard",
        "fp_mc_1",
        "4242",
    )
    assert attempt.invoice_attempt_number == 1
    assert Subscription.objects.get(stripe_id="sub_test_alice").status == "past_due"
    assert StripeEvent.objects.get().outcome == "processed"


def test_same_event_delivered_twice_is_stored_and_applied_once(webhooks, store):
    event = sf.event("invoice.payment_failed", sf.failed_invoice())
    first, second = webhooks.send(event), webhooks.send(event)
    assert first.json() == {"received": True, "duplicate": False}
    assert second.json() == {"received": True, "duplicate": True}
    assert StripeEvent.objects.count() == 1
    assert RecoveryCase.objects.count() == 1
    assert PaymentAttempt.objects.count() == 1


def test_a_second_failure_of_the_same_invoice_updates_its_case(webhooks):
    invoice = sf.failed_invoice(decline_code="insufficient_funds")
    webhooks.deliver("invoice.payment_failed", invoice)
    again = sf.failed_invoice(
        invoice_id=invoice["id"], attempt_count=2, decline_code="expired_card"
    )
    webhooks.deliver("invoice.payment_failed", again)
    case = RecoveryCase.objects.get()
    assert case.track == "card_update" and case.decline_code == "expired_card"
    assert case.attempts.count() == 2
    assert case.events.filter(kind="track_changed").exists()


@pytest.mark.parametrize(
    "header_for",
    [
        lambda body: "",
        lambda body: sf.sign(body, "whsec_wrong_secret"),
        lambda body: sf.sign(
            body, "whsec_test_recoup_0123456789", timestamp=int(time.time()) - 301
        ),
        lambda body: "t=123,v1=deadbeef",
    ],
    ids=["missing", "forged", "stale", "garbage"],
)
def test_bad_signatures_are_refused_and_write_nothing(client, store, header_for):
    body = json.dumps(sf.event("invoice.payment_failed", sf.failed_invoice()))
    response = client.post(
        store.webhook_path,
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header_for(body),
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"]
    assert "\n" not in response.json()["error"]["message"]
    assert StripeEvent.objects.count() == 0 and RecoveryCase.objects.count() == 0


def test_tampered_body_is_refused(client, store):
    body = json.dumps(sf.event("invoice.payment_failed", sf.failed_invoice(amount=100)))
    header = sf.sign(body, "whsec_test_recoup_0123456789")
    tampered = body.replace('"amount_due": 100', '"amount_due": 1')
    response = client.post(
        store.webhook_path,
        data=tampered,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0


def test_unknown_store_is_refused(client, db):
    body = json.dumps(sf.event("invoice.payment_failed", sf.failed_invoice()))
    for path in (
        "/webhooks/stripe/00000000-0000-0000-0000-000000000000/",
        "/webhooks/stripe/not-a-uuid/",
    ):
        response = client.post(
            path,
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sf.sign(body, "whsec_x"),
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_store"
    assert StripeEvent.objects.count() == 0


def test_another_stores_secret_does_not_open_this_store(client, store, other_store):
    body = json.dumps(sf.event("invoice.payment_failed", sf.failed_invoice()))
    response = client.post(
        store.webhook_path,
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sf.sign(body, "whsec_other_secret_abc"),
    )
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize(
    "raw", ["not json", "[]", '{"id": "evt_1"}', '{"id": "evt_1", "type": "x", "data": 3}']
)
def test_signed_but_malformed_body_is_refused(webhooks, raw):
    response = webhooks.send({}, raw=raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_body"
    assert StripeEvent.objects.count() == 0


def test_get_is_not_allowed(client, store):
    assert client.get(store.webhook_path).status_code == 405


def test_late_failure_after_payment_never_reopens(webhooks):
    invoice = sf.failed_invoice()
    t0 = int(time.time()) - 3600
    webhooks.deliver("invoice.paid", sf.paid_invoice(invoice), created=t0 + 60)
    webhooks.deliver("invoice.payment_failed", invoice, created=t0)  # older, arrives later
    assert Invoice.objects.get(stripe_id=invoice["id"]).status == "paid"
    assert RecoveryCase.objects.count() == 0
    assert PaymentAttempt.objects.filter(outcome="failed").count() == 1  # recorded, changes nothing


def test_payment_closes_the_case_as_recovered_and_a_late_failure_changes_nothing(webhooks):
    invoice = sf.failed_invoice()
    t0 = int(time.time()) - 7200
    webhooks.deliver("invoice.payment_failed", invoice, created=t0)
    webhooks.deliver("invoice.paid", sf.paid_invoice(invoice), created=t0 + 3600)
    case = RecoveryCase.objects.get()
    assert case.status == "recovered" and case.recovered_via == "stripe_retry"
    assert case.recovered_amount == 2900 and case.next_action_at is None
    late = sf.failed_invoice(invoice_id=invoice["id"], attempt_count=2, decline_code="expired_card")
    webhooks.deliver("invoice.payment_failed", late, created=t0 + 1800)
    case.refresh_from_db()
    assert case.status == "recovered" and case.track == "soft"
    assert Subscription.objects.get().status in ("past_due", "active")


def test_voided_and_uncollectible_invoices_close_cases(webhooks):
    a, b = sf.failed_invoice(), sf.failed_invoice(subscription="sub_b", customer="cus_b")
    webhooks.deliver("invoice.payment_failed", a)
    webhooks.deliver("invoice.payment_failed", b)
    webhooks.deliver("invoice.voided", {**a, "status": "void"})
    webhooks.deliver("invoice.marked_uncollectible", {**b, "status": "uncollectible"})
    assert RecoveryCase.objects.get(invoice__stripe_id=a["id"]).status == "cancelled"
    assert RecoveryCase.objects.get(invoice__stripe_id=b["id"]).status == "lost"


def test_action_required_puts_the_case_on_the_authentication_track(webhooks):
    invoice = sf.failed_invoice(decline_code=None)
    webhooks.deliver("invoice.payment_action_required", invoice)
    case = RecoveryCase.objects.get()
    assert case.track == "authentication"
    assert case.attempts.get().outcome == "requires_action"


def test_charge_and_payment_intent_reports_of_one_attempt_are_merged(webhooks):
    invoice = sf.failed_invoice(decline_code=None)  # Stripe does not know why yet
    pi = sf.invoice_payment_intents(invoice["id"])[-1]
    pi["latest_charge"] = pi["latest_charge"]["id"]
    webhooks.deliver("invoice.payment_failed", invoice)
    case = RecoveryCase.objects.get()
    assert case.decline_code == "" and case.decline_awaited_until is not None
    assert case.invoice.payment_intent_id == pi["id"]  # read back: its events now join
    charge = sf.stripe_object(
        "charge",
        id=pi["latest_charge"],
        customer="cus_test_alice",
        payment_intent=pi["id"],
        status="failed",
        paid=False,
        failure_code="card_declined",
        failure_message="Your card was declined.",
        amount=2900,
        outcome={
            "type": "issuer_declined",
            "reason": "stolen_card",
            "advice_code": "do_not_try_again",
            "network_advice_code": None,
            "network_decline_code": "43",
            "seller_message": "",
            "network_status": "declined_by_network",
        },
    )
    webhooks.deliver("charge.failed", charge)
    case.refresh_from_db()
    assert case.track == "hard" and case.decline_code == "stolen_card"
    attempt = case.attempts.get()
    assert attempt.charge_id == pi["latest_charge"] and attempt.network_decline_code == "43"


def test_order_payment_failure_opens_a_payment_case_linked_by_metadata(webhooks, store):
    from orders.models import Order

    customer = Customer.objects.create(
        store=store, stripe_id="cus_shop", first_seen_at="2026-01-01T00:00:00Z"
    )
    order = Order.objects.create(store=store, customer=customer, number="1001", amount=5000)
    pi = sf.stripe_object(
        "payment_intent",
        id="pi_order_1",
        amount=5000,
        customer="cus_shop",
        metadata={"order_id": "1001"},
        last_payment_error={
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "expired_card",
        },
    )
    webhooks.deliver("payment_intent.payment_failed", pi)
    case = RecoveryCase.objects.get()
    assert case.kind == "payment" and case.order == order and case.track == "card_update"
    order.refresh_from_db()
    assert order.payment_status == "failed" and order.fulfillment_status == "awaiting_payment"
    assert order.stripe_payment_intent_id == "pi_order_1"
    webhooks.deliver(
        "payment_intent.succeeded", {**pi, "status": "succeeded", "amount_received": 5000}
    )
    case.refresh_from_db()
    order.refresh_from_db()
    assert case.status == "recovered" and order.payment_status == "paid"


def test_dispute_routes_the_customers_open_cases_to_a_person(webhooks, failed_invoice):
    case = RecoveryCase.objects.get()
    attempt = case.attempts.get()
    dispute = sf.stripe_object(
        "dispute",
        id="dp_1",
        charge=attempt.charge_id,
        payment_intent=attempt.payment_intent_id,
        reason="fraudulent",
        status="needs_response",
    )
    webhooks.deliver("charge.dispute.created", dispute)
    case.refresh_from_db()
    assert case.track == "fraud" and case.escalated and case.dunning_paused
    # No retry and no message: the only thing left scheduled is the window's end.
    assert case.retry_at is None and case.message_at is None
    assert (case.next_action, case.next_action_at) == ("close", case.window_end)
    assert Customer.objects.get(stripe_id="cus_test_alice").disputed_at is not None


def test_card_updater_event_schedules_an_immediate_retry(webhooks, failed_invoice):
    pm = sf.stripe_object("payment_method", id="pm_updated", customer="cus_test_alice")
    pm["card"].update(exp_year=2031, last4="1111", fingerprint="fp_new")
    webhooks.deliver("payment_method.automatically_updated", pm)
    case = RecoveryCase.objects.get()
    assert case.next_action == "retry"
    assert case.card_updater_result == "updated"
    assert case.events.filter(kind="card_changed").exists()


def test_subscription_deleted_cancels_its_open_case(webhooks, failed_invoice):
    sub = sf.stripe_object(
        "subscription",
        id="sub_test_alice",
        customer="cus_test_alice",
        status="canceled",
        cancel_at_period_end=False,
    )
    webhooks.deliver("customer.subscription.deleted", sub)
    assert Subscription.objects.get().status == "canceled"
    assert RecoveryCase.objects.get().status == "cancelled"


def test_older_subscription_snapshot_never_overwrites_a_newer_one(webhooks, store):
    t0 = int(time.time()) - 1000
    newer = sf.stripe_object(
        "subscription", id="sub_x", customer="cus_x", status="active", cancel_at_period_end=True
    )
    older = sf.stripe_object(
        "subscription", id="sub_x", customer="cus_x", status="past_due", cancel_at_period_end=False
    )
    webhooks.deliver("customer.subscription.updated", newer, created=t0 + 100)
    webhooks.deliver("customer.subscription.updated", older, created=t0)
    sub = Subscription.objects.get(stripe_id="sub_x")
    assert sub.status == "active" and sub.cancel_at_period_end is True
    assert sub.interval == "month" and sub.amount > 0 and sub.mrr == sub.amount


def test_unknown_event_types_are_stored_and_ignored(webhooks):
    webhooks.deliver("product.created", {"id": "prod_1", "object": "product"})
    event = StripeEvent.objects.get()
    assert event.outcome == "ignored" and "no handler" in event.error


def test_processing_error_keeps_the_event_for_a_retry(webhooks, monkeypatch):
    from recovery import intake

    def boom(event, data):
        raise RuntimeError("database hiccup")

    monkeypatch.setitem(intake.HANDLERS, "invoice.payment_failed", boom)
    webhooks.deliver("invoice.payment_failed", sf.failed_invoice())
    event = StripeEvent.objects.get()
    assert event.outcome == "failed" and "database hiccup" in event.error
    assert RecoveryCase.objects.count() == 0
    monkeypatch.undo()
    assert intake.stripe_event_process(event_pk=event.pk) == "processed"
    assert RecoveryCase.objects.count() == 1


def test_a_customers_own_card_change_takes_the_credit_from_the_updater(webhooks, failed_invoice):
    pm = sf.stripe_object("payment_method", id="pm_updated", customer="cus_test_alice")
    pm["card"].update(exp_year=2031, last4="1111", fingerprint="fp_new")
    webhooks.deliver("payment_method.automatically_updated", pm)
    assert RecoveryCase.objects.get().card_updater_result == "updated"

    mine = sf.stripe_object("payment_method", id="pm_mine", customer="cus_test_alice")
    mine["card"].update(last4="4242", fingerprint="fp_mine")
    intent = sf.stripe_object(
        "setup_intent",
        id="seti_mine",
        customer="cus_test_alice",
        status="succeeded",
        payment_method=mine,
    )
    webhooks.deliver("setup_intent.succeeded", intent)

    # A success from here on is the customer's doing, not the updater's.
    assert RecoveryCase.objects.get().card_updater_result == ""


def test_a_card_refreshed_by_the_updater_becomes_the_default_when_none_is_on_record(
    webhooks, failed_invoice
):
    from subscriptions.models import Customer

    customer = Customer.objects.get(stripe_id="cus_test_alice")
    Customer.objects.filter(pk=customer.pk).update(default_payment_method=None)
    pm = sf.stripe_object("payment_method", id="pm_refreshed", customer="cus_test_alice")
    pm["card"].update(exp_year=2032, last4="0005", fingerprint="fp_refreshed")
    webhooks.deliver("payment_method.automatically_updated", pm)

    customer.refresh_from_db()
    assert customer.default_payment_method.stripe_id == "pm_refreshed"
    assert customer.default_payment_method.last4 == "0005"


def test_a_payment_intent_failure_reported_after_its_invoice_was_paid_opens_nothing(webhooks):
    """Under a backlog the invoice events are claimed first: invoice.paid may be applied
    before an earlier payment_intent.payment_failed of the same invoice."""
    from subscriptions.models import Invoice as InvoiceRow

    invoice = sf.failed_invoice()
    webhooks.deliver("invoice.paid", sf.paid_invoice(invoice))
    assert InvoiceRow.objects.get(stripe_id=invoice["id"]).status == "paid"
    pi = sf.payment_intent_failed(invoice)
    # Recoup knows the invoice's PaymentIntent (a read-back told it), so the two join.
    InvoiceRow.objects.filter(stripe_id=invoice["id"]).update(payment_intent_id=pi["id"])
    webhooks.deliver("payment_intent.payment_failed", pi)
    assert RecoveryCase.objects.count() == 0
    assert StripeEvent.objects.get(type="payment_intent.payment_failed").outcome == "processed"
    assert PaymentAttempt.objects.get().reason == "reported after the invoice was settled"


@pytest.mark.django_db
def test_the_inbox_the_webhook_writes_has_three_indexes_and_an_lz4_payload_on_postgresql():
    from django.db import connection

    from tests.conftest import requires_postgres

    if connection.vendor != "postgresql":
        pytest.skip(requires_postgres().kwargs["reason"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'recovery_stripeevent'")
        indexes = {name for (name,) in cursor.fetchall()}
        cursor.execute(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'recovery_stripeevent'::regclass AND attname = 'payload'"
        )
        (compression,) = cursor.fetchone()
        cursor.execute(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
            " AND 'lz4' = ANY(enumvals)"
        )
        lz4_built = cursor.fetchone() is not None
    # Every index is written by each webhook INSERT: the primary key, exactly-once, and
    # the claim/sweep of events not done yet; nothing else.
    assert indexes == {
        "recovery_stripeevent_pkey",
        "stripe_event_store_id_unique",
        "stripe_event_open_idx",
    }
    assert compression == ("l" if lz4_built else "")


@pytest.mark.django_db(transaction=True)  # outside a transaction, as in the webhook view
def test_the_webhook_insert_is_prepared_only_as_the_connection_allows_on_postgresql(store):
    """DATABASE_PREPARED_STATEMENTS on: the inbox INSERT is parsed and planned once per
    connection. Off (prepare_threshold None, as behind a pooler that does not track
    prepared statements): it is never prepared."""
    from django.db import connection

    from recovery.intake import stripe_event_store
    from tests.conftest import requires_postgres

    if connection.vendor != "postgresql":
        pytest.skip(requires_postgres().kwargs["reason"])

    def store_three(prefix: str) -> int:
        for i in range(3):
            event = sf.event("customer.updated", {"id": "cus_x", "object": "customer"})
            event["id"] = f"evt_{prefix}{i}"
            _, created = stripe_event_store(store=store, event=event)
            assert created
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements"
                " WHERE statement LIKE 'INSERT INTO recovery_stripeevent%%'"
            )
            return cursor.fetchone()[0]

    connection.ensure_connection()
    raw = connection.connection
    threshold = raw.prepare_threshold
    try:
        raw.prepare_threshold = None
        assert store_three("unprepared") == 0
        raw.prepare_threshold = 2
        assert store_three("prepared") == 1
    finally:
        raw.prepare_threshold = threshold
    assert StripeEvent.objects.filter(store=store).count() == 6
