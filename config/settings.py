"""Recoup settings, read from the environment (django-environ).

Nothing here talks to the network or reads Stripe settings at import time:
clients are built on demand (see recovery/gateways/stripe.py).
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-secret-key-change-me-0123456789")
else:
    SECRET_KEY = env.str("SECRET_KEY")  # required outside DEBUG

# Fernet key(s) that encrypt store secrets at rest: comma-separated, newest first, so a
# key can be rotated. Outside DEBUG it must be set explicitly.
if DEBUG:
    FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])
else:
    FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS")

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Public base address used in links sent to customers (e.g. https://recoup.example.com).
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_q",
    "stores",
    "subscriptions",
    "orders",
    "recovery",
    "messaging",
    "analytics",
    # The demo store and `simulate`: commands only; no product app imports it.
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the dashboard's and pay page's static files from the app server itself
    # (compressed, cached for ever under hashed names): no separate static host needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server and the django-q2 worker share the embedded database.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 20)
    DATABASES["default"]["OPTIONS"].setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # Parameters bound on the server, and a statement sent twice on a connection prepared
    # there (psycopg's own default is five): PostgreSQL parses and plans the ORM's
    # repeated statements once per connection. Off behind a transaction-mode pooler that
    # does not track prepared statements (PgBouncer before 1.21, or without
    # max_prepared_statements).
    if env.bool("DATABASE_PREPARED_STATEMENTS", default=True):
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            server_side_binding=True, prepare_threshold=2
        )
        # A prepared statement is still planned for its parameters each time it runs
        # (parsed once): a generic plan cannot use a partial index whose condition the
        # parameters decide (a charge's id, "open" cases due, "pending" events), and with
        # statistics behind a burst's growth PostgreSQL picks one that reads the whole
        # store for each event (common.db, on each new connection).
        DATABASE_SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Covering indexes (INCLUDE) serve the analytics home on PostgreSQL; SQLite, the embedded
# default, builds them without the extra columns, which is harmless: don't warn about it.
SILENCED_SYSTEM_CHECKS = ["models.W040"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

LOGIN_URL = "/admin/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["stores.auth.StoreTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["stores.auth.HasStore"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # drf-spectacular's, declaring the error responses of every operation (common/schema.py).
    "DEFAULT_SCHEMA_CLASS": "common.schema.RecoupAutoSchema",
    "EXCEPTION_HANDLER": "common.api.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON bounded in size and depth before it is parsed (common/bodies.py).
    "DEFAULT_PARSER_CLASSES": [
        "common.bodies.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Recoup API",
    "DESCRIPTION": "Failed-payment recovery: cases, customers, access state.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Separate request and response components: a request's strings that may not be blank
    # say so (minLength), and read-only fields appear in responses only.
    "COMPONENT_SPLIT_REQUEST": True,
    # Path parameters as Django's converters match them: an int is digits only, a str is
    # anything but a slash. Another value never reaches a view (the router answers 404).
    "PATH_CONVERTER_OVERRIDES": {
        "int": {"type": "integer", "minimum": 0},
        "str": {"type": "string", "pattern": "^[^/]+$"},
    },
    "ENUM_NAME_OVERRIDES": {
        "CaseStatusEnum": "recovery.models.RecoveryCase.Status",
        "OrderStatusEnum": "orders.models.Order.Status",
    },
}

# Stripe: optional other base address for the API (a local sandbox or a test server).
# Read when a client is built, never at import (see recovery/gateways/stripe.py).
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_WEBHOOK_TOLERANCE = env.int("STRIPE_WEBHOOK_TOLERANCE", default=300)
# Every Stripe call of a store is paced within its account's rate limit (store.stripe_rate)
# times this headroom, across all workers (through Redis with REDIS_URL, else the
# database); a call whose slot is further away than the max wait is not sent ("try later").
RECOUP_STRIPE_RATE_HEADROOM = env.float("RECOUP_STRIPE_RATE_HEADROOM", default=0.9)
RECOUP_STRIPE_MAX_WAIT_SECONDS = env.float("RECOUP_STRIPE_MAX_WAIT_SECONDS", default=30.0)

# django-q2: Redis as the broker when REDIS_URL is set (several machines share one
# PostgreSQL), otherwise the ORM broker in the project's own database.
REDIS_URL = env.str("REDIS_URL", default="")
# The scheduler's pass (recovery/scheduler.py): how many gateway calls a batch has in the
# air at once, and for how long one pass claims new batches before leaving the rest to the
# next pass. Its last batch may then take up to batch.SEND_WITHIN (4 minutes) to send, and
# the sweeps after it (scheduled SMS, read-backs) a while more: Q_TIMEOUT stays well above
# the sum. A pass cut short by the timeout is safe (leases and read-backs cover it), only
# wasteful.
RECOUP_GATEWAY_CONCURRENCY = env.int("RECOUP_GATEWAY_CONCURRENCY", default=8)
# A case opened without Stripe's decline waits this long for the read-back before it is
# classified conservatively (a later answer reclassifies it).
RECOUP_DECLINE_LOOKUP_SECONDS = env.int("RECOUP_DECLINE_LOOKUP_SECONDS", default=900)
RECOUP_LOOKUP_CONCURRENCY = env.int("RECOUP_LOOKUP_CONCURRENCY", default=8)
# How long one intake worker task claims and processes stored events before the next
# (django-q2 starts one a minute; several may run at once, on any machine).
RECOUP_INTAKE_SECONDS = env.int("RECOUP_INTAKE_SECONDS", default=58)
RECOUP_PASS_SECONDS = env.int("RECOUP_PASS_SECONDS", default=240)
Q_TIMEOUT = env.int("Q_TIMEOUT", default=600)
Q_CLUSTER = {
    "name": "recoup",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": Q_TIMEOUT,
    "retry": Q_TIMEOUT + 60,  # django-q2: must exceed the timeout
    "max_attempts": 3,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Tasks",
    "sync": env.bool("Q_SYNC", default=False),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 1

EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.console.EmailBackend",
)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@recoup.localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- dashboard
# The merchant dashboard (analytics, cases, the escalation queue, settings).
INSTALLED_APPS += ["support"]  # the escalation queue and churn signals
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
# Login rate limit: failed attempts per username (normalised as Django's auth does) and
# per client address in a window, for the dashboard's and the admin's login alike.
LOGIN_RATE_LIMIT = env.int("LOGIN_RATE_LIMIT", default=5)
LOGIN_RATE_WINDOW_SECONDS = env.int("LOGIN_RATE_WINDOW_SECONDS", default=900)
# The client's address behind a proxy (stores/client_ip.py): the request header the
# proxy sets (e.g. HTTP_X_FORWARDED_FOR or HTTP_X_REAL_IP; unset: REMOTE_ADDR) and how
# many proxies append to it. Used by every rate limit; never trusted for anything else.
CLIENT_IP_HEADER = env.str("CLIENT_IP_HEADER", default="") or env.str(
    "PAY_CLIENT_IP_HEADER", default=""
)
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=1)
# Rate limits count in Redis with REDIS_URL, in the database otherwise
# (stores/ratelimit.py): shared by every process either way. The cache itself (Redis, or
# per process) holds nothing a limit depends on.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}
SESSION_COOKIE_HTTPONLY = True

# --- messaging (customer email/SMS, provider webhooks, the /pay/ page)
# Email: Postmark through postmarker's Django backend when POSTMARK_SERVER_TOKEN is set
# (and EMAIL_BACKEND is not), otherwise the EMAIL_BACKEND above (console by default).
POSTMARK_SERVER_TOKEN = env.str("POSTMARK_SERVER_TOKEN", default="")
POSTMARK_MESSAGE_STREAM = env.str("POSTMARK_MESSAGE_STREAM", default="outbound")
POSTMARK_API_BASE = env.str("POSTMARK_API_BASE", default="")  # another address (tests)
POSTMARK_WEBHOOK_SECRET = env.str("POSTMARK_WEBHOOK_SECRET", default="")
POSTMARK = {
    "TOKEN": POSTMARK_SERVER_TOKEN or None,
    "TEST_MODE": env.bool("POSTMARK_TEST_MODE", default=False),
    "TRACK_OPENS": env.bool("POSTMARK_TRACK_OPENS", default=True),
}
if POSTMARK_SERVER_TOKEN and not env.str("EMAIL_BACKEND", default=""):
    EMAIL_BACKEND = "messaging.email.PostmarkEmailBackend"
# SMS: messaging.sms.console (default), .locmem (tests) or .twilio.
SMS_BACKEND = env.str("SMS_BACKEND", default="messaging.sms.console.SmsBackend")
TWILIO_ACCOUNT_SID = env.str("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env.str("TWILIO_AUTH_TOKEN", default="")
TWILIO_FROM = env.str("TWILIO_FROM", default="")
TWILIO_MESSAGING_SERVICE_SID = env.str("TWILIO_MESSAGING_SERVICE_SID", default="")
TWILIO_API_BASE = env.str("TWILIO_API_BASE", default="")  # another address (tests)
# Limits per recovery case, the gap between two messages on a channel, SMS quiet hours.
MESSAGING_MAX_EMAILS_PER_CASE = env.int("MESSAGING_MAX_EMAILS_PER_CASE", default=4)
MESSAGING_MAX_SMS_PER_CASE = env.int("MESSAGING_MAX_SMS_PER_CASE", default=2)
MESSAGING_MIN_HOURS_BETWEEN = env.int("MESSAGING_MIN_HOURS_BETWEEN", default=48)
MESSAGING_SMS_QUIET_HOURS = tuple(env.list("MESSAGING_SMS_QUIET_HOURS", cast=int, default=[21, 8]))
# Pay page: Stripe's publishable key when a store has none of its own.
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
