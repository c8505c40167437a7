import pytest

from common.errors import ApplicationError
from recovery.models import RecoveryCase, RetryPolicy
from recovery.selectors import retry_policy_current
from recovery.services import retry_policy_update
from tests import stripe_factory as sf


def test_defaults_apply_until_a_store_edits_its_policy(store):
    policy = retry_policy_current(store=store)
    assert policy.version == 0 and policy.max_retries == 4
    assert (
        policy.window_days("week"),
        policy.window_days("month"),
        policy.window_days("year"),
    ) == (7, 21, 45)


def test_each_edit_is_a_new_version_and_cases_keep_theirs(store, webhooks):
    webhooks.deliver(
        "invoice.payment_failed", sf.failed_invoice(customer="cus_a", subscription="sub_a")
    )
    v1 = retry_policy_update(
        store=store, changes={"max_retries": 2, "window_days_month": 28}, actor="olivia"
    )
    webhooks.deliver(
        "invoice.payment_failed", sf.failed_invoice(customer="cus_b", subscription="sub_b")
    )
    v2 = retry_policy_update(store=store, changes={"end_action": "pause"})
    assert (v1.version, v2.version) == (1, 2)
    assert v2.max_retries == 2 and v2.window_days_month == 28  # carried forward
    first, second = RecoveryCase.objects.order_by("id")
    assert first.policy_version == 0 and second.policy_version == 1
    assert (second.window_end - second.window_start).days == 28
    assert RetryPolicy.objects.filter(store=store).count() == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"max_retries": 50}, "max_retries"),
        ({"window_days_month": 0}, "window_days_month"),
        ({"end_action": "explode"}, "end_action"),
        ({"colour": "red"}, "Unknown policy settings"),
    ],
)
def test_invalid_policy_is_refused_and_changes_nothing(store, changes, message):
    with pytest.raises(ApplicationError, match=message):
        retry_policy_update(store=store, changes=changes)
    assert not RetryPolicy.objects.filter(store=store).exists()
