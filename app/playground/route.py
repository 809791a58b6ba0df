"""``/``, ``/playground`` (static HTML, CSS and one ES module from package data) and ``/docs`` +
``/redoc`` with Swagger UI and ReDoc from the ``fastapi-offline`` wheel (no CDN, works offline)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
)
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(str(files("app.playground") / "static"))
#: Swagger UI and ReDoc bundles shipped by fastapi-offline (MIT; Swagger UI Apache-2.0, ReDoc MIT)
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

#: the page loads only its own files and talks only to its own origin (blob: previews the
#: images and the video the user chose)
PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

#: /docs and /redoc: their inline bootstrap scripts run, nothing is loaded from elsewhere (ReDoc's
#: sidebar would fetch its logo from the vendor's CDN)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ProReason</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; color: #111">
<h1>ProReason</h1>
<p>Visual reasoning as a service.</p>
<ul>
<li><a href="playground">Playground</a>: ask a question about images and watch every step</li>
<li><a href="docs">API reference</a> (Swagger UI) &middot; <a href="redoc">ReDoc</a></li>
</ul></body></html>
"""


def install_pages(app: FastAPI) -> None:
    """Mount the playground, the index and the offline docs (the app is built with
    ``docs_url=None, redoc_url=None``)."""
    app.mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML)

    @app.get("/playground", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": PLAYGROUND_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/playground/", include_in_schema=False)
    async def playground_slash() -> RedirectResponse:
        return RedirectResponse("../playground", status_code=308)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _with_csp(
            get_swagger_ui_html(
                openapi_url="openapi.json",
                title=f"{app.title} - API reference",
                swagger_js_url="docs-assets/swagger-ui-bundle.js",
                swagger_css_url="docs-assets/swagger-ui.css",
                swagger_favicon_url="docs-assets/favicon.png",
                oauth2_redirect_url=None,  # Bearer keys only, no OAuth flow
                # no badge fetched from the public validator
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _with_csp(
            get_redoc_html(
                openapi_url="openapi.json",
                title=f"{app.title} - ReDoc",
                redoc_js_url="docs-assets/redoc.standalone.js",
                redoc_favicon_url="docs-assets/favicon.png",
                with_google_fonts=False,
            )
        )


def _with_csp(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response
