"""The OpenAPI schema's error responses, declared on every operation by the schema class.

Every API error has one shape (common/api.py): {"error": {"code", "message", "fields"?}}.
`RecoupAutoSchema` (REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]) adds it to each operation for
the statuses the operation can answer with, read from the view itself:

    400  the operation takes a request body (it may not parse, or not validate)
    415  the same, sent as a media type the view does not parse
    401  the view authenticates (a missing, malformed or revoked token)
    403  a permission can refuse an authenticated request (or the first authenticator
         sends no WWW-Authenticate challenge: DRF then answers 403 instead of 401)
    404  a path parameter is looked up, or the list is paginated (a page that does not exist)
    429  the view is throttled

What the view's code decides on its own (a query filter checked by hand, a 409 from a
service, a path parameter that is not looked up) it states with `api_errors` on the view
class or the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import uritemplate
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import force_instance, is_list_serializer, is_serializer
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from rest_framework import permissions, serializers

from stores.auth import HasStore

ERROR_DESCRIPTIONS = {
    400: "The request is malformed or did not validate; `fields` says which input is wrong.",
    401: "No API token, a malformed Authorization header, or an unknown or revoked token.",
    403: "The token may not do this.",
    404: "Nothing with this identifier in the token's store (or a page that does not exist).",
    409: "The request is valid but clashes with the state of what it names.",
    415: "The body's Content-Type is not one this operation reads (send application/json).",
    429: "Too many requests: try again later.",
}

# Permissions that refuse only a request without a store token (answered 401, not 403).
_AUTHENTICATION_ONLY = (HasStore, permissions.AllowAny, permissions.IsAuthenticated)


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable: not_found, invalid, …")
    message = serializers.CharField(help_text="What went wrong, for a person.")
    fields = serializers.DictField(
        required=False,
        help_text="Per input field (or list index), what is wrong with it; only for "
        "validation errors.",
    )
    # Some errors carry more members (e.g. insufficient_stock: sku, wanted, available);
    # the schema leaves additional properties open for them.


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


def error_response(status: int) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS.get(status, ""))


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The error responses for `statuses`, for an explicit `extend_schema(responses=…)`."""
    return {status: error_response(status) for status in statuses}


def api_errors(*add: int, without: Iterable[int] = ()) -> Callable:
    """Error statuses of a view (class) or one handler (method) that the schema class
    cannot infer (`add`), or that it infers but that cannot happen (`without`)."""

    def decorate(target):
        target.api_errors = (frozenset(add), frozenset(without))
        return target

    return decorate


def _is_form(media_type: str) -> bool:
    return media_type == "application/x-www-form-urlencoded" or media_type.startswith("multipart/")


def _proxied(serializer: PolymorphicProxySerializer) -> list:
    proxied = serializer.serializers
    return list(proxied.values()) if isinstance(proxied, dict) else list(proxied)


def _form_encodable(serializer) -> bool:
    serializer = force_instance(serializer)
    if isinstance(serializer, PolymorphicProxySerializer):
        return all(_form_encodable(s) for s in _proxied(serializer))
    if is_list_serializer(serializer) or not is_serializer(serializer):
        return False
    for field in serializer.fields.values():
        if field.read_only:
            continue
        if isinstance(field, serializers.ListField):
            field = field.child
        if isinstance(
            field,
            serializers.BaseSerializer
            | serializers.DictField
            | serializers.JSONField
            | serializers.ListField
            | serializers.HStoreField,
        ):
            return False
    return True


def _has_required_field(serializer) -> bool:
    return any(f.required and not f.read_only for f in serializer.fields.values())


class RecoupAutoSchema(AutoSchema):
    def _get_paginator(self):
        # Only a GET list paginates (ListModelMixin.list); another handler of a list view
        # (InventoryView.post) answers with a plain list.
        if self.method != "GET":
            return None
        return super()._get_paginator()

    def map_parsers(self):
        # A form (urlencoded or multipart) carries flat fields only: DRF reads no list of
        # objects, nor an object, from one. A body with such a field is JSON only.
        media_types = super().map_parsers()
        serializer = self.get_request_serializer()
        if serializer is not None and not _form_encodable(serializer):
            media_types = [m for m in media_types if not _is_form(m)] or media_types
        return media_types

    def _get_request_for_media_type(self, serializer, direction="request"):
        # drf-spectacular documents every PATCH body as partial (all fields optional).
        # A serializer that the view validates whole says so with `partial_on_patch = False`.
        if self.method == "PATCH" and getattr(serializer, "partial_on_patch", True) is False:
            self.method = "PUT"
            try:
                return super()._get_request_for_media_type(serializer, direction)
            finally:
                self.method = "PATCH"
        schema, required = super()._get_request_for_media_type(serializer, direction)
        if isinstance(serializer, PolymorphicProxySerializer):
            # One of several bodies: required when each of them has a required field.
            required = all(_has_required_field(force_instance(s)) for s in _proxied(serializer))
        return schema, required

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # A list of objects (`many=True`) keeps its bounds, as a ListField's are kept.
        if is_list_serializer(field) and isinstance(schema, dict) and schema.get("type") == "array":
            if field.min_length is not None:
                schema["minItems"] = field.min_length
            elif field.allow_empty is False:
                schema["minItems"] = 1
            if field.max_length is not None:
                schema["maxItems"] = field.max_length
        return schema

    def _declared_api_errors(self) -> tuple[set[int], set[int]]:
        add: set[int] = set()
        without: set[int] = set()
        handler = getattr(self.view, self.method.lower(), None)
        for target in (self.view.__class__, getattr(handler, "__func__", handler)):
            more, fewer = getattr(target, "api_errors", ((), ()))
            add |= set(more)
            without |= set(fewer)
        return add, without

    def error_statuses(self) -> set[int]:
        """The error statuses this operation can answer with."""
        view = self.view
        statuses: set[int] = set()
        if self.method in ("POST", "PUT", "PATCH"):
            statuses |= {400, 415}
        authenticators = view.get_authenticators()
        if authenticators:
            # DRF answers a refused token 401 with the first authenticator's challenge,
            # 403 when it has none.
            challenge = authenticators[0].authenticate_header(view.request)
            statuses.add(401 if challenge else 403)
        if any(not isinstance(p, _AUTHENTICATION_ONLY) for p in view.get_permissions()):
            statuses.add(403)
        if uritemplate.variables(self.path) or (self._is_list_view() and self._get_paginator()):
            statuses.add(404)
        if view.get_throttles():
            statuses.add(429)
        add, without = self._declared_api_errors()
        return (statuses | add) - without

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self.error_statuses():
            code = str(status)
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    error_response(status), code, direction=direction
                )
        return dict(sorted(responses.items()))
