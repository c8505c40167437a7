import datetime as dt

import time_machine
from django.utils import timezone

from recovery.models import RecoveryCase
from recovery.scheduler import run_due


def test_unknown_customer_is_404_with_a_message(api):
    response = api.get("/api/v1/customers/cus_nobody/access")
    assert response.status_code == 404
    assert "cus_nobody" in response.json()["error"]["message"]


def test_access_moves_from_grace_to_restricted_to_suspended(api, failed_invoice, store):
    body = api.get("/api/v1/customers/cus_test_alice/access").json()
    assert body["access"] == "grace" and body["open_cases"] == 1
    case = RecoveryCase.objects.get()
    with time_machine.travel(case.step_down_at + dt.timedelta(minutes=1), tick=False):
        run_due(now=timezone.now())
        while RecoveryCase.objects.filter(pk=case.pk, stepped_down_at__isnull=True).exists():
            run_due(now=timezone.now())
        body = api.get("/api/v1/customers/cus_test_alice/access").json()
    assert body["access"] == "restricted"
    assert body["subscriptions"][0]["access"] == "restricted"
    with time_machine.travel(case.window_end + dt.timedelta(minutes=1), tick=False):
        run_due(now=timezone.now())
        body = api.get("/api/v1/customers/cus_test_alice/access").json()
    case.refresh_from_db()
    assert case.status in ("lost", "recovered")
    if case.status == "lost":
        assert body["access"] == "suspended" and body["subscriptions"][0]["status"] == "canceled"
    else:
        assert body["access"] == "full"


def test_another_stores_customer_is_invisible(api, other_store, failed_invoice):
    from django.test import Client

    from stores.services import api_token_create

    other = Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(store=other_store)[1]}")
    assert other.get("/api/v1/customers/cus_test_alice/access").status_code == 404
