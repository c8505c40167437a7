"""Login limits, the same for the dashboard's login and the admin's: failed attempts per
username and per client address in a window (LOGIN_RATE_LIMIT, LOGIN_RATE_WINDOW_SECONDS),
counted wherever Django authenticates (the `user_login_failed` signal) and shared by every
process (stores/ratelimit.py).

The username is counted as Django's auth reads it: `UsernameField` NFKC-normalises what
was typed, so `ｖictim_op` (a fullwidth v) is `victim_op` and must share its count. The
address is the proxy's report of it (stores/client_ip.py), never a header the client
chose. A limit that trips is recorded (`LoginLockout`) for operators to see."""

from __future__ import annotations

import datetime as dt
import hashlib
import unicodedata

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils import timezone

from . import ratelimit
from .client_ip import client_ip
from .models import LoginLockout

# An office behind one address has several people: its limit is this many usernames' worth.
ADDRESS_FACTOR = 4


def username_normalise(raw: str) -> str:
    """The username as authentication compares it (NFKC), case-folded so that case
    variants share one count too."""
    return unicodedata.normalize("NFKC", raw or "").strip().casefold()


def _user_key(username: str) -> str:
    return "login:user:" + hashlib.sha256(username_normalise(username).encode()).hexdigest()[:32]


def _address_key(request: HttpRequest) -> str:
    return "login:ip:" + client_ip(request)


def login_refused(request: HttpRequest, username: str) -> str:
    """Why a login may not even be tried now (a message for the page), or ""."""
    limit = settings.LOGIN_RATE_LIMIT
    if (
        ratelimit.count(_user_key(username)) >= limit
        or ratelimit.count(_address_key(request)) >= limit * ADDRESS_FACTOR
    ):
        minutes = max(settings.LOGIN_RATE_WINDOW_SECONDS // 60, 1)
        return f"Too many failed attempts. Wait {minutes} minutes, or reset your password."
    return ""


def login_failed(request: HttpRequest, username: str) -> None:
    """Count a failed attempt; record a lockout when this one reaches a limit."""
    limit, window = settings.LOGIN_RATE_LIMIT, settings.LOGIN_RATE_WINDOW_SECONDS
    now = timezone.now()
    until = now + dt.timedelta(seconds=window)
    name, address = username_normalise(username), client_ip(request)
    common = {"client_ip": address[:64], "path": request.path[:200], "locked_at": now}
    if ratelimit.add(_user_key(username), window=window) == limit:
        LoginLockout.objects.create(
            scope=LoginLockout.Scope.USERNAME, username=name[:150], locked_until=until, **common
        )
    if ratelimit.add(_address_key(request), window=window) == limit * ADDRESS_FACTOR:
        LoginLockout.objects.create(
            scope=LoginLockout.Scope.ADDRESS, username=name[:150], locked_until=until, **common
        )


@receiver(user_login_failed, dispatch_uid="recoup-login-failed")
def _counted(sender, credentials, request=None, **kwargs):
    if request is not None:  # logins made in code (tests, shells) have no client
        login_failed(request, str(credentials.get("username") or ""))


@receiver(user_logged_in, dispatch_uid="recoup-logged-in")
def _cleared(sender, request, user, **kwargs):
    if request is not None:
        ratelimit.clear(_user_key(user.get_username()))


def login_lockouts_for(*, store, now: dt.datetime, days: int = 30) -> list[LoginLockout]:
    """The store's members' lockouts in the last `days` (by username, as normalised),
    newest first; address lockouts are listed with the username that tripped them."""
    from .models import Membership

    names = {
        username_normalise(u)
        for u in Membership.objects.filter(store=store).values_list("user__username", flat=True)
    }
    recent = LoginLockout.objects.filter(
        username__in=names, locked_at__gte=now - dt.timedelta(days=days)
    )
    return list(recent.order_by("-locked_at")[:20])
