"""The card-update page in real Chromium: the customer opens the link from the email
they were sent, pays with a sandbox test card, sees it succeed, and the case is
recovered. A tampered and an expired link are refused kindly. Screenshots of the page
at phone and desktop widths go to docs/."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import time_machine
from django.core import mail
from django.utils import timezone

from messaging.links import pay_token_make
from recovery.models import RecoveryCase
from recovery.scheduler import run_due
from subscriptions.models import Customer

from .conftest import open_case

DOCS = Path(__file__).resolve().parents[2] / "docs"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def test_customer_updates_the_card_from_the_email_link_and_the_case_is_recovered(
    page, live_server, settings, webhooks
):
    settings.SITE_URL = live_server.url
    case = open_case(webhooks, decline_code="expired_card")
    Customer.objects.filter(pk=case.customer_id).update(name="Alice Liddell")
    run_due(now=timezone.now() + dt.timedelta(minutes=1))
    [email] = [m for m in mail.outbox if m.to == ["alice@example.com"]]
    link = re.search(r"(http://\S+/pay/\S+/)", email.body).group(1)
    assert link.startswith(live_server.url)

    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    page.set_viewport_size(DESKTOP)
    response = page.goto(link)
    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert page.get_by_text("TEST MODE").is_visible()
    assert page.get_by_role("heading", name="Hi Alice, let's fix your payment").is_visible()
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "pay-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(DOCS / "pay-phone.png"), full_page=True)

    page.get_by_label("Test card that works").check()
    page.get_by_role("button", name="Use this test card and pay $29.00").click()
    page.get_by_role("heading", name="Thank you, Alice — you're all set").wait_for()
    assert "Your payment of $29.00 for Coffee Club went through." in page.inner_text("main")
    assert problems == []  # nothing blocked by the Content-Security-Policy, no script errors

    case.refresh_from_db()
    assert case.status == RecoveryCase.Status.RECOVERED
    assert case.recovered_via == RecoveryCase.RecoveredVia.CUSTOMER
    assert case.invoice.status == "paid"
    assert any(m.subject.startswith("Thank you") for m in mail.outbox)


def test_a_tampered_and_an_expired_link_are_refused(page, live_server, settings, webhooks):
    settings.SITE_URL = live_server.url
    case = open_case(webhooks, decline_code="expired_card")
    token = pay_token_make(customer=case.customer, case=case)
    tampered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    response = page.goto(f"{live_server.url}/pay/{tampered}/")
    assert response.status == 404
    assert page.get_by_role("heading", name="This link doesn't look quite right").is_visible()
    assert "Hi Alice" not in page.content()

    with time_machine.travel(timezone.now() - dt.timedelta(days=15), tick=False):
        old = pay_token_make(customer=case.customer, case=case)
    response = page.goto(f"{live_server.url}/pay/{old}/")
    assert response.status == 410
    assert page.get_by_role("heading", name="This link has expired").is_visible()
    mail.outbox.clear()
    page.get_by_role("button", name="Send me a fresh link").click()
    page.get_by_role("heading", name="Check your inbox").wait_for()
    [fresh] = mail.outbox
    assert fresh.to == ["alice@example.com"]
    new_link = re.search(r"(http://\S+/pay/\S+/)", fresh.body).group(1)
    assert page.goto(new_link).status == 200
