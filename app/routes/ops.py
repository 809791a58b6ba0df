"""Operations: liveness, readiness, metrics, and the pipeline list.

``/health`` and ``/ready`` are always open (probes); ``/metrics`` and ``/v1/models`` need the API
key when keys are configured (Prometheus: ``authorization: {credentials: <key>}``).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.deps import Authorized, MetricsDep, ServiceDep, SettingsDep
from app.pipelines import pipelines
from app.routes.docs import error_responses
from app.schemas import Health, ModelCard, ModelList, Readiness

router = APIRouter(tags=["operations"])
_STARTED = int(time.time())


@router.get("/health", response_model=Health, summary="Liveness (always open, no model calls)")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a backend is not healthy"}},
    summary="Readiness: every model backend healthy",
)
async def ready(service: ServiceDep) -> JSONResponse:
    backends = await service.readiness()
    failed = [role for role, ok in backends.items() if not ok]
    body = Readiness(status="unavailable" if failed else "ready", backends=backends, failed=failed)
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)


@router.get(
    "/metrics",
    dependencies=[Authorized],
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **error_responses(401),
    },
    response_class=Response,
    summary="Prometheus metrics",
)
async def metrics(registry: MetricsDep) -> Response:
    return Response(registry.render(), media_type=registry.content_type)


@router.get(
    "/v1/models",
    dependencies=[Authorized],
    response_model=ModelList,
    responses=error_responses(401),
    tags=["openai"],
    summary="The served pipelines (use as `model` in chat completions)",
)
async def list_models(settings: SettingsDep) -> ModelList:
    served = pipelines(settings.server.served_model_prefix, settings.agent)
    cards = [
        ModelCard(
            id=p.name,
            created=_STARTED,
            method=p.method,
            mode=p.mode,
            parallel_perception=p.parallel_perception,
        )
        for p in served.values()
    ]
    return ModelList(data=cards)
