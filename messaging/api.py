"""The storefront banner for the merchant's own site or app, and the customer's SMS
consent as the merchant's systems know it; scoped to the token's store."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import NulFreePathMixin
from common.schema import error_responses
from subscriptions.selectors import customer_get

from .consent import ConsentRefused, consent_sms_set
from .selectors import customer_banner


class CustomerBannerView(NulFreePathMixin, APIView):
    @extend_schema(
        responses=inline_serializer(
            "CustomerBanner",
            {
                "customer": serializers.CharField(),
                "show": serializers.BooleanField(),
                "severity": serializers.ChoiceField(
                    choices=["none", "info", "warning", "critical"]
                ),
                "text": serializers.CharField(),
                "update_url": serializers.URLField(allow_null=True),
                "amount": serializers.IntegerField(allow_null=True, help_text="minor units"),
                "currency": serializers.CharField(allow_null=True),
                "open_cases": serializers.IntegerField(),
                "expires_at": serializers.DateTimeField(
                    allow_null=True, help_text="when update_url stops working"
                ),
            },
        )
    )
    def get(self, request, stripe_customer_id: str):
        customer = customer_get(store=request.store, stripe_id=stripe_customer_id)
        return Response(customer_banner(customer=customer, now=timezone.now()))


class ConsentRequestSerializer(serializers.Serializer):
    sms = serializers.BooleanField(help_text="Whether the customer agrees to payment texts.")
    source = serializers.SlugField(
        max_length=32,
        required=False,
        default="api",
        help_text="Where the customer said so, e.g. checkout or support_call.",
    )
    at = serializers.DateTimeField(
        required=False, help_text="When the customer said so (ISO 8601); default now."
    )

    def validate_at(self, value):
        if value > timezone.now() + CLOCK_SKEW:
            raise serializers.ValidationError(
                "`at` is in the future: send when the customer gave or withdrew consent."
            )
        return value


class ConsentResponseSerializer(serializers.Serializer):
    customer = serializers.CharField()
    sms = serializers.BooleanField(help_text="The customer's SMS consent now.")
    changed = serializers.BooleanField(help_text="Whether this request changed it.")
    reason = serializers.CharField(help_text="Why nothing changed, when nothing did.")


# A merchant's clock a little ahead of ours is not "the future".
CLOCK_SKEW = dt.timedelta(minutes=5)


class CustomerConsentView(NulFreePathMixin, APIView):
    @extend_schema(
        request=ConsentRequestSerializer,
        responses={
            200: ConsentResponseSerializer,
            201: ConsentResponseSerializer,
            **error_responses(409),
        },
        description="Record the customer's SMS consent as your systems know it. Idempotent: "
        "the state already in force changes nothing (200); a change is recorded (201). A "
        "statement older than the newest one made of the customer's consent (from any "
        "source) changes nothing, so statements sent in any order end in the same state. An opt-in for a number "
        "that replied STOP, or for a customer without a valid phone number, is refused "
        "(409): only the customer lifts a STOP, by replying START.",
    )
    def post(self, request, stripe_customer_id: str):
        customer = customer_get(store=request.store, stripe_id=stripe_customer_id)
        serializer = ConsentRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        change = consent_sms_set(
            customer=customer,
            opt_in=data["sms"],
            at=data.get("at") or timezone.now(),
            source=data["source"],
            detail="through the API",
        )
        if change.refused:
            raise ConsentRefused(f"SMS consent not recorded: {change.reason}.", code="sms_refused")
        return Response(
            {
                "customer": customer.stripe_id,
                "sms": change.opted_in,
                "changed": change.changed,
                "reason": change.reason,
            },
            status=status.HTTP_201_CREATED if change.changed else status.HTTP_200_OK,
        )
