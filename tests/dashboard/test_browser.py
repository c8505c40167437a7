"""The dashboard in real Chromium: an operator logs in and sees the figures the seeded
data implies (computed here independently), filters cases, opens one and retries it; an
agent claims a queue item, adds a note and records a promise to pay; an outsider sees
neither. Screenshots of home, case and queue go to docs/."""

# ruff: noqa: F811 - tests take the imported `billing_stripe` fixture by its name
from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.utils import timezone

from recovery.models import CaseEvent, RecoveryCase
from stores.models import Store
from support import services
from support.models import QueueItem
from tests import stripe_factory as sf
from tests.dashboard.billing_stripe import billing_stripe  # noqa: F401 - a fixture
from tests.dashboard.conftest import make_case, make_customer, make_subscription

DOCS = Path(__file__).resolve().parents[2] / "docs"
DAY = dt.timedelta(days=1)


def log_in(page, live_server, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def seed_history(store) -> list[RecoveryCase]:
    """Decided and open cases in the last 30 days, on subscriptions of two products."""
    now = timezone.now()
    plan = [
        # (days ago, amount, status, days to close, via)
        (25, 2900, "recovered", 2, "recoup_retry"),
        (24, 4900, "recovered", 5, "customer"),
        (22, 2900, "lost", 21, ""),
        (20, 9900, "recovered", 1, "card_updater"),
        (18, 2900, "lost", 21, ""),
        (15, 4900, "recovered", 3, "stripe_retry"),
        (12, 2900, "cancelled", 2, ""),
        (6, 9900, "open", None, ""),
        (3, 2900, "open", None, ""),
    ]
    cases = []
    for i, (ago, amount, status, close_after, via) in enumerate(plan):
        customer = make_customer(store, email=f"history{i}@example.com")
        sub = make_subscription(
            store, customer, mrr=amount, product="Coffee club" if i % 2 else "Tea box"
        )
        opened = now - ago * DAY
        cases.append(
            make_case(
                store,
                opened_at=opened,
                amount=amount,
                status=status,
                closed_at=opened + close_after * DAY if close_after else None,
                via=via,
                attempts=2,
                customer=customer,
                subscription=sub,
            )
        )
    return cases


def test_operator_sees_the_numbers_filters_opens_and_retries_a_case(
    page, live_server, store, operator, webhooks, billing_stripe
):
    cases = seed_history(store)
    Store.objects.filter(pk=store.pk).update(gateway=Store.Gateway.STRIPE)
    invoice = sf.failed_invoice(customer="cus_browser", amount=3900, email="browser@example.com")
    billing_stripe.add_invoice(invoice)
    webhooks.deliver("invoice.payment_failed", invoice)
    live = RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])
    cases.append(live)

    # The figures, by the definitions, over the rows just written.
    now = timezone.now()
    cohort = [c for c in cases if c.opened_at >= now - 30 * DAY]
    won = sum(c.status == "recovered" for c in cohort)
    lost = sum(c.status == "lost" for c in cohort)
    in_progress = sum(c.status == "open" for c in cohort)
    revenue = sum(c.recovered_amount for c in cases if c.status == "recovered")
    at_risk = sum(c.amount for c in cases if c.status == "open")
    assert (won, lost, in_progress) == (4, 2, 3)

    log_in(page, live_server, "olivia", "pw-olivia-123")
    page.get_by_role("heading", name="Recovery,", exact=False).wait_for()
    metric = lambda name: page.locator(f'[data-metric="{name}"]').inner_text()  # noqa: E731
    assert metric("recovery_rate") == f"{won / (won + lost) * 100:.1f}%"  # 66.7%
    assert metric("in_progress") == str(in_progress)
    assert metric("recovered_revenue") == f"${revenue / 100:,.2f}"
    assert metric("at_risk") == f"${at_risk / 100:,.2f}"
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "home.png"), full_page=True)

    page.get_by_role("link", name="Cases", exact=True).click()
    page.get_by_label("Status").select_option("open")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("tr[data-case]")
    assert rows.count() == 3
    assert sorted(int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.case)")) == sorted(
        c.pk for c in cases if c.status == "open"
    )

    page.get_by_role("link", name=f"#{live.pk}").click()
    page.get_by_role("heading", name=f"Case #{live.pk}", exact=False).wait_for()
    billing_stripe.script("approve")
    page.get_by_role("button", name="Retry now").click()
    page.get_by_text("The retry succeeded: the case is recovered.").wait_for()
    assert page.locator("[data-status]").inner_text() == "Recovered"
    page.screenshot(path=str(DOCS / "case.png"), full_page=True)
    live.refresh_from_db()
    assert live.status == "recovered" and live.recovered_via == "agent"


def test_agent_claims_notes_and_records_a_promise_to_pay(page, live_server, store, agent):
    now = timezone.now()
    for i, (amount, mrr) in enumerate(((60_000, 60_000), (12_000, 9_900), (2_900, 2_900))):
        customer = make_customer(store, email=f"vip{i}@example.com")
        sub = make_subscription(store, customer, mrr=mrr)
        case = make_case(
            store, opened_at=now - (i + 1) * DAY, amount=amount, customer=customer, subscription=sub
        )
        services.case_route(
            case=case,
            at=now - dt.timedelta(hours=5 - i),
            extra_reasons=[{"code": "churn_risk", "label": "Churn risk 72 (threshold 60)"}]
            if i
            else None,
        )
    top = QueueItem.objects.order_by("-value_at_risk").first()

    log_in(page, live_server, "arjun", "pw-arjun-123")
    page.get_by_role("link", name="Queue").click()
    page.get_by_role("heading", name="Escalation queue").wait_for()
    first = page.locator("tr[data-item]").first
    assert first.get_attribute("data-item") == str(top.pk)  # most value at risk first
    assert "High value" in first.inner_text()
    page.screenshot(path=str(DOCS / "queue.png"), full_page=True)

    first.get_by_role("button", name="Claim").click()
    page.get_by_text("Claimed: it is yours").wait_for()
    page.get_by_label("Add a note").fill("Spoke to the customer: paying on payday.")
    page.get_by_role("button", name="Add note").click()
    page.get_by_text("Note added.").wait_for()
    page.get_by_text("Promise to pay", exact=True).click()
    pay_by = (timezone.now() + 5 * DAY).astimezone(store.tzinfo).date()
    page.get_by_label("Pays by").fill(pay_by.isoformat())
    page.get_by_role("button", name="Record promise").click()
    page.get_by_text("recorded; dunning is paused until then").wait_for()
    assert page.locator("[data-promise]").inner_text() == pay_by.strftime("%a %b %-d")

    top.refresh_from_db()
    assert top.claimed_by == agent and top.status == QueueItem.Status.PROMISED
    assert top.promise_until == pay_by
    assert top.case.dunning_paused
    assert CaseEvent.objects.filter(case=top.case, kind="note", actor="arjun").exists()


def test_an_outsider_sees_neither_the_home_nor_the_queue(page, live_server, store, outsider):
    make_case(store, opened_at=timezone.now() - DAY)
    log_in(page, live_server, "mallory", "pw-mallory-1")
    page.get_by_role("heading", name="No failed payments yet").wait_for()  # their own store
    for path in (f"/s/{store.id}/", f"/s/{store.id}/queue/", f"/s/{store.id}/cases/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 404, path
        assert "Bean Box" not in page.content()
