"""The escalation queue: routing by store policy (value, churn risk, fraud, replies), the
explainable churn score, claims, notes and every outcome, and dunning paused while a
person has the case."""

# ruff: noqa: F811 - tests take the imported `billing_stripe` fixture by its name
from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone

from recovery.models import CaseEvent, RecoveryCase
from stores.models import Store
from stores.services import membership_create
from support import services
from support.models import CustomerSignal, QueueItem
from tests import stripe_factory as sf
from tests.dashboard.billing_stripe import billing_stripe  # noqa: F401 - a fixture
from tests.dashboard.conftest import (
    count_queries,
    make_case,
    make_customer,
    make_subscription,
    queries_text,
)

DAY = dt.timedelta(days=1)


def deliver_failure(webhooks, **kw) -> RecoveryCase:
    invoice = sf.failed_invoice(**kw)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.select_related("customer", "subscription").get(
        invoice__stripe_id=invoice["id"]
    )


def test_a_high_value_failure_goes_to_a_person_and_dunning_pauses(store, webhooks):
    Store.objects.filter(pk=store.pk).update(high_value_mrr_threshold=2500)
    case = deliver_failure(webhooks, amount=2900)

    item = QueueItem.objects.get(case=case)
    assert item.status == QueueItem.Status.WAITING
    assert [r["code"] for r in item.reasons] == ["high_value_mrr"]
    assert "MRR 29.00 USD (threshold 25.00 USD)" in item.reasons[0]["label"]
    assert item.value_at_risk == 12 * 2900  # a year of the subscription
    case.refresh_from_db()
    assert case.escalated and case.dunning_paused
    assert case.retry_at is None and case.message_at is None
    assert case.next_action == RecoveryCase.NextAction.CLOSE
    assert CaseEvent.objects.filter(case=case, kind="queued").exists()


def test_an_ordinary_failure_stays_with_automation(store, webhooks):
    case = deliver_failure(webhooks, amount=2900)  # default threshold 500.00
    assert not QueueItem.objects.filter(case=case).exists()
    case.refresh_from_db()
    assert not case.dunning_paused and case.retry_at is not None


def test_a_fraud_decline_is_queued_with_its_reason(store, webhooks):
    case = deliver_failure(webhooks, decline_code="fraudulent")
    item = QueueItem.objects.get(case=case)
    assert item.reasons[0]["code"] == "fraud"
    assert item.reasons[0]["label"].startswith("Fraud or dispute risk")


def test_churn_signals_push_a_customer_over_the_threshold_with_reasons(store, webhooks, api):
    case = deliver_failure(webhooks, customer="cus_wavering")
    assert not QueueItem.objects.filter(case=case).exists()
    url = "/api/v1/customers/cus_wavering/signals"

    response = api.post(
        url,
        {
            "signals": [
                {"kind": "cancel_page_visit", "id": "evt-1"},
                {"kind": "downgrade", "id": "evt-2"},
                {"kind": "custom", "label": "Asked about refunds in chat", "weight": 20},
            ]
        },
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    # 25 (cancel page) + 20 (downgrade) + 20 (custom) + 10 (customer for 0 days) = 75
    assert body["churn_score"] == 75
    assert [r["points"] for r in body["reasons"]] == [25, 20, 20, 10]
    assert body["queued_cases"] == [case.pk]
    item = QueueItem.objects.get(case=case)
    assert item.reasons[0]["label"] == "Churn risk 75 (threshold 60)"
    assert {r["code"] for r in item.churn_reasons} >= {
        "cancel_page_visit",
        "downgrade",
        "short_tenure",
    }
    # The same signal sent again (by its id) counts once.
    again = api.post(
        url, {"kind": "cancel_page_visit", "id": "evt-1"}, content_type="application/json"
    )
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert CustomerSignal.objects.filter(customer=case.customer).count() == 3
    assert api.get(url).json()["churn_score"] == 75


def test_signals_api_explains_bad_input(api, other_store):
    bad = api.post(
        "/api/v1/customers/cus_x/signals", {"kind": "moon_phase"}, content_type="application/json"
    )
    assert bad.status_code == 400
    assert "moon_phase" in str(bad.json())
    custom = api.post(
        "/api/v1/customers/cus_x/signals", {"kind": "custom"}, content_type="application/json"
    )
    assert custom.status_code == 400 and "label" in custom.json()["error"]["message"]
    assert Client().post("/api/v1/customers/cus_x/signals", {"kind": "downgrade"}).status_code in (
        401,
        403,
    )


def test_cancel_at_period_end_on_the_subscription_counts(store):
    customer = make_customer(store)
    make_subscription(store, customer, cancel_at_period_end=True)
    from support.churn import churn_score

    score = churn_score(customer=customer, at=timezone.now())
    assert score.score == 30
    assert score.reasons[0].label == "Subscription set to cancel at period end (Stripe)"


def test_a_customer_reply_routes_their_open_case(store):
    case = make_case(store, opened_at=timezone.now() - DAY)
    items = services.case_customer_replied(
        customer=case.customer, at=timezone.now(), channel="sms", excerpt="Can I pay next week?"
    )
    assert [i.case_id for i in items] == [case.pk]
    assert items[0].reasons[0]["label"] == 'The customer replied by sms: "Can I pay next week?"'


@pytest.fixture
def queued(store):
    now = timezone.now()
    customer = make_customer(store, email="vip@example.com")
    sub = make_subscription(store, customer, mrr=60_000)
    case = make_case(store, opened_at=now - DAY, customer=customer, subscription=sub, amount=60_000)
    item = services.case_route(case=case, at=now)
    assert item is not None
    return item


def test_agents_claim_release_and_note(store, queued, agent, agent_client):
    other = membership_create(store=store, username="bea", role="agent", password="pw-bea-12345")[
        0
    ].user
    bea = Client()
    bea.login(username="bea", password="pw-bea-12345")
    base = f"/s/{store.id}/queue/{queued.pk}"

    agent_client.post(f"{base}/claim/")
    queued.refresh_from_db()
    assert queued.claimed_by == agent and queued.status == QueueItem.Status.CLAIMED
    assert queued.first_response_at is not None

    response = bea.post(f"{base}/claim/", follow=True)
    assert "arjun has already claimed this item" in response.content.decode()
    queued.refresh_from_db()
    assert queued.claimed_by == agent
    assert bea.post(f"{base}/release/", follow=True).status_code == 200
    queued.refresh_from_db()
    assert queued.claimed_by == agent  # only the claimer (or an operator) releases

    agent_client.post(f"/s/{store.id}/cases/{queued.case_id}/note/", {"body": "Called, voicemail."})
    note = CaseEvent.objects.get(case_id=queued.case_id, kind="note")
    assert (note.message, note.actor) == ("Called, voicemail.", "arjun")
    agent_client.post(f"{base}/release/")
    queued.refresh_from_db()
    assert queued.claimed_by is None and queued.status == QueueItem.Status.WAITING
    assert other.pk


def test_a_promise_to_pay_pauses_dunning_until_its_date_then_resumes(
    store, queued, agent, agent_client
):
    start = timezone.now()
    case = queued.case
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/claim/")
    pay_by = (start + 25 * DAY).astimezone(store.tzinfo).date()  # after the 21-day window

    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/promise/", {"pay_by": pay_by.isoformat()})

    queued.refresh_from_db()
    case.refresh_from_db()
    assert queued.status == QueueItem.Status.PROMISED and queued.promise_until == pay_by
    assert queued.outcome == QueueItem.Outcome.PROMISE
    assert case.dunning_paused
    assert case.window_end.astimezone(store.tzinfo).date() >= pay_by + 2 * DAY  # extended
    assert CaseEvent.objects.filter(case=case, kind="window_extended", actor="arjun").exists()

    with time_machine.travel(start + 10 * DAY, tick=False):
        assert services.support_pass()["promises_due"] == 0
    case.refresh_from_db()
    assert case.dunning_paused

    on_the_day = dt.datetime.combine(pay_by, dt.time(9), tzinfo=store.tzinfo)
    with time_machine.travel(on_the_day, tick=False):
        assert services.support_pass()["promises_due"] == 1
    case.refresh_from_db()
    queued.refresh_from_db()
    assert not case.dunning_paused
    assert case.retry_at is not None or case.message_at is not None  # automation is back
    assert queued.status == QueueItem.Status.CLAIMED and queued.claimed_by == agent
    assert CaseEvent.objects.filter(case=case, kind="promise_due").exists()


def test_a_promise_in_the_past_is_refused(store, queued, agent_client):
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/claim/")
    response = agent_client.post(
        f"/s/{store.id}/queue/{queued.pk}/promise/", {"pay_by": "2020-01-01"}, follow=True
    )
    assert "The promised date is in the past" in response.content.decode()
    queued.refresh_from_db()
    assert queued.promise_until is None


def test_an_offer_is_applied_through_stripe(store, queued, agent_client, billing_stripe):
    Store.objects.filter(pk=store.pk).update(gateway=Store.Gateway.STRIPE)
    sub_id = queued.case.subscription.stripe_id
    billing_stripe.add_subscription(sub_id)
    url = f"/s/{store.id}/queue/{queued.pk}/offer/"
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/claim/")

    refused = agent_client.post(url, {"kind": "discount", "coupon": "NOPE"}, follow=True)
    assert "Stripe refused the offer: No such coupon" in refused.content.decode()
    agent_client.post(url, {"kind": "discount", "coupon": "SAVE20"})
    agent_client.post(url, {"kind": "pause", "pause_days": "30"})

    requests = billing_stripe.requests_to("POST", f"/v1/subscriptions/{sub_id}")
    assert [r.param("discounts[0][coupon]") for r in requests] == ["NOPE", "SAVE20", None]
    assert requests[2].param("pause_collection[behavior]") == "keep_as_draft"
    assert all(r.idempotency_key.startswith(f"recoup-queue-{queued.pk}-offer-") for r in requests)
    assert billing_stripe.subscriptions[sub_id]["discounts"][0]["coupon"]["id"] == "SAVE20"
    events = list(CaseEvent.objects.filter(case=queued.case, kind="offer_applied").order_by("id"))
    assert [e.data["kind"] for e in events] == ["discount", "pause"]
    queued.refresh_from_db()
    assert queued.outcome == QueueItem.Outcome.OFFER


def test_a_personal_email_goes_through_messaging_and_is_logged(
    store, queued, agent_client, django_capture_on_commit_callbacks
):
    from messaging.models import Message

    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/claim/")
    with django_capture_on_commit_callbacks(execute=True):
        response = agent_client.post(
            f"/s/{store.id}/queue/{queued.pk}/email/",
            {"body": "Hi! I can hold your box until Friday.", "nonce": "form-1"},
            follow=True,
        )
    assert "Personal email sent" in response.content.decode()
    message = Message.objects.get(case=queued.case, purpose="agent_follow_up")
    assert message.to == "vip@example.com" and message.actor
    assert "I can hold your box until Friday." in message.body_text
    assert [m.to for m in mail.outbox] == [["vip@example.com"]]
    # A double submit of the same form sends once.
    agent_client.post(
        f"/s/{store.id}/queue/{queued.pk}/email/",
        {"body": "Hi! I can hold your box until Friday.", "nonce": "form-1"},
    )
    assert Message.objects.filter(case=queued.case, purpose="agent_follow_up").count() == 1
    assert CaseEvent.objects.filter(case=queued.case, kind="personal_email", actor="arjun").exists()


def test_recording_lost_closes_the_case_and_the_item(store, queued, agent_client):
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/claim/")
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/lost/", {"why": "moved to a competitor"})
    queued.refresh_from_db()
    queued.case.refresh_from_db()
    assert queued.case.status == RecoveryCase.Status.LOST
    assert queued.status == QueueItem.Status.DONE and queued.outcome == QueueItem.Outcome.LOST
    assert "moved to a competitor" in queued.case.closed_reason


def test_handing_back_resumes_dunning(store, queued, agent_client):
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/claim/")
    agent_client.post(f"/s/{store.id}/queue/{queued.pk}/return/")
    queued.refresh_from_db()
    queued.case.refresh_from_db()
    assert queued.status == QueueItem.Status.DONE
    assert not queued.case.dunning_paused


def test_a_case_paid_meanwhile_leaves_the_queue(store, queued, django_capture_on_commit_callbacks):
    from recovery.services import recovery_case_close

    with django_capture_on_commit_callbacks(execute=True):
        recovery_case_close(case=queued.case, status="recovered", reason="paid", via="stripe_retry")
    # Settled with the close itself: the support pass's sweep finds nothing left.
    queued.refresh_from_db()
    assert queued.status == QueueItem.Status.DONE and queued.outcome == QueueItem.Outcome.RECOVERED
    assert services.support_pass()["settled"] == 0


def test_a_queued_case_whose_window_ends_leaves_the_queue_in_that_scheduler_pass(store, webhooks):
    """The pass that closes a queued fraud case at its window's end settles its item, as
    a replay in simulated time would see it: nothing waits whose window has ended."""
    from recovery.scheduler import run_due

    case = deliver_failure(webhooks, decline_code="fraudulent")
    item = QueueItem.objects.get(case=case)
    assert item.status == QueueItem.Status.WAITING
    end = case.window_end + dt.timedelta(minutes=1)
    with time_machine.travel(end, tick=False):
        run_due(now=end)
    case.refresh_from_db()
    item.refresh_from_db()
    assert case.status == "lost"
    assert (item.status, item.outcome) == (QueueItem.Status.DONE, QueueItem.Outcome.LOST)
    assert item.resolved_at == end


def test_queue_is_sorted_by_value_at_risk_weighted_by_urgency(store, agent_client):
    now = timezone.now()
    rows = {}
    for name, amount, days_left in (
        ("calm-big", 50_000, 15),
        ("urgent-mid", 20_000, 1),
        ("soon-small", 20_000, 5),
    ):
        case = make_case(store, opened_at=now - DAY, amount=amount, window_days=days_left + 1)
        QueueItem.objects.create(
            store=store,
            case=case,
            value_at_risk=amount,
            window_end=case.window_end,
            entered_at=now,
            reasons=[{"code": "x", "label": name}],
        )
        rows[case.pk] = name
    body = agent_client.get(f"/s/{store.id}/queue/").content.decode()
    order = sorted(rows, key=lambda pk: body.index(f'data-case="{pk}"'))
    # 20k × 3 (last 2 days) = 60k > 50k × 1 > 20k × 2 = 40k
    assert [rows[pk] for pk in order] == ["urgent-mid", "calm-big", "soon-small"]


def test_queue_page_query_count_does_not_grow(store, agent_client):
    now = timezone.now()

    def add(n):
        for _ in range(n):
            case = make_case(store, opened_at=now - DAY, amount=90_000)
            services.case_route(case=case, at=now, extra_reasons=[{"code": "x", "label": "test"}])

    add(2)
    agent_client.get(f"/s/{store.id}/queue/")
    with count_queries() as small:
        agent_client.get(f"/s/{store.id}/queue/")
    add(20)
    with count_queries() as large:
        response = agent_client.get(f"/s/{store.id}/queue/")
    assert response.content.decode().count("data-item=") == 22
    assert len(large.captured_queries) == len(small.captured_queries) <= 10, queries_text(large)


def test_a_lost_card_keeps_its_card_update_flow(store, webhooks):
    # The engine flags it for fraud review, but the customer must still be asked for a
    # new card: the flag alone does not take the case from automation.
    case = deliver_failure(webhooks, decline_code="lost_card")
    case.refresh_from_db()
    assert case.escalated and not case.dunning_paused
    assert not QueueItem.objects.filter(case=case).exists()


def test_a_dispute_on_an_open_case_reaches_the_queue_on_the_next_pass(store, webhooks):
    from recovery import engine

    case = deliver_failure(webhooks)
    engine.case_route_to_person(
        case=case, at=timezone.now(), track="fraud", reason="dispute du_1 opened (fraudulent)"
    )
    assert services.support_pass()["routed"] == 1
    item = QueueItem.objects.get(case=case)
    assert item.reasons[0]["label"] == "Fraud or dispute risk: dispute du_1 opened (fraudulent)"
    assert services.support_pass()["routed"] == 0


def test_a_note_is_the_queued_items_first_response_and_an_empty_one_writes_nothing(
    store, queued, agent, agent_client
):
    note_path = f"/s/{store.id}/cases/{queued.case_id}/note/"
    response = agent_client.post(note_path, {"body": "   "}, follow=True)
    assert "Write something in the note first." in response.content.decode()
    queued.refresh_from_db()
    assert queued.first_response_at is None
    assert not CaseEvent.objects.filter(case_id=queued.case_id, kind="note").exists()

    agent_client.post(note_path, {"body": "Left a voicemail."})
    queued.refresh_from_db()
    note = CaseEvent.objects.get(case_id=queued.case_id, kind="note")
    # Recovery records the note and publishes CaseNoted; the support app answers it.
    assert queued.first_response_at == note.at
    assert (note.message, note.actor) == ("Left a voicemail.", "arjun")


def test_the_customer_page_shows_what_support_knows_of_the_customer(
    store, other_store, webhooks, api, client, operator
):
    case = deliver_failure(webhooks, customer="cus_page")
    response = api.post(
        "/api/v1/customers/cus_page/signals",
        {"signals": [{"kind": "custom", "label": "Asked about refunds in chat", "weight": 20}]},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    client.force_login(operator)

    page = client.get(f"/s/{store.id}/customers/{case.customer_id}/").content.decode()

    # 20 (the merchant's own signal) + 10 (customer for 0 days) = 30
    assert "Churn risk: 30" in page
    assert "Asked about refunds in chat" in page
    assert "+20" in page and "+10" in page
    other = make_customer(other_store)
    assert client.get(f"/s/{store.id}/customers/{other.pk}/").status_code == 404
