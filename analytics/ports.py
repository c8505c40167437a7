"""The analytics app's side of recovery's ports (`recovery.ports`), plugged in at app start."""

from __future__ import annotations

from recovery import ports

from .services import rollups_refresh


def connect() -> None:
    ports.rollups_refresh.plug(rollups_refresh)
