"""Operations: liveness, readiness, metrics, and the pipeline list.

``/health`` and ``/ready`` are always open (probes); ``/v1/models`` needs an API key when keys are
configured; ``/metrics`` takes an API key or ``server.metrics_token`` (Prometheus:
``authorization: {credentials: <metrics token>}``), and is open when neither is configured.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from agents.types import Method, Mode
from app.deps import Authorized, MetricsAuthorized, MetricsDep, RunnerDep, SettingsDep
from app.openapi import error_responses
from app.pipelines import ModelNotFound, Pipeline, pipelines

router = APIRouter(tags=["operations"])
_STARTED = int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "proreason"
    #: what the pipeline runs (extension)
    method: Method
    mode: Mode
    parallel_perception: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    #: role -> healthy
    backends: dict[str, bool]
    failed: list[str] = Field(default_factory=list)


@router.get("/health", response_model=Health, summary="Liveness (always open, no model calls)")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a backend is not healthy"}},
    summary="Readiness: every model backend healthy",
)
async def ready(runner: RunnerDep) -> JSONResponse:
    backends = await runner.readiness()
    failed = [role for role, ok in backends.items() if not ok]
    body = Readiness(status="unavailable" if failed else "ready", backends=backends, failed=failed)
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)


@router.get(
    "/metrics",
    dependencies=[MetricsAuthorized],
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
    return ModelList(data=[_card(p) for p in served.values()])


@router.get(
    "/v1/models/{model}",
    dependencies=[Authorized],
    response_model=ModelCard,
    responses=error_responses(401, 404),
    tags=["openai"],
    summary="One served pipeline (404 `model_not_found` for an unknown id)",
)
async def retrieve_model(model: str, settings: SettingsDep) -> ModelCard:
    served = pipelines(settings.server.served_model_prefix, settings.agent)
    if model not in served:
        raise ModelNotFound(
            f"The model '{model}' does not exist; available: {', '.join(served)}", param="model"
        )
    return _card(served[model])


def _card(p: Pipeline) -> ModelCard:
    return ModelCard(
        id=p.name,
        created=_STARTED,
        method=p.method,
        mode=p.mode,
        parallel_perception=p.parallel_perception,
    )
