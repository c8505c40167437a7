"""One rule credits a recovery, whichever path closed the case: our own answer
(`attempt_resolve`, the batch) or Stripe's event (`recovered_via_for_success`)."""

import pytest
from django.utils import timezone

from recovery.models import PaymentAttempt, RecoveryCase
from recovery.services import recovered_via_for_success

CREDIT = {
    # source, the card updater changed the card -> credited to
    ("recoup_retry", False): "recoup_retry",
    ("agent", False): "agent",
    ("customer", False): "customer",
    ("stripe_auto", False): "stripe_retry",
    ("card_update", False): "customer",
    ("card_update", True): "card_updater",
    ("recoup_retry", True): "recoup_retry",
}


@pytest.mark.parametrize(("source", "updater"), list(CREDIT), ids=lambda v: str(v))
def test_a_paid_attempt_is_credited_the_same_way_on_every_path(failed_invoice, source, updater):
    case = RecoveryCase.objects.get()
    if updater:
        RecoveryCase.objects.filter(pk=case.pk).update(card_updater_result="updated")
        case.refresh_from_db()
    attempt = PaymentAttempt.objects.create(
        store=case.store,
        case=case,
        customer=case.customer,
        source=source,
        outcome=PaymentAttempt.Outcome.SUCCEEDED,
        amount=case.amount,
        currency=case.currency,
        attempted_at=timezone.now(),
    )
    assert case.credit_for(attempt) == CREDIT[source, updater]
    assert recovered_via_for_success(case=case, at=timezone.now()) == CREDIT[source, updater]
