"""The dashboard's one access helper: which store a request may see, and as what.

Every dashboard URL names its store (/s/<store_id>/…). `store_access` returns the
user's membership of that store, or raises Http404 — for a store the user does not
belong to and for pages their role may not see — so nobody can learn that a store,
case or customer exists by probing. Views then scope every query to `access.store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.functional import cached_property

from support.selectors import queue_waiting_count

from .models import Membership, Store

SESSION_STORE_KEY = "recoup_store_id"


@dataclass(frozen=True)
class Access:
    user: object
    store: Store
    role: str
    memberships: list[Membership]

    @property
    def is_operator(self) -> bool:
        return self.role == Membership.Role.OPERATOR

    @property
    def actor(self) -> str:
        return self.user.get_username()


def memberships_of(user) -> list[Membership]:
    """The user's stores (one query), in a stable order for the switcher."""
    return list(
        Membership.objects.filter(user=user).select_related("store").order_by("store__name")
    )


def store_access(request: HttpRequest, store_id, *, operator_only: bool = False) -> Access:
    """The request user's access to this store, or Http404."""
    user = request.user
    if not user.is_authenticated:
        raise Http404
    memberships = memberships_of(user)
    membership = next((m for m in memberships if str(m.store_id) == str(store_id)), None)
    if membership is None:
        raise Http404("No such store")
    if operator_only and membership.role != Membership.Role.OPERATOR:
        raise Http404("Operators only")
    if request.session.get(SESSION_STORE_KEY) != str(membership.store_id):
        request.session[SESSION_STORE_KEY] = str(membership.store_id)
    access = Access(
        user=user, store=membership.store, role=membership.role, memberships=memberships
    )
    request.access = access
    return access


def default_store_id(request: HttpRequest):
    """The store `/` opens: the one last used, else the user's first."""
    memberships = memberships_of(request.user)
    if not memberships:
        return None
    wanted = request.session.get(SESSION_STORE_KEY)
    chosen = next((m for m in memberships if str(m.store_id) == wanted), memberships[0])
    return chosen.store_id


def dashboard_view(*, operator_only: bool = False):
    """Decorator for a view taking (request, store_id, …): login required, then the
    access check; the view receives `access` instead of `store_id`."""

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapper(request, store_id, *args, **kwargs):
            access = store_access(request, store_id, operator_only=operator_only)
            # Times on every page are the store's local times.
            with timezone.override(access.store.tzinfo):
                return view(request, access, *args, **kwargs)

        return wrapper

    return decorate


class Nav:
    """What the header shows; the queue count is read only if the page renders it."""

    def __init__(self, store: Store):
        self.store = store

    @cached_property
    def queue_waiting(self) -> int:
        return queue_waiting_count(store=self.store)


def render_page(
    request: HttpRequest, access: Access, template: str, context: dict, *, section: str = ""
) -> HttpResponse:
    """Render a dashboard page with the header's context."""
    return render(
        request,
        template,
        {"access": access, "nav": Nav(access.store), "section": section, **context},
    )
