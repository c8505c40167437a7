import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from stores.models import Store
from stores.services import store_create

SECRET_KEY = "sk_live_51PqRsTuVwXyZ0123secretbody9876"
WEBHOOK_SECRET = "whsec_Q7f_kL2m_secretbody_Z9x4"


@pytest.fixture
def live_store(db) -> Store:
    return store_create(
        name="Live Shop",
        stripe_secret_key=SECRET_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )


def raw_columns(store: Store) -> tuple[str, str]:
    """The secrets exactly as the database holds them, bypassing the model field."""
    table = connection.ops.quote_name(Store._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT stripe_secret_key, stripe_webhook_secret FROM {table} WHERE id = %s",
            [Store._meta.pk.get_db_prep_value(store.pk, connection)],
        )
        return cursor.fetchone()


def test_secrets_are_encrypted_in_the_database(live_store):
    raw_key, raw_webhook = raw_columns(live_store)

    assert raw_key and raw_webhook
    for raw in (raw_key, raw_webhook):
        assert "secretbody" not in raw
    assert SECRET_KEY not in raw_key and WEBHOOK_SECRET not in raw_webhook
    # Not merely a prefix-preserving encoding either: nothing of the key shows.
    assert not raw_key.startswith("sk_") and not raw_webhook.startswith("whsec_")


def test_equal_secrets_give_different_ciphertexts(live_store):
    twin = store_create(name="Twin", stripe_secret_key=SECRET_KEY)
    # Randomised encryption: the column does not reveal that two stores share a key.
    assert raw_columns(twin)[0] != raw_columns(live_store)[0]
    assert Store.objects.get(pk=twin.pk).stripe_secret_key == SECRET_KEY


def test_secrets_come_back_decrypted_on_a_fresh_read(live_store):
    fresh = Store.objects.get(pk=live_store.pk)
    assert fresh.stripe_secret_key == SECRET_KEY
    assert fresh.stripe_webhook_secret == WEBHOOK_SECRET


def test_a_changed_secret_is_encrypted_too(live_store):
    live_store.stripe_webhook_secret = "whsec_rotated_newbody_1111"
    live_store.save(update_fields=["stripe_webhook_secret"])

    _, raw_webhook = raw_columns(live_store)
    assert "newbody" not in raw_webhook
    assert Store.objects.get(pk=live_store.pk).stripe_webhook_secret == "whsec_rotated_newbody_1111"


def test_an_empty_secret_stays_empty(db):
    store = store_create(name="No Stripe yet")
    assert raw_columns(store) == ("", "")
    fresh = Store.objects.get(pk=store.pk)
    assert (fresh.stripe_secret_key, fresh.stripe_webhook_secret) == ("", "")
    assert (fresh.stripe_secret_key_masked, fresh.stripe_webhook_secret_masked) == ("", "")


def test_masked_secret_key_shows_its_kind_and_last_four_characters_only(live_store):
    assert live_store.stripe_secret_key_masked == "sk_live_…9876"


def test_masked_webhook_secret_shows_only_the_last_four_characters(live_store):
    # Everything after "whsec_" is secret, underscores included.
    masked = live_store.stripe_webhook_secret_masked
    assert masked == "whsec_…Z9x4"
    for fragment in ("Q7f", "kL2m", "secretbody"):
        assert fragment not in masked


@pytest.fixture
def admin_client(client, db):
    superuser = get_user_model().objects.create_superuser(
        username="root", email="root@example.com", password="pw-root-123"
    )
    client.force_login(superuser)
    return client


def test_admin_store_page_shows_masked_secrets_never_the_full_ones(admin_client, live_store):
    response = admin_client.get(f"/admin/stores/store/{live_store.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Live Shop" in html
    assert "sk_live_…9876" in html
    assert "secretbody" not in html
    assert SECRET_KEY not in html and WEBHOOK_SECRET not in html
    # Nor the ciphertext: it is no business of the page either.
    for raw in raw_columns(live_store):
        assert raw not in html
    # And no input that could echo a secret back.
    assert 'name="stripe_secret_key"' not in html
    assert 'name="stripe_webhook_secret"' not in html


def test_admin_store_list_and_add_page_never_show_a_secret(admin_client, live_store):
    listing = admin_client.get("/admin/stores/store/")
    assert listing.status_code == 200
    assert "Live Shop" in listing.content.decode()
    assert "secretbody" not in listing.content.decode()

    add = admin_client.get("/admin/stores/store/add/")
    assert add.status_code == 200
    assert "secretbody" not in add.content.decode()
