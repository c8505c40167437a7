"""Dashboard entry points (root, store switcher, rate-limited login) and the operators'
settings pages: retry policy, message templates, escalation, holds, connections."""

from __future__ import annotations

from django.conf import settings as django_settings
from django.contrib import admin, messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from common.errors import ApplicationError
from messaging import template_editing as msg
from messaging.models import Channel, MessageTemplate, Purpose
from messaging.selectors import template_for, templates_for_store
from orders.selectors import hold_policy_for
from recovery.commands import retry_policy_update
from recovery.models import RetryPolicy, StripeEvent
from recovery.selectors import retry_policy_current
from support.churn import (
    CUSTOM_DEFAULT_POINTS,
    NO_ENGAGEMENT_POINTS,
    REPEATED_FAILURE_POINTS,
    SHORT_TENURE_POINTS,
    SIGNAL_POINTS,
)
from support.models import CustomerSignal
from support.routing import support_policy_for

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
from .login_limits import login_lockouts_for, login_refused

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


class RateLimitedLoginView(auth_views.LoginView):
    """Django's login, refused with a 429 while the username or the client address is
    over its failure limit (stores/login_limits.py)."""

    def post(self, request, *args, **kwargs):
        refused = login_refused(request, request.POST.get("username") or "")
        if refused:
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, refused)
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's login behind the same limits as the dashboard's."""
    if request.method == "POST":
        refused = login_refused(request, request.POST.get("username") or "")
        if refused:
            context = {
                **admin.site.each_context(request),
                "title": "Log in",
                "form": None,
                "error_message": refused,
            }
            return render(request, "admin/locked.html", context, status=429)
    return admin.site.login(request)


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


def _settings_save(request: HttpRequest, form, save, *, saved: str) -> bool:
    """Validate a settings form and `save(form)`: its errors, or the service's refusal,
    as the page's error flashes (the settings templates render their inputs by hand,
    with the saved values); `saved`, or the message `save` returns, as the success one.
    True when saved."""
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return False
    try:
        result = save(form)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return False
    messages.success(request, result if isinstance(result, str) and result else saved)
    return True


@dashboard_view(operator_only=True)
def settings_retry(request: HttpRequest, access: Access) -> HttpResponse:
    from .forms import RetryPolicyForm

    def save(form) -> str:
        policy = retry_policy_update(
            store=access.store, changes=form.cleaned_data, actor=access.actor
        )
        return f"Saved as policy v{policy.version}; open cases keep the version they started with."

    if request.method == "POST" and _settings_save(
        request, RetryPolicyForm(request.POST), save, saved=""
    ):
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
    from .forms import EscalationForm

    if request.method == "POST" and _settings_save(
        request,
        EscalationForm(request.POST),
        lambda form: svc.escalation_policy_update(store=access.store, **form.policy()),
        saved="Escalation settings saved; they apply to cases from now on.",
    ):
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
    from .forms import HoldPolicyForm

    if request.method == "POST" and _settings_save(
        request,
        HoldPolicyForm(request.POST),
        lambda form: svc.hold_policy_update(store=access.store, **form.cleaned_data),
        saved="Hold policy saved; it applies to holds placed from now on.",
    ):
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
    failed_events = list(
        StripeEvent.objects.filter(store=store, outcome=StripeEvent.Outcome.FAILED)
        .order_by("-received_at")
        .values("event_id", "type", "received_at", "error")[:20]
    )
    return _settings_page(
        request,
        access,
        "settings/connections.html",
        {
            "last_event": last_event,
            "failed_events": failed_events,
            "lockouts": login_lockouts_for(store=store, now=timezone.now()),
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
