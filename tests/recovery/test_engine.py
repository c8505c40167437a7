"""The recovery engine end to end: cases arrive through the signed webhook intake and
are worked by the real scheduler pass, `run_due(now=...)`, on the sandbox issuer.

Time is frozen and moved with time_machine; passes run once an hour at 17 minutes past,
as a real scheduler never lands exactly on a planned slot.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from recovery import engine
from recovery.gateways.sandbox import SandboxGateway, _uniform
from recovery.models import CaseEvent, PaymentAttempt, RecoveryCase, RetryPolicy
from recovery.scheduler import run_due
from subscriptions.models import Customer, Invoice, Subscription
from tests import stripe_factory as sf

# A Wednesday; 10:00 in the store's zone (Europe/Berlin, UTC+1 until 29 March).
T0 = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


# ------------------------------------------------------------------ helpers


def ts(at: dt.datetime) -> int:
    return int(at.timestamp())


def passes(traveller, *, start: dt.datetime, end: dt.datetime, gateways=None) -> list:
    """Scheduler passes once an hour at 17 minutes past, from `start` through `end`."""
    at = start.replace(minute=17, second=0, microsecond=0)
    if at < start:
        at += HOUR
    reports = []
    while at <= end:
        traveller.move_to(at)
        reports.append(run_due(now=at, gateways=gateways))
        at += HOUR
    return reports


def issuer(case: RecoveryCase, *approvals: bool, decline_from=0.45, approve_below=0.06) -> dict:
    """`gateways=` for run_due: the sandbox issuer with a seed under which our retries of
    `case` are approved (True) or declined (False) in the order given. The sandbox's
    answer is a pure function of seed and idempotency key, so this is exact; the bounds
    sit outside the approval chances the sandbox can give for the case's decline group."""

    def wanted(seed: int) -> bool:
        for number, approve in enumerate(approvals, start=1):
            u = _uniform(f"recoup-case-{case.pk}-attempt-{number}", seed)
            if (u >= approve_below) if approve else (u < decline_from):
                return False
        return True

    seed = next(s for s in range(1_000_000) if wanted(s))
    return {case.store_id: SandboxGateway(seed=seed)}


def ours(case: RecoveryCase | None = None):
    qs = PaymentAttempt.objects.filter(source__in=engine.OUR_SOURCES).order_by("attempted_at")
    return qs.filter(case=case) if case is not None else qs


def messages(case: RecoveryCase) -> list[tuple[dt.datetime, str]]:
    return [
        (e.at, e.data["purpose"])
        for e in CaseEvent.objects.filter(case=case, kind="message_due").order_by("at", "id")
    ]


def customer_charge_failed(
    *,
    at: dt.datetime,
    fingerprint: str,
    brand: str = "visa",
    customer: str = "cus_test_alice",
    decline_code: str = "insufficient_funds",
    network_advice_code: str | None = None,
) -> dict:
    """A customer-initiated charge (a checkout, the customer's own retry) on a card."""
    charge = sf.stripe_object(
        "charge",
        id=sf.uid("ch"),
        customer=customer,
        payment_intent=sf.uid("pi"),
        invoice=None,
        status="failed",
        paid=False,
        failure_code="card_declined",
        failure_message="Your card was declined.",
        amount=1500,
        created=ts(at),
        outcome={
            "type": "issuer_declined",
            "reason": decline_code,
            "advice_code": None,
            "network_advice_code": network_advice_code,
            "network_decline_code": None,
            "seller_message": "",
            "network_status": "declined_by_network",
        },
    )
    charge["payment_method_details"]["card"].update(
        brand=brand, network=brand, fingerprint=fingerprint
    )
    return charge


def open_case(webhooks, **invoice_fields) -> RecoveryCase:
    """Deliver a failed renewal invoice; return the case the intake opened for it."""
    invoice = sf.failed_invoice(**invoice_fields)
    webhooks.deliver("invoice.payment_failed", invoice)
    return RecoveryCase.objects.get(invoice__stripe_id=invoice["id"])


def new_card(customer: str = "cus_test_alice", *, fingerprint: str = "fp_new_card", **card):
    pm = sf.stripe_object("payment_method", id=sf.uid("pm"), customer=customer)
    pm["card"].update({"last4": "1881", "exp_month": 11, "exp_year": 2031, **card})
    pm["card"]["fingerprint"] = fingerprint
    return pm


# ------------------------------------------------------------------ tracks


@pytest.mark.parametrize(
    "decline_code, advice_code",
    [
        ("stolen_card", None),
        ("pickup_card", None),
        ("restricted_card", None),
        ("insufficient_funds", "do_not_try_again"),
    ],
)
def test_hard_decline_is_never_retried(webhooks, store, decline_code, advice_code):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code=decline_code, advice_code=advice_code)
        assert case.track == "hard"
        assert case.retry_at is None and "no retry on the same card" in case.retry_reason

        passes(traveller, start=T0, end=T0 + 22 * DAY)

    case.refresh_from_db()
    assert ours().count() == 0
    assert case.status == "lost"
    # The customer is asked for a new card at once, not after a retry.
    assert messages(case)[0] == (T0.replace(minute=17), "card_update_request")


def test_card_update_track_retries_at_once_after_card_change(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="expired_card")
        assert case.track == "card_update"
        passes(traveller, start=T0, end=T0 + 12 * DAY)
        assert ours().count() == 0
        assert Subscription.objects.get().access == "restricted"  # grace is over

        changed_at = T0 + 12 * DAY + dt.timedelta(hours=3, minutes=41)
        traveller.move_to(changed_at)
        webhooks.deliver("payment_method.automatically_updated", new_card())
        case.refresh_from_db()
        assert (case.next_action, case.next_action_at) == ("retry", changed_at)

        report = run_due(now=changed_at, gateways=issuer(case, True, approve_below=0.88))

    assert report.actions["retried"] == 1
    attempt = ours().get()
    assert (attempt.attempted_at, attempt.source, attempt.outcome) == (
        changed_at,
        "card_update",
        "succeeded",
    )
    case.refresh_from_db()
    assert (case.status, case.recovered_via) == ("recovered", "card_updater")
    assert Subscription.objects.values_list("status", "access").get() == ("active", "full")


def test_hard_decline_retries_once_the_customer_saves_a_new_card(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="lost_card")
        passes(traveller, start=T0, end=T0 + 2 * DAY)
        assert ours().count() == 0

        saved_at = T0 + 2 * DAY + dt.timedelta(hours=1, minutes=20)
        traveller.move_to(saved_at)
        intent = sf.stripe_object(
            "setup_intent",
            id=sf.uid("seti"),
            customer="cus_test_alice",
            status="succeeded",
            payment_method=new_card(fingerprint="fp_replacement"),
        )
        webhooks.deliver("setup_intent.succeeded", intent)
        run_due(now=saved_at, gateways=issuer(case, True, approve_below=0.88))

    attempt = ours().get()
    assert attempt.attempted_at == saved_at
    assert attempt.card_fingerprint == "fp_replacement"  # the new card, not the lost one
    case.refresh_from_db()
    assert (case.status, case.recovered_via) == ("recovered", "customer")


@pytest.mark.parametrize("pm_id", ["pm_fp_visa_alice", "pm_same_number_saved_again"])
@pytest.mark.parametrize("how", ["setup_intent.succeeded", "customer.updated"])
def test_a_late_card_event_naming_the_declined_card_is_no_card_change(webhooks, store, how, pm_id):
    """A new signup's card is saved in the second its first charge fails, and the event
    that says so arrives after the failure: the default is now the card that was declined
    (the same payment method, or the same number saved again). It is no new card: a lost
    card is never retried."""
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="lost_card")
        card = new_card(fingerprint="fp_visa_alice", exp_month=8, exp_year=2030)
        card["id"] = pm_id
        if how == "setup_intent.succeeded":
            intent = sf.stripe_object(
                "setup_intent",
                id=sf.uid("seti"),
                customer="cus_test_alice",
                status="succeeded",
                payment_method=card,
            )
            webhooks.deliver(how, intent, created=ts(T0))
        else:
            webhooks.deliver("payment_method.attached", card, created=ts(T0))
            customer = sf.stripe_object("customer", id="cus_test_alice")
            customer["invoice_settings"]["default_payment_method"] = pm_id
            webhooks.deliver(
                how,
                customer,
                created=ts(T0),
                previous_attributes={"invoice_settings": {"default_payment_method": "pm_old"}},
            )
        case.refresh_from_db()
        assert case.retry_at is None and "no retry on the same card" in case.retry_reason
        passes(traveller, start=T0, end=T0 + 3 * DAY)

    assert ours().count() == 0
    assert PaymentAttempt.objects.filter(card_fingerprint="fp_visa_alice").count() == 1


def test_card_change_retries_every_open_case_of_the_customer_at_once(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        open_case(webhooks, decline_code="expired_card", subscription="sub_a")
        open_case(webhooks, decline_code="insufficient_funds", subscription="sub_b")
        other = sf.failed_invoice(customer="cus_bob", subscription="sub_bob", fingerprint="fp_bob")
        webhooks.deliver("invoice.payment_failed", other)

        changed_at = T0 + 5 * HOUR + dt.timedelta(minutes=2)
        traveller.move_to(changed_at)
        customer = sf.stripe_object(
            "customer",
            id="cus_test_alice",
            email="alice@example.com",
            invoice_settings={"default_payment_method": "pm_new_default"},
        )
        webhooks.deliver(
            "customer.updated",
            customer,
            previous_attributes={"invoice_settings": {"default_payment_method": "pm_old"}},
        )
        run_due(now=changed_at)

    alices = RecoveryCase.objects.filter(customer__stripe_id="cus_test_alice")
    assert alices.count() == 2
    for case in alices:
        attempt = ours(case).get()
        assert attempt.attempted_at == changed_at and attempt.source == "card_update"
        assert attempt.payment_method_id == "pm_new_default"
    assert not ours().filter(case__customer__stripe_id="cus_bob", attempted_at=changed_at)


def test_a_default_set_in_the_second_of_a_failure_whose_card_is_unknown_is_no_change(
    webhooks, store
):
    """`invoice.payment_action_required` does not say which card needed confirming: a
    `customer.updated` stamped with the same second is the signup that saved that card."""
    with time_machine.travel(T0, tick=False) as traveller:
        webhooks.deliver(
            "invoice.payment_action_required", sf.failed_invoice(decline_code=None), created=ts(T0)
        )
        customer = sf.stripe_object("customer", id="cus_test_alice")
        customer["invoice_settings"]["default_payment_method"] = "pm_signup"
        webhooks.deliver(
            "customer.updated",
            customer,
            created=ts(T0),
            previous_attributes={"invoice_settings": {"default_payment_method": None}},
        )
        case = RecoveryCase.objects.get()
        assert case.card_changed_at == T0 and case.retry_at is None
        passes(traveller, start=T0, end=T0 + 3 * DAY)
    assert ours().count() == 0


def test_authentication_case_gets_a_confirm_link_and_no_off_session_retry(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        webhooks.deliver("invoice.payment_action_required", sf.failed_invoice(decline_code=None))
        case = RecoveryCase.objects.get()
        assert case.track == "authentication"
        passes(traveller, start=T0, end=T0 + 22 * DAY)
    assert ours().count() == 0
    assert messages(case)[0][1] == "authentication_request"


@pytest.mark.parametrize("decline_code", ["fraudulent", "merchant_blacklist"])
def test_fraud_case_gets_no_retry_and_no_message(webhooks, store, decline_code):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code=decline_code)
        assert case.track == "fraud" and case.escalated and case.dunning_paused
        assert case.events.filter(kind="escalated").exists()
        passes(traveller, start=T0, end=T0 + 22 * DAY)

    case.refresh_from_db()
    assert ours().count() == 0
    assert messages(case) == []
    assert case.status == "lost" and case.escalated


# ------------------------------------------------------------------ soft-track rules


@pytest.mark.parametrize("decline_code", ["do_not_honor", "generic_decline"])
def test_do_not_honor_gets_two_retries_then_card_update_request(webhooks, store, decline_code):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code=decline_code)
        gateways = issuer(case, False, False, False, decline_from=0.31)
        passes(traveller, start=T0, end=T0 + 22 * DAY, gateways=gateways)

    case.refresh_from_db()
    attempts = list(ours(case))
    assert [a.outcome for a in attempts] == ["failed", "failed"]
    assert case.status == "lost"
    sent = messages(case)
    asks = [at for at, purpose in sent if purpose == "card_update_request"]
    assert asks, sent
    # Asked once the second retry failed, at the next touch the 48 h spacing allows.
    # The request may go out in the same pass that saw the second decline.
    assert attempts[1].attempted_at <= asks[0] <= attempts[1].attempted_at + 2 * DAY + HOUR
    assert all(purpose != "card_update_request" for at, purpose in sent if at < asks[0])


def test_try_again_later_is_retried_within_hours_even_at_night(webhooks, store):
    night = T0.replace(hour=21, minute=40)  # 22:40 in Berlin
    with time_machine.travel(night, tick=False) as traveller:
        case = open_case(webhooks, decline_code="processing_error")
        gateways = issuer(case, False, False, decline_from=0.61)
        passes(traveller, start=night, end=night + 12 * HOUR, gateways=gateways)
    first = ours(case).first()
    assert first is not None
    assert first.attempted_at - night <= 5 * HOUR


def test_long_tenure_clean_customer_gets_one_more_retry(webhooks, store):
    Customer.objects.create(store=store, stripe_id="cus_test_alice", first_seen_at=T0 - 800 * DAY)
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds")
        gateways = issuer(case, *[False] * 6)
        passes(traveller, start=T0, end=T0 + 22 * DAY, gateways=gateways)
    assert ours(case).count() == 5
    assert "clean history" in RecoveryCase.objects.get().retry_reason


def test_new_customers_repeated_failure_moves_to_card_update_sooner(webhooks, store):
    with time_machine.travel(T0 - 30 * DAY, tick=False):  # a new customer's first renewal
        first = sf.failed_invoice(subscription="sub_first")
        webhooks.deliver("invoice.payment_failed", first)
        webhooks.deliver("invoice.paid", sf.paid_invoice(first))
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds", subscription="sub_again")
        gateways = issuer(case, *[False] * 4)
        passes(traveller, start=T0, end=T0 + 22 * DAY, gateways=gateways)
    case.refresh_from_db()
    assert ours(case).count() == 2
    assert "card update sooner" in case.retry_reason
    assert "card_update_request" in [purpose for _, purpose in messages(case)]


def test_retry_reason_is_recorded(webhooks, store):
    from recovery.domain import timing
    from recovery.models import RetryStat

    for bucket in ("h0", "h1", "h2", "h3"):
        for slot in ("payday", "weekday", "weekend"):
            RetryStat.objects.create(
                store=store,
                decline_group="insufficient_funds",
                hours_bucket=bucket,
                slot=slot,
                successes=5,
                failures=7,
            )
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds")
        reason = case.retry_reason
        local = case.retry_at.astimezone(store.tzinfo)
        slot = timing.slot_of(local)
        bucket = timing.hours_bucket((case.retry_at - T0).total_seconds() / 3600)
        p0 = timing.PRIOR["insufficient_funds"][bucket] * (2.2 if slot == "payday" else 1)
        estimate = (p0 * timing.PRIOR_WEIGHT + 5) / (timing.PRIOR_WEIGHT + 12)
        assert reason == (
            f"retry 1 of 4: {slot} slot {local:%a %d %b %H:%M} local, "
            f"est. {estimate:.0%}, 12 prior attempts"
        )
        scheduled = case.events.filter(kind="retry_scheduled").last()
        assert reason in scheduled.message

        passes(traveller, start=T0, end=case.retry_at + HOUR, gateways=issuer(case, False))

    assert ours(case).get().reason == reason


@pytest.mark.parametrize("first", ["retry", "24h"])
def test_soft_case_no_message_before_first_retry_or_24h(webhooks, store, first):
    fields = {"decline_code": "insufficient_funds"}
    if first == "24h":  # Mastercard advice 25 holds the first retry for a day
        fields.update(brand="mastercard", fingerprint="fp_mc_alice", network_advice_code="25")
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, **fields)
        passes(traveller, start=T0, end=T0 + 3 * DAY, gateways=issuer(case, False, False))

    first_retry = ours(case).first()
    sent = messages(case)
    assert first_retry is not None and sent
    first_message_at, purpose = sent[0]
    assert purpose == "soft_first_notice"
    if first == "retry":
        assert first_retry.attempted_at < T0 + DAY
        assert first_message_at == first_retry.attempted_at  # right after it failed
    else:
        assert T0 + DAY <= first_message_at < first_retry.attempted_at


# ------------------------------------------------------------------ grace, loss, recovery


@pytest.mark.parametrize(
    "end_action, status",
    [("cancel", "canceled"), ("pause", "paused"), ("unpaid", "unpaid")],
)
def test_window_end_closes_lost_and_cancels_subscription(webhooks, store, end_action, status):
    RetryPolicy.objects.create(store=store, version=1, end_action=end_action)
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds")
        assert case.window_end == T0 + 21 * DAY
        assert case.step_down_at == T0 + dt.timedelta(days=10.5)
        gateways = issuer(case, *[False] * 4)

        passes(traveller, start=T0, end=case.step_down_at - HOUR, gateways=gateways)
        assert Subscription.objects.values_list("status", "access").get() == ("past_due", "full")
        passes(traveller, start=case.step_down_at, end=case.window_end - HOUR, gateways=gateways)
        case.refresh_from_db()
        assert case.status == "open" and case.stepped_down_at is not None
        assert Subscription.objects.values_list("status", "access").get() == (
            "past_due",
            "restricted",
        )
        passes(traveller, start=case.window_end - HOUR, end=case.window_end + HOUR)

    case.refresh_from_db()
    assert case.status == "lost" and case.closed_at == case.window_end.replace(minute=17)
    assert (case.next_action, case.next_action_at, case.retry_at) == ("", None, None)
    sub = Subscription.objects.get()
    assert (sub.status, sub.access) == (status, "suspended")
    assert (sub.canceled_at is not None) == (status == "canceled")
    assert case.events.filter(kind=f"subscription_{status}").exists()


@pytest.mark.parametrize("interval, days", [("week", 7), ("month", 21), ("year", 45)])
def test_window_scales_with_billing_interval(webhooks, store, interval, days):
    sub = sf.stripe_object("subscription", id="sub_test_alice", customer="cus_test_alice")
    sub["items"]["data"][0]["price"]["recurring"]["interval"] = interval
    with time_machine.travel(T0, tick=False):
        webhooks.deliver("customer.subscription.created", sub)
        case = open_case(webhooks)
    assert case.window_end - case.window_start == days * DAY


def test_recovery_restores_subscription_and_clears_schedule(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        case = open_case(webhooks, decline_code="insufficient_funds")
        assert case.retry_at is not None and case.next_action == "retry"
        gateways = issuer(case, True, approve_below=0.1)
        passes(traveller, start=T0, end=case.retry_at + HOUR, gateways=gateways)

        case.refresh_from_db()
        assert (case.status, case.recovered_via, case.recovered_amount) == (
            "recovered",
            "recoup_retry",
            2900,
        )
        assert (case.next_action, case.next_action_at) == ("", None)
        assert (case.retry_at, case.message_at) == (None, None)
        assert Invoice.objects.get().status == "paid"
        assert Subscription.objects.values_list("status", "access").get() == ("active", "full")
        events_before = case.events.count()

        passes(traveller, start=case.closed_at + HOUR, end=T0 + 22 * DAY, gateways=gateways)

    assert ours(case).count() == 1
    assert messages(case) == [(case.closed_at, "recovered_thanks")]
    assert case.events.count() == events_before


def test_stripe_payment_closes_the_case_and_nothing_more_is_sent(webhooks, store):
    with time_machine.travel(T0, tick=False) as traveller:
        invoice = sf.failed_invoice()
        webhooks.deliver("invoice.payment_failed", invoice)
        case = RecoveryCase.objects.get()
        traveller.move_to(T0 + dt.timedelta(minutes=30))
        webhooks.deliver("invoice.paid", sf.paid_invoice(invoice))
        passes(traveller, start=T0 + HOUR, end=T0 + 22 * DAY)
    case.refresh_from_db()
    assert (case.status, case.recovered_via) == ("recovered", "stripe_retry")
    assert ours().count() == 0
    assert (case.retry_at, case.message_at, case.next_action_at) == (None, None, None)


# ------------------------------------------------------------------ pre-dunning


def _subscribed_with_card(
    webhooks, customer: str, *, exp_month: int, exp_year: int, status="active"
):
    sub = sf.stripe_object("subscription", id=f"sub_{customer}", customer=customer, status=status)
    webhooks.deliver("customer.subscription.created", sub)
    intent = sf.stripe_object(
        "setup_intent",
        id=sf.uid("seti"),
        customer=customer,
        status="succeeded",
        payment_method=new_card(
            customer, fingerprint=f"fp_{customer}", exp_month=exp_month, exp_year=exp_year
        ),
    )
    webhooks.deliver("setup_intent.succeeded", intent)


def test_predunning_warns_and_counts_a_save(webhooks, store):
    from recovery.models import ExpiryWarning

    with time_machine.travel(T0, tick=False) as traveller:
        _subscribed_with_card(webhooks, "cus_soon", exp_month=3, exp_year=2026)  # 27 days
        _subscribed_with_card(webhooks, "cus_late", exp_month=3, exp_year=2026)
        _subscribed_with_card(webhooks, "cus_later", exp_month=5, exp_year=2026)  # 88 days
        _subscribed_with_card(webhooks, "cus_gone", exp_month=3, exp_year=2026, status="canceled")

        first = run_due(now=T0)
        second = run_due(now=T0 + HOUR)
        assert (first.expiry_warnings, second.expiry_warnings) == (2, 0)
        warned = ExpiryWarning.objects.order_by("customer__stripe_id")
        assert [w.customer.stripe_id for w in warned] == ["cus_late", "cus_soon"]
        assert {(w.expires_on, w.warned_at) for w in warned} == {(dt.date(2026, 3, 31), T0)}

        saved_at = T0 + 9 * DAY
        traveller.move_to(saved_at)
        intent = sf.stripe_object(
            "setup_intent",
            id=sf.uid("seti"),
            customer="cus_soon",
            status="succeeded",
            payment_method=new_card("cus_soon", fingerprint="fp_soon_new"),
        )
        webhooks.deliver("setup_intent.succeeded", intent)
        # cus_late changes card only after the old one expired: no save.
        traveller.move_to(dt.datetime(2026, 4, 2, 9, tzinfo=dt.UTC))
        intent = sf.stripe_object(
            "setup_intent",
            id=sf.uid("seti"),
            customer="cus_late",
            status="succeeded",
            payment_method=new_card("cus_late", fingerprint="fp_late_new"),
        )
        webhooks.deliver("setup_intent.succeeded", intent)
        assert run_due(now=dt.datetime(2026, 4, 2, 9, tzinfo=dt.UTC)).expiry_warnings == 0

    saves = dict(ExpiryWarning.objects.values_list("customer__stripe_id", "saved_at"))
    assert saves == {"cus_soon": saved_at, "cus_late": None}


# ------------------------------------------------------------------ the whole window


def test_a_simulated_30_day_window_works_every_case_to_its_end(webhooks, store):
    codes = [
        "insufficient_funds",
        "do_not_honor",
        "generic_decline",
        "try_again_later",
        "processing_error",
        "card_velocity_exceeded",
        "expired_card",
        "stolen_card",
        "fraudulent",
        "mystery_code",
    ]
    allowed = {"do_not_honor": 2, "generic_decline": 2}
    with time_machine.travel(T0, tick=False) as traveller:
        for i, code in enumerate(codes * 2):
            traveller.move_to(T0 + i * dt.timedelta(minutes=37))
            webhooks.deliver(
                "invoice.payment_failed",
                sf.failed_invoice(
                    customer=f"cus_sim_{i}",
                    subscription=f"sub_sim_{i}",
                    fingerprint=f"fp_sim_{i}",
                    decline_code=code,
                ),
            )
        reports = passes(traveller, start=T0, end=T0 + 30 * DAY)

    # How fast a month of passes runs is measured in bench/, not asserted here.
    assert len(reports) == 30 * 24
    cases = list(RecoveryCase.objects.all())
    assert len(cases) == 20
    assert {c.status for c in cases} <= {"recovered", "lost"}
    for case in cases:
        made = ours(case).count()
        if case.track == "soft":
            assert 0 < made <= allowed.get(case.decline_code, 4), (case.decline_code, made)
        else:
            assert made == 0, (case.decline_code, made)
        if case.status == "recovered":
            assert case.recovered_via == "recoup_retry"
            assert ours(case).last().outcome == "succeeded"
    keys = list(ours().values_list("idempotency_key", flat=True))
    assert len(keys) == len(set(keys))


def test_a_pass_for_one_store_leaves_other_stores_cases_alone(webhooks, store, other_store):
    from recovery.services import recovery_case_open
    from recovery.stripe_payloads import DeclineInfo
    from subscriptions.services import customer_upsert

    with time_machine.travel(T0, tick=False) as traveller:
        ours_case = open_case(webhooks)
        theirs = customer_upsert(store=other_store, stripe_id="cus_other", email="o@example.com")
        other_case, _ = recovery_case_open(
            store=other_store,
            customer=theirs,
            amount=1000,
            currency="usd",
            decline=DeclineInfo(decline_code="insufficient_funds"),
            at=T0,
            payment_intent_ids=["pi_other_1"],
        )
        other_case.refresh_from_db()
        later = max(ours_case.next_action_at, other_case.next_action_at) + HOUR
        traveller.move_to(later)
        before = (other_case.next_action_at, other_case.events.count())
        report = run_due(now=later, store_id=store.pk)

    # Both were due; only this store's case was worked.
    assert report.claimed == 1
    ours_case.refresh_from_db()
    other_case.refresh_from_db()
    assert ours_case.next_action_at > later
    assert (other_case.next_action_at, other_case.events.count()) == before


@pytest.mark.parametrize(
    "decline_code, reads",
    [
        # Fraud: with a person; no retry, no message: nothing of its history is asked.
        ("fraudulent", set()),
        # Lost or stolen: a hard decline, waiting for a new card, like a card update.
        ("stolen_card", {"recovery_caseevent"}),
        # A card update waits for a new card: its attempts and statistics are not asked.
        ("expired_card", {"recovery_caseevent"}),
        # Soft: every rule runs, so every set of rows is read, once each.
        (
            "insufficient_funds",
            {"recovery_paymentattempt", "recovery_caseevent", "recovery_retrystat"},
        ),
    ],
)
def test_planning_one_case_reads_only_what_its_rules_look_at(webhooks, store, decline_code, reads):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    case = open_case(webhooks, decline_code=decline_code)
    case = RecoveryCase.objects.select_related(
        "store", "customer__default_payment_method", "invoice"
    ).get(pk=case.pk)
    case.__dict__["_earlier_failures"] = False  # asked once per case object, not here
    with CaptureQueriesContext(connection) as queries:
        engine.case_plan(case, now=case.opened_at, record=False)
    tables = {
        table
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT")
        for table in ("recovery_paymentattempt", "recovery_caseevent", "recovery_retrystat")
        if f'FROM "{table}"' in q["sql"]
    }
    assert tables == reads
    selects = [
        q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")
    ]
    assert len(selects) <= len(reads) + 2, [q["sql"][:120] for q in selects]  # + policy, rows
