"""Hand-edited query strings and settings posts: each gets a page that says what was
wrong (or a 400), never a server error; an unreadable filter lists nothing, and an
unreadable setting saves nothing."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest
from django.test import Client
from django.utils import timezone

from common.paging import MAX_PAGE, page_number
from orders.models import HoldPolicy
from recovery.models import RetryPolicy
from stores.models import Store
from support.models import SupportPolicy
from tests.dashboard.conftest import RETRY_FORM, login, make_case

DAY = dt.timedelta(days=1)
INFINITIES = ["inf", "-inf", "Infinity", "nan", "1e308", "-1e308", "1e400", "-1e400", "1e-400"]
HUGE = "1" + "0" * 30
DIGITS_5000 = "9" * 5000


@pytest.fixture
def operator_client(operator) -> Client:
    return login(operator, "pw-olivia-123")


def body(response) -> str:
    assert response.status_code < 500
    return html.unescape(response.content.decode())


def case_ids(response) -> list[int]:
    return [int(x) for x in re.findall(r'data-case="(\d+)"', response.content.decode())]


# ------------------------------------------------------------------ paging


@pytest.mark.parametrize(
    ("raw", "page"),
    [
        (None, 1),
        ("", 1),
        ("3", 3),
        (" 7 ", 7),
        ("0", 1),
        ("000", 1),
        ("-5", 1),
        ("+2", 1),
        ("1e3", 1),
        ("1_0", 1),
        ("٣", 1),
        ("²", 1),
        ("abc", 1),
        ("100000", MAX_PAGE),
        ("100001", MAX_PAGE),
        ("0000000000000000000000012", 12),
        ("99999999999999999999", MAX_PAGE),
        (DIGITS_5000, MAX_PAGE),
    ],
)
def test_page_number_is_ascii_digits_clamped(raw, page):
    assert page_number(raw) == page


@pytest.mark.parametrize("page", ["99999999999999999999", DIGITS_5000, str(MAX_PAGE + 1)])
def test_a_page_past_the_end_says_so(store, operator_client, page):
    make_case(store, opened_at=timezone.now() - DAY)
    cases = operator_client.get(f"/s/{store.id}/cases/", {"page": page})
    assert cases.status_code == 200 and case_ids(cases) == []
    assert f"No cases on page {MAX_PAGE}." in body(cases)
    customers = operator_client.get(f"/s/{store.id}/customers/", {"page": page})
    assert customers.status_code == 200
    assert f"No customers on page {MAX_PAGE}." in body(customers)
    queue = operator_client.get(f"/s/{store.id}/queue/", {"page": page})
    assert queue.status_code == 200
    assert f"Nothing on page {MAX_PAGE}." in body(queue)


@pytest.mark.parametrize("page", ["-5", "0", "abc", "٣", "1e3", "inf", "\x00"])
def test_an_unreadable_page_is_the_first(store, operator_client, page):
    case = make_case(store, opened_at=timezone.now() - DAY)
    cases = operator_client.get(f"/s/{store.id}/cases/", {"page": page})
    assert cases.status_code == 200 and case_ids(cases) == [case.pk]
    customers = operator_client.get(f"/s/{store.id}/customers/", {"page": page})
    assert customers.status_code == 200 and case.customer.email in body(customers)
    assert operator_client.get(f"/s/{store.id}/queue/", {"page": page}).status_code == 200


# ------------------------------------------------------------------ case list


AMOUNT_FROM = "Amount from must be an amount from 0 to 10,000,000,000"
AMOUNT_TO = "Amount to must be an amount from 0 to 10,000,000,000"
DAYS = "pick a day from 2000-01-01 to 9000-12-31."


@pytest.mark.parametrize(
    ("params", "message"),
    [
        *[({"amount_min": v}, AMOUNT_FROM) for v in INFINITIES if v != "1e-400"],
        *[({"amount_max": v}, AMOUNT_TO) for v in INFINITIES if v != "1e-400"],
        ({"amount_min": "1e-400"}, "Amount from has at most 2 decimals"),
        ({"amount_min": "0.001"}, "Amount from has at most 2 decimals"),
        ({"amount_min": "-1"}, AMOUNT_FROM),
        ({"amount_max": "10000000000.01"}, AMOUNT_TO),
        ({"amount_max": HUGE}, AMOUNT_TO),
        ({"amount_max": DIGITS_5000}, AMOUNT_TO),
        ({"amount_min": "ten"}, AMOUNT_FROM),
        ({"opened_to": "9999-12-31"}, "Failed to: " + DAYS),
        ({"opened_to": "9000-12-32"}, "Failed to: enter a date as YYYY-MM-DD."),
        ({"opened_to": "10000-01-01"}, "Failed to: enter a date as YYYY-MM-DD."),
        ({"opened_from": "0001-01-01"}, "Failed from: " + DAYS),
        ({"opened_from": "1999-12-31"}, "Failed from: " + DAYS),
        ({"opened_from": "2024-02-30"}, "Failed from: enter a date as YYYY-MM-DD."),
        ({"opened_from": "yesterday"}, "Failed from: enter a date as YYYY-MM-DD."),
        ({"q": DIGITS_5000}, "Search: at most 200 characters."),
        ({"q": "x" * 201}, "Search: at most 200 characters."),
        ({"q": "cus_\x00"}, "Search: no null characters."),
        ({"decline_code": "a" * 65}, "Decline code: at most 64 characters."),
        ({"decline_code": "do_not\x00honor"}, "Decline code: no null characters."),
        ({"status": "everything"}, "Status: pick one from the list."),
        ({"track": "fraud'--"}, "Track: pick one from the list."),
        ({"escalated": "maybe"}, "With a person: pick one from the list."),
        ({"sort": "-id"}, "Sort: pick one from the list."),
        ({"status": "open", "amount_min": "inf"}, AMOUNT_FROM),
    ],
)
def test_an_unreadable_filter_says_why_and_lists_nothing(store, operator_client, params, message):
    make_case(store, opened_at=timezone.now() - DAY, amount=2900)
    response = operator_client.get(f"/s/{store.id}/cases/", params)
    assert response.status_code == 200
    page = body(response)
    assert message in page and 'role="alert"' in page
    assert case_ids(response) == []
    assert "No cases listed: fix the filters above." in page


@pytest.mark.parametrize("q", ["²", "٣", "1_0", " 12 ", "9" * 18, "9" * 19, "9" * 200, "-1", "+1"])
def test_a_search_that_is_not_a_case_number_matches_no_case_by_number(store, operator_client, q):
    make_case(store, opened_at=timezone.now() - DAY)
    response = operator_client.get(f"/s/{store.id}/cases/", {"q": q})
    assert response.status_code == 200 and case_ids(response) == []
    assert "No case matches these filters." in body(response)


def test_a_case_number_and_the_bounds_still_filter(store, operator_client):
    now = timezone.now()
    case = make_case(store, opened_at=now - DAY, amount=2900)
    other = make_case(store, opened_at=now - 2 * DAY, amount=1_000_000_000_000)
    url = f"/s/{store.id}/cases/"
    assert case_ids(operator_client.get(url, {"q": str(case.pk)})) == [case.pk]
    assert case_ids(operator_client.get(url, {"q": f"00{case.pk}"})) == [case.pk]
    widest = {
        "amount_min": "0",
        "amount_max": "10000000000",
        "opened_from": "2000-01-01",
        "opened_to": "9000-12-31",
    }
    assert case_ids(operator_client.get(url, widest)) == [case.pk, other.pk]
    assert case_ids(operator_client.get(url, {"amount_min": "29.00", "amount_max": "29"})) == [
        case.pk
    ]
    assert case_ids(operator_client.get(url, {"escalated": "no", "sort": "amount"})) == [
        other.pk,
        case.pk,
    ]
    assert case_ids(operator_client.get(url, {"escalated": "yes"})) == []


def test_an_unreadable_customer_search_says_why_and_lists_nothing(store, operator_client):
    make_case(store, opened_at=timezone.now() - DAY)
    for q, message in [("x" * 201, "at most 200 characters"), ("a\x00", "no null characters")]:
        response = operator_client.get(f"/s/{store.id}/customers/", {"q": q})
        page = body(response)
        assert response.status_code == 200 and message in page
        assert "No customers listed: fix the search above." in page and "cus_dash" not in page


# ------------------------------------------------------------------ home and exports


PERIOD = "Period: from 1 to 366 days."


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "0001-01-01", "end": "0001-01-31"}, "From: " + DAYS),
        ({"start": "0001-01-01"}, "From: " + DAYS),
        ({"start": "2024-01-01", "end": "9999-12-31"}, "To: " + DAYS),
        ({"end": "9999-12-31"}, "To: " + DAYS),
        ({"start": "2024-13-01", "end": "2024-12-31"}, "From: enter a date as YYYY-MM-DD."),
        ({"start": "2024-03-10", "end": "2024-03-01"}, "To: pick a day on or after From."),
        ({"days": HUGE}, PERIOD),
        ({"days": DIGITS_5000}, PERIOD),
        ({"days": "-5"}, PERIOD),
        ({"days": "0"}, PERIOD),
        ({"days": "367"}, PERIOD),
        ({"days": "inf"}, PERIOD),
        ({"days": "1e400"}, PERIOD),
        ({"days": "30", "start": "0001-01-01", "end": "2024-01-01"}, "From: " + DAYS),
    ],
)
def test_an_unreadable_period_says_why_and_exports_refuse_it(
    store, operator_client, params, message
):
    make_case(store, opened_at=timezone.now() - DAY)
    home = operator_client.get(f"/s/{store.id}/", params)
    assert home.status_code == 200
    page = body(home)
    assert message in page and "Showing the last 30 days instead." in page
    today = timezone.now().astimezone(store.tzinfo).date()
    assert f"{today - 29 * DAY:%b %-d} – {today:%b %-d, %Y}" in page
    for table in ("trend", "by_track", "summary"):
        export = operator_client.get(f"/s/{store.id}/export/{table}.csv", params)
        assert export.status_code == 400 and message in export.content.decode()


@pytest.mark.parametrize(
    "params",
    [
        {"start": "2000-01-01", "end": "9000-12-31"},
        {"start": "2000-01-01", "end": "2000-01-01"},
        {"start": "9000-12-31", "end": "9000-12-31"},
        {"days": "1"},
        {"days": "366"},
        {"days": "", "start": "", "end": ""},
    ],
)
def test_the_widest_periods_still_work(store, operator_client, params):
    make_case(store, opened_at=timezone.now() - DAY)
    home = operator_client.get(f"/s/{store.id}/", params)
    assert home.status_code == 200 and 'role="alert"' not in home.content.decode()
    export = operator_client.get(f"/s/{store.id}/export/by_track.csv", params)
    assert export.status_code == 200 and export["Content-Type"].startswith("text/csv")


# ------------------------------------------------------------------ settings

HOSTILE_NUMBERS = [*INFINITIES, HUGE, "-" + HUGE, DIGITS_5000, "", "twelve", "1,5"]

RETRY_MESSAGES = {
    "max_retries": "max_retries must be between 0 and 8",
    "first_retry_hours": "first_retry_hours must be between 1 and 72 hours.",
    "generic_retries_before_card_update": "generic_retries_before_card_update must be between 0 and 8.",
    "window_days_day": "window_days_day must be between 1 and 90 days.",
    "window_days_order": "window_days_order must be between 1 and 90 days.",
    "grace_fraction": "grace_fraction must be between 0 and 100 percent.",
    "predunning_days": "predunning_days must be between 0 and 90 days.",
}


def retry_rows(store) -> list[dict]:
    return list(RetryPolicy.objects.filter(store=store).order_by("version").values())


@pytest.fixture
def saved_retry_policy(store, operator_client):
    operator_client.post(f"/s/{store.id}/settings/retry-policy/", RETRY_FORM)
    assert RetryPolicy.objects.filter(store=store).count() == 1


@pytest.mark.usefixtures("saved_retry_policy")
@pytest.mark.parametrize("field", sorted(RETRY_MESSAGES))
@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_retry_policy_refuses_unreadable_numbers(store, operator_client, field, value):
    before = retry_rows(store)
    response = operator_client.post(
        f"/s/{store.id}/settings/retry-policy/", {**RETRY_FORM, field: value}
    )
    assert response.status_code == 200
    page = body(response)
    assert RETRY_MESSAGES[field] in page and 'class="flash error"' in page
    assert retry_rows(store) == before


@pytest.mark.usefixtures("saved_retry_policy")
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_retries": "9"}, RETRY_MESSAGES["max_retries"]),
        ({"window_days_month": "0"}, "window_days_month must be between 1 and 90 days."),
        ({"grace_fraction": "101"}, RETRY_MESSAGES["grace_fraction"]),
        ({"end_action": "explode"}, "end_action must be one of cancel, pause, unpaid."),
        ({"end_action": ""}, "end_action must be one of cancel, pause, unpaid."),
    ],
)
def test_retry_policy_refuses_values_out_of_bounds(store, operator_client, changes, message):
    before = retry_rows(store)
    response = operator_client.post(
        f"/s/{store.id}/settings/retry-policy/", {**RETRY_FORM, **changes}
    )
    assert response.status_code == 200 and message in body(response)
    assert retry_rows(store) == before


def test_retry_policy_missing_fields_say_so(store, operator_client):
    response = operator_client.post(f"/s/{store.id}/settings/retry-policy/", {})
    page = body(response)
    assert response.status_code == 200
    assert all(message in page for message in RETRY_MESSAGES.values())
    assert retry_rows(store) == []


ESCALATION_FORM = {
    "high_value_mrr": "250.00",
    "ltv": "1500",
    "churn_risk_threshold": "70",
    "target_response_hours": "2",
    "route_on_reply": "on",
}
ESCALATION_MESSAGES = {
    "high_value_mrr": "The high-value MRR must be an amount from 0 to 21,474,836.47",
    "ltv": "The high-value lifetime paid must be an amount from 0 to 10,000,000,000",
    "churn_risk_threshold": "The churn-risk threshold is a score from 1 to 100.",
    "target_response_hours": "The target response time must be between 5 minutes and 7 days",
}


def escalation_rows(store) -> tuple:
    return (
        list(Store.objects.filter(pk=store.pk).values()),
        list(SupportPolicy.objects.filter(store=store).values()),
    )


@pytest.fixture
def saved_escalation(store, operator_client):
    operator_client.post(f"/s/{store.id}/settings/escalation/", ESCALATION_FORM)
    assert SupportPolicy.objects.get(store=store).target_response_minutes == 120


@pytest.mark.usefixtures("saved_escalation")
@pytest.mark.parametrize("field", sorted(ESCALATION_MESSAGES))
@pytest.mark.parametrize("value", [v for v in HOSTILE_NUMBERS if v != "1e-400"])
def test_escalation_refuses_unreadable_numbers(store, operator_client, field, value):
    before = escalation_rows(store)
    response = operator_client.post(
        f"/s/{store.id}/settings/escalation/", {**ESCALATION_FORM, field: value}
    )
    assert response.status_code == 200
    page = body(response)
    assert ESCALATION_MESSAGES[field] in page and 'class="flash error"' in page
    assert escalation_rows(store) == before


@pytest.mark.usefixtures("saved_escalation")
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"high_value_mrr": "21474836.48"}, ESCALATION_MESSAGES["high_value_mrr"]),
        ({"ltv": "10000000000.01"}, ESCALATION_MESSAGES["ltv"]),
        ({"ltv": "1e-400"}, "The high-value lifetime paid has at most 2 decimals"),
        ({"high_value_mrr": "0.001"}, "The high-value MRR has at most 2 decimals"),
        ({"target_response_hours": "0.05"}, ESCALATION_MESSAGES["target_response_hours"]),
        ({"target_response_hours": "1e-400"}, ESCALATION_MESSAGES["target_response_hours"]),
        ({"target_response_hours": "168.01"}, ESCALATION_MESSAGES["target_response_hours"]),
        ({"churn_risk_threshold": "0"}, ESCALATION_MESSAGES["churn_risk_threshold"]),
        ({"churn_risk_threshold": "101"}, ESCALATION_MESSAGES["churn_risk_threshold"]),
    ],
)
def test_escalation_refuses_values_out_of_bounds(store, operator_client, changes, message):
    before = escalation_rows(store)
    response = operator_client.post(
        f"/s/{store.id}/settings/escalation/", {**ESCALATION_FORM, **changes}
    )
    assert response.status_code == 200 and message in body(response)
    assert escalation_rows(store) == before


def test_escalation_takes_its_widest_values(store, operator_client):
    response = operator_client.post(
        f"/s/{store.id}/settings/escalation/",
        {
            "high_value_mrr": "21474836.47",
            "ltv": "10000000000",
            "churn_risk_threshold": "100",
            "target_response_hours": "168",
        },
    )
    assert response.status_code == 302
    store.refresh_from_db()
    policy = SupportPolicy.objects.get(store=store)
    assert (store.high_value_mrr_threshold, policy.ltv_threshold) == (2**31 - 1, 10**12)
    assert (policy.target_response_minutes, policy.route_on_reply) == (7 * 24 * 60, False)
    operator_client.post(
        f"/s/{store.id}/settings/escalation/",
        {**ESCALATION_FORM, "high_value_mrr": "0", "ltv": "0", "target_response_hours": "0.0834"},
    )
    store.refresh_from_db()
    policy.refresh_from_db()
    assert (store.high_value_mrr_threshold, policy.ltv_threshold) == (0, 0)
    assert policy.target_response_minutes == 5


HOLD_FORM = {"brief_hold_hours": "24", "retry_margin_hours": "3"}
HOLD_MESSAGES = {
    "brief_hold_hours": "Hold constrained stock for 1 hour to 14 days (336 hours).",
    "retry_margin_hours": "The margin after a retry is 0 to 72 hours.",
}


def hold_rows(store) -> list[dict]:
    return list(HoldPolicy.objects.filter(store=store).values())


@pytest.mark.parametrize("field", sorted(HOLD_MESSAGES))
@pytest.mark.parametrize("value", [*HOSTILE_NUMBERS, "337", "-1"])
def test_hold_policy_refuses_unreadable_numbers(store, operator_client, field, value):
    if field == "retry_margin_hours" and value == "337":
        value = "73"
    operator_client.post(f"/s/{store.id}/settings/holds/", HOLD_FORM)
    before = hold_rows(store)
    assert before
    response = operator_client.post(f"/s/{store.id}/settings/holds/", {**HOLD_FORM, field: value})
    assert response.status_code == 200
    page = body(response)
    assert HOLD_MESSAGES[field] in page and 'class="flash error"' in page
    assert hold_rows(store) == before
