"""Production settings, loaded the way a deployment loads them: a fresh process, env only.

The test settings put test secrets into os.environ, so each subprocess gets a clean
environment built here rather than a copy of ours.
"""

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

BASE_DIR = Path(__file__).resolve().parent.parent


def production_env(**overrides: str | None) -> dict[str, str]:
    # No "$": django-environ would read a leading one as a reference to another variable.
    alphabet = string.ascii_letters + string.digits + "!@%^&*(-_=+)"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "".join(secrets.choice(alphabet) for _ in range(60)),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "recoup.example.com",
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(autouse=True)
def no_dotenv_overrides():
    # settings.py reads BASE_DIR/.env; a developer's DEBUG=1 there would make these
    # tests prove nothing.
    dotenv = BASE_DIR / ".env"
    if dotenv.exists() and "DEBUG" in dotenv.read_text():
        pytest.fail(f"{dotenv} sets DEBUG; these tests need the production defaults")


def test_check_deploy_passes_with_production_environment():
    env = production_env()
    assert "DEBUG" not in env
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_settings_refuse_to_load_without_secret_key_outside_debug():
    result = manage("check", env=production_env(SECRET_KEY=None))

    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_settings_refuse_to_load_without_encryption_keys_outside_debug():
    result = manage("check", env=production_env(FIELD_ENCRYPTION_KEYS=None))

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS" in result.stderr


def test_debug_runs_without_any_secret_configured():
    # The embedded default (`make run`) works with nothing set.
    result = manage(
        "check",
        env=production_env(SECRET_KEY=None, FIELD_ENCRYPTION_KEYS=None, DEBUG="1"),
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_production_serves_its_static_files_under_hashed_names(tmp_path):
    """gunicorn alone serves the dashboard's CSS in production (WhiteNoise), under a
    content-hashed name that may be cached for ever."""
    env = production_env()
    collected = manage("collectstatic", "--noinput", "-v0", env=env)
    assert collected.returncode == 0, collected.stderr
    script = (
        "import django; django.setup()\n"
        "from django.templatetags.static import static\n"
        "from django.test import Client\n"
        "url = static('dashboard/app.css')\n"
        "r = Client(HTTP_HOST='recoup.example.com').get(url, secure=True)\n"
        "print(url, r.status_code, r.headers.get('Cache-Control'), len(b''.join(r)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    url, status, *cache, size = result.stdout.split()
    assert url.startswith("/static/dashboard/app.") and url.endswith(".css")
    assert url != "/static/dashboard/app.css"  # hashed
    assert status == "200" and int(size) > 100
    assert "max-age=315360000" in " ".join(cache)


@pytest.mark.parametrize(("flag", "expected"), [(None, "True 2"), ("false", "False None")])
def test_postgresql_statements_are_prepared_unless_turned_off_for_a_pooler(flag, expected):
    # Read from the settings alone (no connection is opened): on by default; off for a
    # transaction-mode pooler that does not track prepared statements.
    env = production_env(
        DATABASE_URL="postgres://recoup@db.example.com:5432/recoup",
        DATABASE_PREPARED_STATEMENTS=flag,
    )
    code = (
        "from django.conf import settings; o = settings.DATABASES['default'].get('OPTIONS', {}); "
        "print(o.get('server_side_binding', False), o.get('prepare_threshold'))"
    )
    result = manage("shell", "-c", code, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
