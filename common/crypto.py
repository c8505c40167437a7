"""Encryption at rest for store secrets (Stripe keys, webhook signing secrets).

Keys come from FIELD_ENCRYPTION_KEYS (Fernet keys, newest first). In DEBUG without a
key, one is derived from SECRET_KEY so that the embedded default works out of the box.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        if not settings.DEBUG:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS must be set outside DEBUG.")
        digest = hashlib.sha256(("recoup-field-encryption:" + secret_key).encode()).digest()
        keys = (base64.urlsafe_b64encode(digest).decode(),)
    try:
        return MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds an invalid key; generate one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`."
        ) from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS; "
            "was the key changed without keeping the old one?"
        ) from exc


def mask(value: str, *, keep: int = 4) -> str:
    """What a person may see of a secret: its prefix kind and last characters."""
    if not value:
        return ""
    parts = value.split("_")
    head = ""
    if len(parts) > 1 and parts[0].isalpha() and len(parts[0]) <= 6:
        head = parts[0] + "_"
        if len(parts) > 2 and parts[1] in ("test", "live"):
            head += parts[1] + "_"
    return f"{head}…{value[-keep:]}"


class EncryptedTextField(models.TextField):
    """Stores Fernet ciphertext; Python code sees the plain value."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)
