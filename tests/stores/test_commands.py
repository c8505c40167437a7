import json
import uuid
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from recovery.intake import stripe_events_work
from recovery.models import RecoveryCase
from stores.models import ApiToken, Membership, Store
from tests import stripe_factory as sf
from tests.fake_stripe import fake_stripe  # noqa: F401  (fixture)

BERLIN_SECRET_KEY = "sk_test_berlin_51Nq9zXv0ab12"
BERLIN_WEBHOOK_SECRET = "whsec_berlin_7f3c9a1e5d"


def create_store(*args: str) -> dict:
    out = StringIO()
    call_command("create_store", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def berlin_store() -> dict:
    return create_store(
        "--name",
        "Berliner Kaffee",
        "--stripe-secret-key",
        BERLIN_SECRET_KEY,
        "--stripe-webhook-secret",
        BERLIN_WEBHOOK_SECRET,
        "--currency",
        "eur",
        "--timezone",
        "Europe/Berlin",
    )


def api_client(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def test_create_store_json_prints_one_object_with_id_webhook_path_and_token(db):
    out = StringIO()
    call_command(
        "create_store",
        "--name",
        "Berliner Kaffee",
        "--stripe-secret-key",
        BERLIN_SECRET_KEY,
        "--stripe-webhook-secret",
        BERLIN_WEBHOOK_SECRET,
        "--currency",
        "eur",
        "--timezone",
        "Europe/Berlin",
        "--json",
        stdout=out,
    )

    printed = json.loads(out.getvalue())  # the whole output is one JSON document
    assert set(printed) == {"store_id", "webhook_path", "api_token"}
    store = Store.objects.get(pk=uuid.UUID(printed["store_id"]))
    assert printed["webhook_path"] == f"/webhooks/stripe/{store.id}/"
    assert printed["api_token"].startswith("rk_")
    assert (store.name, store.currency, store.timezone) == (
        "Berliner Kaffee",
        "eur",
        "Europe/Berlin",
    )
    assert store.gateway == Store.Gateway.STRIPE
    assert store.stripe_secret_key == BERLIN_SECRET_KEY
    assert store.stripe_webhook_secret == BERLIN_WEBHOOK_SECRET
    # The raw token is printed once and only its hash is kept.
    token = ApiToken.objects.get(store=store)
    assert token.key_hash != printed["api_token"]
    assert printed["api_token"] not in {token.prefix, token.key_hash}


def test_create_store_normalises_an_upper_case_currency(db):
    printed = create_store("--name", "Caps", "--currency", "EUR")
    assert Store.objects.get(pk=printed["store_id"]).currency == "eur"


def test_created_token_lists_cases_of_its_own_store_only(
    failed_invoice,
    store,
    django_capture_on_commit_callbacks,
    fake_stripe,  # noqa: F811
):
    printed = berlin_store()
    api = api_client(printed["api_token"])

    # The bean box store already has a case; the new store has none yet.
    response = api.get("/api/v1/cases/")
    assert response.status_code == 200, response.content
    assert response.json()["count"] == 0 and response.json()["results"] == []
    foreign_case = RecoveryCase.objects.get(store=store)
    assert api.get(f"/api/v1/cases/{foreign_case.pk}/").status_code == 404

    # A failure delivered to the printed webhook path, signed with the new store's secret,
    # shows up for the new token.
    invoice = sf.failed_invoice(customer="cus_test_berlin", amount=1500)
    fake_stripe.add_invoice(invoice)  # the store's Stripe, which the decline is read from
    body = json.dumps(sf.event("invoice.payment_failed", invoice))
    with django_capture_on_commit_callbacks(execute=True):
        delivered = Client().post(
            printed["webhook_path"],
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sf.sign(body, BERLIN_WEBHOOK_SECRET),
        )
        stripe_events_work(until_idle=True)  # the intake worker takes the stored event
    assert delivered.status_code == 200, delivered.content

    listed = api.get("/api/v1/cases/").json()
    assert listed["count"] == 1
    assert [(c["invoice"], c["customer"]) for c in listed["results"]] == [
        (invoice["id"], "cus_test_berlin")
    ]
    assert foreign_case.pk not in [c["id"] for c in listed["results"]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--currency", "euro"], "three-letter ISO code"),
        (["--currency", "e1r"], "three-letter ISO code"),
        (["--timezone", "Mars/Olympus_Mons"], "Unknown time zone 'Mars/Olympus_Mons'"),
        (["--stripe-secret-key", "pk_test_publishable_123"], "should start with sk_ or rk_"),
        (["--stripe-webhook-secret", "sk_test_not_a_webhook_secret"], "should start with whsec_"),
        (["--name", "   "], "needs a name"),
    ],
    ids=["currency-length", "currency-digits", "timezone", "secret-key", "webhook-secret", "name"],
)
def test_create_store_refuses_bad_input_with_a_clear_message_and_creates_nothing(db, args, message):
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("create_store", "--name", "Broken", *args, "--json", stdout=out)

    assert message in str(excinfo.value)
    assert out.getvalue() == ""
    assert Store.objects.count() == 0
    assert ApiToken.objects.count() == 0


def test_create_user_gives_a_new_user_a_role_and_a_working_password(db):
    store_id = berlin_store()["store_id"]
    out = StringIO()
    call_command(
        "create_user",
        "--store",
        store_id,
        "--role",
        "operator",
        "--username",
        "uma",
        "--json",
        stdout=out,
    )

    printed = json.loads(out.getvalue())
    membership = Membership.objects.get(user__username="uma")
    assert str(membership.store_id) == store_id
    assert membership.role == Membership.Role.OPERATOR
    assert printed["user_id"] == membership.user_id
    assert (printed["username"], printed["store_id"], printed["role"]) == (
        "uma",
        store_id,
        "operator",
    )
    assert printed["password"]
    assert Client().login(username="uma", password=printed["password"])


def test_create_user_agent_with_given_password_prints_no_password(db):
    store_id = berlin_store()["store_id"]
    out = StringIO()
    call_command(
        "create_user",
        "--store",
        store_id,
        "--role",
        "agent",
        "--username",
        "abe",
        "--password",
        "pw-abe-chosen-1",
        stdout=out,
    )

    membership = Membership.objects.get(user__username="abe")
    assert membership.role == Membership.Role.AGENT
    assert "abe is agent of Berliner Kaffee" in out.getvalue()
    assert "Password:" not in out.getvalue()
    assert membership.user.check_password("pw-abe-chosen-1")


def test_create_user_again_changes_the_role_instead_of_adding_a_membership(db):
    store_id = berlin_store()["store_id"]
    common = ["--store", store_id, "--username", "uma", "--password", "pw-uma-123"]
    call_command("create_user", *common, "--role", "agent", stdout=StringIO())
    call_command("create_user", *common, "--role", "operator", stdout=StringIO())

    assert get_user_model().objects.filter(username="uma").count() == 1
    assert list(Membership.objects.values_list("role", flat=True)) == ["operator"]


@pytest.mark.parametrize("store_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_create_user_for_an_unknown_store_is_refused(db, store_id):
    with pytest.raises(CommandError, match="No store with id"):
        call_command(
            "create_user",
            "--store",
            store_id,
            "--role",
            "operator",
            "--username",
            "ghost",
            stdout=StringIO(),
        )
    assert not get_user_model().objects.filter(username="ghost").exists()
    assert Membership.objects.count() == 0


def test_create_user_refuses_an_unknown_role(db):
    store_id = berlin_store()["store_id"]
    with pytest.raises(CommandError, match="invalid choice"):
        call_command(
            "create_user",
            "--store",
            store_id,
            "--role",
            "owner",
            "--username",
            "olga",
            stdout=StringIO(),
        )
    assert Membership.objects.count() == 0
