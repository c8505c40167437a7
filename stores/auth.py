"""API authentication: a store-scoped bearer token. A token never sees another store."""

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from .services import api_token_lookup


class StoreTokenAuthentication(authentication.BaseAuthentication):
    keywords = ("Bearer", "Token")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header:
            return None
        if header[0] not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Send the header as 'Authorization: Bearer <token>'."
            )
        token = api_token_lookup(header[1])
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API token.")
        request.store = token.store
        return (AnonymousUser(), token)

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class HasStore(permissions.BasePermission):
    message = "Authenticate with a store API token: 'Authorization: Bearer <token>'."

    def has_permission(self, request, view):
        return getattr(request, "store", None) is not None


class StoreTokenScheme(OpenApiAuthenticationExtension):
    """Documents the store token in the OpenAPI schema."""

    target_class = "stores.auth.StoreTokenAuthentication"
    name = "StoreToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A store API token (rk_…)"}
