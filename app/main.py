"""The app factory and the server entry point.

create_app(settings)                  the lifespan builds and starts the backends (ASGI factory use)
create_app(settings, models=...)      bring your own ModelSet (you close it): tests, run_server
run_server(settings)                  open the models, then uvicorn on server.host:server.port
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from agents.types import ModelSet
from app import ops
from app.backends import close_models, open_models
from app.chat.route import router as chat_router
from app.errors import install_error_handlers
from app.logs import configure_logging
from app.media import MediaLoader
from app.metrics import Metrics
from app.middleware import EdgeMiddleware
from app.openapi import install_openapi
from app.playground.route import install_pages
from app.reason.route import router as reason_router
from app.runner import Runner
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
ProReason visual reasoning as a service: an LVLM perceives proactively (question-driven), a text
LLM reasons over what it saw, until a referee judges the evidence sufficient.

- `POST /v1/reason` (JSON) and `POST /v1/reason/upload` (multipart): the native API, with the
  trace of every model call and server-sent events (`stream: true`).
- `POST /v1/chat/completions`: OpenAI-compatible; `model` picks the pipeline (see `/v1/models`);
  agent steps stream as `delta.reasoning`; `{"proreason": {"trace": true}}` adds the trace.
- Errors use the OpenAI envelope `{"error": {"message", "type", "param", "code", "request_id"}}`.
- Auth: `Authorization: Bearer <key>` when `server.api_keys` is set (`/health`, `/ready` stay open).
"""


def create_app(
    settings: Settings,
    *,
    models: ModelSet | None = None,
    media_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """Build the app. Backends are built and started in the lifespan (once), unless ``models``
    is given; then the caller owns them. ``media_client`` replaces the media loader's HTTP client.
    """
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model_set = models if models is not None else await open_models(settings.models)
        media = MediaLoader(settings.media, client=media_client)
        app.state.media = media
        app.state.runner = Runner(settings=settings, models=model_set, metrics=metrics)
        if settings.server.open_to_network:  # only with server.allow_unauthenticated
            log.warning(
                "serving without authentication on a non-loopback host "
                "(server.allow_unauthenticated is true, server.api_keys is empty)",
                extra={"host": settings.server.host},
            )
        log.info("service ready", extra={"profile": settings.profile})
        try:
            yield
        finally:
            app.state.runner = app.state.media = None
            try:
                await media.aclose()
            finally:
                if models is None:
                    await close_models(model_set)

    app = FastAPI(
        title="ProReason",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_pages (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runner = app.state.media = None
    install_error_handlers(app)
    app.add_middleware(
        EdgeMiddleware, max_body_bytes=settings.server.max_body_bytes, metrics=metrics
    )
    app.include_router(reason_router)
    app.include_router(chat_router)
    app.include_router(ops.router)
    install_openapi(app, secured=bool(settings.server.api_keys))
    install_pages(app)
    if settings.server.cors_origins:  # outermost: errors (401, 413, 429 ...) carry the headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        )
    return app


def run_server(settings: Settings) -> None:
    """Serve on ``server.host:server.port`` until interrupted (JSON logs on stderr).

    The models are opened before the server binds its port, in the server's own event loop: a
    model that cannot be loaded raises ``ModelLoadError`` (one line for the CLI), not a lifespan
    traceback, and nothing listens until the service can answer.
    """
    configure_logging(settings.server.log_level)
    try:
        import uvloop  # uvicorn[standard] brings it; +12-24% questions/s in the benchmarks
    except ImportError:
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    models = await open_models(settings.models)
    try:
        config = uvicorn.Config(
            create_app(settings, models=models),
            host=settings.server.host,
            port=settings.server.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
        await uvicorn.Server(config).serve()
    finally:
        await close_models(models)
