"""`/ui`: the web UI, as built assets shipped inside the package (Consul's path).

The assets are built from ui/ with vite and committed under agent/ui_dist, so the UI works
offline and users need no Node toolchain; nothing is loaded from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

DIST = Path(__file__).resolve().parent.parent / "ui_dist"
routes = web.RouteTableDef()
_SECURITY_HEADERS = {
    # everything the UI needs is on this origin; no inline script, no framing
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@routes.get("/ui")
async def ui_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ui/")


@routes.get("/ui/")
async def ui_index(request: web.Request) -> web.StreamResponse:
    index = DIST / "index.html"
    if not index.is_file():
        raise web.HTTPNotFound(
            text="the web UI is not built into this package (ui/: npm run build)\n"
        )
    return web.FileResponse(index, headers=_SECURITY_HEADERS)


@routes.get("/ui/assets/{name}")
async def ui_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = DIST / "assets" / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    headers = {**_SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}
    return web.FileResponse(path, headers=headers)
