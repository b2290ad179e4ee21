"""Bearer-token authentication (``PARALLAX_API_TOKEN``), and the rule that keeps a token-less API local.

Every route needs ``Authorization: Bearer <token>`` when a token is configured, except the probes
(``/healthz``, ``/readyz``), the dashboard's static files (``/ui/...``: no data, and a browser opening a
page cannot send the header; the page then asks the API with the token) and, when
``PARALLAX_METRICS_AUTH`` is off, ``/metrics``. Tokens are
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from aiohttp import web

from api.server.errors import Handler, error_response
from api.server.state import SETTINGS
from controller.config import ConfigError, Settings

log = logging.getLogger("parallax.api")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"
UI_PATH = "/ui"
MIN_TOKEN_LENGTH = 16


def is_open(path: str, settings: Settings) -> bool:
    return (
        path in OPEN_PATHS
        or path == UI_PATH
        or path.startswith(UI_PATH + "/")
        or (path == METRICS_PATH and not settings.metrics_auth)
    )


def token_matches(header: str | None, token: str) -> bool:
    """``header`` is ``Bearer <token>``; compared as bytes, so any input is judged in constant time."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    token = settings.api_token
    if token is None or is_open(request.path, settings):
        return await handler(request)
    if token_matches(request.headers.get("Authorization"), token):
        return await handler(request)
    response = error_response(
        401, "UNAUTHORIZED", "missing or invalid bearer token (send the header Authorization: Bearer <token>)"
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="parallax"'
    return response


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> str | None:
    """Refuse (``ConfigError``) to serve a token-less API beyond this machine; return a warning to log
    when the API is token-less on loopback, or the token is short."""
    if settings.api_token is None:
        if not is_loopback(settings.host):
            raise ConfigError(
                f"PARALLAX_HOST: refusing to listen on {settings.host} without PARALLAX_API_TOKEN; "
                "anyone who reaches this API can start containers (root on this host). Set a token or bind 127.0.0.1"
            )
        return (
            f"no PARALLAX_API_TOKEN: the API is unauthenticated and listens on {settings.host} only; "
            "anyone with a shell on this machine can use it"
        )
    if len(settings.api_token) < MIN_TOKEN_LENGTH:
        return f"PARALLAX_API_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters; use a long random token"
    return None
