"""Read API for the merchant's systems: /api/v1/cases/. Scoped to the token's store."""

from __future__ import annotations

from django.db.models import Prefetch
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers

from common.api import has_nul
from common.errors import ApplicationError
from common.schema import api_errors
from orders.models import InventoryHold, Order
from orders.selectors import case_order_summary
from subscriptions.api import CustomerFactsSerializer
from subscriptions.selectors import customer_facts

from .models import CaseEvent, PaymentAttempt, RecoveryCase, Track
from .selectors import case_list


class CaseSerializer(serializers.ModelSerializer):
    customer = serializers.CharField(source="customer.stripe_id", read_only=True)
    customer_facts = serializers.SerializerMethodField(
        help_text="The customer's time zone in force (and where it came from: metadata, api, "
        "address, card_country, store), locale, phone and SMS consent."
    )
    invoice = serializers.SerializerMethodField(help_text="Stripe invoice id (in_…), if any.")
    order = serializers.SerializerMethodField(help_text="The order's number, if any.")
    payment_intent = serializers.CharField(source="payment_intent_id", read_only=True)
    closed_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="null while the case is open."
    )
    next_action_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="null when nothing is scheduled."
    )
    # A read-only model field loses allow_blank: '' (not recovered) is a value it takes.
    recovered_via = serializers.ChoiceField(
        choices=RecoveryCase.RecoveredVia.choices, allow_blank=True, read_only=True
    )

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
        read_only_fields = fields

    @extend_schema_field(CustomerFactsSerializer)
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
        read_only_fields = fields


class CaseEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = CaseEvent
        fields = ["at", "kind", "message", "actor", "data"]
        read_only_fields = fields


class CaseOrderLineSerializer(serializers.Serializer):
    sku = serializers.CharField()
    title = serializers.CharField()
    quantity = serializers.IntegerField()
    unit_amount = serializers.IntegerField(help_text="Minor units.")
    hold = serializers.ChoiceField(
        choices=["not held", *InventoryHold.Status.values],
        help_text="The state of the line's newest hold ('not held' without one).",
    )
    held_until = serializers.DateTimeField(allow_null=True, help_text="While held only.")
    reason = serializers.CharField(help_text="Why the stock was held so ('' without a hold).")
    released_early = serializers.BooleanField()


class CustomerToldSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    kind = serializers.CharField()
    message = serializers.CharField()


class CaseOrderSerializer(serializers.Serializer):
    number = serializers.CharField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    payment_status = serializers.ChoiceField(choices=Order.PaymentStatus.choices)
    fulfillment_status = serializers.ChoiceField(choices=Order.FulfillmentStatus.choices)
    lines = CaseOrderLineSerializer(many=True)
    customer_told = CustomerToldSerializer(
        many=True, help_text="What the customer was told about the order's stock."
    )


class CaseDetailSerializer(CaseSerializer):
    attempts = AttemptSerializer(many=True, read_only=True)
    events = CaseEventSerializer(many=True, read_only=True)
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
        read_only_fields = fields

    @extend_schema_field(CaseOrderSerializer(allow_null=True))
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
@api_errors(400)  # a status or track not among the enum's values (bad_filter)
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
        if has_nul(*params.values()):
            return RecoveryCase.objects.none()  # no customer's id holds a NUL
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
