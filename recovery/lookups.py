"""Reading a failed invoice's decline back from Stripe.

With the current API, `invoice.payment_failed` does not say why the payment failed: the
invoice's `payments` is an includable field that no webhook carries, and the
PaymentIntent and Charge events that do carry the decline have no `invoice` to join them
by. So a case opened from an invoice event without a decline waits
(`RecoveryCase.decline_awaited_until`: no retry, no message) and gets a `DeclineLookup`;
the intake workers read the invoice's payments back (one call, `GET /v1/invoices/<id>`
with its payments and their PaymentIntents expanded) after the event's transaction has committed, never in the webhook request and
never inside a transaction, and record the answer. A failed read (429, 5xx, timeout) is
tried again with back-off; past the deadline the scheduler classifies the case
conservatively, and a later answer reclassifies it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from subscriptions.models import Invoice

from .gateways import gateway_for
from .gateways.base import FailureRead
from .models import DeclineLookup, PaymentAttempt, RecoveryCase, StripeEvent
from .services import (
    case_event_record,
    invoice_serialize,
    payment_attempt_record,
    recovery_case_open,
)
from .stripe_payloads import DeclineInfo, decline_from_invoice

logger = logging.getLogger(__name__)

CLAIM_LEASE = dt.timedelta(minutes=2)
BACKOFF_FIRST = dt.timedelta(seconds=5)
BACKOFF_MOST = dt.timedelta(hours=1)
# Past its deadline plus this, a lookup stops asking (the case goes on as an unknown
# decline; an event that carries the decline still reclassifies it).
GIVE_UP_AFTER = dt.timedelta(days=1)
# The events whose invoice's decline is read ahead of their processing (an invoice that
# needs action is classified by that, and never read back).
FAILURE_EVENTS = ("invoice.payment_failed",)
# Reading ahead found nothing: look again after this many seconds.
READ_AHEAD_IDLE = 1.0
DECLINE_FIELDS = frozenset(f.name for f in dataclasses.fields(DeclineInfo))


def decline_lookup_deadline(*, now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=settings.RECOUP_DECLINE_LOOKUP_SECONDS)


def decline_lookup_request(
    *, case: RecoveryCase, now: dt.datetime, read_since: dt.datetime | None = None
) -> DeclineLookup:
    """Ask for the case's invoice's decline to be read back (again, for a new failure).
    In the event's transaction: the read itself happens after it commits.

    A read already made ahead for this invoice (`decline_lookups_ahead`), asked for at or
    after `read_since` (when the failure's event was received, so the answer covers that
    attempt), classifies the case here and now; an older one is asked again."""
    deadline = case.decline_awaited_until or decline_lookup_deadline(now=now)
    DeclineLookup.objects.bulk_create(
        [
            DeclineLookup(
                case=case,
                store_id=case.store_id,
                invoice_stripe_id=case.invoice.stripe_id,
                requested_at=now,
                deadline=deadline,
                due_at=now,
            )
        ],
        ignore_conflicts=True,
    )
    lookup = DeclineLookup.objects.select_for_update().get(
        store_id=case.store_id, invoice_stripe_id=case.invoice.stripe_id
    )
    ahead = lookup.case_id is None
    fresh = lookup.answer is not None and (read_since is None or lookup.requested_at >= read_since)
    if ahead:
        lookup.case, lookup.deadline = case, deadline
    if ahead and fresh:
        DeclineLookup.objects.filter(pk=lookup.pk).update(case=case, deadline=deadline)
        read = _answer_load(lookup.answer)
        pi_id = read.decline.payment_intent_id or (read.payment_intent_ids or [""])[-1]
        if pi_id and case.invoice.payment_intent_id != pi_id:
            # (The answer's own transaction does this first; here the invoice's event
            # holds the invoice already.)
            Invoice.objects.filter(pk=case.invoice.pk).update(payment_intent_id=pi_id)
            case.invoice.payment_intent_id = pi_id
        _answer_record(lookup=lookup, answer=read, now=now, case=case)
    elif ahead or lookup.due_at is None:
        in_flight = lookup.due_at is not None and lookup.answer is None
        changes = {"case": case, "deadline": deadline} if ahead else {}
        if not in_flight:  # asked again (the read in the air, if any, is answered to the case)
            changes |= {"due_at": now, "requested_at": now, "answered_at": None}
            changes |= {"attempts": 0, "last_error": "", "answer": None}
        DeclineLookup.objects.filter(pk=lookup.pk).update(**changes)
    return lookup


def decline_read_ahead_take(
    *, store_id, invoice_stripe_id: str, read_since: dt.datetime
) -> tuple[DeclineLookup, FailureRead] | None:
    """The answer of a read made ahead of an invoice's failure event (`decline_lookups_ahead`),
    when it says why the payment failed and was asked at or after `read_since` (when the
    event was received): the case then opens classified by it, and takes the lookup
    (`decline_read_ahead_taken`). In the event's transaction; the lookup's row locked."""
    lookup = (
        DeclineLookup.objects.select_for_update()
        .filter(store_id=store_id, invoice_stripe_id=invoice_stripe_id, case__isnull=True)
        .first()
    )
    if lookup is None or lookup.answer is None or lookup.requested_at < read_since:
        return None
    read = _answer_load(lookup.answer)
    if read.paid or not read.decline.has_code:
        return None
    pi_ids = read.payment_intent_ids
    read.decline.payment_intent_id = read.decline.payment_intent_id or (
        pi_ids[-1] if pi_ids else ""
    )
    return lookup, read


def decline_read_ahead_taken(
    *, lookup: DeclineLookup, read: FailureRead, case: RecoveryCase, now: dt.datetime
) -> None:
    """The case opened classified by the read made ahead: the lookup is the case's, the
    PaymentIntent the read named is on the invoice (its own events find it by that), and
    the timeline says where the decline came from."""
    DeclineLookup.objects.filter(pk=lookup.pk).update(
        case=case,
        deadline=decline_lookup_deadline(now=now),
        due_at=None,
        answered_at=now,
        attempts=lookup.attempts + 1,
        last_error="",
    )
    pi_id = read.decline.payment_intent_id
    if pi_id and case.invoice.payment_intent_id != pi_id:
        Invoice.objects.filter(pk=case.invoice_id).update(payment_intent_id=pi_id)
        case.invoice.payment_intent_id = pi_id
    _decline_read_record(case=case, decline=read.decline, now=now, awaited=True)


def decline_lookups_ahead(
    *, now: dt.datetime, since: tuple[dt.datetime, int] | None = None, limit: int = 50
) -> tuple[tuple[dt.datetime, int] | None, int]:
    """Read ahead: a lookup with no case yet for each `invoice.payment_failed` stored and not
    processed yet, received after `since` ((received_at, pk) of the last one looked at),
    that does not carry its decline and whose invoice has no lookup. Its read need not
    wait for the intake to open the case, which in a burst of failures falls behind the
    reads the store's rate limit allows. Returns (the last event looked at, how many
    lookups it asked for, those another worker or the case had made already included).

    An event committed after a later one was looked at is passed over here: its case
    asks for the read itself when it opens."""
    pending = StripeEvent.objects.filter(
        outcome=StripeEvent.Outcome.PENDING, type__in=FAILURE_EVENTS
    )
    if since is not None:
        at, pk = since
        # (received_at, pk) after `since`, with received_at as a range the index can take.
        pending = pending.filter(received_at__gte=at).exclude(received_at=at, pk__lte=pk)
    rows = list(
        pending.order_by("received_at", "pk").values_list(
            "pk", "received_at", "store_id", "payload__data__object"
        )[:limit]
    )
    if not rows:
        return since, 0
    wanted: dict[tuple, None] = {}
    for _, _, store_id, data in rows:
        if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]:
            if not decline_from_invoice(data).has_code:
                wanted[(store_id, data["id"][:255])] = None
    settled = set(
        Invoice.objects.filter(
            store_id__in={store_id for store_id, _ in wanted},
            stripe_id__in={invoice_id for _, invoice_id in wanted},
            status__in=[Invoice.Status.PAID, Invoice.Status.VOID],
        ).values_list("store_id", "stripe_id")
    )
    deadline = decline_lookup_deadline(now=now)
    asked = DeclineLookup.objects.bulk_create(
        [
            DeclineLookup(
                store_id=store_id,
                invoice_stripe_id=invoice_id,
                requested_at=now,
                deadline=deadline,
                due_at=now,
            )
            for store_id, invoice_id in wanted
            if (store_id, invoice_id) not in settled
        ],
        ignore_conflicts=True,
    )
    return (rows[-1][1], rows[-1][0]), len(asked)


def _answer_dump(answer: FailureRead) -> dict:
    return dataclasses.asdict(answer)


def _answer_load(data: dict) -> FailureRead:
    decline = DeclineInfo(
        **{k: v for k, v in (data.get("decline") or {}).items() if k in DECLINE_FIELDS}
    )
    return FailureRead(
        decline=decline,
        payment_intent_ids=list(data.get("payment_intent_ids") or []),
        paid=bool(data.get("paid")),
    )


def decline_lookups_claim(*, now: dt.datetime, limit: int = 100) -> list[DeclineLookup]:
    """Claim due lookups for this worker (safe with many: rows locked, skipped if taken)."""
    with transaction.atomic():
        qs = DeclineLookup.objects.filter(due_at__lte=now).order_by("due_at")
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("pk", flat=True)[:limit])
        if ids:
            DeclineLookup.objects.filter(pk__in=ids).update(due_at=now + CLAIM_LEASE)
    return list(DeclineLookup.objects.filter(pk__in=ids).select_related("store").order_by("due_at"))


def decline_lookups_run(*, now: dt.datetime | None = None, limit: int = 100) -> int:
    """Read back what is due and record the answers. Returns how many were read.

    The reads go out concurrently (each paced within the store's Stripe budget by the
    gateway) and outside any transaction; each answer is recorded in its own."""
    now = now or timezone.now()
    lookups = decline_lookups_claim(now=now, limit=limit)
    if not lookups:
        return 0
    gateways = _gateways(lookups)
    remote = [lk for lk in lookups if _is_remote(gateways[lk.store_id])]
    answers: dict[int, FailureRead | Exception] = {}
    if remote:
        workers = min(len(remote), max(1, int(settings.RECOUP_LOOKUP_CONCURRENCY)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recoup-lookup") as pool:
            reads = pool.map(_closing(_read), remote, [gateways[lk.store_id] for lk in remote])
            for lookup, answer in zip(remote, reads, strict=True):
                answers[lookup.pk] = answer
    for lookup in lookups:
        if lookup.pk not in answers:  # the in-process sandbox: read here, on this connection
            answers[lookup.pk] = _read(lookup, gateways[lookup.store_id])
    for lookup in lookups:
        _answer_keep(lookup, answers[lookup.pk])
    return len(lookups)


def decline_lookups_stream(*, running: Callable[[], bool], idle_sleep: float = 0.1) -> int:
    """The intake worker's read-back thread: up to RECOUP_LOOKUP_CONCURRENCY reads in the
    air, and as many more claimed behind them, while the answers that came back are
    recorded (on this thread's connection, each in its own transaction): the reads never
    wait for the recording, so a backlog is read at the pace the store's budget allows.
    Returns how many were read once `running()` is false."""
    concurrency = max(1, int(settings.RECOUP_LOOKUP_CONCURRENCY))
    ahead, done = 2 * concurrency, 0
    since, ahead_next = None, 0.0  # reading ahead: the last event looked at, and when next
    inflight: dict[Future, DeclineLookup] = {}
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="recoup-lookup")
    try:
        try:
            while running():
                claimed: list[DeclineLookup] = []
                if len(inflight) <= concurrency:  # half the window free: claim to fill it
                    want = ahead - len(inflight)
                    claimed = decline_lookups_claim(now=timezone.now(), limit=want)
                    if len(claimed) < want and time.monotonic() >= ahead_next:
                        # The due reads run short: read ahead of the intake (claimed
                        # on the next turn).
                        since, made = decline_lookups_ahead(now=timezone.now(), since=since)
                        ahead_next = time.monotonic() + (0 if made else READ_AHEAD_IDLE)
                    gateways = _gateways(claimed)
                    for lookup in claimed:
                        gateway = gateways[lookup.store_id]
                        if _is_remote(gateway):
                            # Each pool thread keeps its connection (the budget's
                            # rows, without REDIS_URL) for the stream's life.
                            inflight[pool.submit(_read_kept, lookup, gateway)] = lookup
                        else:  # the in-process sandbox: read here, on this connection
                            _answer_keep(lookup, _read(lookup, gateway))
                            done += 1
                if not inflight:
                    if not claimed:
                        time.sleep(idle_sleep)
                    continue
                finished, _ = wait(inflight, timeout=idle_sleep, return_when=FIRST_COMPLETED)
                for future in finished:
                    _answer_keep(inflight.pop(future), future.result())
                    done += 1
        finally:
            # Stopping: what is in the air is recorded as it lands (its lease would give
            # it to another worker only minutes later).
            for future in inflight:
                _answer_keep(inflight[future], future.result())
                done += 1
    finally:
        _connections_close(pool, concurrency)
        pool.shutdown()
    return done


def _connections_close(pool: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connection of each of the pool's threads, in that thread: one
    task per thread, each held at a barrier until all of them run."""
    barrier = threading.Barrier(threads)

    def close(_) -> None:
        try:
            barrier.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass  # fewer threads were started: each that was closes its own
        connection.close()

    list(pool.map(close, range(threads)))


def _gateways(lookups: list[DeclineLookup]) -> dict:
    """Each store's gateway, or the error that keeps its lookups waiting (a missing key)."""
    gateways: dict = {}
    for lookup in lookups:
        if lookup.store_id not in gateways:
            try:
                gateways[lookup.store_id] = gateway_for(lookup.store)
            except Exception as exc:
                gateways[lookup.store_id] = exc
    return gateways


def _is_remote(gateway) -> bool:
    return getattr(gateway, "name", "") == "stripe"


def _read(lookup: DeclineLookup, gateway) -> FailureRead | Exception:
    if isinstance(gateway, Exception):
        return gateway
    try:
        return gateway.invoice_failure_read(invoice_id=lookup.invoice_stripe_id)
    except Exception as exc:  # 429, 5xx, timeout, reset: tried again later
        return exc


def _read_kept(lookup: DeclineLookup, gateway) -> FailureRead | Exception:
    """_read in a pool thread that keeps its connection: a broken or old one is replaced."""
    connection.close_if_unusable_or_obsolete()
    return _read(lookup, gateway)


def _answer_keep(lookup: DeclineLookup, answer: FailureRead | Exception) -> None:
    """Record one answer; if recording fails, the lookup is asked again later."""
    try:
        decline_lookup_answer(lookup=lookup, answer=answer, now=timezone.now())
    except Exception:
        logger.exception("recording the decline lookup for %s failed", lookup.invoice_stripe_id)
        _retry_later(lookup, error="recording the answer failed", now=timezone.now())


def _closing(fn):
    """Run fn in a pool thread and close whatever database connection it opened there."""

    def run(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return run


def _backoff(attempts: int) -> dt.timedelta:
    return min(BACKOFF_FIRST * (3 ** max(attempts - 1, 0)), BACKOFF_MOST)


def _retry_later(
    lookup: DeclineLookup, *, error: str, now: dt.datetime, wait: dt.timedelta | None = None
) -> None:
    """Ask again later, each time longer (5 s, 15 s, 45 s … an hour); a 429's own wait
    when it has one. Nothing is asked after the case's window or a day past the deadline."""
    attempts = lookup.attempts + 1
    give_up_at = lookup.deadline + GIVE_UP_AFTER  # read ahead, no case yet: this only
    if lookup.case_id is not None:
        case_window_end = (
            RecoveryCase.objects.filter(pk=lookup.case_id)
            .values_list("window_end", flat=True)
            .first()
        )
        give_up_at = min(case_window_end or now, give_up_at)
    due = now + (wait or _backoff(attempts))
    if due >= give_up_at:
        due = None  # given up: the error stays on the lookup
    DeclineLookup.objects.filter(pk=lookup.pk).update(
        attempts=attempts, last_error=error[:300], due_at=due
    )


def decline_lookup_answer(
    *, lookup: DeclineLookup, answer: FailureRead | Exception, now: dt.datetime
) -> str:
    """Record one read-back: the decline on the invoice's attempt and on the case (its
    track decided by it, whatever order the events came in). A paid or closed invoice
    stays as it is: a late answer opens nothing."""
    if lookup.case_id is None and _answer_keep_ahead(lookup=lookup, answer=answer, now=now):
        return "kept"
    if not isinstance(answer, Exception):
        pi_ids = answer.payment_intent_ids
        pi_id = answer.decline.payment_intent_id or (pi_ids[-1] if pi_ids else "")
        if pi_id:
            # Later PaymentIntent and Charge events of this invoice now find it. On its own,
            # before the case is locked: an event of this invoice locks the invoice and
            # then its case, and must not wait for us in a circle.
            with transaction.atomic():
                invoice_serialize(store_id=lookup.store_id, invoice_id=lookup.invoice_stripe_id)
                Invoice.objects.filter(
                    pk=RecoveryCase.objects.filter(pk=lookup.case_id).values("invoice_id")[:1]
                ).exclude(payment_intent_id=pi_id).update(payment_intent_id=pi_id)
    with transaction.atomic():
        invoice_serialize(store_id=lookup.store_id, invoice_id=lookup.invoice_stripe_id)
        return _answer_record(lookup=lookup, answer=answer, now=now)


def _answer_keep_ahead(*, lookup: DeclineLookup, answer: FailureRead | Exception, now) -> bool:
    """A read made ahead of its case: its answer kept on the lookup for the case to take
    when it opens. False when a case took the lookup over meanwhile (`lookup` is then
    refreshed, and the answer goes to the case as usual)."""
    if isinstance(answer, FailureRead) and (answer.paid or answer.decline.has_code):
        kept = DeclineLookup.objects.filter(pk=lookup.pk, case__isnull=True).update(
            answer=_answer_dump(answer), due_at=None, answered_at=now, last_error=""
        )
    else:  # an error, or no decline on the payment yet: asked again later
        with transaction.atomic():
            locked = DeclineLookup.objects.select_for_update().filter(pk=lookup.pk)
            kept = locked.filter(case__isnull=True).exists()
            if kept:
                _answer_record(lookup=lookup, answer=answer, now=now)
    if not kept:
        lookup.refresh_from_db()
    return bool(kept)


def _answer_record(
    *,
    lookup: DeclineLookup,
    answer: FailureRead | Exception,
    now,
    case: RecoveryCase | None = None,
) -> str:
    if isinstance(answer, Exception):
        # The store's budget booked up (the pacer says when a slot frees), or Stripe down.
        wait = getattr(answer, "retry_after", None)
        _retry_later(
            lookup,
            error=f"{type(answer).__name__}: {answer}",
            now=now,
            wait=dt.timedelta(seconds=wait) if isinstance(wait, int | float) else None,
        )
        return "failed"
    if lookup.case_id is None:  # read ahead, no case yet: no decline on the payment yet
        _retry_later(lookup, error="Stripe does not say why yet", now=now)
        return "not_yet"
    if case is None:
        case = (
            RecoveryCase.objects.select_for_update(of=("self",))
            .select_related("invoice", "customer", "store")
            .get(pk=lookup.case_id)
        )
    invoice = case.invoice
    if (
        answer.paid
        or not case.is_open
        or invoice is None
        or invoice.status in (Invoice.Status.PAID, Invoice.Status.VOID)
    ):
        DeclineLookup.objects.filter(pk=lookup.pk).update(due_at=None, answered_at=now)
        return "settled"
    decline = answer.decline
    pi_ids = answer.payment_intent_ids
    decline.payment_intent_id = decline.payment_intent_id or (pi_ids[-1] if pi_ids else "")
    if not decline.has_code:
        # Stripe has the payment but no decline on it yet (still settling): ask again.
        _retry_later(lookup, error="Stripe does not say why yet", now=now)
        return "not_yet"
    _attempt_fill(case=case, invoice=invoice, decline=decline)
    awaited = case.decline_awaited_until is not None
    recovery_case_open(
        store=case.store,
        customer=case.customer,
        amount=case.amount,
        currency=case.currency,
        decline=decline,
        at=now,
        invoice=invoice,
        payment_intent_ids=pi_ids,
        case=case,
    )
    _decline_read_record(case=case, decline=decline, now=now, awaited=awaited)
    DeclineLookup.objects.filter(pk=lookup.pk).update(
        due_at=None, answered_at=now, attempts=lookup.attempts + 1, last_error=""
    )
    return "answered"


def _decline_read_record(*, case: RecoveryCase, decline: DeclineInfo, now, awaited: bool) -> None:
    case_event_record(
        case=case,
        kind="decline_read",
        at=now,
        message=(
            f"Stripe says the payment failed with {decline.decline_code or decline.failure_code}"
            + (f", advice {decline.advice_code}" if decline.advice_code else "")
            + (
                f", network advice {decline.network_advice_code}"
                if decline.network_advice_code
                else ""
            )
            + (f" ({decline.card_brand} •••• {decline.card_last4})" if decline.card_last4 else "")
            + (": classified" if awaited else ": reclassified")
            + f" {case.track}."
        ),
        data={"decline_code": decline.decline_code, "track": case.track},
    )


def _attempt_fill(*, case: RecoveryCase, invoice: Invoice, decline) -> None:
    """Put the decline on the invoice's attempt it belongs to. The PaymentIntent and
    Charge events of that attempt may have been recorded already, with no invoice to
    join (their report carries the charge id): one attempt is kept, with both reports."""
    attempt = (
        PaymentAttempt.objects.filter(
            case=case,
            source=PaymentAttempt.Source.STRIPE_AUTO,
            invoice_stripe_id=invoice.stripe_id,
        )
        .exclude(outcome=PaymentAttempt.Outcome.SUCCEEDED)
        .order_by("-attempted_at", "-pk")
        .first()
    )
    if decline.charge_id:
        orphan = (
            PaymentAttempt.objects.filter(store_id=case.store_id, charge_id=decline.charge_id)
            .exclude(pk=attempt.pk if attempt else None)
            .first()
        )
        if orphan is not None and attempt is not None and not attempt.charge_id:
            if orphan.case_id in (None, case.pk):
                # The same charge reported twice: the invoice's report keeps it all.
                orphan.delete()
            else:
                return
        elif orphan is not None:
            attempt = None  # the charge's own report is the attempt: fill that one
    payment_attempt_record(
        store=case.store,
        case=case,
        customer=case.customer,
        source=PaymentAttempt.Source.STRIPE_AUTO,
        outcome=attempt.outcome if attempt else PaymentAttempt.Outcome.FAILED,
        amount=case.amount,
        currency=case.currency,
        at=attempt.attempted_at if attempt else timezone.now(),
        decline=decline,
        invoice_stripe_id=invoice.stripe_id,
        invoice_attempt_number=attempt.invoice_attempt_number if attempt else None,
    )
