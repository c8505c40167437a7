"""Per-connection PostgreSQL session settings."""

from __future__ import annotations

from django.conf import settings


def session_settings_apply(sender, connection, **kwargs) -> None:
    """`connection_created`: SET each of settings.DATABASE_SESSION_SETTINGS on a new
    PostgreSQL connection (nothing elsewhere)."""
    wanted = getattr(settings, "DATABASE_SESSION_SETTINGS", {}) or {}
    if connection.vendor != "postgresql" or not wanted:
        return
    with connection.cursor() as cursor:
        for name, value in wanted.items():
            cursor.execute("SELECT set_config(%s, %s, false)", [name, str(value)])
