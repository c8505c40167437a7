"""Faults around the scheduler's batched retries (recovery/batch.py).

A webhook that closes a case while the batch's calls are out, a claim lease that runs out
while the batch's attempts are in flight, and a database that fails while the batch
records its answers. Whatever happens, the issuer sees at most one charge per
idempotency key and never two attempts of one case at once, and each attempt ends with
the issuer's outcome, recorded once, before the case's next retry is planned.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections import Counter

import psycopg
import pytest
import time_machine
from django.db import OperationalError, connection, transaction
from django.db.models import Min

from messaging.models import Message
from recovery import engine
from recovery.gateways.base import ChargeResult
from recovery.models import CaseEvent, PaymentAttempt, RecoveryCase, RetryStat, StripeEvent
from recovery.scheduler import run_due
from recovery.stripe_payloads import DeclineInfo
from subscriptions.models import PaymentMethod
from tests import stripe_factory as sf
from tests.conftest import requires_postgres
from tests.recovery.test_batch import ScriptedIssuer, _open
from tests.recovery.test_engine import DAY, T0

# In ScriptedIssuer's script a first retry of invoice 3 pays and one of invoice 0 is
# declined (insufficient funds). Both come due at the same moment, on different cards:
# one batch, sent in the order the cases were opened.
PAYS, DECLINED = 3, 0


@pytest.fixture(autouse=True)
def one_call_at_a_time(settings):
    """These scenarios stage a race at a fixed point inside one gateway call (a webhook,
    another worker's pass, a count of attempts in flight) on the test's own database
    connection, so the batch's calls go one after another here. tests/recovery/
    test_batch.py runs them concurrently, as in production."""
    settings.RECOUP_GATEWAY_CONCURRENCY = 1


class Issuer(ScriptedIssuer):
    """The scripted issuer, with what Stripe does around it: an invoice already paid is
    refused before any charge (`invoices.pay` answers "Invoice is already paid"), and
    `during[invoice]` is what happens elsewhere while that invoice's charge is out, after
    the issuer has answered and before the answer is back with the worker."""

    def __init__(self):
        super().__init__()
        self.during: dict = {}
        self.refused: list[tuple[str, str]] = []
        self.log: list[tuple] = []  # ("pay", invoice, key) and ("read", invoice), in order
        self.in_flight_at_charge: list[int] = []

    def invoice_pay(self, *, invoice_id, idempotency_key, **kwargs):
        if invoice_id in self.paid:
            self.refused.append((invoice_id, idempotency_key))
            return ChargeResult(outcome="not_sent", message="Invoice is already paid.")
        case_id = int(re.search(r"case-(\d+)-", idempotency_key)[1])
        self.in_flight_at_charge.append(
            PaymentAttempt.objects.filter(case_id=case_id, outcome="unknown").count()
        )
        self.log.append(("pay", invoice_id, idempotency_key))
        result = super().invoice_pay(
            invoice_id=invoice_id, idempotency_key=idempotency_key, **kwargs
        )
        if (elsewhere := self.during.pop(invoice_id, None)) is not None:
            elsewhere()
        return result

    def invoice_read(self, *, invoice_id):
        self.log.append(("read", invoice_id))
        return super().invoice_read(invoice_id=invoice_id)

    def charges(self, case: RecoveryCase) -> list[str]:
        return [key for invoice, key in self.calls if invoice == case.invoice.stripe_id]


def _case(number: int) -> RecoveryCase:
    return RecoveryCase.objects.select_related("invoice", "customer").get(
        invoice__stripe_id__endswith=f"_{number}"
    )


def _due_together(*cases: RecoveryCase):
    """Both first retries due at the later of their planned slots, so that one pass
    sends them in one batch, in the order the cases were opened. Returns that moment."""
    assert all(c.next_action == "retry" and c.retry_at == c.next_action_at for c in cases)
    due = max(c.next_action_at for c in cases)
    RecoveryCase.objects.filter(pk__in=[c.pk for c in cases]).update(
        retry_at=due, next_action_at=due
    )
    for case in cases:
        case.refresh_from_db()
    return due


def _ours(case: RecoveryCase) -> list[tuple[str, str]]:
    return list(
        PaymentAttempt.objects.filter(case=case, source__in=engine.OUR_SOURCES)
        .order_by("attempted_at", "pk")
        .values_list("idempotency_key", "outcome")
    )


def _kinds(case: RecoveryCase, kind: str) -> int:
    return CaseEvent.objects.filter(case=case, kind=kind).count()


def _invoice_paid(webhooks, case: RecoveryCase) -> None:
    """Stripe's `invoice.paid` for the case's invoice, through the webhook endpoint."""
    failed = next(
        e.payload["data"]["object"]
        for e in StripeEvent.objects.filter(type="invoice.payment_failed")
        if e.payload["data"]["object"]["id"] == case.invoice.stripe_id
    )
    webhooks.deliver("invoice.paid", sf.paid_invoice(failed))


def _pass(store, issuer, at: dt.datetime):
    return run_due(now=at, gateways={store.pk: issuer}, store_id=store.pk, rollups=False)


def _passes(traveller, store, issuer, *, after: dt.datetime, until: dt.datetime, stop=None):
    """A pass each time something falls due, from `after` to `until` (or to `stop()`)."""
    at = after
    for _ in range(200):
        if stop is not None and stop():
            return
        due = RecoveryCase.objects.filter(
            store=store, status="open", next_action_at__lte=until
        ).aggregate(first=Min("next_action_at"))["first"]
        if due is None:
            return
        at = max(due, at + dt.timedelta(minutes=1))
        traveller.move_to(at)
        _pass(store, issuer, at)
    raise AssertionError(f"still passing at {at}")


def _nothing_in_flight(store) -> None:
    assert not RecoveryCase.objects.filter(store=store).exclude(inflight_key="").exists()
    assert not PaymentAttempt.objects.filter(store=store, outcome="unknown").exists()


def _one_charge_per_key(issuer: Issuer) -> None:
    assert issuer.calls and Counter(issuer.calls).most_common(1)[0][1] == 1
    assert set(issuer.in_flight_at_charge) == {1}  # the attempt being sent, no other


@pytest.mark.parametrize("its_charge", ["answered_before", "still_to_send"])
@pytest.mark.django_db(transaction=True)
def test_a_case_an_invoice_paid_webhook_closes_while_the_batch_is_out_stays_recovered(
    webhooks, store, its_charge
):
    """While the batch waits on another case's charge, Stripe reports the case's invoice
    paid: either our charge of it paid (answered before), or someone else paid it while
    our charge was still to go (Stripe refuses that charge then). The webhook settles the
    attempt in flight as the payment and closes the case. The batch's own answer comes
    later: it confirms our charge's credit, or, our charge refused, gives the credit to
    the payment from elsewhere. No later pass charges or messages the case again."""
    issuer = Issuer()
    opened = (PAYS, DECLINED) if its_charge == "answered_before" else (DECLINED, PAYS)
    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "paid", numbers=opened)
        paid, declined = _case(PAYS), _case(DECLINED)
        due = _due_together(paid, declined)
        settled = {}

        def invoice_paid():
            issuer.paid.add(paid.invoice.stripe_id)  # already so if our charge paid it
            _invoice_paid(webhooks, paid)
            settled["attempts"] = _ours(paid)

        issuer.during[declined.invoice.stripe_id] = invoice_paid
        traveller.move_to(due)
        _pass(store, issuer, due)

        key = engine.attempt_key(paid, 1)
        paid.refresh_from_db()
        assert (paid.status, paid.inflight_key) == ("recovered", "")
        if its_charge == "answered_before":
            assert issuer.charges(paid) == [key] and issuer.refused == []
            # Our charge paid the invoice: the webhook's word and the issuer's agree.
            assert settled["attempts"] == [(key, "succeeded")]
            assert paid.recovered_via == "recoup_retry"
            assert _ours(paid) == settled["attempts"]  # recorded once
        else:
            assert issuer.charges(paid) == [] and issuer.refused == [(paid.invoice.stripe_id, key)]
            # The webhook could not say whose payment it was, and took it for our charge;
            # our own answer (refused: already paid) gives the credit back.
            assert settled["attempts"] == [(key, "succeeded")]
            assert _ours(paid) == [(key, "not_sent")]
            assert paid.recovered_via == "stripe_retry"
            [note] = CaseEvent.objects.filter(case=paid, kind="credit_corrected")
            assert note.data == {
                "attempt": PaymentAttempt.objects.get(idempotency_key=key).pk,
                "was": "recoup_retry",
                "now": "stripe_retry",
            }
            assert "refused before any charge" in note.message
            # What the retry statistics learnt from the settle is taken back.
            assert not RetryStat.objects.filter(store=store, successes__gt=0).exists()
        settled["attempts"] = _ours(paid)
        # The batch's decline of the other case is recorded as ever.
        assert _ours(declined) == [(engine.attempt_key(declined, 1), "failed")]
        assert _kinds(declined, "retry_failed") == 1
        declined.refresh_from_db()
        assert declined.is_open and declined.retry_at > due  # its next retry, planned
        _nothing_in_flight(store)

        _passes(traveller, store, issuer, after=due, until=due + 3 * DAY)

    # The passes went on: the other customer, still owing, was written to.
    assert Message.objects.filter(customer=declined.customer).exists()
    assert issuer.charges(paid) == ([key] if its_charge == "answered_before" else [])
    assert len(issuer.refused) == (its_charge == "still_to_send")
    paid.refresh_from_db()
    assert paid.status == "recovered" and _ours(paid) == settled["attempts"]
    assert _kinds(paid, "recovered") == 1 and _kinds(paid, "retry_failed") == 0
    assert list(Message.objects.filter(customer=paid.customer).values_list("case", "purpose")) == [
        (paid.pk, engine.Purpose.RECOVERED)
    ]
    _nothing_in_flight(store)
    _one_charge_per_key(issuer)


@pytest.mark.django_db(transaction=True)
def test_a_worker_finding_a_lapsed_lease_on_attempts_in_flight_reads_them_back(webhooks, store):
    """The batch's worker stalls past its claim lease with one answer on its way back and
    one charge still to send. Another worker's pass claims the cases (a claim looks only
    at the lease) but sends nothing for them: it reads each attempt in flight back. The
    stalled worker then sends nothing more, so no key is ever charged twice and the next
    retry goes out with a new key."""
    issuer = Issuer()
    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "lease", numbers=(DECLINED, PAYS))
        answered, unsent = _case(DECLINED), _case(PAYS)  # sent in that order
        due = _due_together(answered, unsent)
        keys = {case.pk: engine.attempt_key(case, 1) for case in (answered, unsent)}
        later = due + engine.CLAIM_LEASE + dt.timedelta(minutes=1)
        seen = {}

        def stall():  # what it finds is asserted below: the gateway call swallows errors
            traveller.move_to(later)
            held = list(RecoveryCase.objects.filter(pk__in=keys))
            seen["held"] = {c.pk: c.inflight_key for c in held}
            seen["lapsed"] = all(c.claimed_until < later for c in held)
            charged = len(issuer.calls)
            seen["report"] = _pass(store, issuer, later)
            seen["sent"] = issuer.calls[charged:]
            seen["attempts"] = {c.pk: _ours(c) for c in held}

        issuer.during[answered.invoice.stripe_id] = stall
        traveller.move_to(due)
        _pass(store, issuer, due)

        assert seen["held"] == keys and seen["lapsed"]
        assert seen["sent"] == [] and seen["report"].actions["reconciled"] == 2
        # Read back as the issuer has them: one charge declined, one never received.
        read_back = {
            answered.pk: [(keys[answered.pk], "failed")],
            unsent.pk: [(keys[unsent.pk], "not_sent")],
        }
        assert seen["attempts"] == read_back
        # The stalled worker's late answer changes nothing; its unsent charge stays unsent.
        assert {c.pk: _ours(c) for c in (answered, unsent)} == read_back
        assert issuer.calls == [(answered.invoice.stripe_id, keys[answered.pk])]
        assert _kinds(answered, "retry_failed") == 1
        _nothing_in_flight(store)

        _passes(traveller, store, issuer, after=later, until=due + DAY)

    assert issuer.charges(unsent) == [engine.attempt_key(unsent, 2)]
    _nothing_in_flight(store)
    _one_charge_per_key(issuer)


def _attempt_outcomes_refused(execute, sql, params, many, context):
    """The database refuses to write any attempt's outcome."""
    if sql.lstrip().upper().startswith("UPDATE") and '"recovery_paymentattempt"' in sql:
        raise OperationalError("could not write to recovery_paymentattempt (injected)")
    return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
def test_answers_the_batch_could_not_record_are_read_back_before_the_next_retry(webhooks, store):
    """The database fails while the batch records its answers: the attempts stay unknown
    with their keys in flight, and nothing is told as if it happened. The next pass reads
    each back from the issuer, records what the issuer did once, and only then plans the
    case's next retry, which goes out with a new key."""
    issuer = Issuer()
    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "record", numbers=(DECLINED, PAYS))
        declined, paid = _case(DECLINED), _case(PAYS)
        keys = {case.pk: engine.attempt_key(case, 1) for case in (declined, paid)}
        due = _due_together(declined, paid)
        traveller.move_to(due)
        with connection.execute_wrapper(_attempt_outcomes_refused):
            _pass(store, issuer, due)

        assert sorted(issuer.calls) == sorted(
            (c.invoice.stripe_id, keys[c.pk]) for c in (declined, paid)
        )
        assert issuer.paid == {paid.invoice.stripe_id}
        for case in (declined, paid):
            case.refresh_from_db()
            assert (case.status, case.inflight_key) == ("open", keys[case.pk])
            assert _ours(case) == [(keys[case.pk], "unknown")]
            assert _kinds(case, "retry_failed") == _kinds(case, "recovered") == 0
        assert not Message.objects.filter(store=store).exists()

        read_at = due + engine.RECONCILE_DELAY
        traveller.move_to(read_at)
        charged = len(issuer.calls)
        _pass(store, issuer, read_at)

        assert len(issuer.calls) == charged  # a read-back pass charges nothing
        assert _ours(declined) == [(keys[declined.pk], "failed")]
        assert _ours(paid) == [(keys[paid.pk], "succeeded")]
        paid.refresh_from_db()
        declined.refresh_from_db()
        assert (paid.status, paid.recovered_via) == ("recovered", "recoup_retry")
        # The next retry, planned from the attempt read back: the second.
        assert declined.is_open and declined.retry_at > read_at
        assert declined.retry_reason.startswith("retry 2 of")
        _nothing_in_flight(store)

        second = engine.attempt_key(declined, 2)
        _passes(
            traveller,
            store,
            issuer,
            after=read_at,
            until=declined.window_end,
            stop=lambda: second in issuer.charges(declined),
        )

    assert issuer.charges(declined) == [keys[declined.pk], second]
    # Between its two charges, the case's attempt was read back, and only then planned.
    steps = [e[0] for e in issuer.log if e[1] == declined.invoice.stripe_id]
    assert steps[0] == steps[-1] == "pay" and set(steps[1:-1]) == {"read"}
    assert _kinds(declined, "retry_failed") == 2  # attempt 1, read back; attempt 2
    assert _kinds(paid, "recovered") == 1
    assert list(
        Message.objects.filter(customer=paid.customer).values_list("purpose", flat=True)
    ) == [engine.Purpose.RECOVERED]
    _nothing_in_flight(store)
    _one_charge_per_key(issuer)


@pytest.mark.django_db(transaction=True)
def test_a_card_saved_while_the_batch_is_out_is_charged_next_not_the_old_one(webhooks, store):
    """While the batch's charge of the old card is out, the customer saves a new card. The
    old card's decline is recorded once, the new card does not count as tried by it, and
    the next pass charges the new card at once, with the next key."""
    from tests.recovery.test_engine import new_card

    issuer = Issuer()
    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "card", numbers=(DECLINED,))
        case = _case(DECLINED)
        brand, fingerprint, old_card = engine._card_for(case)  # the card the invoice failed on
        # On file as the customer's default card, as the claim reads it.
        case.customer.default_payment_method = PaymentMethod.objects.create(
            store=store,
            customer=case.customer,
            stripe_id=old_card,
            brand=brand,
            fingerprint=fingerprint,
            is_default=True,
        )
        case.customer.save(update_fields=["default_payment_method"])
        due = case.next_action_at
        saved = new_card(case.customer.stripe_id, fingerprint="fp_saved_meanwhile")

        def card_saved():
            traveller.move_to(due + dt.timedelta(seconds=5))  # the call takes its time
            intent = sf.stripe_object(
                "setup_intent",
                id=sf.uid("seti"),
                customer=case.customer.stripe_id,
                status="succeeded",
                payment_method=saved,
            )
            webhooks.deliver("setup_intent.succeeded", intent)

        issuer.during[case.invoice.stripe_id] = card_saved
        traveller.move_to(due)
        _pass(store, issuer, due)

        case.refresh_from_db()
        first = PaymentAttempt.objects.get(case=case, idempotency_key=engine.attempt_key(case, 1))
        assert (first.outcome, first.payment_method_id) == ("failed", old_card)
        assert _kinds(case, "retry_failed") == 1
        assert case.customer.default_payment_method.stripe_id == saved["id"]
        assert case.next_action == "retry" and case.next_action_at <= due + dt.timedelta(minutes=1)
        assert case.retry_reason.startswith("payment method changed")
        _nothing_in_flight(store)

        later = due + dt.timedelta(minutes=1)
        traveller.move_to(later)
        _pass(store, issuer, later)

    second = PaymentAttempt.objects.get(case=case, idempotency_key=engine.attempt_key(case, 2))
    assert (second.attempted_at, second.payment_method_id) == (later, saved["id"])
    assert second.card_fingerprint == "fp_saved_meanwhile"
    _one_charge_per_key(issuer)


@requires_postgres()
@pytest.mark.django_db(transaction=True)
def test_invoice_paid_waiting_on_a_case_whose_decline_is_being_recorded_still_closes_it(
    webhooks, store
):
    """Stripe's invoice.paid finds our attempt of unknown outcome and waits on the case's
    row, which a worker holds while it records that attempt's decline (a read-back).
    Once the row is free, the attempt is no longer ours to settle: the payment closes the
    case as any other payment would, credited to where it came from, and the case is
    never left open to be dunned after the customer paid."""

    class TimesOut(Issuer):
        def invoice_pay(self, *, invoice_id, idempotency_key, **kwargs):
            self.calls.append((invoice_id, idempotency_key))
            return ChargeResult(outcome="unknown", message="read timed out")

    with time_machine.travel(T0, tick=False) as traveller:
        _open(webhooks, "race", numbers=(DECLINED,))
        case = _case(DECLINED)
        traveller.move_to(case.next_action_at)
        attempt = engine.case_retry(case, now=case.next_action_at, gateway=TimesOut())
        case.refresh_from_db()
        assert attempt.outcome == "unknown" and case.inflight_key == attempt.idempotency_key

        locked, results = threading.Event(), {}

        def read_back():  # another worker, recording the issuer's answer under the row lock
            try:
                with transaction.atomic():
                    RecoveryCase.objects.select_for_update().get(pk=case.pk)
                    locked.set()
                    _wait_for_a_lock_wait()
                    engine.attempt_resolve(
                        case=case,
                        attempt=attempt,
                        outcome="failed",
                        decline=DeclineInfo(decline_code="insufficient_funds"),
                        at=case.next_action_at,
                    )
            finally:
                connection.close()

        def invoice_paid():
            try:
                locked.wait(10)
                results["paid"] = _invoice_paid(webhooks, case)
            finally:
                connection.close()

        threads = [threading.Thread(target=read_back), threading.Thread(target=invoice_paid)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    case.refresh_from_db()
    assert (case.status, case.recovered_via) == ("recovered", "stripe_retry")
    assert _ours(case) == [(attempt.idempotency_key, "failed")]  # our decline stands
    assert _kinds(case, "recovered") == 1 and case.inflight_key == ""
    assert not CaseEvent.objects.filter(case=case, kind="credit_corrected").exists()


def _wait_for_a_lock_wait(timeout: float = 10.0) -> None:
    """Until another backend of this database waits on a row lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(**_pg_params(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the webhook never waited on the case's row")


def _pg_params() -> dict:
    settings_dict = connection.settings_dict
    return {
        "dbname": settings_dict["NAME"],
        "user": settings_dict["USER"],
        "host": settings_dict["HOST"] or "127.0.0.1",
        "port": settings_dict["PORT"] or 5432,
        **({"password": settings_dict["PASSWORD"]} if settings_dict["PASSWORD"] else {}),
    }
