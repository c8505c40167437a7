from django.urls import path, re_path

from common.api import api_not_found
from messaging import api as messaging_api
from orders import api as orders_api
from recovery import api as recovery_api
from subscriptions import api as subscriptions_api
from support import api as support_api

urlpatterns = [
    path("cases/", recovery_api.CaseListView.as_view(), name="api-case-list"),
    path("cases/<int:pk>/", recovery_api.CaseDetailView.as_view(), name="api-case-detail"),
    path(
        "customers/<str:stripe_customer_id>/",
        subscriptions_api.CustomerView.as_view(),
        name="api-customer",
    ),
    path(
        "customers/<str:stripe_customer_id>/consent",
        messaging_api.CustomerConsentView.as_view(),
        name="api-customer-consent",
    ),
    path(
        "customers/<str:stripe_customer_id>/access",
        subscriptions_api.CustomerAccessView.as_view(),
        name="api-customer-access",
    ),
    path(
        "customers/<str:stripe_customer_id>/banner",
        messaging_api.CustomerBannerView.as_view(),
        name="api-customer-banner",
    ),
    path(
        "customers/<str:stripe_customer_id>/signals",
        support_api.CustomerSignalsView.as_view(),
        name="api-customer-signals",
    ),
    path("orders/", orders_api.OrderUpsertView.as_view(), name="api-order-upsert"),
    path("orders/<str:number>/", orders_api.OrderDetailView.as_view(), name="api-order-detail"),
    path("inventory/", orders_api.InventoryView.as_view(), name="api-inventory"),
    re_path(r"^(?P<path>.*)$", api_not_found),  # last: every other address, in the error shape
]
