"""Dashboard pages for cases: the filterable list, the case page and its actions.

Every query is scoped to `access.store` (stores.access); every action is a POST through
a command in recovery.commands or a service in support.services, recorded on the case's timeline.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from common.errors import ApplicationError
from common.paging import page_number
from orders.selectors import case_order_summary
from stores.access import Access, dashboard_view, render_page
from subscriptions.models import Customer
from support.selectors import case_support_panel, customer_support_facts

from . import commands
from .domain.declines import DECLINE_CODES
from .forms import CaseFilterForm, CustomerSearchForm
from .models import CaseEvent, PaymentAttempt, RecoveryCase, Track
from .selectors_dashboard import case_timeline, cases_filtered

PAGE_SIZE = 50
COUNT_CAP = 10_000  # beyond this the list says "10,000+" rather than counting every row


@dashboard_view()
def case_list(request: HttpRequest, access: Access) -> HttpResponse:
    form = CaseFilterForm(request.GET)
    if form.is_valid():
        filters = form.filters()
        qs = cases_filtered(store=access.store, filters=filters)
    else:
        # A filter that cannot be read lists nothing: never every case as if unfiltered.
        filters = {}
        qs = RecoveryCase.objects.none()
    page = page_number(request.GET.get("page"))
    offset = (page - 1) * PAGE_SIZE
    rows = list(qs[offset : offset + PAGE_SIZE + 1])
    has_next = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    total = qs.order_by()[: COUNT_CAP + 1].count()
    params = {k: v for k, v in request.GET.items() if k != "page"}
    return render_page(
        request,
        access,
        "recovery/case_list.html",
        {
            "cases": rows,
            "page": page,
            "has_next": has_next,
            "total": total,
            "total_capped": total > COUNT_CAP,
            "first_index": offset + 1,
            "last_index": offset + len(rows),
            "qs_first": urlencode(params),
            "qs_prev": urlencode({**params, "page": page - 1}),
            "qs_next": urlencode({**params, "page": page + 1}),
            "params": request.GET,
            "filtered": bool(filters) or bool(form.errors),
            "filter_errors": form.error_list(),
            "statuses": RecoveryCase.Status.choices,
            "tracks": Track.choices,
            "decline_codes": sorted(DECLINE_CODES),
        },
        section="cases",
    )


def _case(access: Access, pk: int) -> RecoveryCase:
    return get_object_or_404(
        RecoveryCase.objects.select_related(
            "customer",
            "customer__default_payment_method",
            "subscription",
            "invoice",
            "order",
            "store",
        ).prefetch_related(
            Prefetch("attempts", queryset=PaymentAttempt.objects.order_by("attempted_at", "id")),
            Prefetch("events", queryset=CaseEvent.objects.order_by("at", "id")),
        ),
        store=access.store,
        pk=pk,
    )


@dashboard_view()
def case_detail(request: HttpRequest, access: Access, pk: int) -> HttpResponse:
    case = _case(access, pk)
    now = timezone.now()
    refusal = commands.case_retry_refusal(case=case, at=now) if case.is_open else ""
    return render_page(
        request,
        access,
        "recovery/case_detail.html",
        {
            "case": case,
            "timeline": case_timeline(case=case),
            "order": case_order_summary(case=case, now=now),
            "retry_refusal": refusal,
            "support": case_support_panel(case=case, now=now, user=request.user),
            "today": now.astimezone(access.store.tzinfo).date(),
            "max_extend": commands.MAX_EXTEND_DAYS,
        },
        section="cases",
    )


ACTIONS = {"retry", "pause", "resume", "extend", "cancel", "mark-paid", "note"}


@dashboard_view()
@require_POST
def case_action(request: HttpRequest, access: Access, pk: int, action: str) -> HttpResponse:
    if action not in ACTIONS:
        raise Http404("No such action")
    case = get_object_or_404(
        RecoveryCase.objects.select_related("store"), store=access.store, pk=pk
    )
    now = timezone.now()
    actor = access.actor
    post = request.POST
    try:
        if action == "retry":
            result = commands.case_retry_now(case=case, actor=actor, at=now)
            (messages.success if result.ok else messages.warning)(request, result.message)
        elif action == "pause":
            changed = commands.case_dunning_pause(case=case, actor=actor, at=now)
            messages.success(
                request, "Automated dunning paused." if changed else "Dunning was already paused."
            )
        elif action == "resume":
            changed = commands.case_dunning_resume(case=case, actor=actor, at=now)
            messages.success(
                request, "Automated dunning resumed." if changed else "Dunning was not paused."
            )
        elif action == "extend":
            try:
                days = int(post.get("days") or 0)
            except ValueError as exc:
                raise ApplicationError("Extend by a whole number of days.") from exc
            end = commands.case_window_extend(
                case=case, actor=actor, at=now, days=days, why=post.get("why", "")
            )
            messages.success(
                request, f"Window extended; it now ends {timezone.localtime(end):%b %-d, %H:%M}."
            )
        elif action == "cancel":
            commands.case_cancel(case=case, actor=actor, at=now, why=post.get("why", ""))
            messages.success(request, "Case cancelled: nothing more will be retried or sent.")
        elif action == "mark-paid":
            commands.case_mark_paid_outside(
                case=case, actor=actor, at=now, note=post.get("note", "")
            )
            messages.success(request, "Marked paid outside Stripe; the case is recovered.")
        elif action == "note":
            commands.case_note_add(
                case=case, actor=request.user.username, body=post.get("body", ""), at=now
            )
            messages.success(request, "Note added.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("case-detail", access.store.id, case.pk)


@dashboard_view()
def customer_list(request: HttpRequest, access: Access) -> HttpResponse:
    form = CustomerSearchForm(request.GET)
    qs = Customer.objects.filter(store=access.store)
    if not form.is_valid():
        q, qs = "", qs.none()
    elif q := form.cleaned_data["q"]:
        qs = qs.filter(Q(email__icontains=q) | Q(stripe_id=q) | Q(name__icontains=q))
    page = page_number(request.GET.get("page"))
    offset = (page - 1) * PAGE_SIZE
    rows = list(qs.order_by("-updated_at", "-id")[offset : offset + PAGE_SIZE + 1])
    return render_page(
        request,
        access,
        "recovery/customer_list.html",
        {
            "customers": rows[:PAGE_SIZE],
            "has_next": len(rows) > PAGE_SIZE,
            "page": page,
            "q": q,
            "search_errors": form.errors.get("q", []),
            "qs_first": urlencode({"q": q}),
            "qs_prev": urlencode({"q": q, "page": page - 1}),
            "qs_next": urlencode({"q": q, "page": page + 1}),
        },
        section="customers",
    )


@dashboard_view()
def customer_detail(request: HttpRequest, access: Access, pk: int) -> HttpResponse:
    customer = get_object_or_404(Customer, store=access.store, pk=pk)
    support = customer_support_facts(customer=customer, now=timezone.now())
    return render_page(
        request,
        access,
        "recovery/customer_detail.html",
        {
            "customer": customer,
            "churn": support.churn,
            "lifetime_paid": support.lifetime_paid,
            "subscriptions": list(customer.subscriptions.order_by("-created_at")),
            "cases": list(
                RecoveryCase.objects.filter(customer=customer).order_by("-opened_at")[:50]
            ),
            "signals": support.signals,
        },
        section="customers",
    )
