"""Card-network retry budgets, counted per card across every source.

Other sources' attempts reach Recoup the way they do in production: Stripe's own
retries as invoice.payment_failed events, the customer's own tries as charge.failed.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from recovery import engine
from recovery.models import PaymentAttempt, RecoveryCase
from tests import stripe_factory as sf
from tests.recovery.test_engine import (
    DAY,
    HOUR,
    T0,
    customer_charge_failed,
    issuer,
    new_card,
    open_case,
    ours,
    passes,
    ts,
)


def attempts_on(fingerprint: str, *, after: dt.datetime, before: dt.datetime) -> int:
    """Attempts that reached the network on a card in (after, before), whoever made them."""
    return (
        PaymentAttempt.objects.filter(
            card_fingerprint=fingerprint, attempted_at__gt=after, attempted_at__lt=before
        )
        .exclude(outcome="not_sent")
        .count()
    )


def customer_tries(webhooks, *, times, fingerprint, brand, **fields) -> None:
    for at in times:
        charge = customer_charge_failed(at=at, fingerprint=fingerprint, brand=brand, **fields)
        webhooks.deliver("charge.failed", charge, created=ts(at))


def test_visa_budget_counts_stripe_and_customer_attempts(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        customer_tries(
            webhooks,
            times=[T0 - 36 * HOUR + i * 2 * HOUR for i in range(12)],
            fingerprint="fp_visa_alice",
            brand="visa",
        )
        invoice = sf.failed_invoice(decline_code="insufficient_funds")
        webhooks.deliver("invoice.payment_failed", invoice)  # Stripe's first attempt: 13
        case = RecoveryCase.objects.get()

        traveller.move_to(T0 + dt.timedelta(minutes=30))  # Stripe retries on its own: 14
        again = sf.failed_invoice(invoice_id=invoice["id"], attempt_count=2)
        webhooks.deliver("invoice.payment_failed", again)
        case.refresh_from_db()
        assert case.retry_at is not None  # one attempt left in the card's budget

        traveller.move_to(T0 + dt.timedelta(minutes=45))  # the customer tries once more: 15
        customer_tries(
            webhooks,
            times=[T0 + dt.timedelta(minutes=45)],
            fingerprint="fp_visa_alice",
            brand="visa",
        )
        assert attempts_on("fp_visa_alice", after=T0 - 30 * DAY, before=T0 + HOUR) == 15

        passes(traveller, start=T0 + HOUR, end=T0 + 22 * DAY)

    case.refresh_from_db()
    assert ours().count() == 0
    assert "visa budget used: 15 of 15 attempts in 30 days" in case.retry_reason
    assert case.status == "lost"


def test_visa_budget_ignores_attempts_on_other_cards_and_unsent_ones(webhooks, store):
    with time_machine.travel(T0, tick=False):
        customer_tries(
            webhooks,
            times=[T0 - 20 * HOUR + i * HOUR for i in range(15)],
            fingerprint="fp_someone_else",
            brand="visa",
        )
        case = open_case(webhooks, decline_code="insufficient_funds")
        for i in range(14):
            PaymentAttempt.objects.create(
                store=store,
                case=case,
                customer=case.customer,
                source="recoup_retry",
                outcome="not_sent",  # refused before the network (a 429): never counted
                attempted_at=T0 - i * HOUR,
                card_brand="visa",
                card_fingerprint="fp_visa_alice",
            )
        engine.case_plan(case, now=T0)
    assert case.retry_at is not None, case.retry_reason


def test_mastercard_24h_budget(webhooks, store):
    first_try = T0 - 6 * HOUR
    with time_machine.travel(T0, tick=False) as traveller:
        customer_tries(
            webhooks,
            times=[first_try + i * 30 * dt.timedelta(minutes=1) for i in range(9)],
            fingerprint="fp_mc_alice",
            brand="mastercard",
        )
        case = open_case(
            webhooks,
            decline_code="insufficient_funds",
            brand="mastercard",
            fingerprint="fp_mc_alice",
        )
        assert case.retry_at >= first_try + DAY  # ten attempts on the card in the last day

        gateways = issuer(case, False, False, False)
        passes(traveller, start=T0, end=T0 + 4 * DAY, gateways=gateways)

    made = list(ours(case))
    assert made, "the budget frees up once the oldest attempt is a day old"
    assert made[0].attempted_at >= first_try + DAY
    for attempt in made:
        window = attempts_on(
            "fp_mc_alice", after=attempt.attempted_at - DAY, before=attempt.attempted_at
        )
        assert window < 10, (attempt.attempted_at, window)


def test_mastercard_30_day_budget(webhooks, store):
    first_try = T0 - 25 * DAY
    spacing = (24 * DAY) / 33  # 34 tries, never more than two in a day
    with time_machine.travel(T0, tick=False) as traveller:
        customer_tries(
            webhooks,
            times=[first_try + i * spacing for i in range(34)],
            fingerprint="fp_mc_alice",
            brand="mastercard",
        )
        case = open_case(
            webhooks,
            decline_code="insufficient_funds",
            brand="mastercard",
            fingerprint="fp_mc_alice",
        )
        assert case.retry_at >= first_try + 30 * DAY
        passes(traveller, start=T0, end=T0 + 8 * DAY, gateways=issuer(case, False, False))

    made = list(ours(case))
    assert made and made[0].attempted_at >= first_try + 30 * DAY
    for attempt in made:
        month = attempts_on(
            "fp_mc_alice", after=attempt.attempted_at - 30 * DAY, before=attempt.attempted_at
        )
        assert month < 35, (attempt.attempted_at, month)


@pytest.mark.parametrize("advice", ["03", "21"])
def test_mastercard_advice_03_forbids_retry(webhooks, store, advice):
    with time_machine.travel(T0, tick=False) as traveller:
        # On the case's own failure: a hard decline.
        own = open_case(
            webhooks,
            decline_code="insufficient_funds",
            brand="mastercard",
            fingerprint="fp_mc_alice",
            network_advice_code=advice,
        )
        assert own.track == "hard"
        # On another attempt on the same card (the customer's own try yesterday): the
        # soft decline of a second payment may not be retried on that card either.
        customer_tries(
            webhooks,
            times=[T0 - DAY],
            fingerprint="fp_mc_bob",
            brand="mastercard",
            customer="cus_bob",
            decline_code="do_not_honor",
            network_advice_code=advice,
        )
        webhooks.deliver(
            "invoice.payment_failed",
            sf.failed_invoice(
                customer="cus_bob",
                subscription="sub_bob",
                decline_code="insufficient_funds",
                brand="mastercard",
                fingerprint="fp_mc_bob",
            ),
        )
        bobs = RecoveryCase.objects.get(customer__stripe_id="cus_bob")
        assert bobs.track == "soft"
        assert bobs.retry_at is None
        assert "never to retry" in bobs.retry_reason

        passes(traveller, start=T0, end=T0 + 22 * DAY)

    assert ours().count() == 0
    assert set(RecoveryCase.objects.values_list("status", flat=True)) == {"lost"}


def test_mastercard_advice_25_waits_24h(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(
            webhooks,
            decline_code="insufficient_funds",
            brand="mastercard",
            fingerprint="fp_mc_alice",
            network_advice_code="25",
        )
        assert case.track == "soft" and case.retry_at >= T0 + DAY
        passes(traveller, start=T0, end=T0 + 3 * DAY, gateways=issuer(case, False, False))

    first = ours(case).first()
    assert first is not None
    # The wait, then the first daytime slot: not days later.
    assert T0 + DAY <= first.attempted_at <= T0 + DAY + 9 * HOUR


@pytest.mark.parametrize("advice, wait", [("26", 2 * DAY), ("27", 4 * DAY), ("28", 6 * DAY)])
def test_mastercard_advice_26_to_30_wait_their_days(webhooks, store, advice, wait):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(
            webhooks,
            decline_code="do_not_honor",
            brand="mastercard",
            fingerprint="fp_mc_alice",
            network_advice_code=advice,
        )
        passes(traveller, start=T0, end=T0 + wait + 2 * DAY, gateways=issuer(case, False))
    first = ours(case).first()
    assert first is not None and first.attempted_at >= T0 + wait


@pytest.mark.parametrize("stripe_in", [12 * HOUR, 3 * DAY])
def test_no_retry_within_24h_of_stripes_scheduled_retry(webhooks, store, stripe_in):
    stripe_next = T0 + stripe_in
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(
            webhooks, decline_code="insufficient_funds", next_payment_attempt=ts(stripe_next)
        )
        assert case.invoice.next_payment_attempt == stripe_next
        gateways = issuer(case, False, False, False)
        passes(traveller, start=T0, end=T0 + 17 * DAY, gateways=gateways)

    made = list(ours(case))
    assert len(made) >= 2
    for attempt in made:
        assert abs(attempt.attempted_at - stripe_next) >= DAY, attempt.attempted_at
    if stripe_in < DAY:
        assert made[0].attempted_at >= stripe_next + DAY
    else:
        assert made[0].attempted_at < T0 + 12 * HOUR  # our first retry still comes soon


def test_card_change_retries_at_once_only_within_the_cards_budget(webhooks, store):
    first_try = T0 - 6 * HOUR
    with time_machine.travel(T0, tick=False) as traveller:
        customer_tries(
            webhooks,
            times=[first_try + i * 30 * dt.timedelta(minutes=1) for i in range(9)],
            fingerprint="fp_mc_alice",
            brand="mastercard",
        )
        case = open_case(
            webhooks, decline_code="expired_card", brand="mastercard", fingerprint="fp_mc_alice"
        )
        changed_at = T0 + 2 * HOUR
        traveller.move_to(changed_at)
        # The updater refreshes the expiry; the card (and its fingerprint) stays the same.
        webhooks.deliver(
            "payment_method.automatically_updated",
            new_card(fingerprint="fp_mc_alice", brand="mastercard"),
        )
        case.refresh_from_db()
        assert case.retry_at == first_try + DAY, case.retry_reason
        assert "budget" in case.retry_reason

        passes(traveller, start=changed_at, end=T0 + 2 * DAY, gateways=issuer(case, False))

    (attempt,) = ours(case)
    assert attempt.source == "card_update"
    assert first_try + DAY <= attempt.attempted_at < first_try + DAY + HOUR
