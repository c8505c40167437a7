"""Payment gateways: how a retry reaches the card network.

`gateway_for(store)` returns the store's gateway: Stripe for real accounts, the
in-process sandbox for the demo, development and simulations.
"""

from __future__ import annotations

from stores.models import Store

from .base import ChargeResult, PaymentGateway, ReadBack


def gateway_for(store) -> PaymentGateway:
    if store.gateway == Store.Gateway.STRIPE:
        from .stripe import StripeGateway

        return StripeGateway(store=store)
    from .sandbox import SandboxGateway

    return SandboxGateway.for_store(store)


__all__ = ["ChargeResult", "PaymentGateway", "ReadBack", "gateway_for"]
