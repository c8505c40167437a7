"""`manage.py demo_setup`, as `make run` calls it: seeds once, keeps the data after."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError

from demo import replay as demo
from recovery.models import PaymentAttempt, RecoveryCase, StripeEvent
from stores.models import Store
from stores.services import store_create

SMALL = ["--customers", "25", "--days", "20", "--seed", "4", "--failure-rate", "0.4"]


def _sms():
    try:
        from messaging import sms
    except ImportError:  # messaging not built yet
        return None
    return sms


def _counts() -> tuple:
    return (
        Store.objects.count(),
        RecoveryCase.objects.count(),
        PaymentAttempt.objects.count(),
        StripeEvent.objects.count(),
    )


@pytest.mark.django_db
def test_demo_setup_seeds_once_and_a_second_run_keeps_the_data(capsys):
    call_command("demo_setup", *SMALL)
    out = capsys.readouterr().out
    assert "Replaying [" in out
    assert "operator / recoup-demo" in out and "agent / recoup-demo" in out
    assert "API token:      rk_" in out
    # Messages were recorded as sent, not printed, and not left in the outboxes.
    assert "Subject:" not in out
    assert not getattr(mail, "outbox", [])
    sms = _sms()
    assert not getattr(sms, "outbox", [])
    first = _counts()
    assert first[0] == 1 and first[1] > 0

    call_command("demo_setup", *SMALL)
    out = capsys.readouterr().out
    assert "Keeping the demo store" in out
    assert "API token" not in out
    assert _counts() == first


@pytest.mark.django_db
def test_demo_setup_leaves_a_database_with_its_own_store_alone(capsys):
    store_create(name="Real Shop")
    call_command("demo_setup", *SMALL)
    assert "Using the existing store Real Shop" in capsys.readouterr().out
    assert list(Store.objects.values_list("name", flat=True)) == ["Real Shop"]
    assert not RecoveryCase.objects.exists()


@pytest.mark.django_db
def test_an_interrupted_seed_asks_for_a_reset():
    store_create(name=demo.DEMO_STORE_NAME)  # created, but the seed never finished
    with pytest.raises(CommandError, match="make reset"):
        call_command("demo_setup", *SMALL)
