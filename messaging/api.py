"""The storefront banner for the merchant's own site or app, scoped to the token's store."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from subscriptions.selectors import customer_get

from .selectors import customer_banner


class CustomerBannerView(APIView):
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
