"""OpenAPI: the error responses (all share the OpenAI error envelope) and the spec itself."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas import ErrorResponse

_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a bad field, an unacceptable image (format, pixels, "
    "SSRF target ...), too many images, or a prompt too long for the model",
    401: "Missing or invalid API key (only when server.api_keys is set)",
    404: "Unknown model (code `model_not_found`) or route",
    413: "Request body larger than server.max_body_bytes",
    429: "Too many questions in flight; retry after the `Retry-After` seconds",
    502: "A model server refused or failed a request we built",
    503: "A model is unavailable or not loaded (or the service is starting)",
    504: "The request deadline expired (the body carries the steps done so far) or a model timed "
    "out",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    chosen = codes or tuple(_DESCRIPTIONS)
    return {c: {"model": ErrorResponse, "description": _DESCRIPTIONS[c]} for c in chosen}


REASONING_ERRORS = error_responses(400, 401, 404, 413, 429, 502, 503, 504)


def event_stream(description: str, *, event: str, data: str) -> dict[str, Any]:
    """A 200 that is JSON or, with ``stream: true``, server-sent events. Before OpenAPI 3.2
    (which adds ``itemSchema``), the ``schema`` of ``text/event-stream`` describes ONE event, an
    object with the SSE fields (how schemathesis and OpenAPI 3.2's notes read it): ``event``
    (absent: a plain ``data:`` event) and ``data``, the event's text."""
    properties: dict[str, Any] = {"data": {"type": "string", "description": data}}
    if event:
        properties["event"] = {"type": "string", "description": event}
    schema = {"type": "object", "required": ["data"], "properties": properties}
    return {"description": description, "content": {"text/event-stream": {"schema": schema}}}


def install_openapi(app: FastAPI, *, secured: bool) -> None:
    """``/openapi.json`` as the service really answers: no FastAPI default 422 (every validation
    error is a 400, documented on each route), and the Bearer scheme (with its 401s) only when
    ``server.api_keys`` is set."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for item in spec.get("paths", {}).values():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
                    if not secured:
                        op.pop("security", None)
                        op.get("responses", {}).pop("401", None)
            components = spec.get("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if not secured:
                components.pop("securitySchemes", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
