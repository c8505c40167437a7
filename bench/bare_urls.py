"""The app's URLs plus /bench/bare/: the same middleware stack, no database, no work."""

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from config.urls import urlpatterns as app_urlpatterns


@csrf_exempt
@require_POST
def bare(request):
    request.body  # read the body as the webhook view does  # noqa: B018
    return JsonResponse({"received": True, "duplicate": False})


urlpatterns = [path("bench/bare/", bare), *app_urlpatterns]
