"""The agents' escalation queue and its actions (claim, release, outcomes)."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from common.errors import ApplicationError
from common.paging import page_number
from stores.access import Access, dashboard_view, render_page

from . import services
from .models import QueueItem
from .offers import DISCOUNT, PAUSE
from .routing import support_policy_for
from .selectors import URGENT, VIEWS, item_age, queue_items

PAGE_SIZE = 50


@dashboard_view()
def queue(request: HttpRequest, access: Access) -> HttpResponse:
    view = request.GET.get("view") or "waiting"
    if view not in VIEWS:
        view = "waiting"
    now = timezone.now()
    page = page_number(request.GET.get("page"))
    offset = (page - 1) * PAGE_SIZE
    items = list(
        queue_items(store=access.store, view=view, user=request.user, now=now)[
            offset : offset + PAGE_SIZE + 1
        ]
    )
    policy = support_policy_for(store=access.store)
    rows = []
    for item in items[:PAGE_SIZE]:
        age = item_age(item, now)
        rows.append(
            {
                "item": item,
                "age": age,
                "overdue": not item.first_response_at and age > policy.target_response_minutes,
                "urgent": item.window_end <= now + URGENT,
            }
        )
    return render_page(
        request,
        access,
        "support/queue.html",
        {
            "rows": rows,
            "view": view,
            "views": VIEWS,
            "page": page,
            "has_next": len(items) > PAGE_SIZE,
            "target": policy.target_response_minutes,
        },
        section="queue",
    )


def _back(request: HttpRequest, access: Access, item: QueueItem):
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("case-detail", access.store.id, item.case_id)


QUEUE_ACTIONS = {"claim", "release", "promise", "offer", "email", "recovered", "lost", "return"}


@dashboard_view()
@require_POST
def queue_action(request: HttpRequest, access: Access, pk: int, action: str) -> HttpResponse:
    if action not in QUEUE_ACTIONS:
        raise Http404("No such action")
    item = get_object_or_404(
        QueueItem.objects.select_related(
            "case", "case__store", "case__customer", "case__subscription"
        ),
        store=access.store,
        pk=pk,
    )
    now = timezone.now()
    user = request.user
    post = request.POST
    try:
        if action == "claim":
            services.queue_item_claim(item=item, user=user, at=now)
            messages.success(
                request, "Claimed: it is yours until you release it or record an outcome."
            )
        elif action == "release":
            services.queue_item_release(
                item=item, user=user, at=now, is_operator=access.is_operator
            )
            messages.success(request, "Released back to the queue.")
        elif action == "promise":
            try:
                pay_by = dt.date.fromisoformat(post.get("pay_by") or "")
            except ValueError as exc:
                raise ApplicationError("Pick the date the customer promised to pay by.") from exc
            services.queue_outcome_promise(
                item=item, user=user, pay_by=pay_by, at=now, note=post.get("note", "")
            )
            messages.success(
                request,
                f"Promise to pay by {pay_by:%b %-d} recorded; dunning is paused until then.",
            )
        elif action == "offer":
            kind = post.get("kind")
            if kind not in (DISCOUNT, PAUSE):
                raise ApplicationError("Choose a discount or a pause.")
            try:
                pause_days = int(post.get("pause_days") or 0)
            except ValueError as exc:
                raise ApplicationError("Pause for a whole number of days.") from exc
            services.queue_outcome_offer(
                item=item,
                user=user,
                kind=kind,
                at=now,
                coupon=post.get("coupon", ""),
                pause_days=pause_days,
                note=post.get("note", ""),
            )
            messages.success(request, "Offer applied and recorded.")
        elif action == "email":
            services.queue_outcome_email(
                item=item,
                user=user,
                note=post.get("body", ""),
                at=now,
                idempotency_key=post.get("nonce") or str(int(now.timestamp())),
            )
            messages.success(request, "Personal email sent and logged on the timeline.")
        elif action == "recovered":
            result = services.queue_outcome_recovered(item=item, user=user, at=now)
            messages.info(request, result)
        elif action == "lost":
            services.queue_outcome_lost(item=item, user=user, at=now, why=post.get("why", ""))
            messages.success(request, "Recorded as lost; the case is closed.")
        elif action == "return":
            services.queue_item_return_to_automation(item=item, user=user, at=now)
            messages.success(request, "Handed back to automated recovery; dunning resumes.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return _back(request, access, item)
