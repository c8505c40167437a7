"""Dashboard entry points (root, store switcher, rate-limited login) and the operators'
settings pages: retry policy, message templates, escalation, holds, connections."""

from __future__ import annotations

import hashlib

from django.conf import settings as django_settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from common.errors import ApplicationError

from . import settings_services as svc
from .access import (
    SESSION_STORE_KEY,
    Access,
    dashboard_view,
    default_store_id,
    memberships_of,
    render_page,
)
from .forms import StripeCustomerDataForm

# ------------------------------------------------------------------ entry points


def root(request: HttpRequest) -> HttpResponse:
    """`/`: the dashboard of the store last used, or the login page."""
    if not request.user.is_authenticated:
        return redirect(django_settings.LOGIN_URL)
    store_id = default_store_id(request)
    if store_id is None:
        return render(request, "registration/no_store.html", status=403)
    return redirect("home", store_id)


@login_required
def store_switch(request: HttpRequest) -> HttpResponse:
    """The switcher's form: go to another store of the user's (404 for any other)."""
    wanted = request.GET.get("store", "")
    if not any(str(m.store_id) == wanted for m in memberships_of(request.user)):
        raise Http404("No such store")
    request.session[SESSION_STORE_KEY] = wanted
    return redirect("home", wanted)


def _client_ip(request: HttpRequest) -> str:
    # Behind the TLS proxy (README) REMOTE_ADDR is the proxy; the first forwarded
    # address is the client's. Only used to count failures, never to trust anyone.
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    return (forwarded.split(",")[0].strip() if forwarded else "") or request.META.get(
        "REMOTE_ADDR", ""
    )


def _keys(request: HttpRequest) -> list[str]:
    username = (request.POST.get("username") or "").strip().lower()
    return [
        "login-fail:user:" + hashlib.sha256(username.encode()).hexdigest()[:32],
        "login-fail:ip:" + _client_ip(request),
    ]


class RateLimitedLoginView(auth_views.LoginView):
    """Django's login, refusing more than LOGIN_RATE_LIMIT failures per username and per
    client address within LOGIN_RATE_WINDOW_SECONDS (answered with 429)."""

    def post(self, request, *args, **kwargs):
        limit = django_settings.LOGIN_RATE_LIMIT
        ip_limit = limit * 4  # an office behind one address has several people
        counts = cache.get_many(_keys(request))
        user_key, ip_key = _keys(request)
        if counts.get(user_key, 0) >= limit or counts.get(ip_key, 0) >= ip_limit:
            minutes = max(django_settings.LOGIN_RATE_WINDOW_SECONDS // 60, 1)
            form = self.get_form()
            form.errors.clear()
            form.add_error(
                None,
                f"Too many failed attempts. Wait {minutes} minutes, or reset your password.",
            )
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        window = django_settings.LOGIN_RATE_WINDOW_SECONDS
        for key in _keys(self.request):
            cache.add(key, 0, window)
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, window)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(_keys(self.request)[0])
        return super().form_valid(form)


# ------------------------------------------------------------------ settings


SECTIONS = [
    ("settings-retry", "Retry policy"),
    ("settings-templates", "Message templates"),
    ("settings-escalation", "Escalation"),
    ("settings-holds", "Stock holds"),
    ("settings-connections", "Connections"),
]


def _settings_page(request, access: Access, template: str, context: dict, current: str):
    return render_page(
        request,
        access,
        template,
        {"sections": SECTIONS, "current": current, **context},
        section="settings",
    )


@dashboard_view(operator_only=True)
def settings_index(request: HttpRequest, access: Access) -> HttpResponse:
    return redirect("settings-retry", access.store.id)


def _int(post, name: str, *, scale: int = 1) -> int:
    try:
        return int(round(float(post.get(name, "")) * scale))
    except ValueError as exc:
        raise ApplicationError(f"{name.replace('_', ' ').capitalize()} must be a number.") from exc


@dashboard_view(operator_only=True)
def settings_retry(request: HttpRequest, access: Access) -> HttpResponse:
    from recovery.models import RetryPolicy
    from recovery.selectors import retry_policy_current
    from recovery.services import POLICY_FIELDS, retry_policy_update

    if request.method == "POST":
        changes = {}
        try:
            for name in POLICY_FIELDS:
                if name == "learned_timing":
                    changes[name] = request.POST.get(name) == "on"
                elif name == "end_action":
                    changes[name] = request.POST.get(name, "")
                elif name == "grace_fraction":
                    changes[name] = _int(request.POST, name) / 100
                else:
                    changes[name] = _int(request.POST, name)
            policy = retry_policy_update(store=access.store, changes=changes, actor=access.actor)
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                f"Saved as policy v{policy.version}; open cases keep the version they started with.",
            )
            return redirect("settings-retry", access.store.id)
    policy = retry_policy_current(store=access.store)
    history = list(RetryPolicy.objects.filter(store=access.store).order_by("-version")[:10])
    return _settings_page(
        request,
        access,
        "settings/retry.html",
        {
            "policy": policy,
            "grace_percent": round(policy.grace_fraction * 100),
            "history": history,
            "end_actions": RetryPolicy.EndAction.choices,
        },
        "settings-retry",
    )


@dashboard_view(operator_only=True)
def settings_templates(request: HttpRequest, access: Access) -> HttpResponse:
    from messaging.selectors import templates_for_store

    return _settings_page(
        request,
        access,
        "settings/templates.html",
        {"templates": templates_for_store(store=access.store)},
        "settings-templates",
    )


@dashboard_view(operator_only=True)
def settings_template_edit(
    request: HttpRequest, access: Access, purpose: str, channel: str
) -> HttpResponse:
    from messaging import services as msg
    from messaging.models import Channel, MessageTemplate, Purpose
    from messaging.selectors import template_for

    if purpose not in Purpose.values or channel not in Channel.values:
        raise Http404("No such template")
    current = template_for(store=access.store, purpose=purpose, channel=channel)
    draft = MessageTemplate(
        store=access.store,
        purpose=purpose,
        channel=channel,
        subject=current.subject,
        body_text=current.body_text,
        body_html=current.body_html,
    )
    preview, error = None, None
    if request.method == "POST":
        action = request.POST.get("action", "preview")
        if action == "reset":
            msg.message_template_reset(store=access.store, channel=channel, purpose=purpose)
            messages.success(request, "Back to Recoup's default wording.")
            return redirect("settings-template-edit", access.store.id, purpose, channel)
        draft.subject = request.POST.get("subject", "")
        draft.body_text = request.POST.get("body_text", "")
        draft.body_html = request.POST.get("body_html", "")
        try:
            if action == "save":
                msg.message_template_save(
                    store=access.store,
                    channel=channel,
                    purpose=purpose,
                    subject=draft.subject,
                    body_text=draft.body_text,
                    body_html=draft.body_html,
                    actor=access.actor,
                )
                messages.success(request, "Template saved; the next messages use it.")
                return redirect("settings-template-edit", access.store.id, purpose, channel)
            preview = msg.message_template_preview(template=draft)
        except ApplicationError as exc:
            error = exc
    else:
        try:
            preview = msg.message_template_preview(template=draft)
        except ApplicationError as exc:
            error = exc
    return _settings_page(
        request,
        access,
        "settings/template_edit.html",
        {
            "draft": draft,
            "preview": preview,
            "error": error,
            "is_default": current.pk is None,
            "purpose_label": Purpose(purpose).label,
            "channel_label": Channel(channel).label,
        },
        "settings-templates",
    )


@dashboard_view(operator_only=True)
def settings_escalation(request: HttpRequest, access: Access) -> HttpResponse:
    from support.churn import (
        CUSTOM_DEFAULT_POINTS,
        NO_ENGAGEMENT_POINTS,
        REPEATED_FAILURE_POINTS,
        SHORT_TENURE_POINTS,
        SIGNAL_POINTS,
    )
    from support.models import CustomerSignal
    from support.routing import support_policy_for

    if request.method == "POST":
        try:
            svc.escalation_policy_update(
                store=access.store,
                high_value_mrr_threshold=_int(request.POST, "high_value_mrr", scale=100),
                churn_risk_threshold=_int(request.POST, "churn_risk_threshold"),
                ltv_threshold=_int(request.POST, "ltv", scale=100),
                target_response_minutes=_int(request.POST, "target_response_hours", scale=60),
                route_on_reply=request.POST.get("route_on_reply") == "on",
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Escalation settings saved; they apply to cases from now on.")
            return redirect("settings-escalation", access.store.id)
    policy = support_policy_for(store=access.store)
    weights = [(CustomerSignal.Kind(k).label, v) for k, v in SIGNAL_POINTS.items()]
    weights += [
        (
            f"2 failed payments in 180 days (3 or more: {REPEATED_FAILURE_POINTS[3]})",
            REPEATED_FAILURE_POINTS[2],
        ),
        ("Customer for less than 90 days", SHORT_TENURE_POINTS),
        ("Opened or clicked none of 2+ recent messages", NO_ENGAGEMENT_POINTS),
        ("Other signal you post (its weight, 0–50)", CUSTOM_DEFAULT_POINTS),
    ]
    return _settings_page(
        request,
        access,
        "settings/escalation.html",
        {
            "policy": policy,
            "weights": weights,
            "target_hours": f"{policy.target_response_minutes / 60:g}",
            "hv_major": f"{access.store.high_value_mrr_threshold / 100:.2f}",
            "ltv_major": f"{policy.ltv_threshold / 100:.2f}",
        },
        "settings-escalation",
    )


@dashboard_view(operator_only=True)
def settings_holds(request: HttpRequest, access: Access) -> HttpResponse:
    from orders.selectors import hold_policy_for

    if request.method == "POST":
        try:
            svc.hold_policy_update(
                store=access.store,
                brief_hold_hours=_int(request.POST, "brief_hold_hours"),
                retry_margin_hours=_int(request.POST, "retry_margin_hours"),
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Hold policy saved; it applies to holds placed from now on.")
            return redirect("settings-holds", access.store.id)
    return _settings_page(
        request,
        access,
        "settings/holds.html",
        {"policy": hold_policy_for(store_id=access.store.id)},
        "settings-holds",
    )


@dashboard_view(operator_only=True)
def settings_connections(request: HttpRequest, access: Access) -> HttpResponse:
    from recovery.models import StripeEvent

    store = access.store
    if request.method == "POST":
        form = StripeCustomerDataForm(request.POST)
        if form.is_valid():
            svc.store_stripe_customer_data_update(store=store, **form.cleaned_data)
            messages.success(request, "Saved: customer events read these keys from now on.")
            return redirect("settings-connections", store.id)
    else:
        form = StripeCustomerDataForm(
            initial={
                "customer_timezone_key": store.customer_timezone_key,
                "sms_consent_key": store.sms_consent_key,
                "stripe_requests_per_second": store.stripe_requests_per_second,
            }
        )
    last_event = (
        StripeEvent.objects.filter(store=access.store)
        .order_by("-received_at")
        .values("type", "received_at")
        .first()
    )
    return _settings_page(
        request,
        access,
        "settings/connections.html",
        {
            "last_event": last_event,
            "postmark": svc.postmark_status(),
            "twilio": svc.twilio_status(),
            "webhook_url": request.build_absolute_uri(access.store.webhook_path),
            "customer_data_form": form,
        },
        "settings-connections",
    )


@dashboard_view(operator_only=True)
@require_POST
def settings_connection_action(request: HttpRequest, access: Access, action: str) -> HttpResponse:
    if action == "stripe-keys":
        try:
            svc.store_stripe_keys_update(
                store=access.store,
                secret_key=request.POST.get("secret_key", ""),
                webhook_secret=request.POST.get("webhook_secret", ""),
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Stripe keys saved (stored encrypted).")
    elif action == "stripe-check":
        result = svc.stripe_connection_check(store=access.store)
        (messages.success if result.ok else messages.error)(request, result.message)
    elif action == "test-email":
        result = svc.test_email_send(store=access.store, to=request.POST.get("to", ""))
        (messages.success if result.ok else messages.error)(request, result.message)
    elif action == "test-sms":
        result = svc.test_sms_send(store=access.store, to=request.POST.get("to", ""))
        (messages.success if result.ok else messages.error)(request, result.message)
    else:
        raise Http404("No such action")
    return redirect("settings-connections", access.store.id)
