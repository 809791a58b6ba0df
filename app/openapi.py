"""OpenAPI descriptions of the error responses (all share the OpenAI error envelope)."""

from __future__ import annotations

from typing import Any

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
