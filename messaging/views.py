"""The customer's card-update page, /pay/<token>/. No login: the signed token is the key.

Every response is `noindex`, uncached, sends a Referer only to our own site (the token
is in the URL; "no-referrer" would make browsers send `Origin: null` on our own forms,
which CSRF protection rightly refuses) and
carries a strict Content-Security-Policy: our own files, plus js.stripe.com for Stripe
stores. Requests are rate-limited per token and per client address.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from stores import ratelimit
from stores.client_ip import client_ip
from stores.models import Store

from . import paypage
from .links import LinkRefused, pay_link_resolve, token_fingerprint
from .paypage import PayError

STRIPE_JS = "https://js.stripe.com"


def _csp(*, stripe: bool) -> str:
    script = "'self' https://js.stripe.com" if stripe else "'self'"
    frame = "https://js.stripe.com https://hooks.stripe.com" if stripe else "'none'"
    connect = "'self' https://api.stripe.com" if stripe else "'self'"
    img = "'self' data: https://*.stripe.com" if stripe else "'self' data:"
    return (
        f"default-src 'none'; script-src {script}; style-src 'self'; img-src {img}; "
        f"font-src 'self'; connect-src {connect}; frame-src {frame}; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def _page(
    request: HttpRequest, template: str, context: dict, *, status: int = 200, stripe: bool = False
) -> HttpResponse:
    response = render(request, template, context, status=status)
    response["Content-Security-Policy"] = _csp(stripe=stripe)
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "same-origin"
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _limited(request: HttpRequest, token: str) -> bool:
    writes = request.method == "POST"
    return ratelimit.hit(
        f"pay:token:{'w' if writes else 'r'}:{token_fingerprint(token)}",
        limit=10 if writes else 60,
        window=600,
    ) or ratelimit.hit(f"pay:addr:{client_ip(request)}", limit=120, window=600)


def _too_many(request: HttpRequest) -> HttpResponse:
    response = _page(request, "pay/limited.html", {}, status=429)
    response["Retry-After"] = "600"
    return response


def _refused(request: HttpRequest, token: str, refused: LinkRefused) -> HttpResponse:
    status = 410 if refused.reason in ("expired", "revoked") else 404
    return _page(
        request,
        "pay/refused.html",
        {"reason": refused.reason, "fresh_link_url": reverse("pay-fresh-link", args=[token])},
        status=status,
    )


def _stripe_context(link, state) -> dict:
    """What the Payment Element needs: the publishable key and an intent's secret."""
    key = paypage.stripe_publishable_key(link.store)
    if not key:
        raise PayError(
            f"{link.store.name} hasn't finished setting up card updates. Please contact them."
        )
    if state.mode == "authentication":
        intent = paypage.pay_payment_intent(link=link)
        kind = "payment"
    else:
        intent = paypage.pay_setup_intent(link=link)
        kind = "setup"
    return {
        "stripe_config": json.dumps(
            {
                "publishableKey": key,
                "clientSecret": intent["client_secret"],
                "kind": kind,
                "status": intent.get("status", ""),
                "completeUrl": reverse("pay-complete", args=[link.token]),
                "returnUrl": settings.SITE_URL.rstrip("/")
                + reverse("pay-complete", args=[link.token]),
            }
        )
    }


@require_http_methods(["GET", "POST"])
def pay(request: HttpRequest, token: str) -> HttpResponse:
    if _limited(request, token):
        return _too_many(request)
    now = timezone.now()
    try:
        link = pay_link_resolve(token=token, now=now)
    except LinkRefused as refused:
        return _refused(request, token, refused)
    paypage.pay_visit_record(link=link, now=now)
    sandbox = link.store.gateway == Store.Gateway.SANDBOX
    error = ""
    if request.method == "POST":
        if not sandbox:
            return redirect("pay", token=token)
        try:
            if "authenticate" in request.POST:
                approved = request.POST.get("authenticate") == "approve"
                paid = paypage.pay_sandbox_authentication_submit(
                    link=link, approve=approved, now=now
                )
                if not paid and not approved:
                    return redirect(reverse("pay", args=[token]) + "?auth=failed")
            else:
                paypage.pay_sandbox_card_submit(
                    link=link, card=request.POST.get("test_card", ""), now=now
                )
        except PayError as exc:
            error = str(exc)
        else:
            return redirect("pay", token=token)
    state = paypage.pay_page_state(link=link, now=timezone.now())
    context = {
        "link": link,
        "store": link.store,
        "customer": link.customer,
        "state": state,
        "sandbox": sandbox,
        "test_cards": paypage.TEST_CARDS,
        "error": error,
        "auth_failed": request.GET.get("auth") == "failed",
        "support_email": paypage.selectors.messaging_settings(store=link.store).support_email,
    }
    stripe = False
    if not sandbox and state.state in ("due", "declined", "saved"):
        try:
            context.update(_stripe_context(link, state))
            stripe = True
        except PayError as exc:
            context["error"] = str(exc)
    return _page(request, "pay/page.html", context, stripe=stripe)


@require_http_methods(["GET", "POST"])
def pay_complete(request: HttpRequest, token: str) -> HttpResponse:
    """Stripe stores: the Payment Element finished (POST from our script, or Stripe's
    redirect back for methods that leave the page). The intent is read back from Stripe;
    nothing the browser says is taken on trust."""
    if _limited(request, token):
        return _too_many(request)
    now = timezone.now()
    try:
        link = pay_link_resolve(token=token, now=now)
    except LinkRefused as refused:
        return _refused(request, token, refused)
    paypage.pay_visit_record(link=link, now=now)
    data = request.POST if request.method == "POST" else request.GET
    try:
        if data.get("setup_intent"):
            paypage.pay_stripe_setup_complete(
                link=link, setup_intent_id=data["setup_intent"], now=now
            )
        elif data.get("payment_intent"):
            paypage.pay_stripe_payment_complete(
                link=link, payment_intent_id=data["payment_intent"], now=now
            )
    except PayError as exc:
        state = paypage.pay_page_state(link=link, now=timezone.now())
        return _page(
            request,
            "pay/page.html",
            {
                "link": link,
                "store": link.store,
                "customer": link.customer,
                "state": state,
                "sandbox": False,
                "error": str(exc),
            },
            status=400,
        )
    return redirect("pay", token=token)


@require_POST
def pay_fresh_link(request: HttpRequest, token: str) -> HttpResponse:
    """Send a fresh link to the contact details on file, for a link of ours that expired
    or was revoked: only a token whose signature verifies names a customer. A tampered or
    truncated token sends nothing. The answer is the same either way, so the page reveals
    nothing about who a link was for."""
    if _limited(request, token):
        return _too_many(request)
    now = timezone.now()
    customer, case = None, None
    try:
        link = pay_link_resolve(token=token, now=now)
        customer, case = link.customer, link.case
    except LinkRefused as refused:
        customer = refused.customer  # None unless the signature verified
    if customer is not None and not ratelimit.hit(
        f"pay:fresh:{customer.pk}", limit=3, window=86400
    ):
        paypage.pay_fresh_link_send(customer=customer, case=case, now=now)
    return _page(request, "pay/fresh_link_sent.html", {})
