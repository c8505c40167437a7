"""Rendering message templates in a restricted context.

Templates use Django's template language with a short list of tags and filters
(messaging/template_library.py) and only the variables in VARIABLES, all plain strings.
`template_check` parses and walks a template and names the line and the reason of the
first problem; `render_message` renders a checked template with a context built by
`message_context`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
import zoneinfo
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings
from django.template import Context, Engine, TemplateSyntaxError
from django.template.base import FilterExpression, Node, TextNode, VariableNode
from django.template.defaulttags import IfNode
from django.utils import formats, translation

# Every variable a message template may use. All are strings (empty when not known).
VARIABLES: dict[str, str] = {
    "first_name": "The customer's first name (or 'there').",
    "store_name": "The store's name.",
    "product": "What the payment was for: the subscription's product or the order's items.",
    "amount": "The amount due, formatted with its currency, e.g. $29.00.",
    "pay_url": "The customer's own card-update link (/pay/…/).",
    "order_note": "One sentence on what happens to the order or next shipment, or empty.",
    "held_until": "The date the order's items are held until, e.g. 3 March, or empty.",
    "order_number": "The order number, or empty.",
    "final_date": "The one date the message is about: access restricted, the order's items "
    "released, or the window's end, e.g. 3 March.",
    "card_brand": "The brand of the card on file, e.g. Visa.",
    "card_last4": "The last four digits of the card on file.",
    "card_expiry": "The card's expiry (pre-dunning), e.g. 08/2026.",
    "support_email": "The store's support address, or empty.",
    "agent_name": "The support agent's name (personal follow-ups).",
    "agent_note": "The agent's own words (personal follow-ups).",
}

SAMPLE: dict[str, str] = {
    "first_name": "Alice",
    "store_name": "Bean Box",
    "product": "Coffee Club (monthly)",
    "amount": "$29.00",
    "pay_url": "https://recoup.example.com/pay/sample-token/",
    "order_note": "We're holding your items until 3 March.",
    "held_until": "3 March",
    "order_number": "1042",
    "final_date": "3 March",
    "card_brand": "Visa",
    "card_last4": "4242",
    "card_expiry": "08/2026",
    "support_email": "help@beanbox.example",
    "agent_name": "Arjun",
    "agent_note": "I saw the payment didn't go through and wanted to check in personally.",
}

INVALID = "\x00invalid\x00"


class RestrictedEngine(Engine):
    # Django adds its default tags and filters ({% load %}, {% include %}, {% url %},
    # {% debug %}, |safe, ...) to every engine; this one has only template_library's.
    default_builtins: list[str] = []


@cache
def _engine(*, autoescape: bool) -> Engine:
    return RestrictedEngine(
        builtins=["messaging.template_library"],
        libraries={},
        autoescape=autoescape,
        debug=True,  # parse errors carry their line
        string_if_invalid=INVALID,
        loaders=[],
    )


@dataclass
class TemplateProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def _line_of(source: str, token) -> int:
    if token is None:
        return 1
    if getattr(token, "lineno", None):
        return token.lineno
    start = token.position[0] if getattr(token, "position", None) else 0
    return source.count("\n", 0, start) + 1


def _condition_expressions(condition):
    if condition is None:
        return
    value = getattr(condition, "value", None)
    if isinstance(value, FilterExpression):
        yield value
    for attr in ("first", "second"):
        child = getattr(condition, attr, None)
        if child is not None:
            yield from _condition_expressions(child)


def _expressions(nodelist) -> list[tuple[FilterExpression, Node]]:
    found: list[tuple[FilterExpression, Node]] = []
    for node in nodelist:
        if isinstance(node, VariableNode):
            found.append((node.filter_expression, node))
        if isinstance(node, IfNode):
            for condition, _ in node.conditions_nodelists:
                found.extend((fe, node) for fe in _condition_expressions(condition))
        for fe in getattr(node, "vars", []) or []:  # {% firstof %}
            if isinstance(fe, FilterExpression):
                found.append((fe, node))
        for attr in node.child_nodelists:
            found.extend(_expressions(getattr(node, attr, None) or []))
        if isinstance(node, IfNode):
            for _, child in node.conditions_nodelists:
                found.extend(_expressions(child))
    return found


def _variables_of(fe: FilterExpression):
    from django.template.base import Variable

    if isinstance(fe.var, Variable) and fe.var.lookups is not None:
        yield fe.var
    for _, args in fe.filters:
        for is_var, arg in args:
            if is_var and isinstance(arg, Variable) and arg.lookups is not None:
                yield arg


def template_check(source: str, *, html_body: bool = False) -> TemplateProblem | None:
    """The first problem with a template's source, or None if it renders."""
    engine = _engine(autoescape=html_body)
    try:
        template = engine.from_string(source)
    except TemplateSyntaxError as exc:
        info = getattr(exc, "template_debug", None) or {}
        return TemplateProblem(info.get("line", 1), str(exc))
    for node in template.nodelist.get_nodes_by_type(TextNode):
        for mark in ("{{", "{%", "}}", "%}"):
            if mark in node.s:
                return TemplateProblem(
                    _line_of(source, node.token),
                    f"'{mark}' is not part of a complete {{{{ variable }}}} or {{% tag %}}",
                )
    for fe, node in _expressions(template.nodelist):
        for var in _variables_of(fe):
            name = var.lookups[0]
            line = _line_of(source, getattr(node, "token", None))
            if name not in VARIABLES:
                return TemplateProblem(
                    line,
                    f"unknown variable {name!r}; use one of: {', '.join(VARIABLES)}",
                )
            if len(var.lookups) > 1:
                return TemplateProblem(
                    line, f"{name!r} is plain text: '.{var.lookups[1]}' cannot be looked up"
                )
    try:
        out = template.render(Context(dict(SAMPLE), autoescape=html_body))
    except Exception as exc:  # a filter given bad arguments, ...
        return TemplateProblem(1, f"does not render: {exc}")
    if INVALID in out:
        return TemplateProblem(1, "a variable or filter could not be resolved")
    return None


def render(source: str, context: dict, *, html_body: bool = False) -> str:
    out = (
        _engine(autoescape=html_body)
        .from_string(source)
        .render(Context(context, autoescape=html_body))
    )
    return out.replace(INVALID, "")


# ------------------------------------------------------------------ SMS length

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = "^{}\\[~]|€\f"


@dataclass
class SmsLength:
    encoding: str  # GSM-7 | UCS-2
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int

    def __str__(self) -> str:
        per = "GSM-7 character" if self.encoding == "GSM-7" else "UCS-2 unit"
        return (
            f"{self.segments} segment{'s' if self.segments != 1 else ''} "
            f"({self.units} {per}{'s' if self.units != 1 else ''})"
        )


def sms_length(text: str) -> SmsLength:
    """Segments a carrier bills for `text`: 160/153 GSM-7 septets, 70/67 UCS-2 units."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    segments = 1 if units <= single else math.ceil(units / multi)
    return SmsLength(encoding=encoding, units=units, segments=max(segments, 1 if text else 0))


# ------------------------------------------------------------------ formatting

ZERO_DECIMAL = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx"}
ZERO_DECIMAL |= {"vnd", "vuv", "xaf", "xof", "xpf"}
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}
SYMBOLS |= {"chf": "CHF ", "nzd": "NZ$", "inr": "₹", "sek": "SEK ", "dkk": "DKK "}


def money(amount: int, currency: str) -> str:
    """Integer minor units and an ISO currency as a customer reads them: $29.00, ¥3000."""
    currency = (currency or "").lower()
    if currency in ZERO_DECIMAL:
        number = f"{int(amount):,}"
    else:
        number = f"{int(amount) // 100:,}.{int(amount) % 100:02d}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def day(when: dt.datetime | dt.date | None, *, tz: str, locale: str) -> str:
    """'3 March' in the customer's zone and language."""
    if when is None:
        return ""
    if isinstance(when, dt.datetime):
        when = when.astimezone(zone(tz)).date()
    with translation.override(locale or "en"):
        return formats.date_format(when, "j F")


# ------------------------------------------------------------------ default templates

DEFAULTS_DIR = Path(__file__).resolve().parent.parent / "templates" / "messaging" / "defaults"


@dataclass
class Wording:
    subject: str
    body_text: str
    body_html: str
    sms: str


@cache
def default_wording(*, purpose: str, locale: str) -> Wording | None:
    """The shipped wording for a purpose: templates/messaging/defaults/<locale>/<purpose>.txt,
    three parts separated by lines of '---': subject, email text, SMS text. The email's
    HTML is made from its text (see `text_to_html`)."""
    for loc in (locale, locale.split("-")[0], "en"):
        path = DEFAULTS_DIR / loc / f"{purpose}.txt"
        if path.exists():
            parts = re.split(r"^---\s*$", path.read_text(), flags=re.M)
            if len(parts) != 3:
                raise ValueError(f"{path} needs subject, email text and SMS separated by ---")
            subject, text, sms = (p.strip() for p in parts)
            return Wording(subject=subject, body_text=text + "\n", body_html="", sms=sms)
    return None


URL_LINE = re.compile(r"^https?://\S+$")


def text_to_html(text: str, *, store_name: str, pay_url: str) -> str:
    """An email's HTML from its rendered text: paragraphs, the pay link as a button."""
    from django.template.loader import render_to_string

    blocks = []
    for para in re.split(r"\n\s*\n", text.strip()):
        para = para.strip()
        if not para:
            continue
        if URL_LINE.match(para):
            label = "Update payment details" if para == pay_url else para
            blocks.append({"button": True, "url": para, "label": label})
        else:
            blocks.append(
                {"button": False, "html": "<br>".join(html.escape(x) for x in para.splitlines())}
            )
    return render_to_string(
        "messaging/email.html",
        {"blocks": blocks, "store_name": store_name, "site_url": settings.SITE_URL},
    )
