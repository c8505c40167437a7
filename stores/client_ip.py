"""The client's address, as the proxy in front of Recoup reports it, and only as that.

A client can send any X-Forwarded-For it likes; only the entries the trusted proxies
appended are facts. With `CLIENT_IP_HEADER` unset, the address is REMOTE_ADDR (Recoup
faces the clients, or the proxy's address is all there is). With it set (e.g.
`HTTP_X_FORWARDED_FOR`), the address is the entry `TRUSTED_PROXY_COUNT` from the right:
the one the outermost trusted proxy saw. A single-valued header such as X-Real-IP is the
one entry. Anything that is not an IP address falls back to REMOTE_ADDR."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    remote = request.META.get("REMOTE_ADDR", "")
    header = settings.CLIENT_IP_HEADER
    value = request.META.get(header, "") if header else ""
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if not entries:
        return remote
    trusted = max(settings.TRUSTED_PROXY_COUNT, 1)
    candidate = entries[-trusted] if len(entries) >= trusted else entries[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
