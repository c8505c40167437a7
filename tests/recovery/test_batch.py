"""The scheduler acts on a claimed batch's due retries together (recovery/batch.py).

The batch must decide and record exactly what the one-at-a-time path
(`engine.case_process_due`, still used for everything else) would: the same attempts at
the same moments with the same keys, the same plans, the same timeline. Two identical
stores are run side by side, one through `run_due`, the other one case at a time, and
compared. Cards shared by several cases, a do-not-retry advice on a shared card, an
authentication request, a timeout read back and payments are all in the script.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
import time

import pytest
import time_machine

from common.bulk import rows_update
from messaging.models import Message, Purpose
from recovery import engine
from recovery.gateways.base import ChargeResult, ReadBack
from recovery.models import CaseEvent, PaymentAttempt, RecoveryCase, RetryStat
from recovery.scheduler import cases_claim, cases_release, run_due
from recovery.stripe_payloads import DeclineInfo
from stores.services import store_create
from subscriptions.models import Invoice
from tests import stripe_factory as sf
from tests.conftest import Webhooks
from tests.recovery.test_engine import DAY, HOUR, T0

# invoice number -> (customer, brand, fingerprint, first decline)
SCRIPT = {
    0: ("cus_eq_0", "mastercard", "fp_eq_0", "insufficient_funds"),
    1: ("cus_eq_0", "mastercard", "fp_eq_0", "do_not_honor"),
    2: ("cus_eq_0", "mastercard", "fp_eq_0", "insufficient_funds"),
    3: ("cus_eq_1", "visa", "fp_eq_1", "try_again_later"),
    4: ("cus_eq_1", "visa", "fp_eq_1", "insufficient_funds"),
    5: ("cus_eq_2", "mastercard", "fp_eq_2", "insufficient_funds"),
    6: ("cus_eq_2", "mastercard", "fp_eq_2", "generic_decline"),
    7: ("cus_eq_3", "visa", "fp_eq_3", "processing_error"),
    8: ("cus_eq_4", "visa", "fp_eq_4", "insufficient_funds"),
}


class ScriptedIssuer:
    """An issuer whose answer depends only on the invoice's number and the attempt's
    number, so that two stores get the same answers for the same story."""

    name = "scripted"

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}
        self.paid: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _numbers(invoice_id: str, key: str) -> tuple[int, int]:
        return int(invoice_id.rsplit("_", 1)[1]), int(re.search(r"attempt-(\d+)", key)[1])

    def invoice_pay(self, *, invoice_id, idempotency_key, payment_method="", amount=0, hint=None):
        with self._lock:
            self.calls.append((invoice_id, idempotency_key))
            self.counts[invoice_id] = self.counts.get(invoice_id, 1) + 1
        i, n = self._numbers(invoice_id, idempotency_key)
        charge = "ch_" + hashlib.sha1(f"{invoice_id}:{idempotency_key}".encode()).hexdigest()[:16]
        if (i, n) == (8, 1):
            return ChargeResult(outcome="unknown", message="timed out after 30 s")
        if (i + n) % 4 == 0:
            self.paid.add(invoice_id)
            return ChargeResult(
                outcome="succeeded", amount=amount, decline=DeclineInfo(charge_id=charge)
            )
        if (i, n) == (4, 1):
            return ChargeResult(
                outcome="requires_action",
                decline=DeclineInfo(failure_code="authentication_required", charge_id=charge),
            )
        return ChargeResult(
            outcome="failed",
            decline=DeclineInfo(
                decline_code=SCRIPT[i][3] if n == 1 else "insufficient_funds",
                failure_code="card_declined",
                # Mastercard's "never retry this card" on the shared card of 5 and 6.
                network_advice_code="03" if (i, n) == (5, 1) else "",
                charge_id=charge,
                failure_message="Declined. " * 80,  # longer than the column: kept, cut
            ),
        )

    def invoice_read(self, *, invoice_id):
        return ReadBack(
            paid=invoice_id in self.paid,
            attempt_count=self.counts.get(invoice_id, 1),
            status="paid" if invoice_id in self.paid else "open",
        )

    def payment_intent_confirm(self, **kwargs):  # pragma: no cover - invoices only here
        raise AssertionError("no order payments in this script")

    def payment_intent_read(self, **kwargs):  # pragma: no cover
        raise AssertionError("no order payments in this script")


def _open(webhooks: Webhooks, tag: str, numbers=tuple(SCRIPT)) -> None:
    for i in numbers:
        customer, brand, fingerprint, code = SCRIPT[i]
        webhooks.deliver(
            "invoice.payment_failed",
            sf.failed_invoice(
                customer=customer,
                subscription=f"sub_eq_{i}",
                invoice_id=f"in_eq_{tag}_{i}",
                brand=brand,
                fingerprint=fingerprint,
                decline_code=code,
                email=f"{customer}@example.com",
            ),
        )


def _one_at_a_time(*, now, store, gateway) -> None:
    """A pass as it was before batches: each claimed case through case_process_due."""
    while ids := cases_claim(now=now, store_id=store.pk):
        cases = RecoveryCase.objects.filter(pk__in=ids).select_related(
            "store", "customer", "customer__default_payment_method", "invoice", "subscription"
        )
        for case in cases.order_by("next_action_at", "pk"):
            engine.case_process_due(case, now=now, gateway=gateway)
        cases_release(case_ids=ids)


def _no_ids(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "message"}  # a Message row's id


def _story(store) -> dict:
    out = {}
    for case in RecoveryCase.objects.filter(store=store).select_related("invoice", "subscription"):
        number = case.invoice.stripe_id.rsplit("_", 1)[1]
        out[number] = {
            "case": (
                case.status,
                case.track,
                case.decline_code,
                case.recovered_via,
                case.attempt_count,
                case.last_attempt_at,
                case.next_action,
                case.next_action_at,
                case.retry_at,
                case.retry_reason,
                case.message_at,
                case.dunning_stage,
                case.inflight_key.rsplit("-", 1)[-1],
                case.closed_at,
                case.closed_reason,
                case.recovered_amount,
            ),
            "invoice": (case.invoice.status, case.invoice.paid_at, case.invoice.amount_paid),
            "subscription": (case.subscription.status, case.subscription.access),
            "messages": [  # (the wording names the store)
                (m.purpose, m.channel, m.status, m.status_reason, m.created_at, m.sent_at)
                for m in Message.objects.filter(case=case).order_by("created_at", "id")
            ],
            "attempts": [
                (
                    a.source,
                    a.outcome,
                    a.attempted_at,
                    a.idempotency_key.rsplit("-", 1)[-1],
                    a.decline_code,
                    a.network_advice_code,
                    a.card_fingerprint,
                    len(a.failure_message),
                )
                for a in PaymentAttempt.objects.filter(case=case).order_by("attempted_at", "id")
            ],
            # In time order; entries of one moment as a set: a batch delivers its emails
            # after it commits, so "sent" follows "due" there and precedes it one at a time.
            "timeline": sorted(
                (
                    (e.at, e.kind, re.sub(r"case-\d+", "case-N", e.message), _no_ids(e.data))
                    for e in CaseEvent.objects.filter(case=case)
                ),
                key=lambda e: (e[0], repr(e[1:])),
            ),
        }
    return out


@pytest.mark.django_db(transaction=True)
def test_a_batch_decides_and_records_what_one_case_at_a_time_would(
    client, django_capture_on_commit_callbacks, caplog
):
    stores = {
        tag: store_create(
            name=f"Twin {tag}",
            timezone="Europe/Berlin",
            stripe_webhook_secret=f"whsec_twin_{tag}_secret",
            gateway="sandbox",
        )
        for tag in ("batch", "single")
    }
    issuers = {tag: ScriptedIssuer() for tag in stores}
    with time_machine.travel(T0, tick=False) as traveller:
        for tag, store in stores.items():
            _open(
                Webhooks(
                    client, store, django_capture_on_commit_callbacks, store.stripe_webhook_secret
                ),
                tag,
            )
        at = T0.replace(minute=17) + HOUR
        while at <= T0 + 6 * DAY:
            traveller.move_to(at)
            run_due(
                now=at, gateways={stores["batch"].pk: issuers["batch"]}, store_id=stores["batch"].pk
            )
            _one_at_a_time(now=at, store=stores["single"], gateway=issuers["single"])
            at += HOUR

    # The batch really ran: a batch that fell back to one case at a time logs an error.
    assert not [r for r in caplog.records if r.name == "recovery.batch"], caplog.text
    batch, single = _story(stores["batch"]), _story(stores["single"])
    assert batch.keys() == single.keys() == {str(i) for i in SCRIPT}
    for number in sorted(batch):
        assert batch[number] == single[number], f"invoice {number} differs"
    # What the engine learned, and what it told the invoices, is the same too.
    learned = {
        tag: sorted(
            RetryStat.objects.filter(store=store).values_list(
                "decline_group", "hours_bucket", "slot", "successes", "failures"
            )
        )
        for tag, store in stores.items()
    }
    assert learned["batch"] == learned["single"] and learned["batch"]
    counts = {
        tag: sorted(
            (i.stripe_id.rsplit("_", 1)[1], i.attempt_count, i.status)
            for i in Invoice.objects.filter(store=store)
        )
        for tag, store in stores.items()
    }
    assert counts["batch"] == counts["single"]

    # The story did what it was written to do.
    ours = PaymentAttempt.objects.filter(store=stores["batch"], source__in=engine.OUR_SOURCES)
    assert ours.filter(outcome="failed").exists() and ours.filter(outcome="succeeded").exists()
    assert not ours.filter(outcome="unknown").exists()  # the timeout was read back
    assert all(len(a.failure_message) <= 500 for a in ours)
    # Mastercard's 03 on card fp_eq_2: no attempt of ours on that card after it.
    stop = ours.get(card_fingerprint="fp_eq_2", network_advice_code="03")
    assert not ours.filter(card_fingerprint="fp_eq_2", attempted_at__gt=stop.attempted_at).exists()
    assert RecoveryCase.objects.filter(store=stores["batch"], status="recovered").exists()
    # The dunning emails went out from the batch, not one at a time: delivered after the
    # batch committed, each "sent" entry follows its "due" entry (one at a time, before it).
    sent = CaseEvent.objects.filter(store=stores["batch"], kind="message_sent")
    assert sent.exists()
    for event in sent:
        due = CaseEvent.objects.get(case=event.case, kind="message_due", at=event.at)
        assert due.pk < event.pk
    # The thank-you went out from the batch, once per recovered case.
    thanks = Message.objects.filter(store=stores["batch"], purpose=Purpose.RECOVERED, status="sent")
    assert (
        thanks.count()
        == RecoveryCase.objects.filter(store=stores["batch"], status="recovered").count()
    )
    assert RecoveryCase.objects.filter(store=stores["batch"], track="authentication").exists()


@pytest.mark.django_db
def test_rows_update_writes_each_rows_own_values(store):
    from subscriptions.models import Customer

    people = [
        Customer.objects.create(
            store=store,
            stripe_id=f"cus_rows_{i}",
            email=f"r{i}@example.com",
            first_seen_at=T0,
            disputed_at=T0,
        )
        for i in range(3)
    ]
    when = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    people[0].email, people[0].disputed_at = "first@example.com", when
    people[1].email, people[1].disputed_at = "second@example.com", None
    people[2].email, people[2].disputed_at = "third@example.com", when + DAY
    assert rows_update(people, ["email", "disputed_at"]) == 3
    got = {c.stripe_id: (c.email, c.disputed_at) for c in Customer.objects.filter(store=store)}
    assert got == {
        "cus_rows_0": ("first@example.com", when),
        "cus_rows_1": ("second@example.com", None),
        "cus_rows_2": ("third@example.com", when + DAY),
    }
    # Only rows that still hold the guarded value are written.
    people[0].email, people[1].email = "guarded@example.com", "skipped@example.com"
    assert rows_update(people[:2], ["email"], where={"disputed_at": when}) == 1
    assert list(
        Customer.objects.filter(store=store).order_by("stripe_id").values_list("email", flat=True)
    ) == ["guarded@example.com", "second@example.com", "third@example.com"]


@pytest.mark.django_db
def test_rows_update_rising_never_lowers_a_count(failed_invoice):
    invoice = Invoice.objects.get()
    Invoice.objects.filter(pk=invoice.pk).update(attempt_count=3)
    assert (
        rows_update([Invoice(pk=invoice.pk, attempt_count=2)], ["attempt_count"], rising=True) == 0
    )
    assert Invoice.objects.get().attempt_count == 3
    assert (
        rows_update([Invoice(pk=invoice.pk, attempt_count=5)], ["attempt_count"], rising=True) == 1
    )
    assert Invoice.objects.get().attempt_count == 5


@pytest.mark.django_db(transaction=True)
def test_attempts_a_slow_batch_could_not_send_in_time_go_back_unsent(webhooks, store, monkeypatch):
    """Past the batch's sending time, recorded attempts are not sent: they are recorded
    not_sent with their keys cleared (before the lease could lapse and another worker
    read them back while still to go out), and the next pass retries with a new key."""
    issuer = ScriptedIssuer()
    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "slow", numbers=(0, 3))
        due = RecoveryCase.objects.order_by("next_action_at").first().next_action_at
        traveller.move_to(due)
        monkeypatch.setattr("recovery.batch.SEND_WITHIN", dt.timedelta(0))
        run_due(now=due, gateways={store.pk: issuer}, store_id=store.pk)
        assert issuer.calls == []
        ours = PaymentAttempt.objects.filter(source__in=engine.OUR_SOURCES)
        assert ours.exists() and set(ours.values_list("outcome", flat=True)) == {"not_sent"}
        assert not RecoveryCase.objects.exclude(inflight_key="").exists()

        monkeypatch.setattr("recovery.batch.SEND_WITHIN", dt.timedelta(minutes=4))
        later = due + engine.RECONCILE_DELAY
        traveller.move_to(later)
        run_due(now=later, gateways={store.pk: issuer}, store_id=store.pk)
    assert issuer.calls and all(key.endswith("-attempt-2") for _, key in issuer.calls)


class SlowIssuer(ScriptedIssuer):
    """Each charge takes a network round trip; counts how many are in the air at once."""

    def __init__(self):
        super().__init__()
        self.in_air = self.peak = 0
        self.threads: set[str] = set()

    def invoice_pay(self, **kwargs):
        with self._lock:
            self.in_air += 1
            self.peak = max(self.peak, self.in_air)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.05)
            return super().invoice_pay(**kwargs)
        finally:
            with self._lock:
                self.in_air -= 1


@pytest.mark.django_db(transaction=True)
def test_a_batch_has_several_gateway_calls_in_the_air_and_records_each_answer_once(
    webhooks, store, settings
):
    settings.RECOUP_GATEWAY_CONCURRENCY = 3
    issuer = SlowIssuer()
    numbers = (0, 3, 5, 7)  # four cases on four cards, due together
    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "air", numbers=numbers)
        at = max(RecoveryCase.objects.values_list("next_action_at", flat=True))
        traveller.move_to(at)
        report = run_due(now=at, gateways={store.pk: issuer}, store_id=store.pk)

    # Calls overlapped, never more than the setting allows, from the pool's threads.
    assert 1 < issuer.peak <= 3, (issuer.peak, report.actions)
    assert all(name.startswith("recoup-gateway") for name in issuer.threads)
    # Each key was charged once and each answer is recorded on its own case.
    keys = [key for _, key in issuer.calls]
    assert len(keys) == len(set(keys)) == report.actions["retried"] >= 2
    for invoice_id, key in issuer.calls:
        attempt = PaymentAttempt.objects.get(idempotency_key=key)
        assert attempt.case.invoice.stripe_id == invoice_id
        assert attempt.outcome in ("failed", "succeeded")
        assert attempt.case.inflight_key == ""
    # What paid closed its case; what did not is planned again.
    for case in RecoveryCase.objects.filter(store=store):
        outcomes = set(
            case.attempts.filter(source="recoup_retry").values_list("outcome", flat=True)
        )
        if "succeeded" in outcomes:
            assert case.status == "recovered"
        else:
            assert case.status == "open" and case.next_action_at > at
