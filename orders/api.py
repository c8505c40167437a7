"""Orders and inventory for the merchant's systems, scoped to the token's store.

POST /api/v1/orders/              create or update an order and its lines, by order number
GET  /api/v1/orders/<number>/     the order, its lines and the state of their stock
GET  /api/v1/inventory/           per SKU: on hand, available, held, released early, waiting
POST /api/v1/inventory/           create or update SKUs and their stock counts
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import NulFreePathMixin, has_nul
from common.schema import api_errors

from .models import SKU, InventoryHold, Order
from .selectors import inventory_list, order_get, order_holds
from .services import LineInput, SkuInput, order_upsert, skus_upsert

MAX_LINES = 500
# Stripe's largest amount is 12 digits (in zero-decimal and three-decimal currencies);
# an order of more than that could never be charged, and it must fit a 64-bit column.
MAX_AMOUNT = 999_999_999_999


class LineInputSerializer(serializers.Serializer):
    sku = serializers.CharField(max_length=64)
    quantity = serializers.IntegerField(min_value=1, max_value=1_000_000)
    unit_amount = serializers.IntegerField(
        min_value=0,
        max_value=MAX_AMOUNT,
        default=0,
        help_text="Price of one unit in minor units.",
    )


class OrderInputSerializer(serializers.Serializer):
    number = serializers.CharField(max_length=64, help_text="The merchant's order number.")
    lines = LineInputSerializer(many=True, max_length=MAX_LINES)
    customer = serializers.CharField(
        max_length=255, required=False, default="", help_text="Stripe customer id (cus_…)"
    )
    customer_email = serializers.EmailField(required=False, default="")
    subscription = serializers.CharField(
        max_length=255,
        required=False,
        default="",
        help_text="Stripe subscription id (sub_…) for a renewal order.",
    )
    payment_intent = serializers.CharField(
        max_length=255, required=False, default="", help_text="Stripe PaymentIntent id (pi_…)"
    )
    currency = serializers.RegexField(r"^[A-Za-z]{3}$", required=False, default="")
    amount = serializers.IntegerField(
        min_value=0,
        max_value=MAX_AMOUNT,
        required=False,
        help_text="Minor units; the sum of the lines if left out.",
    )

    def validate_lines(self, lines: list[dict]) -> list[dict]:
        codes = [line["sku"] for line in lines]
        repeated = sorted({c for c in codes if codes.count(c) > 1})
        if repeated:
            raise serializers.ValidationError(
                [
                    f"SKU {c!r} appears in more than one line; send one line per SKU."
                    for c in repeated
                ]
            )
        total = sum(line["quantity"] * line["unit_amount"] for line in lines)
        if total > MAX_AMOUNT:
            raise serializers.ValidationError(
                f"The lines add up to {total}, more than {MAX_AMOUNT} (the most Stripe charges)."
            )
        return lines


class HoldSerializer(serializers.ModelSerializer):
    class Meta:
        model = InventoryHold
        fields = ["status", "rule", "quantity", "held_until", "reason", "released_early"]
        read_only_fields = fields


class OrderLineSerializer(serializers.Serializer):
    sku = serializers.CharField()
    title = serializers.CharField()
    quantity = serializers.IntegerField()
    unit_amount = serializers.IntegerField(help_text="Minor units.")
    hold = HoldSerializer(allow_null=True, help_text="The line's newest hold; null without one.")


class OrderSerializer(serializers.ModelSerializer):
    customer = serializers.SerializerMethodField(help_text="Stripe customer id, if any.")
    payment_intent = serializers.CharField(source="stripe_payment_intent_id", read_only=True)
    lines = serializers.SerializerMethodField()

    class Meta:
        model = Order
        fields = [
            "number",
            "status",
            "payment_status",
            "fulfillment_status",
            "amount",
            "currency",
            "customer",
            "payment_intent",
            "lines",
        ]
        read_only_fields = fields

    def get_customer(self, order: Order) -> str | None:
        return order.customer.stripe_id if order.customer_id else None

    @extend_schema_field(OrderLineSerializer(many=True))
    def get_lines(self, order: Order) -> list[dict]:
        newest: dict[int, InventoryHold] = {}
        for hold in order_holds(order=order):
            newest.setdefault(hold.order_line_id, hold)
        return [
            {
                "sku": line.sku.sku,
                "title": line.sku.title,
                "quantity": line.quantity,
                "unit_amount": line.unit_amount,
                "hold": HoldSerializer(newest[line.pk]).data if line.pk in newest else None,
            }
            for line in order.lines.select_related("sku").order_by("id")
        ]


class OrderUpsertView(APIView):
    # 409: lines whose stock is held or committed, or another payment already linked.
    @api_errors(409)
    @extend_schema(
        request=OrderInputSerializer,
        responses={200: OrderSerializer, 201: OrderSerializer},
        description="Create or update an order with exactly these lines, by its number. "
        "Sending the same body again changes nothing.",
    )
    def post(self, request):
        given = OrderInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        order, created = order_upsert(
            store=request.store,
            number=data["number"],
            lines=[LineInput(**line) for line in data["lines"]],
            customer=data["customer"],
            customer_email=data["customer_email"],
            subscription=data["subscription"],
            payment_intent=data["payment_intent"],
            currency=data["currency"],
            amount=data.get("amount"),
        )
        return Response(
            OrderSerializer(order).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class OrderDetailView(NulFreePathMixin, APIView):
    @extend_schema(responses=OrderSerializer)
    def get(self, request, number: str):
        return Response(OrderSerializer(order_get(store=request.store, number=number)).data)


class SkuInputSerializer(serializers.Serializer):
    sku = serializers.CharField(max_length=64)
    on_hand = serializers.IntegerField(min_value=0, max_value=2_000_000_000)
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    preorder = serializers.BooleanField(required=False)
    low_stock_threshold = serializers.IntegerField(
        min_value=0, max_value=2_000_000_000, required=False
    )


class SkusInputSerializer(serializers.Serializer):
    skus = SkuInputSerializer(many=True, allow_empty=False, max_length=MAX_LINES)


class InventorySerializer(serializers.ModelSerializer):
    committed = serializers.IntegerField(source="units_committed", read_only=True)
    available = serializers.IntegerField(
        source="units_available",
        read_only=True,
        help_text="On hand − committed − held (unexpired). Negative when a stock count fell "
        "below what was already promised.",
    )
    held_for_failed_payments = serializers.IntegerField(source="units_held", read_only=True)
    released_early = serializers.IntegerField(
        source="units_released_early",
        read_only=True,
        help_text="Units released before their order's payment came, from orders still "
        "awaiting payment (demand that may come back).",
    )
    orders_awaiting_payment = serializers.IntegerField(read_only=True)

    class Meta:
        model = SKU
        fields = [
            "sku",
            "title",
            "preorder",
            "low_stock_threshold",
            "on_hand",
            "committed",
            "available",
            "held_for_failed_payments",
            "released_early",
            "orders_awaiting_payment",
        ]
        read_only_fields = fields


class InventoryView(generics.ListAPIView):
    serializer_class = InventorySerializer

    @extend_schema(parameters=[OpenApiParameter("sku", str, description="One SKU code")])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        sku = self.request.query_params.get("sku", "")
        if has_nul(sku):
            return SKU.objects.none()  # no SKU code holds a NUL
        return inventory_list(store=self.request.store, now=timezone.now(), sku=sku)

    # 409: a SKU created by another request at the same moment.
    @api_errors(409)
    @extend_schema(
        request=SkusInputSerializer,
        responses={200: InventorySerializer(many=True)},
        description="Create or update SKUs and their stock counts. Answers with the SKUs "
        "sent, as a plain list (not paginated).",
    )
    def post(self, request):
        given = SkusInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        skus = skus_upsert(
            store=request.store, items=[SkuInput(**item) for item in given.validated_data["skus"]]
        )
        rows = inventory_list(store=request.store, now=timezone.now()).filter(
            pk__in=[s.pk for s in skus]
        )
        return Response(InventorySerializer(rows, many=True).data)
