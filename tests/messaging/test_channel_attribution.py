"""Channel attribution by the touch the customer acted on (issue 18, item 3): each pay
link names the message that carried it; a visit records that message; analytics credits
the recovery to it, with last touch beside it."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.core import signing

from analytics import selectors
from analytics.services import rollup_refresh
from messaging.links import SALT, pay_link_resolve, pay_token_make, pay_url
from messaging.models import Channel, Message, Purpose
from messaging.sending import message_send_for_case
from recovery.models import RecoveryCase
from subscriptions.models import Customer
from tests.dashboard.conftest import login

from .conftest import T0, sms_customer

HOUR = dt.timedelta(hours=1)


def path_of(url: str) -> str:
    return url.replace("http://127.0.0.1:8000", "")


def _channel_table(store, now) -> dict[str, dict]:
    period = selectors.period_for(store=store, now=now, days=7)
    rolled = selectors.home(store=store, period=period).by_channel
    direct = selectors.home_direct(store=store, period=period).by_channel
    assert rolled == direct
    return {r["key"]: r for r in rolled}


def test_sms_acted_on_then_email_sent_credits_sms_first_and_email_last_touch(
    client, card_case, time_machine, django_capture_on_commit_callbacks, operator
):
    store = card_case.store
    sms_customer(card_case.customer)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    sms = Message.objects.get(case=card_case, channel=Channel.SMS)
    first_email = Message.objects.get(case=card_case, channel=Channel.EMAIL)
    assert sms.pay_url and first_email.pay_url and sms.pay_url != first_email.pay_url
    rollup_refresh(store=store)  # a rollup built before the visit and the recovery

    # An hour later the customer opens the SMS's link, and leaves.
    time_machine.move_to(T0 + HOUR, tick=False)
    assert client.get(path_of(sms.pay_url)).status_code == 200
    sms.refresh_from_db()
    first_email.refresh_from_db()
    assert sms.visited_at == T0 + HOUR and sms.clicked_at == T0 + HOUR
    assert first_email.visited_at is None

    # A reminder email goes out two days later: the last touch before the recovery.
    time_machine.move_to(T0 + 50 * HOUR, tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.SOFT_REMINDER, at=T0 + 50 * HOUR)
    last = Message.objects.filter(case=card_case, sent_at__isnull=False).latest("sent_at")
    assert last.channel == Channel.EMAIL and last.purpose == Purpose.SOFT_REMINDER

    # The customer comes back through the SMS link and pays.
    time_machine.move_to(T0 + 51 * HOUR, tick=False)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(path_of(sms.pay_url), {"test_card": "works"}, follow=True)
    card_case.refresh_from_db()
    assert card_case.status == RecoveryCase.Status.RECOVERED
    sms.refresh_from_db()
    assert sms.visited_at == T0 + HOUR  # the first visit is kept

    now = T0 + 52 * HOUR
    time_machine.move_to(now, tick=False)
    table = _channel_table(store, now)
    assert (table["sms"]["recovered"], table["sms"]["last_touch_recovered"]) == (1, 0)
    assert (table["email"]["recovered"], table["email"]["last_touch_recovered"]) == (0, 1)
    assert table["sms"]["share"] == 1.0 and table["email"]["last_touch_share"] == 1.0
    assert table["sms"]["recovered_amount"] == card_case.recovered_amount

    # The same in the page's CSV export, and the definitions panel says which is which.
    operator_client = login(operator, "pw-olivia-123")
    rows = list(
        csv.DictReader(
            io.StringIO(
                operator_client.get(f"/s/{store.id}/export/by_channel.csv?days=7").content.decode()
            )
        )
    )
    by_label = {r["Channel"]: r for r in rows}
    assert by_label["SMS"]["Recovered (channel acted on)"] == "1"
    assert by_label["SMS"]["Recovered (last touch)"] == "0"
    assert by_label["Email"]["Recovered (channel acted on)"] == "0"
    assert by_label["Email"]["Recovered (last touch)"] == "1"
    body = operator_client.get(f"/s/{store.id}/?days=7").content.decode()
    assert "By channel, channel acted on" in body and "By channel, last touch" in body


def test_a_visit_after_recovery_or_without_a_message_credits_nothing(
    client, card_case, time_machine, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    email = Message.objects.get(case=card_case, channel=Channel.EMAIL)
    # The customer pays through a link no message carried (e.g. the storefront banner).
    time_machine.move_to(T0 + HOUR, tick=False)
    page_link = path_of(pay_url(customer=card_case.customer, case=card_case))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(page_link, {"test_card": "works"}, follow=True)
    # ... and opens the email afterwards: after the recovery, so it earns no credit.
    time_machine.move_to(T0 + 2 * HOUR, tick=False)
    client.get(path_of(email.pay_url))
    email.refresh_from_db()
    assert email.visited_at == T0 + 2 * HOUR
    table = _channel_table(card_case.store, T0 + 3 * HOUR)
    assert table[""]["recovered"] == 1  # no message link acted on
    assert table["email"]["last_touch_recovered"] == 1
    assert table["email"]["recovered"] == 0


def test_a_tampered_link_records_no_visit(client, card_case, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    email = Message.objects.get(case=card_case, channel=Channel.EMAIL)
    token = email.pay_url.rstrip("/").rsplit("/", 1)[-1]
    payload, stamp, signature = token.split(":")
    forged = f"{payload}:{stamp}:{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    assert client.get(f"/pay/{forged}/").status_code == 404
    # A ref claimed by hand: the signature no longer verifies either.
    claim = signing.loads(token, salt=SALT)
    claim[4] = "someone-else"
    built = signing.dumps(claim, salt=SALT + ".guess", compress=True)
    assert client.get(f"/pay/{built}/").status_code == 404
    email.refresh_from_db()
    assert email.visited_at is None and email.clicked_at is None


def test_a_link_never_credits_another_stores_or_customers_message(
    client, card_case, other_store, django_capture_on_commit_callbacks
):
    """Even a message elsewhere whose stored link carries the very same token (a copied
    row, a collision) is not credited: only the token's own customer's messages in its own
    store are looked at."""
    with django_capture_on_commit_callbacks(execute=True):
        message_send_for_case(case=card_case, purpose=Purpose.CARD_UPDATE, at=T0)
    mine = Message.objects.get(case=card_case, channel=Channel.EMAIL)
    foreign_customer = Customer.objects.create(
        store=other_store, stripe_id="cus_foreign", email="mallory@example.com", first_seen_at=T0
    )
    foreign = Message.objects.create(
        store=other_store,
        customer=foreign_customer,
        purpose=Purpose.AGENT,
        channel=Channel.EMAIL,
        pay_url=mine.pay_url,
        status=Message.Status.SENT,
        created_at=T0,
        sent_at=T0,
    )
    # Another customer of the same store, same token in its row.
    neighbour = Customer.objects.create(
        store=card_case.store, stripe_id="cus_neighbour", email="bob@example.com", first_seen_at=T0
    )
    same_store = Message.objects.create(
        store=card_case.store,
        customer=neighbour,
        purpose=Purpose.AGENT,
        channel=Channel.SMS,
        pay_url=mine.pay_url,
        status=Message.Status.SENT,
        created_at=T0,
        sent_at=T0,
    )
    assert client.get(path_of(mine.pay_url)).status_code == 200
    for m in (mine, foreign, same_store):
        m.refresh_from_db()
    assert mine.visited_at is not None
    assert foreign.visited_at is None and same_store.visited_at is None

    # A validly signed token naming the other store's customer finds none of this store's
    # messages (its token is its own).
    token = pay_token_make(customer=foreign_customer)
    assert client.get(f"/pay/{token}/").status_code == 200
    foreign.refresh_from_db()
    mine_again = Message.objects.get(pk=mine.pk)
    assert foreign.visited_at is None and mine_again.visited_at == mine.visited_at


def test_tokens_without_a_ref_stay_valid(client, card_case, time_machine):
    """Links sent before refs existed (four items) open the page as before; one that a
    single message carries still credits it, one shared by two credits neither."""
    c = card_case.customer
    old = signing.dumps(
        [c.store_id.hex, c.pk, card_case.pk, c.link_version], salt=SALT, compress=True
    )
    link = pay_link_resolve(token=old, now=T0)
    assert link.ref == "" and link.case == card_case
    url = f"http://127.0.0.1:8000/pay/{old}/"
    msg = Message.objects.create(
        store=card_case.store,
        customer=c,
        case=card_case,
        purpose=Purpose.CARD_UPDATE,
        channel=Channel.EMAIL,
        pay_url=url,
        status=Message.Status.SENT,
        created_at=T0,
        sent_at=T0,
    )
    assert client.get(f"/pay/{old}/").status_code == 200
    msg.refresh_from_db()
    assert msg.visited_at == T0

    time_machine.move_to(T0 + dt.timedelta(seconds=5), tick=False)
    shared = signing.dumps([c.store_id.hex, c.pk, 0, c.link_version], salt=SALT, compress=True)
    both = [
        Message.objects.create(
            store=card_case.store,
            customer=c,
            purpose=Purpose.AGENT,
            channel=ch,
            idempotency_key=f"k-{ch}",
            pay_url=f"http://127.0.0.1:8000/pay/{shared}/",
            status=Message.Status.SENT,
            created_at=T0,
            sent_at=T0,
        )
        for ch in (Channel.EMAIL, Channel.SMS)
    ]
    assert client.get(f"/pay/{shared}/").status_code == 200
    for m in both:
        m.refresh_from_db()
        assert m.visited_at is None


@pytest.mark.parametrize("bad", [[1, 2], [1, 2, 3, 4, 5, 6]])
def test_a_signed_payload_of_the_wrong_shape_is_unknown(client, card_case, bad):
    token = signing.dumps(bad, salt=SALT, compress=True)
    assert client.get(f"/pay/{token}/").status_code == 404
