"""The API's single error shape: {"error": {"code": ..., "message": ...}}."""

import re

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from .errors import ApplicationError, NotFound


def api_exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return Response(
            {"error": {"code": exc.code, "message": exc.message, **exc.extra}},
            status=exc.status_code,
        )
    # Django's own (a generic view's get_object) as DRF's, so that their code is too.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = exception_handler(exc, context)
    if response is not None:
        detail = response.data
        message = (
            detail.get("detail") if isinstance(detail, dict) and "detail" in detail else detail
        )
        response.data = {
            "error": {
                "code": getattr(exc, "default_code", "error"),
                "message": str(message)
                if not isinstance(message, dict | list)
                else "invalid input",
                **(
                    {"fields": detail}
                    if isinstance(detail, dict) and "detail" not in detail
                    else {}
                ),
            }
        }
    return response


def has_nul(*values: str) -> bool:
    """Whether any value holds a NUL character. PostgreSQL text cannot: such a value names
    nothing stored, and the driver refuses even to compare with it (a DataError, a 500)."""
    return any("\x00" in value for value in values if isinstance(value, str))


_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable_text(value) -> bool:
    """Whether JSON data holds text PostgreSQL cannot store, in a key or a string at any
    depth: a NUL character, or a lone UTF-16 surrogate (what JSON's \\ud800 escapes
    decode to). DRF's CharField refuses both; a DictField or JSONField does not."""
    if isinstance(value, str):
        return "\x00" in value or _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(unstorable_text(k) or unstorable_text(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(unstorable_text(v) for v in value)
    return False


class NulFreePathMixin:
    """For API views: a path parameter with a NUL character names nothing (see `has_nul`),
    answered before the handler looks it up. `nul_in_path` says how, for a view whose path
    does not name something to look up."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if has_nul(*kwargs.values()):
            raise self.nul_in_path(request)

    def nul_in_path(self, request) -> ApplicationError:
        return NotFound("Nothing in this store has that identifier.", code="not_found")


def api_not_found(request, path: str = ""):
    """Any /api/ address no endpoint answers: a 404 in the API's error shape, not
    Django's HTML page (the catch-all route at the end of config/api_urls.py). An address
    that only lacks its trailing slash is redirected, as APPEND_SLASH did before the
    catch-all matched everything."""
    from django.http import HttpResponsePermanentRedirect, JsonResponse
    from django.urls import Resolver404, resolve

    if request.method in ("GET", "HEAD") and not request.path_info.endswith("/"):
        try:
            match = resolve(request.path_info + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            query = request.META.get("QUERY_STRING", "")
            return HttpResponsePermanentRedirect(
                request.path + "/" + (f"?{query}" if query else "")
            )
    return JsonResponse(
        {
            "error": {
                "code": "not_found",
                "message": "No API endpoint at this address; the schema is at /api/schema/.",
            }
        },
        status=404,
    )
