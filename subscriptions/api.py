"""Customer endpoints for the merchant's systems, scoped to the token's store."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .selectors import customer_access, customer_get


class CustomerAccessView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "CustomerAccess",
            {
                "customer": serializers.CharField(),
                "access": serializers.ChoiceField(
                    choices=["full", "grace", "restricted", "suspended"]
                ),
                "reason": serializers.CharField(),
                "open_cases": serializers.IntegerField(),
                "grace_until": serializers.DateTimeField(allow_null=True),
                "window_end": serializers.DateTimeField(allow_null=True),
                "subscriptions": serializers.ListField(child=serializers.DictField()),
            },
        )
    )
    def get(self, request, stripe_customer_id: str):
        customer = customer_get(store=request.store, stripe_id=stripe_customer_id)
        return Response(customer_access(customer=customer))
