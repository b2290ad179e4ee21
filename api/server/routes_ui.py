"""``GET /ui/``: the web dashboard, served from files inside the package (``api/server/ui/``).

The files are read once, at import: only those names are served (nothing from a request reaches the
file system), each with a strong ETag of its content, so a browser revalidates instead of keeping an old
page after an upgrade. They hold no data and need no token (a browser cannot send one when it opens a
page); everything they show comes from the API, asked with the token the page keeps in the tab's
``sessionStorage`` and sends as ``Authorization: Bearer``. The Content-Security-Policy lets the page load
and connect to this server only.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from api.server import openapi
from api.server.errors import ApiError

routes = web.RouteTableDef()

PREFIX = "/ui/"
INDEX = "index.html"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file under ``api/server/ui`` by its path there (``vendor/uplot/uPlot.iife.min.js``)."""
    found: dict[str, Asset] = {}
    root = resources.files("api.server").joinpath("ui")

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            path = prefix + child.name
            if child.is_dir():
                walk(child, path + "/")
            elif not child.name.startswith("."):
                body = child.read_bytes()
                suffix = "." + child.name.rsplit(".", 1)[-1]
                kind = TYPES.get(suffix) or mimetypes.guess_type(child.name)[0] or "text/plain"
                found[path] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    walk(root, "")
    return found


ASSETS = load_assets()


@routes.get("/ui")
@openapi.describe("The dashboard (redirects to /ui/)", responses={"308": {"description": "to /ui/"}})
async def ui_redirect(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(PREFIX)


@routes.get("/ui/{asset:.*}")
@openapi.describe(
    "The dashboard's page and its assets (no data; the page asks the API with the token it keeps)",
    parameters=[{"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}],
    responses={
        "200": {"description": "the file", "content": {"text/html": {"schema": {"type": "string"}}}},
        "304": {"description": "not modified since the ETag the browser has"},
        "404": {
            "description": "no such file in the dashboard",
            "content": {openapi.JSON: {"schema": openapi.ref("Error")}},
        },
    },
)
async def ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"] or INDEX
    asset = ASSETS.get(name)
    if asset is None:
        raise ApiError(404, "NOT_FOUND", f"the dashboard has no file {name[:100]!r}")
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith("text/") else None
    response = web.Response(body=asset.body, content_type=asset.content_type, charset=charset, headers=headers)
    response.enable_compression()  # gzip when the browser accepts it: 81 KB of files become 32 KB
    return response
