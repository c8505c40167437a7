"""Read API for the merchant's systems: /api/v1/cases/. Scoped to the token's store."""

from __future__ import annotations

from django.db.models import Prefetch
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers

from common.errors import ApplicationError
from orders.selectors import case_order_summary
from subscriptions.selectors import customer_facts

from .models import CaseEvent, PaymentAttempt, RecoveryCase, Track
from .selectors import case_list


class CaseSerializer(serializers.ModelSerializer):
    customer = serializers.CharField(source="customer.stripe_id")
    customer_facts = serializers.SerializerMethodField(
        help_text="The customer's time zone in force (and where it came from: metadata, api, "
        "address, card_country, store), locale, phone and SMS consent."
    )
    invoice = serializers.SerializerMethodField()
    order = serializers.SerializerMethodField()
    payment_intent = serializers.CharField(source="payment_intent_id")
    closed_at = serializers.DateTimeField()
    next_action_at = serializers.DateTimeField()

    class Meta:
        model = RecoveryCase
        fields = [
            "id",
            "status",
            "track",
            "decline_code",
            "advice_code",
            "amount",
            "currency",
            "customer",
            "customer_facts",
            "invoice",
            "payment_intent",
            "order",
            "opened_at",
            "closed_at",
            "next_action",
            "next_action_at",
            "attempt_count",
            "escalated",
            "recovered_via",
            "recovered_amount",
            "window_end",
            "track_reason",
        ]

    def get_customer_facts(self, case: RecoveryCase) -> dict:
        # The token's store is the case's: its zone stands for customers without one.
        return customer_facts(
            customer=case.customer, store_zone=self.context["request"].store.timezone
        )

    def get_invoice(self, case: RecoveryCase) -> str | None:
        return case.invoice.stripe_id if case.invoice_id else None

    def get_order(self, case: RecoveryCase) -> str | None:
        return case.order.number if case.order_id else None


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = PaymentAttempt
        fields = [
            "id",
            "attempted_at",
            "source",
            "outcome",
            "amount",
            "currency",
            "decline_code",
            "failure_code",
            "advice_code",
            "network_decline_code",
            "network_advice_code",
            "card_brand",
            "card_last4",
            "charge_id",
            "payment_intent_id",
            "reason",
        ]


class CaseEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = CaseEvent
        fields = ["at", "kind", "message", "actor", "data"]


class CaseDetailSerializer(CaseSerializer):
    attempts = AttemptSerializer(many=True)
    events = CaseEventSerializer(many=True)
    order_detail = serializers.SerializerMethodField(
        help_text="The order behind the case: its lines, the hold on each line's stock "
        "and why, and what the customer was told about it."
    )

    class Meta(CaseSerializer.Meta):
        fields = [
            *CaseSerializer.Meta.fields,
            "window_start",
            "dunning_stage",
            "order_detail",
            "attempts",
            "events",
        ]

    def get_order_detail(self, case: RecoveryCase) -> dict | None:
        summary = case_order_summary(case=case, now=timezone.now())
        if summary is None:
            return None
        summary["customer_told"] = [
            {"at": e.at, "kind": e.kind, "message": e.message}
            for e in case.events.all()
            if (e.data or {}).get("notify_customer")
        ]
        return summary


@extend_schema(
    parameters=[
        OpenApiParameter("customer", str, description="Stripe customer id (cus_…)"),
        OpenApiParameter("status", str, enum=RecoveryCase.Status.values),
        OpenApiParameter("track", str, enum=Track.values),
    ]
)
class CaseListView(generics.ListAPIView):
    serializer_class = CaseSerializer

    def get_queryset(self):
        params = self.request.query_params
        for name, allowed in (("status", RecoveryCase.Status.values), ("track", Track.values)):
            if params.get(name) and params[name] not in allowed:
                raise ApplicationError(
                    f"Unknown {name} {params[name]!r}; use one of: {', '.join(allowed)}.",
                    code="bad_filter",
                )
        return case_list(store=self.request.store, filters=params)


class CaseDetailView(generics.RetrieveAPIView):
    serializer_class = CaseDetailSerializer

    def get_queryset(self):
        return (
            RecoveryCase.objects.filter(store=self.request.store)
            .select_related("customer", "invoice", "order")
            .prefetch_related(
                Prefetch(
                    "attempts", queryset=PaymentAttempt.objects.order_by("attempted_at", "id")
                ),
                Prefetch("events", queryset=CaseEvent.objects.order_by("at", "id")),
            )
        )
