"""Signed /pay/ links: refused when tampered, expired, revoked or not the customer's;
kind pages that offer a fresh link to the contact on file; rate limits; headers."""

from __future__ import annotations

import datetime as dt

from django.core import mail, signing

from messaging.links import SALT, pay_token_make, pay_url
from recovery.models import RecoveryCase
from subscriptions.models import Customer
from subscriptions.services import customer_upsert

from .conftest import T0, open_case

DAY = dt.timedelta(days=1)


def path_of(url: str) -> str:
    return url.replace("http://127.0.0.1:8000", "")


def test_a_valid_link_opens_the_customers_page(client, card_case):
    Customer.objects.filter(pk=card_case.customer_id).update(name="Alice Liddell")
    response = client.get(path_of(pay_url(customer=card_case.customer, case=card_case)))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Bean Box" in page and "Hi Alice" in page and "$29.00" in page
    assert "Coffee Club" in page
    # No more than first name, last4 and amounts.
    assert "Liddell" not in page and "alice@example.com" not in page
    assert "ending 4242" in page
    csp = response["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert response["Referrer-Policy"] == "same-origin"  # the token never leaves our site
    assert response["Cache-Control"] == "no-store"
    assert '<meta name="robots" content="noindex, nofollow">' in page


def test_a_tampered_link_is_refused(client, card_case):
    token = pay_token_make(customer=card_case.customer, case=card_case)
    payload, stamp, signature = token.split(":")
    forged = f"{payload}:{stamp}:{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    response = client.get(f"/pay/{forged}/")
    assert response.status_code == 404
    assert "doesn't look quite right" in response.content.decode()
    assert "Send me a fresh link" in response.content.decode()
    # A token signed for something else (another salt) is no pay link either.
    other = signing.dumps([card_case.store_id.hex, card_case.customer_id, card_case.pk, 1])
    assert client.get(f"/pay/{other}/").status_code == 404


def test_a_link_expires_after_14_days(client, card_case, time_machine):
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    time_machine.move_to(T0 + 13 * DAY, tick=False)
    assert client.get(url).status_code == 200
    time_machine.move_to(T0 + 14 * DAY + dt.timedelta(seconds=1), tick=False)
    response = client.get(url)
    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()


def test_a_link_expires_when_the_recovery_window_ends(client, card_case, time_machine):
    RecoveryCase.objects.filter(pk=card_case.pk).update(window_end=T0 + 3 * DAY)
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    time_machine.move_to(T0 + 3 * DAY, tick=False)
    assert client.get(url).status_code == 410


def test_bumping_link_version_revokes_every_link(client, card_case):
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    Customer.objects.filter(pk=card_case.customer_id).update(link_version=2)
    response = client.get(url)
    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()


def test_a_link_is_useless_for_another_customer_or_store(client, card_case, webhooks, other_store):
    bob_case = open_case(webhooks, customer="cus_test_bob", email="bob@example.com")
    # Alice's signature over Bob's case: refused.
    crossed = signing.dumps(
        [card_case.store_id.hex, card_case.customer_id, bob_case.pk, 1], salt=SALT, compress=True
    )
    assert client.get(f"/pay/{crossed}/").status_code == 404
    # Alice's customer id under another store: refused.
    elsewhere = signing.dumps(
        [other_store.pk.hex, card_case.customer_id, card_case.pk, 1], salt=SALT, compress=True
    )
    assert client.get(f"/pay/{elsewhere}/").status_code == 404
    # And acting on Alice's link never touches Bob's case.
    outsider = customer_upsert(store=other_store, stripe_id="cus_test_alice", email="x@example.com")
    client.post(
        path_of(pay_url(customer=card_case.customer, case=card_case)), {"test_card": "works"}
    )
    bob_case.refresh_from_db()
    assert bob_case.is_open and bob_case.attempts.filter(source="card_update").count() == 0
    assert not outsider.payment_methods.exists()


def test_an_expired_link_offers_a_fresh_one_sent_to_the_address_on_file(
    client, card_case, time_machine, django_capture_on_commit_callbacks
):
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    time_machine.move_to(T0 + 15 * DAY, tick=False)
    RecoveryCase.objects.filter(pk=card_case.pk).update(window_end=T0 + 30 * DAY)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url + "fresh-link/", {"email": "mallory@evil.example"})
    assert response.status_code == 200
    assert "Check your inbox" in response.content.decode()
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]  # never the typed address
    assert mail.outbox[0].subject == "Your new Bean Box payment link"
    fresh = next(line for line in mail.outbox[0].body.splitlines() if "/pay/" in line)
    assert client.get(path_of(fresh.strip())).status_code == 200
    # Asking again within the hour sends nothing more.
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url + "fresh-link/")
    assert len(mail.outbox) == 1


def test_a_fresh_link_for_garbage_answers_the_same_and_sends_nothing(
    client, card_case, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/pay/not-a-token/fresh-link/")
    assert response.status_code == 200
    assert "If we found your details" in response.content.decode()
    assert mail.outbox == []


def test_a_tampered_or_hand_built_token_never_makes_recoup_email_anyone(
    client, card_case, django_capture_on_commit_callbacks
):
    """Only a token whose signature verifies names a customer: a forged signature on a
    real payload, or a payload built by hand from guessed ids, sends nothing and gets
    the same page as garbage."""
    import base64
    import json

    token = pay_token_make(customer=card_case.customer, case=card_case)
    payload, stamp, signature = token.split(":")
    forged = f"{payload}:{stamp}:{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    claim = [card_case.store_id.hex, card_case.customer_id, card_case.pk, 1]
    built = base64.urlsafe_b64encode(json.dumps(claim).encode()).decode().rstrip("=")
    pages = set()
    for bad in (forged, f"{built}:{stamp}:{signature}", built):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/pay/{bad}/fresh-link/")
        assert response.status_code == 200
        assert "If we found your details" in response.content.decode()
        pages.add(response.content.decode().replace(bad, "TOKEN"))
    assert mail.outbox == []
    assert not card_case.customer.messages.exists()
    with django_capture_on_commit_callbacks(execute=True):
        garbage = client.post("/pay/not-a-token/fresh-link/")
    assert pages == {garbage.content.decode().replace("not-a-token", "TOKEN")}


def test_requests_are_rate_limited_per_token_and_per_address(client, card_case):
    url = path_of(pay_url(customer=card_case.customer, case=card_case))
    statuses = [client.get(url).status_code for _ in range(61)]
    assert statuses[:60] == [200] * 60 and statuses[60] == 429
    # Other links from the same address work until the address's budget (120) is spent.
    bob = customer_upsert(store=card_case.store, stripe_id="cus_bob", email="bob@example.com")
    carol = customer_upsert(store=card_case.store, stripe_id="cus_carol", email="c@example.com")
    assert {client.get(path_of(pay_url(customer=bob))).status_code for _ in range(55)} == {200}
    carol_url = path_of(pay_url(customer=carol))
    assert [client.get(carol_url).status_code for _ in range(6)] == [200] * 5 + [429]
    # Another address is not affected.
    assert client.get(carol_url, REMOTE_ADDR="10.0.0.7").status_code == 200
