"""The API's single error shape: {"error": {"code": ..., "message": ...}}."""

from rest_framework.response import Response
from rest_framework.views import exception_handler

from .errors import ApplicationError


def api_exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return Response(
            {"error": {"code": exc.code, "message": exc.message, **exc.extra}},
            status=exc.status_code,
        )
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
