"""POST /api/v1/customers/<stripe_customer_id>/signals: churn signals from the merchant."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import NulFreePathMixin, unstorable_text
from common.errors import ApplicationError, NotFound
from common.schema import api_errors
from subscriptions.models import Customer
from subscriptions.services import customer_upsert

from .churn import churn_score
from .models import CustomerSignal, QueueItem
from .services import customer_signal_record

MAX_SIGNALS = 100
BAD_CUSTOMER = "Use the customer's Stripe id (cus_…) in the address."


class SignalSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=CustomerSignal.Kind.values)
    at = serializers.DateTimeField(required=False, help_text="When it happened; default now.")
    label = serializers.CharField(required=False, allow_blank=True, max_length=200)
    weight = serializers.IntegerField(required=False, min_value=0, max_value=50)
    id = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="Your id: resends count once."
    )
    data = serializers.DictField(required=False)

    def validate_data(self, value: dict) -> dict:
        # Stored as JSON (jsonb), which PostgreSQL refuses with such text anywhere in it.
        if unstorable_text(value):
            raise serializers.ValidationError(
                "Null characters and unpaired surrogates are not allowed."
            )
        return value


class SignalsRequestSerializer(serializers.Serializer):
    signals = SignalSerializer(many=True, allow_empty=False, max_length=MAX_SIGNALS)


class ChurnReasonSerializer(serializers.Serializer):
    code = serializers.CharField()
    label = serializers.CharField()
    points = serializers.IntegerField()


class SignalsResponseSerializer(serializers.Serializer):
    customer = serializers.CharField()
    recorded = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    churn_score = serializers.IntegerField(help_text="0-100")
    reasons = ChurnReasonSerializer(many=True)
    queued_cases = serializers.ListField(
        child=serializers.IntegerField(), help_text="Ids of the customer's cases in the queue."
    )


def _response(customer: Customer, *, recorded: int, duplicates: int) -> dict:
    score = churn_score(customer=customer, at=timezone.now())
    queued = list(
        QueueItem.objects.filter(case__customer=customer)
        .exclude(status=QueueItem.Status.DONE)
        .values_list("case_id", flat=True)
    )
    return {
        "customer": customer.stripe_id,
        "recorded": recorded,
        "duplicates": duplicates,
        "churn_score": score.score,
        "reasons": score.as_list(),
        "queued_cases": queued,
    }


class CustomerSignalsView(NulFreePathMixin, APIView):
    def nul_in_path(self, request) -> ApplicationError:
        if request.method == "POST":  # creates the customer: the id is refused, not unknown
            return ApplicationError(BAD_CUSTOMER, code="bad_customer")
        return super().nul_in_path(request)

    @extend_schema(responses=SignalsResponseSerializer)
    def get(self, request, stripe_customer_id: str):
        """The customer's churn score and its reasons."""
        customer = Customer.objects.filter(
            store=request.store, stripe_id=stripe_customer_id
        ).first()
        if customer is None:
            raise NotFound(f"No customer {stripe_customer_id!r} in this store.", code="not_found")
        return Response(_response(customer, recorded=0, duplicates=0))

    # Customers not yet known are created: the path's customer is never "not found".
    @api_errors(without=[404])
    @extend_schema(
        request=PolymorphicProxySerializer(
            component_name="SignalOrSignals",
            serializers=[SignalSerializer, SignalsRequestSerializer],
            resource_type_field_name=None,
            many=False,
        ),
        responses={201: SignalsResponseSerializer, 200: SignalsResponseSerializer},
        description='Record one signal (the object itself) or several ({"signals": [...]}, '
        f"at most {MAX_SIGNALS}). Kinds: " + ", ".join(CustomerSignal.Kind.values) + ". A "
        "`custom` signal needs a `label` and may carry a `weight` (0-50 points). Customers "
        "not yet known are created; the address names the customer by Stripe id (cus_…). "
        "201 when a signal was recorded, 200 when every one was a resend.",
    )
    def post(self, request, stripe_customer_id: str):
        payload = request.data
        items = (
            payload.get("signals")
            if isinstance(payload, dict) and "signals" in payload
            else [payload]
        )
        if not isinstance(items, list) or not items:
            raise ApplicationError(
                'Send a signal object, or {"signals": [...]}.', code="bad_signal"
            )
        if len(items) > MAX_SIGNALS:
            raise ApplicationError(f"At most {MAX_SIGNALS} signals per request.", code="bad_signal")
        serializer = SignalSerializer(data=items, many=True)
        serializer.is_valid(raise_exception=True)
        if not stripe_customer_id.startswith("cus_"):
            raise ApplicationError(BAD_CUSTOMER, code="bad_customer")
        customer = customer_upsert(store=request.store, stripe_id=stripe_customer_id)
        now = timezone.now()
        recorded = duplicates = 0
        for signal in serializer.validated_data:
            at = signal.get("at") or now
            if isinstance(at, str):
                at = parse_datetime(at)
            if timezone.is_naive(at):
                at = timezone.make_aware(at, dt.UTC)
            _, created = customer_signal_record(
                store=request.store,
                customer=customer,
                kind=signal["kind"],
                at=at,
                label=signal.get("label", ""),
                weight=signal.get("weight"),
                external_id=signal.get("id", ""),
                data=signal.get("data") or {},
            )
            recorded += created
            duplicates += not created
        return Response(
            _response(customer, recorded=recorded, duplicates=duplicates),
            status=status.HTTP_201_CREATED if recorded else status.HTTP_200_OK,
        )
