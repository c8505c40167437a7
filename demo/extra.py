"""The demo extra's modules, asked for by name, with a clear error where they are missing."""

from __future__ import annotations

import importlib

from django.core.management.base import CommandError


def require(module: str, what: str) -> None:
    """Import `module` or stop the command: a production install leaves the extra out."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise CommandError(
            f"{module.replace('_', '-')} {what}; it comes with the demo extra: "
            "pip install -e '.[demo]' (make run installs it)."
        ) from exc
