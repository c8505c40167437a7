"""One application error type and one error shape, for the API and the services."""

from __future__ import annotations


class ApplicationError(Exception):
    """A domain rule was broken; the message tells a person what to do about it."""

    status_code = 400

    def __init__(self, message: str, *, code: str = "invalid", extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra or {}


class NotFound(ApplicationError):
    status_code = 404
