"""Request bodies from outside, bounded before they are parsed: a size per endpoint and a
nesting depth for JSON. Python's parser recurses once per level, so a signed body nested
50,000 deep would end in a RecursionError (a 500) instead of a 400; no payload Recoup
reads nests anywhere near `MAX_DEPTH`."""

from __future__ import annotations

import json
import re

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64

# A JSON string (skipped whole, so brackets inside it do not count) or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]')
_OPENERS = (ord("["), ord("{"))


class BodyRejected(ValueError):
    """A body refused before parsing; the message says why, for the client."""


def json_depth_check(body: bytes | str, *, limit: int = MAX_DEPTH) -> None:
    """Raise BodyRejected if `body` nests arrays/objects deeper than `limit`."""
    data = body.encode() if isinstance(body, str) else body
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # cannot nest deeper than it has brackets
    depth = 0
    for match in _TOKENS.finditer(data):
        first = match.group()[0]
        if first in _OPENERS:
            depth += 1
            if depth > limit:
                raise BodyRejected(f"JSON nested deeper than {limit} levels.")
        elif first != ord('"'):
            depth -= 1


# A surrogate pair's two escapes (kept whole), or one surrogate escape on its own.
_SURROGATES = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)


def _lone_surrogate(data: bytes) -> bool:
    """An escaped surrogate without its partner: Python decodes it to a string no UTF-8
    text can hold, and PostgreSQL refuses it (a 500 at the INSERT)."""
    return any(len(m.group()) == 6 for m in _SURROGATES.finditer(data))


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def json_loads_bounded(body: bytes | str, *, max_bytes: int, limit: int = MAX_DEPTH):
    """`json.loads`, after the size, depth and NUL checks; BodyRejected for every
    refusal (too large, too deep, a NUL, not JSON, not UTF-8)."""
    if len(body) > max_bytes:
        raise BodyRejected(f"Body larger than {max_bytes // 1024} KiB.")
    if isinstance(body, bytes):
        # Strictly UTF-8, as JSON on the web is: json.loads(bytes) would guess UTF-16 or
        # UTF-32 and let NULs and lone surrogates through as raw characters.
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyRejected("Body is not UTF-8.") from exc
    if "\x00" in body:
        raise BodyRejected("Body contains a NUL character.")
    json_depth_check(body, limit=limit)
    data = body.encode()
    if b"\\u0000" in data:
        # No text or JSON column on PostgreSQL can hold a NUL (jsonb refuses \u0000).
        raise BodyRejected("Body contains a NUL character (\\u0000).")
    if (b"\\ud" in data or b"\\uD" in data) and _lone_surrogate(data):
        raise BodyRejected("Body contains an unpaired UTF-16 surrogate escape.")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BodyRejected("Body is not valid JSON.") from exc


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with the size and depth limits: a 400 in the API's error shape,
    never a RecursionError."""

    max_bytes = 256 * 1024

    def parse(self, stream, media_type=None, parser_context=None):
        body = stream.read(self.max_bytes + 1) if stream is not None else b""
        try:
            return json_loads_bounded(body, max_bytes=self.max_bytes)
        except BodyRejected as exc:
            raise ParseError(str(exc)) from exc
