"""Login limits that cannot be sidestepped: keyed on the username as Django's auth reads
it, on the client address as the proxy reports it, the same for the admin's login, held
in a store every process shares, and recorded for operators to see."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from stores.models import LoginLockout, RateCounter

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


def fail(client: Client, username: str, path: str = LOGIN, **extra):
    return client.post(path, {"username": username, "password": "wrong"}, **extra)


def right(client: Client, username: str = "olivia", path: str = LOGIN, **extra):
    return client.post(path, {"username": username, "password": "pw-olivia-123"}, **extra)


@pytest.mark.parametrize("variant", ["ｏlivia", "OLIVIA", " olivia", "ｏｌｉｖｉａ"])
def test_a_locked_username_stays_locked_however_it_is_spelled(store, operator, variant):
    for _ in range(5):
        assert fail(Client(), "olivia").status_code == 200
    response = right(Client(), variant)
    assert response.status_code == 429
    assert "Too many failed attempts" in response.content.decode()
    assert right(Client()).status_code == 429


def test_spelling_variants_count_as_one_username(store, operator):
    for variant in ["olivia", "ｏlivia", "OLIVIA", "Olivia", "ｏｌｉｖｉａ"]:
        fail(Client(), variant)
    assert right(Client()).status_code == 429
    assert LoginLockout.objects.get().username == "olivia"


def test_a_client_chosen_forwarded_for_header_does_not_reset_the_address_limit(store, operator):
    """Each attempt names another X-Forwarded-For, all from one address: the address's
    limit (four usernames' worth) still trips."""
    statuses = [
        fail(Client(), f"user{i}", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code
        for i in range(21)
    ]
    assert statuses[:20] == [200] * 20 and statuses[20] == 429
    lockout = LoginLockout.objects.get(scope="address")
    assert lockout.client_ip == "127.0.0.1"


def test_behind_a_trusted_proxy_the_address_is_the_one_the_proxy_saw(store, operator, settings):
    settings.CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    settings.TRUSTED_PROXY_COUNT = 1
    # The client prepends lies; the proxy appends the address it saw.
    for i in range(20):
        fail(Client(), f"user{i}", HTTP_X_FORWARDED_FOR=f"10.9.9.{i}, 198.51.100.7")
    assert fail(Client(), "x", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7").status_code == 429
    # Another client behind the same proxy is someone else.
    assert right(Client(), HTTP_X_FORWARDED_FOR="198.51.100.8").status_code == 302
    assert LoginLockout.objects.get(scope="address").client_ip == "198.51.100.7"


def test_the_admin_login_has_the_same_limits(store, operator):
    User.objects.create_superuser("root", "root@example.com", "root-pass-123")
    for _ in range(5):
        response = Client().post(
            "/admin/login/", {"username": "root", "password": "wrong", "next": "/admin/"}
        )
        assert response.status_code == 200
    locked = Client().post(
        "/admin/login/", {"username": "ｒoot", "password": "root-pass-123", "next": "/admin/"}
    )
    assert locked.status_code == 429
    assert "Too many failed attempts" in locked.content.decode()
    assert "_auth_user_id" not in locked.client.session
    # Failures at the admin count for the dashboard's login too: one username, one count.
    assert (
        Client().post(LOGIN, {"username": "root", "password": "root-pass-123"}).status_code == 429
    )


def test_the_limit_is_held_by_the_database_not_a_process(store, operator, settings):
    """No Redis: the counts are rows every process reads, not the process's memory (the
    cache being emptied is what another gunicorn worker would see)."""
    settings.REDIS_URL = ""
    for _ in range(5):
        fail(Client(), "olivia")
        cache.clear()
    assert RateCounter.objects.filter(key__startswith="recoup:rl:login:user:").get().count == 5
    assert right(Client()).status_code == 429


def test_a_right_password_clears_the_usernames_failures(store, operator):
    for _ in range(4):
        fail(Client(), "olivia")
    assert right(Client()).status_code == 302
    for _ in range(4):
        fail(Client(), "olivia")
    assert right(Client()).status_code == 302
    assert not LoginLockout.objects.exists()


def test_operators_see_their_members_lockouts_and_no_one_elses(store, operator, other_store):
    from stores.services import membership_create

    membership_create(store=other_store, username="mallory", role="operator", password="pw-m-12345")
    for _ in range(5):
        fail(Client(), "ｏlivia")
        fail(Client(REMOTE_ADDR="10.1.1.1"), "mallory")
    client = Client()
    assert right(client).status_code == 429  # locked: log in as the other operator's way
    client.force_login(operator)
    page = client.get(f"/s/{store.id}/settings/connections/").content.decode()
    assert "Login lockouts" in page and "<code>olivia</code>" in page
    assert "mallory" not in page
