"""Cases: the filterable list, the case page's whole timeline, and every action as a POST
through a service, recorded on the timeline with the person who did it."""

# ruff: noqa: F811 - tests take the imported `billing_stripe` fixture by its name
from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.utils import timezone

from messaging.models import Message
from recovery.models import CaseEvent, PaymentAttempt, RecoveryCase
from stores.models import Store
from tests import stripe_factory as sf
from tests.dashboard.billing_stripe import billing_stripe  # noqa: F401 - a fixture
from tests.dashboard.conftest import (
    count_queries,
    make_attempt,
    make_case,
    make_customer,
    queries_text,
)

DAY = dt.timedelta(days=1)


def ids(response) -> list[int]:
    import re

    return [int(x) for x in re.findall(r'data-case="(\d+)"', response.content.decode())]


def test_case_list_filters_by_status_track_code_escalation_amount_and_date(store, operator_client):
    now = timezone.now()
    a = make_case(
        store, opened_at=now - DAY, amount=1500, track="soft", decline_code="insufficient_funds"
    )
    b = make_case(
        store,
        opened_at=now - 3 * DAY,
        amount=9900,
        track="card_update",
        decline_code="expired_card",
    )
    c = make_case(
        store,
        opened_at=now - 10 * DAY,
        amount=12000,
        status="recovered",
        closed_at=now - 2 * DAY,
        via="recoup_retry",
        escalated=True,
        decline_code="do_not_honor",
    )
    url = f"/s/{store.id}/cases/"
    assert ids(operator_client.get(url)) == [a.pk, b.pk, c.pk]
    assert ids(operator_client.get(url, {"status": "open"})) == [a.pk, b.pk]
    assert ids(operator_client.get(url, {"track": "card_update"})) == [b.pk]
    assert ids(operator_client.get(url, {"decline_code": "insufficient_funds"})) == [a.pk]
    assert ids(operator_client.get(url, {"escalated": "yes"})) == [c.pk]
    assert ids(operator_client.get(url, {"amount_min": "20", "amount_max": "100"})) == [b.pk]
    since = (now - 5 * DAY).astimezone(store.tzinfo).date().isoformat()
    assert ids(operator_client.get(url, {"opened_from": since})) == [a.pk, b.pk]
    assert ids(operator_client.get(url, {"sort": "amount"})) == [c.pk, b.pk, a.pk]
    assert ids(operator_client.get(url, {"q": b.customer.email})) == [b.pk]
    empty = operator_client.get(url, {"track": "fraud"}).content.decode()
    assert "No case matches these filters" in empty


def test_case_list_paginates_in_a_fixed_number_of_queries(store, agent_client):
    now = timezone.now()
    for i in range(5):
        make_case(store, opened_at=now - i * dt.timedelta(hours=1))
    agent_client.get(f"/s/{store.id}/cases/")
    with count_queries() as small:
        agent_client.get(f"/s/{store.id}/cases/")
    for i in range(60):
        make_case(store, opened_at=now - dt.timedelta(days=2, hours=i))
    with count_queries() as large:
        first = agent_client.get(f"/s/{store.id}/cases/")
    assert len(ids(first)) == 50 and 'rel="next"' in first.content.decode()
    assert len(large.captured_queries) == len(small.captured_queries) <= 8, queries_text(large)
    second = agent_client.get(f"/s/{store.id}/cases/", {"page": 2})
    assert len(ids(second)) == 15


def test_case_page_shows_the_whole_timeline(store, operator_client, webhooks):
    invoice = sf.failed_invoice(customer="cus_timeline", amount=4900)
    webhooks.deliver("invoice.payment_failed", invoice)
    case = RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])
    now = timezone.now()
    make_attempt(
        case,
        at=now,
        decline_code="do_not_honor",
        reason="retry 1 of 4: Friday, payday",
        card_brand="visa",
        card_last4="4242",
    )
    Message.objects.create(
        store=store,
        customer=case.customer,
        case=case,
        purpose="soft_first_notice",
        channel="email",
        to="alice@example.com",
        subject="Your payment didn't go through",
        status="delivered",
        created_at=now,
        sent_at=now,
        delivered_at=now,
        opened_at=now + dt.timedelta(minutes=3),
        clicked_at=now + dt.timedelta(minutes=4),
    )
    operator_client.post(
        f"/s/{store.id}/cases/{case.pk}/note/", {"body": "Customer asked for a call"}
    )

    body = operator_client.get(f"/s/{store.id}/cases/{case.pk}/").content.decode()

    assert "Payment of 4900 USD failed" in body  # the opening event
    assert "decline insufficient_funds" in body  # Stripe's own attempt, with its code
    assert "decline do_not_honor" in body and "why then: retry 1 of 4: Friday, payday" in body
    assert "visa •••• 4242" in body
    assert "Email · Payment failed: first notice: Delivered" in body
    assert "opened" in body and "clicked" in body
    # In the store's zone (Europe/Berlin), as every other time on the page.
    berlin = now.astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))
    assert f"sent {berlin:%b %-d %H:%M}" in body
    assert f"opened {berlin + dt.timedelta(minutes=3):%b %-d %H:%M}" in body
    assert "Customer asked for a call" in body and "— olivia" in body


def test_case_page_query_count_does_not_grow_with_its_history(store, operator_client):
    case = make_case(store, opened_at=timezone.now() - DAY)
    url = f"/s/{store.id}/cases/{case.pk}/"

    def add(n):
        for i in range(n):
            make_attempt(
                case, at=timezone.now() - dt.timedelta(minutes=i), decline_code="do_not_honor"
            )
            CaseEvent.objects.create(
                store=store, case=case, kind="retry_scheduled", at=timezone.now(), message=f"e{i}"
            )

    add(12)  # past the 24 h budget already: the page reads when it frees up
    operator_client.get(url)
    with count_queries() as small:
        operator_client.get(url)
    add(40)
    with count_queries() as large:
        operator_client.get(url)
    assert len(large.captured_queries) == len(small.captured_queries) <= 22, queries_text(large)


@pytest.fixture
def stripe_case(store, webhooks, billing_stripe):
    Store.objects.filter(pk=store.pk).update(gateway=Store.Gateway.STRIPE)
    invoice = sf.failed_invoice(customer="cus_retry", amount=2900)
    billing_stripe.add_invoice(invoice)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.get(invoice__stripe_id=invoice["id"]), invoice


def test_retry_now_charges_through_stripe_and_records_who_asked(
    store, operator_client, stripe_case, billing_stripe
):
    case, invoice = stripe_case
    billing_stripe.script("approve")

    response = operator_client.post(f"/s/{store.id}/cases/{case.pk}/retry/", follow=True)

    assert "The retry succeeded: the case is recovered." in response.content.decode()
    case.refresh_from_db()
    assert case.status == RecoveryCase.Status.RECOVERED
    assert case.recovered_via == RecoveryCase.RecoveredVia.AGENT
    attempt = case.attempts.get(source=PaymentAttempt.Source.AGENT)
    assert attempt.outcome == "succeeded" and attempt.reason == "retry now, asked for by olivia"
    (request,) = billing_stripe.requests_to("POST", f"/v1/invoices/{invoice['id']}/pay")
    assert request.idempotency_key == attempt.idempotency_key
    assert CaseEvent.objects.filter(case=case, kind="recovered", actor="olivia").exists()


def test_retry_now_is_refused_when_the_network_budget_is_spent(store, operator_client):
    customer = make_customer(store)
    case = make_case(store, opened_at=timezone.now() - 5 * DAY, customer=customer)
    for i in range(15):
        make_attempt(
            case,
            at=timezone.now() - dt.timedelta(hours=6 + i),
            source="stripe_auto",
            card_brand="visa",
            card_fingerprint="fp_spent",
        )
    # The engine reads the card from the attempts when the customer has no default card.
    page = operator_client.get(f"/s/{store.id}/cases/{case.pk}/").content.decode()
    assert "A retry now would be refused: visa budget used: 15 of 15 attempts in 30 days" in page

    response = operator_client.post(f"/s/{store.id}/cases/{case.pk}/retry/", follow=True)

    assert (
        "Not retried: visa budget used: 15 of 15 attempts in 30 days." in response.content.decode()
    )
    assert case.attempts.count() == 15
    refused = CaseEvent.objects.get(case=case, kind="retry_refused")
    assert refused.actor == "olivia"


def test_pause_resume_extend_and_cancel(store, agent_client):
    case = make_case(store, opened_at=timezone.now() - DAY)
    base = f"/s/{store.id}/cases/{case.pk}"
    end = case.window_end

    agent_client.post(f"{base}/pause/")
    case.refresh_from_db()
    assert case.dunning_paused and case.next_action in ("close", "")
    agent_client.post(f"{base}/resume/")
    case.refresh_from_db()
    assert not case.dunning_paused

    agent_client.post(f"{base}/extend/", {"days": "7", "why": "customer travelling"})
    case.refresh_from_db()
    assert case.window_end == end + 7 * DAY
    agent_client.post(f"{base}/extend/", {"days": "30"})  # 21 + 7 + 30 = 58 days
    agent_client.post(f"{base}/extend/", {"days": "30"})  # 88 days
    too_far = agent_client.post(f"{base}/extend/", {"days": "5"}, follow=True).content.decode()
    assert "A recovery window can run at most 90 days" in too_far  # would be 93
    case.refresh_from_db()
    assert case.window_end == end + 67 * DAY

    agent_client.post(f"{base}/cancel/", {"why": "forgiven"})
    case.refresh_from_db()
    assert case.status == RecoveryCase.Status.CANCELLED and "forgiven" in case.closed_reason
    kinds = list(CaseEvent.objects.filter(case=case, actor="arjun").values_list("kind", flat=True))
    assert kinds == ["dunning_paused", "dunning_resumed", *["window_extended"] * 3, "cancelled"]
    # A closed case refuses further actions, with a reason.
    again = agent_client.post(f"{base}/pause/", follow=True).content.decode()
    assert "This case is already cancelled" in again


def test_mark_paid_outside_stripe_tells_stripe_then_closes(
    store, operator_client, stripe_case, billing_stripe
):
    case, invoice = stripe_case
    operator_client.post(f"/s/{store.id}/cases/{case.pk}/mark-paid/", {"note": "bank transfer"})
    case.refresh_from_db()
    assert case.status == RecoveryCase.Status.RECOVERED
    assert case.recovered_via == RecoveryCase.RecoveredVia.OUTSIDE
    (request,) = billing_stripe.requests_to("POST", f"/v1/invoices/{invoice['id']}/pay")
    assert request.param("paid_out_of_band") == "true"
    assert billing_stripe.real_charges == 0
    assert (
        case.invoice.status == "paid"
        or type(case.invoice).objects.get(pk=case.invoice_id).status == "paid"
    )


def test_mark_paid_on_a_sandbox_store_closes_without_stripe(store, operator_client):
    case = make_case(store, opened_at=timezone.now() - DAY)
    operator_client.post(f"/s/{store.id}/cases/{case.pk}/mark-paid/")
    case.refresh_from_db()
    assert (case.status, case.recovered_via, case.recovered_amount) == (
        "recovered",
        "outside",
        case.amount,
    )
