"""The seeded demo's escalation queue: high-value and churn-risk cases reach it, the demo
agent works part of it through the queue's services, and the seed ends in the state the
worker would leave (a first real-time pass right after it changes nothing).

One replay serves the module (committed to the test database, flushed at the end).
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command

from demo import replay as demo
from recovery.gateways.sandbox import SandboxGateway
from recovery.models import CaseEvent, RecoveryCase
from recovery.scheduler import run_due
from support.models import CustomerSignal, QueueItem
from support.selectors import ACTIVE, VIEWS, queue_items
from support.services import support_pass

END = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
PARAMS = {"customers": 120, "days": 40, "seed": 6, "failure_rate": 0.3, "end": END}


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        summary, token = demo.demo_seed(**PARAMS)
        yield summary, token
        call_command("flush", interactive=False, verbosity=0)
        SandboxGateway._paid.clear()


@pytest.fixture
def store(seeded, db):
    return seeded[0].store


@pytest.fixture
def agent(store):
    return get_user_model().objects.get(username=demo.AGENT_USERNAME)


def _codes(item: QueueItem) -> set[str]:
    return {r["code"] for r in item.reasons}


def test_every_queue_view_has_items(store, agent):
    for view in VIEWS:
        assert queue_items(store=store, view=view, user=agent, now=END).exists(), view


def test_waiting_items_are_hours_to_days_old_and_their_windows_are_open(store):
    waiting = QueueItem.objects.filter(store=store, status=QueueItem.Status.WAITING)
    assert waiting.exists()
    # What came in during the last working day is there, hours old, not only leftovers.
    assert waiting.filter(entered_at__gt=END - dt.timedelta(hours=24)).exists()
    for item in waiting:
        assert END - item.entered_at <= dt.timedelta(days=6), item
        assert item.window_end > END, item
        assert item.case.is_open, item
    # Nothing active outlives its case.
    assert not QueueItem.objects.filter(store=store, status__in=ACTIVE).exclude(
        case__status=RecoveryCase.Status.OPEN
    )


def test_high_value_and_churn_signal_customers_reach_the_queue(store):
    items = list(QueueItem.objects.filter(store=store))
    assert any(_codes(i) & {"high_value_mrr", "high_value_ltv"} for i in items)
    churn = [i for i in items if "churn_risk" in _codes(i)]
    assert churn
    # The signals came in as the API records them, and Stripe's cancel at period end too.
    kinds = set(CustomerSignal.objects.filter(store=store).values_list("kind", flat=True))
    assert {"cancel_page_visit", "pricing_page_visit"} <= kinds
    assert kinds & {"downgrade", "cancel_at_period_end"}


def test_the_agent_claimed_items_and_wrote_notes(store, agent):
    claimed = QueueItem.objects.filter(store=store, claimed_by=agent)
    assert claimed.exists()
    noted = [
        i
        for i in claimed
        if CaseEvent.objects.filter(case=i.case, kind="note", actor=agent.username).exists()
    ]
    assert noted
    assert all(i.first_response_at and i.first_response_at >= i.entered_at for i in claimed)
    kinds = set(
        CaseEvent.objects.filter(store=store, actor=agent.username).values_list("kind", flat=True)
    )
    assert {"claimed", "note", "personal_email", "promise_to_pay"} <= kinds
    outcomes = set(QueueItem.objects.filter(store=store).values_list("outcome", flat=True))
    assert {"recovered", "lost"} <= outcomes


def test_a_first_real_time_pass_after_the_seed_changes_nothing(store):
    """Runs last in the module: it would act on the seeded data if the seed left work due."""

    def state():
        return (
            list(
                RecoveryCase.objects.filter(store=store)
                .order_by("pk")
                .values_list("pk", "status", "next_action", "next_action_at", "dunning_paused")
            ),
            list(
                QueueItem.objects.filter(store=store)
                .order_by("pk")
                .values_list("pk", "status", "claimed_by", "promise_until", "resolved_at")
            ),
            CaseEvent.objects.filter(store=store).count(),
        )

    assert not RecoveryCase.objects.filter(
        store=store, status=RecoveryCase.Status.OPEN, next_action_at__lt=END
    ).exists()
    before = state()
    with time_machine.travel(END, tick=False):
        report = run_due(now=END, rollups=False)
        support = support_pass(now=END)
    assert report.claimed == 0 and not report.actions, report
    assert report.queue_settled == report.expiry_warnings == report.holds_released == 0
    assert report.messages_sent == 0
    assert support == {"promises_due": 0, "settled": 0, "routed": 0}
    assert state() == before


def test_recoveries_are_credited_to_the_message_the_customer_acted_on(store):
    """The demo's customers fix their card through the pay link of a message that asked
    (email or SMS): the visit is recorded on it, so the channel figures have something
    true to show, not "None" for every recovery."""
    from messaging.models import Message

    visited = Message.objects.filter(store=store, visited_at__isnull=False)
    assert visited.exists()
    recovered_after_a_visit = RecoveryCase.objects.filter(
        store=store, status="recovered", messages__visited_at__isnull=False
    )
    assert recovered_after_a_visit.exists()
    assert all(m.pay_url for m in visited)
