"""A local stand-in for Stripe's API, so the real stripe SDK is exercised end to end.

Only the HTTP boundary is replaced: the code under test builds its own `StripeClient`,
which `settings.STRIPE_API_BASE` points here. The server keeps invoices and
PaymentIntents with their status, attempt count and charges; honours `Idempotency-Key`
as Stripe does (the first response for a key is stored and replayed, with
`Idempotent-Replayed: true`, and nothing is charged twice; a key reused with other
parameters is refused; 429s are not stored because Stripe's rate limiter answers before
the endpoint runs); leaves an invoice's includable `payments` out unless it is expanded,
as the API does; records every request; and answers each charge with the next scripted
outcome:

    approve                      the charge succeeds
    decline:<decline_code>       402 card_error, as Stripe sends it
    authentication_required      402 card_error: the bank wants the customer on-session
    invoice_requires_action      402 invoice_payment_intent_requires_action: the invoice's
                                 PaymentIntent waits for the customer (3-D Secure)
    timeout_after_charge         the charge succeeds, the answer comes after the client
                                 has given up (`hang_seconds`)
    drop_after_charge            the charge succeeds, the connection is closed unanswered
    500                          nothing charged, 500 api_error
    429                          nothing charged, 429 rate limit

A charge with nothing scripted is refused with a 400 and counted in `unscripted`, so a
request a test did not expect can never charge a card by accident.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

OUTCOMES = (
    "approve",
    "authentication_required",
    "invoice_requires_action",
    "timeout_after_charge",
    "drop_after_charge",
    "500",
    "429",
)
PAY = re.compile(r"^/v1/invoices/(?P<id>[^/]+)/pay$")
INVOICE = re.compile(r"^/v1/invoices/(?P<id>[^/]+)$")
CONFIRM = re.compile(r"^/v1/payment_intents/(?P<id>[^/]+)/confirm$")
PAYMENT_INTENT = re.compile(r"^/v1/payment_intents/(?P<id>[^/]+)$")


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]
    status: int | None = None  # None: never answered (dropped, or answered too late)
    replayed: bool = False

    @property
    def idempotency_key(self) -> str:
        return self.headers.get("Idempotency-Key", "")

    @property
    def object_id(self) -> str:
        """The id the path ends with (`/v1/invoices/in_1` -> `in_1`)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def param(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None

    @property
    def expand(self) -> set[str]:
        """What the caller asked to expand (the SDK sends `expand[0]=...`)."""
        return {v for k, values in self.form.items() if k.startswith("expand[") for v in values}


@dataclass
class Charge:
    id: str
    object_id: str  # the invoice or PaymentIntent it paid (or tried to)
    amount: int
    paid: bool
    idempotency_key: str
    decline_code: str = ""


@dataclass
class _Reply:
    status: int
    body: dict
    after_charge: str = ""  # "", "timeout" or "drop"
    headers: dict = field(default_factory=dict)


class FakeStripe:
    def __init__(self, *, hang_seconds: float = 3.0):
        self.hang_seconds = hang_seconds
        self.invoices: dict[str, dict] = {}
        self.payment_intents: dict[str, dict] = {}
        self.charges: list[Charge] = []
        self.requests: list[Recorded] = []
        self.unscripted = 0
        self._outcomes: deque[str] = deque()
        self._stored: dict[tuple[str, str], tuple[str, _Reply]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> FakeStripe:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-stripe", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wake any handler still holding back a late answer
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *outcomes: str) -> None:
        """Queue the answers to the next charges, in order."""
        for outcome in outcomes:
            if outcome not in OUTCOMES and not outcome.startswith("decline:"):
                raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            self._outcomes.extend(outcomes)

    @property
    def pending_outcomes(self) -> list[str]:
        with self._lock:
            return list(self._outcomes)

    def add_invoice(self, invoice: dict) -> dict:
        """Hold an invoice (e.g. from `stripe_factory.failed_invoice`) as Stripe would:
        with its payments (`stripe_factory.STRIPE_SIDE`), which it shows only when asked."""
        from tests.stripe_factory import invoice_payment_intents

        with self._lock:
            invoice = copy.deepcopy(invoice)
            if "payments" not in invoice:
                invoice["payments"] = {
                    "object": "list",
                    "data": [
                        {
                            "id": f"inpay_fake{i:04d}",
                            "object": "invoice_payment",
                            "invoice": invoice["id"],
                            "created": int(time.time()) + i,
                            "payment": {"type": "payment_intent", "payment_intent": pi},
                            "status": "open",
                        }
                        for i, pi in enumerate(invoice_payment_intents(invoice["id"]))
                    ],
                    "has_more": False,
                    "url": f"/v1/invoice_payments?invoice={invoice['id']}",
                }
            self.invoices[invoice["id"]] = invoice
            for pi in self._invoice_payment_intents(self.invoices[invoice["id"]]):
                self.payment_intents.setdefault(pi["id"], pi)
            return self.invoices[invoice["id"]]

    def add_payment_intent(self, payment_intent: dict) -> dict:
        with self._lock:
            self.payment_intents[payment_intent["id"]] = copy.deepcopy(payment_intent)
            return self.payment_intents[payment_intent["id"]]

    # ------------------------------------------------------------------ reading

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def invoice_reads(self) -> list[Recorded]:
        """The invoices read back: `GET /v1/invoices/<id>`, in the order they came."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and INVOICE.match(r.path)]

    @property
    def real_charges(self) -> int:
        """Charges that moved money: each one is a card actually charged."""
        with self._lock:
            return sum(1 for c in self.charges if c.paid)

    # ------------------------------------------------------------------ serving

    def handle(self, record: Recorded) -> _Reply:
        if not record.headers.get("Authorization", "").startswith("Bearer sk_"):
            return _error(401, "invalid_request_error", "Invalid API Key provided.")
        if record.method == "GET":
            return self._get(record.path, record.expand, record.form)
        if record.method != "POST" or not (PAY.match(record.path) or CONFIRM.match(record.path)):
            return _error(
                404, "invalid_request_error", f"Unrecognized request URL ({record.path})."
            )
        key = record.idempotency_key
        scope = (record.headers.get("Authorization", ""), key)
        signature = json.dumps([record.path, sorted(record.form.items())])
        with self._lock:
            if key and scope in self._stored:
                stored_signature, reply = self._stored[scope]
                if stored_signature != signature:
                    return _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    )
                record.replayed = True
                return _Reply(reply.status, reply.body, headers={"Idempotent-Replayed": "true"})
            # The charge is decided under the lock, so a second request with the same key
            # always finds the first one's answer stored (Stripe would answer 409 while the
            # first is still running; here it never is).
            reply = self._charge(record)
            if key and reply.status != 429:
                self._stored[scope] = (
                    signature,
                    _Reply(reply.status, reply.body, headers=reply.headers),
                )
            return reply

    def _get(self, path: str, expand: set[str], form: dict | None = None) -> _Reply:
        with self._lock:
            if path == "/v1/invoice_payments":
                return self._invoice_payments(form or {}, expand)
            if m := INVOICE.match(path):
                obj = self.invoices.get(m["id"])
            elif m := PAYMENT_INTENT.match(path):
                obj = self.payment_intents.get(m["id"])
            else:
                obj, m = None, None
            if m is None:
                return _error(404, "invalid_request_error", f"Unrecognized request URL ({path}).")
            if obj is None:
                return _missing(m["id"])
            return _Reply(200, _render(obj, expand, self.payment_intents))

    def _invoice_payments(self, form: dict, expand: set[str]) -> _Reply:
        """`GET /v1/invoice_payments?invoice=…`, newest first; each payment's
        PaymentIntent an id unless `data.payment.payment_intent` is expanded, its
        `latest_charge` an id unless that is expanded too."""
        invoice_id = (form.get("invoice") or [""])[0]
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            return _missing(invoice_id)
        items = copy.deepcopy((invoice.get("payments") or {}).get("data") or [])
        for item in items:
            pi = item["payment"].get("payment_intent")
            live = self.payment_intents.get(pi["id"] if isinstance(pi, dict) else pi) or pi
            if "data.payment.payment_intent" not in expand and not any(
                e.startswith("data.payment.payment_intent.") for e in expand
            ):
                item["payment"]["payment_intent"] = live["id"] if isinstance(live, dict) else live
                continue
            live = copy.deepcopy(live)
            charge = live.get("latest_charge")
            if "data.payment.payment_intent.latest_charge" not in expand and isinstance(
                charge, dict
            ):
                live["latest_charge"] = charge["id"]
            item["payment"]["payment_intent"] = live
        items.sort(key=lambda i: i.get("created") or 0, reverse=True)
        return _Reply(
            200,
            {"object": "list", "data": items, "has_more": False, "url": "/v1/invoice_payments"},
        )

    def _charge(self, record: Recorded) -> _Reply:
        if m := PAY.match(record.path):
            invoice = self.invoices.get(m["id"])
            if invoice is None:
                return _missing(m["id"])
            if invoice["status"] != "open":
                return _error(
                    400, "invalid_request_error", f"Invoice is already {invoice['status']}."
                )
            pi = (self._invoice_payment_intents(invoice) or [None])[-1]
            amount = invoice["amount_remaining"]
        else:
            m = CONFIRM.match(record.path)
            pi = self.payment_intents.get(m["id"])
            if pi is None:
                return _missing(m["id"])
            if pi["status"] == "succeeded":
                return _error(
                    400,
                    "invalid_request_error",
                    "This PaymentIntent's payment_method could not be updated because it has "
                    "a status of succeeded.",
                    code="payment_intent_unexpected_state",
                )
            invoice, amount = None, pi["amount"]
        if not self._outcomes:
            self.unscripted += 1
            return _error(400, "invalid_request_error", "fake_stripe: no outcome scripted")
        outcome = self._outcomes.popleft()
        if outcome == "429":
            return _error(
                429,
                "invalid_request_error",
                "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
        if outcome == "500":
            return _error(500, "api_error", "An unknown error occurred")

        charge_id = f"ch_fake{next(self._ids):06d}"
        key = record.idempotency_key
        payment_method = record.param("payment_method") or (pi or {}).get("payment_method") or ""
        if invoice is not None:
            invoice["attempt_count"] = int(invoice.get("attempt_count") or 0) + 1
            invoice["attempted"] = True
        if pi is not None:
            pi["latest_charge"] = charge_id
            if payment_method:
                pi["payment_method"] = payment_method

        if outcome in ("approve", "timeout_after_charge", "drop_after_charge"):
            self.charges.append(Charge(charge_id, m["id"], amount, True, key))
            if pi is not None:
                pi.update(status="succeeded", amount_received=amount, last_payment_error=None)
            if invoice is not None:
                invoice.update(
                    status="paid",
                    amount_paid=invoice["amount_due"],
                    amount_remaining=0,
                    next_payment_attempt=None,
                    status_transitions={
                        **(invoice.get("status_transitions") or {}),
                        "paid_at": int(time.time()),
                    },
                )
                for item in (invoice.get("payments") or {}).get("data") or []:
                    item["status"] = "paid"
            body = _render(
                invoice if invoice is not None else pi, record.expand, self.payment_intents
            )
            after = {"approve": "", "timeout_after_charge": "timeout"}.get(outcome, "drop")
            return _Reply(200, body, after_charge=after)

        if outcome == "authentication_required":
            code = decline_code = "authentication_required"
            message = "Your card was declined. This transaction requires authentication."
        elif outcome == "invoice_requires_action":
            code, decline_code = "invoice_payment_intent_requires_action", ""
            message = (
                "This payment requires additional user action before it can be completed "
                "successfully. Payment can be completed using the PaymentIntent associated "
                "with the invoice."
            )
        else:
            code, decline_code = "card_declined", outcome.split(":", 1)[1]
            message = (
                "Your card has expired."
                if decline_code == "expired_card"
                else "Your card was declined."
            )
        self.charges.append(Charge(charge_id, m["id"], amount, False, key, decline_code))
        error = {
            "type": "card_error",
            "code": code,
            "message": message,
            "charge": charge_id,
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            "request_log_url": "https://dashboard.stripe.com/test/logs/req_fake",
        }
        if decline_code:
            error["decline_code"] = decline_code
        if payment_method:
            error["payment_method"] = {"id": payment_method, "object": "payment_method"}
        if pi is not None:
            pi.update(
                status="requires_action"
                if outcome == "invoice_requires_action"
                else "requires_payment_method",
                last_payment_error={k: v for k, v in error.items() if k != "request_log_url"},
            )
            error["payment_intent"] = copy.deepcopy(pi)
        return _Reply(402, {"error": error})

    @staticmethod
    def _invoice_payment_intents(invoice: dict) -> list[dict]:
        out = []
        for item in (invoice.get("payments") or {}).get("data") or []:
            pi = ((item or {}).get("payment") or {}).get("payment_intent")
            if isinstance(pi, dict):
                out.append(pi)
        return out


def _render(obj: dict, expand: set[str], payment_intents: dict) -> dict:
    """An object as the API returns it. An invoice's `payments` is includable: Stripe
    leaves it out unless asked for, and gives its PaymentIntents as ids unless those are
    expanded too (as they are now, each with its `latest_charge` an id unless that is
    expanded as well)."""
    out = copy.deepcopy(obj)
    if out.get("object") != "invoice" or "payments" not in out:
        return out
    if not any(e == "payments" or e.startswith("payments.") for e in expand):
        del out["payments"]
        return out
    intent = "payments.data.payment.payment_intent"
    for item in out["payments"].get("data") or []:
        payment = item.get("payment") or {}
        pi = payment.get("payment_intent")
        pi_id = pi["id"] if isinstance(pi, dict) else pi
        if intent not in expand and not any(e.startswith(intent + ".") for e in expand):
            payment["payment_intent"] = pi_id
            continue
        live = copy.deepcopy(payment_intents.get(pi_id) or pi)
        charge = live.get("latest_charge") if isinstance(live, dict) else None
        if f"{intent}.latest_charge" not in expand and isinstance(charge, dict):
            live["latest_charge"] = charge["id"]
        payment["payment_intent"] = live
    return out


def _error(status: int, type_: str, message: str, *, code: str | None = None) -> _Reply:
    error = {"type": type_, "message": message}
    if code:
        error["code"] = code
    return _Reply(status, {"error": error})


def _missing(object_id: str) -> _Reply:
    return _error(
        404,
        "invalid_request_error",
        f"No such object: '{object_id}'",
        code="resource_missing",
    )


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeStripe

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format, *args) -> None:
        pass

    def _serve(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        split = urlsplit(self.path)
        record = Recorded(
            method=self.command,
            path=split.path,
            headers={k: v for k, v in self.headers.items()},
            form=parse_qs(body or split.query, keep_blank_values=True),
        )
        with fake._lock:
            fake.requests.append(record)
        reply = fake.handle(record)
        if reply.after_charge == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.after_charge == "timeout" and fake._stopping.wait(fake.hang_seconds):
            return  # the server is stopping; nobody is listening any more
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", f"req_fake{len(fake.requests):06d}")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up waiting, as a timed-out client does
        if not reply.after_charge:
            record.status = reply.status


@pytest.fixture
def fake_stripe(settings):
    """A running FakeStripe that newly built Stripe clients talk to."""
    server = FakeStripe().start()
    settings.STRIPE_API_BASE = server.url
    yield server
    server.stop()
