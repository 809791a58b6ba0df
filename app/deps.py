"""Typed dependencies: the only place routes reach the app's services and settings."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ServiceStarting, Unauthorized
from app.media import MediaLoader
from app.metrics import Metrics
from app.runner import Runner
from app.settings import Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from server.api_keys (only when keys are configured).",
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_runner(request: Request) -> Runner:
    runner: Runner | None = getattr(request.app.state, "runner", None)
    if runner is None:  # only before the lifespan finished starting
        raise ServiceStarting("the service is starting; retry shortly")
    return runner


def get_media(request: Request) -> MediaLoader:
    media: MediaLoader | None = getattr(request.app.state, "media", None)
    if media is None:
        raise ServiceStarting("the service is starting; retry shortly")
    return media


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
MediaDep = Annotated[MediaLoader, Depends(get_media)]


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time comparison against every key (no early exit on the first match)."""
    given = token.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer API keys when ``server.api_keys`` is set; open otherwise."""
    keys = [k.get_secret_value() for k in settings.server.api_keys]
    if not keys:
        return
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if not key_matches(credentials.credentials, keys):
        raise Unauthorized("invalid API key")


async def require_metrics_access(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """/metrics: an API key or ``server.metrics_token`` (Prometheus needs no client key); open
    when neither is configured. The metrics token opens nothing else."""
    server = settings.server
    keys = [k.get_secret_value() for k in server.api_keys]
    if server.metrics_token is not None:
        keys.append(server.metrics_token.get_secret_value())
    if not keys:
        return
    if credentials is None:
        raise Unauthorized(
            "missing credentials: send 'Authorization: Bearer <API key or metrics token>'"
        )
    if not key_matches(credentials.credentials, keys):
        raise Unauthorized("invalid API key or metrics token")


Authorized = Depends(require_api_key)
MetricsAuthorized = Depends(require_metrics_access)
