"""Settings of the test OpenID Connect provider (django-oidc-provider).

A throwaway identity provider on loopback for Cairn's end-to-end tests, configured
by environment variables (tests/src/oidc.rs sets them):

* CAIRN_OIDC_DB (required): path of the sqlite database.
* CAIRN_OIDC_SITE_URL: the server's own URL, e.g. http://127.0.0.1:PORT; the issuer
  is that plus /openid whatever Host header a request carries. Without it the
  issuer follows each request's Host.
* CAIRN_OIDC_DEBUG=1: Django's debug pages.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# A test provider's own key: it signs sessions and CSRF tokens, nothing else.
SECRET_KEY = os.environ.get(
    "CAIRN_OIDC_SECRET_KEY", "cairn-test-oidc-provider-not-a-secret-0123456789abcdef"
)
DEBUG = os.environ.get("CAIRN_OIDC_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

SITE_URL = os.environ.get("CAIRN_OIDC_SITE_URL") or None

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "oidc_provider",
    "cairn_oidc",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cairn_oidc.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

WSGI_APPLICATION = None

_db = os.environ.get("CAIRN_OIDC_DB")
if not _db:
    raise ImproperlyConfigured("set CAIRN_OIDC_DB to the path of the provider's sqlite database")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _db,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's documented choice for test suites: PBKDF2's million rounds would cost
# each provisioned user and each login most of a second on a 2-core machine.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Served by `runserver --insecure` although DEBUG is off (the login page needs none).
STATIC_URL = "static/"

# Django's own login view with this app's plain form (registration/login.html).
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/accounts/login/"

# Browsers send a host's cookies to every port of it: name them after the port, so
# that two providers (or a provider and the application under test) on 127.0.0.1
# never overwrite each other's session or CSRF cookie.
_port = urlsplit(SITE_URL).port if SITE_URL else None
_suffix = f"_{_port}" if _port else ""
SESSION_COOKIE_NAME = f"cairn_oidc_session{_suffix}"
CSRF_COOKIE_NAME = f"cairn_oidc_csrftoken{_suffix}"

# django-oidc-provider.
OIDC_USERINFO = "cairn_oidc.claims.userinfo"
OIDC_EXTRA_SCOPE_CLAIMS = "cairn_oidc.claims.CairnScopeClaims"
# The ID token carries the claims of its scopes too (email, groups, ...), not only
# the userinfo endpoint.
OIDC_IDTOKEN_INCLUDE_CLAIMS = True

# Everything to stderr, which the harness keeps in a file: requests (django.server),
# errors with their tracebacks (DEBUG is off, so Django would otherwise mail them),
# and django-oidc-provider's reasons for refusing a request (logged at debug level).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        "oidc_provider": {"level": "DEBUG"},
    },
}
