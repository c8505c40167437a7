"""Decline details read back from Stripe, whatever order the events come in.

A current-API `invoice.payment_failed` carries no decline: the case waits (no retry, no
message) until the intake worker has read the invoice's payments back, or until the
deadline classifies it conservatively; a late answer reclassifies it."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
import time_machine
from django.utils import timezone

from messaging.models import Message
from recovery.domain import declines
from recovery.intake import stripe_events_work
from recovery.lookups import decline_lookups_run
from recovery.models import CaseEvent, DeclineLookup, PaymentAttempt, RecoveryCase
from recovery.scheduler import run_due
from stores.models import Store
from tests import stripe_factory as sf
from tests.fake_stripe import fake_stripe  # noqa: F401  (fixture)

TRIO = ("invoice.payment_failed", "payment_intent.payment_failed", "charge.failed")


def _trio(invoice: dict) -> dict[str, dict]:
    return {
        "invoice.payment_failed": invoice,
        "payment_intent.payment_failed": sf.payment_intent_failed(invoice),
        "charge.failed": sf.charge_failed(invoice),
    }


def _keys_anywhere(value, keys: set[str], path: str = "") -> list[str]:
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in keys:
                found.append(f"{path}.{key}")
            found += _keys_anywhere(inner, keys, f"{path}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _keys_anywhere(inner, keys, f"{path}[{i}]")
    return found


def test_every_payload_the_tests_build_has_the_shape_stripe_sends():
    invoice = sf.failed_invoice(decline_code="lost_card")
    paid = sf.paid_invoice(invoice)
    for payload in (invoice, paid, sf.event("invoice.payment_failed", invoice)):
        assert _keys_anywhere(payload, {"payments"}) == []  # includable: never sent
    for payload in (sf.payment_intent_failed(invoice), sf.charge_failed(invoice)):
        assert "invoice" not in payload  # PaymentIntents and Charges have no invoice
    for kind in ("payment_intent", "charge"):
        assert "invoice" not in sf.stripe_object(kind)
    assert "payments" not in sf.stripe_object("invoice")
    # The PaymentIntent as an event carries it: its charge an id, not expanded.
    assert isinstance(sf.payment_intent_failed(invoice)["latest_charge"], str)


@pytest.mark.parametrize("order", list(itertools.permutations(TRIO)))
def test_the_case_is_classified_the_same_in_every_order_of_the_trio(webhooks, order):
    invoice = sf.failed_invoice(
        decline_code="do_not_honor", network_advice_code="03", brand="mastercard"
    )
    events = _trio(invoice)
    for type_ in order:
        webhooks.deliver(type_, events[type_])
    for type_ in order:  # and each of them again
        webhooks.deliver(type_, events[type_])
    case = RecoveryCase.objects.get()
    expected = declines.classify(
        decline_code="do_not_honor", network_advice_code="03", card_brand="mastercard"
    )
    assert (
        (case.track, case.decline_code)
        == (expected.track, "do_not_honor")
        == ("hard", "do_not_honor")
    )
    assert case.network_advice_code == "03" and case.decline_awaited_until is None
    assert (case.card_brand, case.card_last4, case.card_fingerprint) == (
        "mastercard",
        "4242",
        "fp_visa_alice",
    )
    assert (case.card_exp_month, case.card_exp_year, case.card_country) == (8, 2030, "US")
    attempt = PaymentAttempt.objects.get()  # one charge, reported three times, twice
    assert attempt.case_id == case.pk and attempt.charge_id == events["charge.failed"]["id"]
    assert case.retry_at is None  # Mastercard advice 03: never retried


def test_a_case_waits_for_stripe_to_say_why_and_neither_retries_nor_messages(
    webhooks, store, settings
):
    store.gateway, store.stripe_secret_key = Store.Gateway.STRIPE, "sk_test_down"
    store.save()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Stripe unreachable: the read fails
    invoice = sf.failed_invoice(decline_code="expired_card")
    webhooks.deliver("invoice.payment_failed", invoice)
    case = RecoveryCase.objects.get()
    assert case.decline_awaited_until is not None
    assert case.next_action == RecoveryCase.NextAction.CLASSIFY
    assert case.retry_at is None and case.message_at is None
    lookup = DeclineLookup.objects.get(case=case)
    assert lookup.attempts == 1 and lookup.answered_at is None
    assert "APIConnectionError" in lookup.last_error
    assert lookup.due_at > timezone.now()  # tried again later, with back-off
    # An expired card asks the customer at once, once Stripe has said so: not before.
    run_due(rollups=False)
    assert not Message.objects.filter(case=case).exists()
    assert not PaymentAttempt.objects.exclude(source=PaymentAttempt.Source.STRIPE_AUTO).exists()


def test_past_the_deadline_it_is_classified_conservatively_and_a_late_answer_reclassifies(
    webhooks,
    store,
    fake_stripe,  # noqa: F811 - the fixture
):
    store.gateway = Store.Gateway.STRIPE
    store.save()
    invoice = sf.failed_invoice(decline_code="stolen_card", advice_code="do_not_try_again")
    t0 = timezone.now()
    with time_machine.travel(t0, tick=False) as traveller:
        # Stripe does not know the invoice yet when the event is processed (404).
        webhooks.deliver("invoice.payment_failed", invoice)
        case = RecoveryCase.objects.get()
        assert case.decline_awaited_until is not None
        traveller.move_to(t0 + dt.timedelta(minutes=16))
        run_due(rollups=False)
        case.refresh_from_db()
        assert case.decline_awaited_until is None and case.track == "soft"
        assert CaseEvent.objects.filter(case=case, kind="classified_without_decline").exists()
        # Stripe answers at last: the case is reclassified, and never retried on that card.
        fake_stripe.add_invoice(invoice)
        traveller.move_to(t0 + dt.timedelta(hours=2))
        decline_lookups_run()
        case.refresh_from_db()
        assert (case.track, case.decline_code) == ("hard", "stolen_card")
        assert case.retry_at is None
        assert CaseEvent.objects.filter(case=case, kind="decline_read").exists()
    reads = fake_stripe.invoice_reads()
    assert reads and all(
        r.object_id == invoice["id"] and r.expand == {"payments.data.payment.payment_intent"}
        for r in reads
    )


def test_a_late_read_of_an_invoice_paid_meanwhile_opens_nothing(webhooks, store, settings):
    store.gateway, store.stripe_secret_key = Store.Gateway.STRIPE, "sk_test_down"
    store.save()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    invoice = sf.failed_invoice(decline_code="insufficient_funds")
    webhooks.deliver("invoice.payment_failed", invoice)
    webhooks.deliver("invoice.paid", sf.paid_invoice(invoice))
    case = RecoveryCase.objects.get()
    assert case.status == "recovered"
    DeclineLookup.objects.update(due_at=timezone.now())
    store.gateway = Store.Gateway.SANDBOX
    store.save()
    webhooks.stripe_knows(invoice["id"])
    decline_lookups_run()
    case.refresh_from_db()
    assert case.status == "recovered" and case.decline_code == ""
    assert DeclineLookup.objects.get().due_at is None
    # A late failure event of the paid invoice opens nothing either.
    webhooks.deliver("payment_intent.payment_failed", sf.payment_intent_failed(invoice))
    assert RecoveryCase.objects.count() == 1 and case.status == "recovered"


def test_the_webhook_only_stores_and_the_worker_processes(client, store):
    body = json.dumps(sf.event("invoice.payment_failed", sf.failed_invoice()))
    response = client.post(
        store.webhook_path,
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sf.sign(body, store.stripe_webhook_secret),
    )
    assert response.json() == {"received": True, "duplicate": False}
    assert not RecoveryCase.objects.exists()  # nothing applied in the request
    assert stripe_events_work(until_idle=True) == 1
    assert RecoveryCase.objects.count() == 1
    assert stripe_events_work(until_idle=True) == 0


def test_the_read_back_stream_reads_each_invoice_once_and_records_every_answer(
    store,
    settings,
    fake_stripe,  # noqa: F811 - the fixture
):
    """The intake worker's read-back thread keeps reads in the air while it records the
    answers that came back: five lookups through a window of two reads (four claimed),
    each invoice read once, through the SDK, and every case classified by its answer."""
    from recovery.intake import stripe_event_process, stripe_event_store
    from recovery.lookups import decline_lookups_stream

    store.gateway = Store.Gateway.STRIPE
    store.save()
    settings.RECOUP_LOOKUP_CONCURRENCY = 2
    codes = ["insufficient_funds", "expired_card", "lost_card", "incorrect_cvc", "do_not_honor"]
    invoices = [
        sf.failed_invoice(customer=f"cus_stream{i}", decline_code=code)
        for i, code in enumerate(codes)
    ]
    for invoice in invoices:
        fake_stripe.add_invoice(invoice)
        stored, _ = stripe_event_store(
            store=store, event=sf.event("invoice.payment_failed", invoice)
        )
        stripe_event_process(event_pk=stored.pk)
    unanswered = DeclineLookup.objects.filter(answered_at__isnull=True)
    assert unanswered.count() == 5 and not fake_stripe.invoice_reads()

    read = decline_lookups_stream(running=unanswered.exists, idle_sleep=0.01)

    assert read == 5
    reads = fake_stripe.invoice_reads()
    assert sorted(r.object_id for r in reads) == sorted(inv["id"] for inv in invoices)
    got = dict(RecoveryCase.objects.values_list("invoice__stripe_id", "decline_code"))
    assert got == {inv["id"]: code for inv, code in zip(invoices, codes, strict=True)}
    assert not RecoveryCase.objects.filter(decline_awaited_until__isnull=False).exists()
    assert CaseEvent.objects.filter(kind="decline_read").count() == 5


def _stored_failures(store, fake_stripe, codes):  # noqa: F811
    """Failure events stored by the webhook and not processed yet; Stripe knows them."""
    from recovery.intake import stripe_event_store

    invoices, stored = [], []
    for i, code in enumerate(codes):
        invoice = sf.failed_invoice(customer=f"cus_ahead{i}", decline_code=code)
        fake_stripe.add_invoice(invoice)
        invoices.append(invoice)
        stored.append(
            stripe_event_store(store=store, event=sf.event("invoice.payment_failed", invoice))[0]
        )
    return invoices, stored


def _stream_until(done, seconds: float = 30) -> int:
    import time

    from recovery.lookups import decline_lookups_stream

    until = time.monotonic() + seconds
    return decline_lookups_stream(
        running=lambda: time.monotonic() < until and not done(), idle_sleep=0.01
    )


def test_reads_go_ahead_of_the_intake_and_each_case_opens_classified_by_its_answer(
    store,
    settings,
    fake_stripe,  # noqa: F811 - the fixture
):
    """In a burst the intake falls behind the reads the rate limit allows: the read-back
    thread reads the declines of failure events still waiting to be processed, keeps the
    answers, and each case opens classified from them, with no second read."""
    from recovery.intake import stripe_event_process

    store.gateway = Store.Gateway.STRIPE
    store.save()
    settings.RECOUP_LOOKUP_CONCURRENCY = 2
    codes = ["insufficient_funds", "lost_card", "expired_card"]
    invoices, stored = _stored_failures(store, fake_stripe, codes)
    from recovery.intake import stripe_event_store

    # An invoice that needs the customer's action is classified by that, never read back.
    needs_action = sf.failed_invoice(customer="cus_3ds", decline_code="authentication_required")
    stripe_event_store(store=store, event=sf.event("invoice.payment_action_required", needs_action))
    answered = DeclineLookup.objects.filter(answered_at__isnull=False)

    _stream_until(lambda: answered.count() >= 3)

    assert not RecoveryCase.objects.exists()  # nothing processed: only read
    kept = DeclineLookup.objects.order_by("invoice_stripe_id")
    assert sorted(kept.values_list("invoice_stripe_id", flat=True)) == sorted(
        inv["id"] for inv in invoices
    )  # not the one that needs action
    assert all(lk.case_id is None and lk.answer and lk.due_at is None for lk in kept)
    reads = fake_stripe.invoice_reads()
    assert sorted(r.object_id for r in reads) == sorted(inv["id"] for inv in invoices)

    for row in stored:
        stripe_event_process(event_pk=row.pk)

    got = dict(RecoveryCase.objects.values_list("invoice__stripe_id", "decline_code"))
    assert got == {inv["id"]: code for inv, code in zip(invoices, codes, strict=True)}
    cases = RecoveryCase.objects.all()
    assert not cases.filter(decline_awaited_until__isnull=False).exists()
    lost = cases.get(decline_code="lost_card")
    assert lost.track == declines.classify(decline_code="lost_card").track
    assert lost.retry_at is None  # never retried on a lost card
    assert set(DeclineLookup.objects.values_list("case_id", flat=True)) == set(
        cases.values_list("pk", flat=True)
    )
    timeline = CaseEvent.objects.filter(kind="decline_read")
    assert timeline.count() == 3 and all(": classified" in e.message for e in timeline)
    # The PaymentIntent the read named is on the invoice: its own events find it.
    assert all(case.invoice.payment_intent_id for case in cases)
    assert len(fake_stripe.invoice_reads()) == 3  # no read twice


def test_a_read_made_before_the_failure_was_received_is_asked_again(
    store,
    settings,
    fake_stripe,  # noqa: F811 - the fixture
):
    """An answer kept from before this failure's event (an earlier attempt of the same
    invoice) does not say why this attempt failed: the case waits for a new read."""
    from recovery.intake import stripe_event_process
    from recovery.lookups import decline_lookups_ahead

    store.gateway = Store.Gateway.STRIPE
    store.save()
    invoices, stored = _stored_failures(store, fake_stripe, ["insufficient_funds"])
    since, made = decline_lookups_ahead(now=timezone.now())
    assert made == 1 and since == (stored[0].received_at, stored[0].pk)
    assert decline_lookups_ahead(now=timezone.now(), since=since) == (since, 0)
    _stream_until(lambda: DeclineLookup.objects.filter(answer__isnull=False).exists())
    DeclineLookup.objects.update(requested_at=stored[0].received_at - dt.timedelta(seconds=1))

    stripe_event_process(event_pk=stored[0].pk)

    case = RecoveryCase.objects.get()
    lookup = DeclineLookup.objects.get()
    assert case.decline_awaited_until is not None and case.decline_code == ""
    assert lookup.case_id == case.pk and lookup.answer is None
    assert lookup.due_at is not None and lookup.answered_at is None  # asked again
    assert decline_lookups_run() == 1
    case.refresh_from_db()
    assert case.decline_code == "insufficient_funds" and case.decline_awaited_until is None


def test_a_read_ahead_answered_after_its_case_opened_goes_to_the_case(
    store,
    fake_stripe,  # noqa: F811 - the fixture
):
    """The intake opens the case while the read made ahead is in the air: the case takes
    the lookup over and the answer, when it lands, classifies the case."""
    from recovery.gateways import gateway_for
    from recovery.intake import stripe_event_process
    from recovery.lookups import (
        decline_lookup_answer,
        decline_lookups_ahead,
        decline_lookups_claim,
    )

    store.gateway = Store.Gateway.STRIPE
    store.save()
    invoices, stored = _stored_failures(store, fake_stripe, ["incorrect_cvc"])
    decline_lookups_ahead(now=timezone.now())
    [in_flight] = decline_lookups_claim(now=timezone.now())
    assert in_flight.case_id is None
    stripe_event_process(event_pk=stored[0].pk)
    case = RecoveryCase.objects.get()
    assert case.decline_awaited_until is not None
    assert DeclineLookup.objects.get().case_id == case.pk
    assert not fake_stripe.invoice_reads()  # not asked twice

    answer = gateway_for(store).invoice_failure_read(invoice_id=invoices[0]["id"])
    assert decline_lookup_answer(lookup=in_flight, answer=answer, now=timezone.now()) == (
        "answered"
    )

    case.refresh_from_db()
    assert case.decline_code == "incorrect_cvc" and case.decline_awaited_until is None
    assert DeclineLookup.objects.get().answer is None and len(fake_stripe.invoice_reads()) == 1


def test_a_read_ahead_that_fails_is_asked_again_until_its_case_opens(store, settings):
    """Stripe unreachable: the read made ahead is kept due, with its error and back-off,
    not given up for want of a case."""
    from recovery.intake import stripe_event_store
    from recovery.lookups import decline_lookups_ahead

    store.gateway, store.stripe_secret_key = Store.Gateway.STRIPE, "sk_test_down"
    store.save()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    invoice = sf.failed_invoice(decline_code="expired_card")
    stripe_event_store(store=store, event=sf.event("invoice.payment_failed", invoice))
    decline_lookups_ahead(now=timezone.now())

    assert decline_lookups_run() == 1

    lookup = DeclineLookup.objects.get()
    assert lookup.case_id is None and lookup.answer is None
    assert lookup.attempts == 1 and "APIConnectionError" in lookup.last_error
    assert lookup.due_at > timezone.now()


def test_a_case_opened_from_a_read_ahead_is_planned_once(
    store,
    settings,
    fake_stripe,  # noqa: F811 - the fixture
):
    """The case opens classified by the answer read ahead and is planned once its attempt
    is counted: one reading of the learned statistics, not one before the attempt and one
    after."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from recovery.intake import stripe_event_process

    store.gateway = Store.Gateway.STRIPE
    store.save()
    _, stored = _stored_failures(store, fake_stripe, ["insufficient_funds"])
    _stream_until(lambda: DeclineLookup.objects.filter(answer__isnull=False).exists())

    with CaptureQueriesContext(connection) as queries:
        stripe_event_process(event_pk=stored[0].pk)

    case = RecoveryCase.objects.get()
    assert case.decline_code == "insufficient_funds" and case.retry_at is not None
    plans = [q for q in queries.captured_queries if 'FROM "recovery_retrystat"' in q["sql"]]
    assert len(plans) == 1
