"""Customer endpoints for the merchant's systems, scoped to the token's store."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import NulFreePathMixin
from recovery import commands

from . import facts
from .models import Subscription, TimeZoneSource
from .selectors import customer_access, customer_facts, customer_get
from .services import customer_time_zone_set


class AccessSubscriptionSerializer(serializers.Serializer):
    stripe_id = serializers.CharField(help_text="Stripe subscription id (sub_…)")
    status = serializers.ChoiceField(choices=Subscription.Status.choices)
    access = serializers.ChoiceField(choices=Subscription.Access.choices)
    product_name = serializers.CharField(allow_blank=True)


class CustomerAccessSerializer(serializers.Serializer):
    customer = serializers.CharField()
    access = serializers.ChoiceField(choices=Subscription.Access.choices)
    reason = serializers.CharField()
    open_cases = serializers.IntegerField()
    grace_until = serializers.DateTimeField(
        allow_null=True, help_text="When access steps down, during the grace period only."
    )
    window_end = serializers.DateTimeField(
        allow_null=True, help_text="End of the earliest open case's recovery window."
    )
    subscriptions = AccessSubscriptionSerializer(many=True)


class CustomerAccessView(NulFreePathMixin, APIView):
    @extend_schema(responses=CustomerAccessSerializer)
    def get(self, request, stripe_customer_id: str):
        customer = customer_get(store=request.store, stripe_id=stripe_customer_id)
        return Response(customer_access(customer=customer))


class CustomerFactsSerializer(serializers.Serializer):
    """What Recoup knows of the customer for messages and timing."""

    time_zone = serializers.CharField(help_text="IANA zone in force (the store's if unknown)")
    time_zone_source = serializers.ChoiceField(
        choices=["", *TimeZoneSource.values],
        help_text="metadata, api, address, card_country or store; '' when set by other means",
    )
    locale = serializers.CharField(allow_blank=True)
    phone = serializers.CharField(allow_blank=True, help_text="E.164, or '' when none is valid")
    sms_opt_in = serializers.BooleanField()


class CustomerSerializer(CustomerFactsSerializer):
    customer = serializers.CharField(help_text="Stripe customer id (cus_…)")


class CustomerPatchSerializer(serializers.Serializer):
    # The view validates the body whole: a PATCH without `time_zone` is refused (400).
    partial_on_patch = False

    time_zone = serializers.CharField(
        allow_blank=True,
        max_length=64,
        trim_whitespace=True,
        help_text="An IANA zone (Europe/Berlin). It stands against any zone derived from "
        "Stripe's data; blank hands the choice back to those facts.",
    )

    def validate_time_zone(self, value: str) -> str:
        if not value:
            return ""
        zone = facts.zone_valid(value)
        if zone is None:
            raise serializers.ValidationError(
                f"Unknown time zone {value!r}: use an IANA name such as Europe/Berlin or "
                "America/New_York."
            )
        return zone


class CustomerView(NulFreePathMixin, APIView):
    """GET/PATCH /api/v1/customers/<stripe_customer_id>/: the customer facts Recoup uses."""

    def _body(self, customer) -> dict:
        return {
            "customer": customer.stripe_id,
            **customer_facts(customer=customer, store_zone=self.request.store.timezone),
        }

    @extend_schema(responses=CustomerSerializer)
    def get(self, request, stripe_customer_id: str):
        customer = customer_get(store=request.store, stripe_id=stripe_customer_id)
        return Response(self._body(customer))

    @extend_schema(
        request=CustomerPatchSerializer,
        responses=CustomerSerializer,
    )
    def patch(self, request, stripe_customer_id: str):
        customer = customer_get(store=request.store, stripe_id=stripe_customer_id)
        serializer = CustomerPatchSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        at = timezone.now()
        with transaction.atomic():
            zone_changed = customer_time_zone_set(
                customer=customer, time_zone=serializer.validated_data["time_zone"], at=at
            )
            customer.refresh_from_db()
            if zone_changed:
                commands.customer_zone_changed(customer=customer, at=at)
        return Response(self._body(customer))
