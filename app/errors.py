"""The edge's own errors and the one mapping from every error to HTTP: status code, OpenAI error
envelope, and its streaming twin.

    error (models.errors or "here")  status  error.type              error.code
    InvalidRequest                   400     invalid_request_error   invalid_request / <its code>
    ├── MediaError                   400     invalid_request_error   invalid_image
    │   └── VideoRefused (models.video) 400    invalid_request_error   invalid_video
    ├── PayloadTooLarge (here)       413     invalid_request_error   request_too_large
    └── NotFound                     404     invalid_request_error   not_found / model_not_found
    Unauthorized (here)              401     authentication_error    unauthorized
    Overloaded (here)                429     rate_limit_error        overloaded  (+ Retry-After)
    DeadlineExceeded (here)          504     timeout_error           deadline_exceeded (+ steps)
    ServiceStarting (here)           503     upstream_error          model_unavailable
    ModelRejected                    502     upstream_error          model_rejected
      ... the request is too long    400     invalid_request_error   context_length_exceeded
    ModelUnavailable, ModelLoadError 503     upstream_error          model_unavailable / ...
      (CircuitOpen, ModelOverloaded: Retry-After from the error, else 5)
    ModelTimeout                     504     upstream_error          model_timeout
    request validation (pydantic)    400     invalid_request_error   invalid_value / json_invalid
    anything else                    500     server_error            internal_error (logged)
    ClientClosedRequest (here)       499     (nobody is listening; for logs and metrics)

An upstream that refuses a request we built is our problem or the upstream's (502), unless the
refusal is about the size of what the client sent (context length exceeded): then it is a 400.
Bodies: ``{"error": {"message", "type", "param", "code", "request_id"}}`` (OpenAI's shape plus the
request id). Before a response starts, errors are JSON responses; after a stream started they travel
as an SSE event (``sse_error``), because the 200 is already on the wire.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.types import Step
from app.schemas import StepOut
from models.errors import (
    CircuitOpen,
    ContextLengthExceeded,
    InvalidRequest,
    ModelError,
    ModelLoadError,
    ModelOverloaded,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    NotFound,
    ProReasonError,
)

log = logging.getLogger(__name__)

_CONTEXT_TOO_LONG = re.compile(
    r"context length|context window|maximum context|too many tokens|prompt is too long|"
    r"max_model_len|too many images|longer than the model",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- the edge's errors


class Unauthorized(ProReasonError):
    """Missing or wrong API key."""

    code = "unauthorized"


class Overloaded(ProReasonError):
    """Too many questions in flight; retry after ``retry_after_s``."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ProReasonError):
    """The request ran out of time; ``steps`` are the model calls done before."""

    code = "deadline_exceeded"

    def __init__(self, message: str, *, steps: Sequence[Step] = ()) -> None:
        super().__init__(message)
        self.steps = list(steps)


class ServiceStarting(ProReasonError):
    """A request arrived before the models were opened."""

    code = "model_unavailable"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than ``server.max_body_bytes``."""

    code = "request_too_large"


class ClientClosedRequest(ProReasonError):
    """The client disconnected before the answer was ready (logged as 499, nginx's code)."""

    code = "client_closed_request"


@dataclass
class ErrorInfo:
    """Everything a response needs to report one error."""

    status: int
    type: str
    code: str | None
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: extra members of the error object (e.g. the steps done before a deadline)
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self, request_id: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if request_id:
            error["request_id"] = request_id
        error.update(self.extra)
        return {"error": error}


def describe(exc: BaseException) -> ErrorInfo:
    """The status, type, code and message for any exception (unknown ones: a bare 500)."""
    if isinstance(exc, ProReasonError):
        return _describe_own(exc)
    if isinstance(exc, RequestValidationError):
        return describe_validation(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        return _describe_http(exc)
    return ErrorInfo(500, "server_error", "internal_error", "internal server error")


def _describe_own(exc: ProReasonError) -> ErrorInfo:
    msg, param = exc.message, exc.param
    if isinstance(exc, ClientClosedRequest):
        return ErrorInfo(499, "invalid_request_error", exc.code, msg, param)
    if isinstance(exc, PayloadTooLarge):
        return ErrorInfo(413, "invalid_request_error", exc.code, msg, param)
    if isinstance(exc, NotFound):
        return ErrorInfo(404, "invalid_request_error", exc.code, msg, param)
    if isinstance(exc, InvalidRequest):
        return ErrorInfo(400, "invalid_request_error", exc.code, msg, param)
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
        return ErrorInfo(401, "authentication_error", exc.code, msg, param, headers)
    if isinstance(exc, Overloaded):
        retry = str(max(1, round(exc.retry_after_s)))
        return ErrorInfo(429, "rate_limit_error", exc.code, msg, param, {"Retry-After": retry})
    if isinstance(exc, DeadlineExceeded):
        info = ErrorInfo(504, "timeout_error", exc.code, msg, param)
        steps = [StepOut.model_validate(s, from_attributes=True) for s in exc.steps]
        info.extra["steps"] = [_capped(s.model_dump(mode="json")) for s in steps]
        return info
    if isinstance(exc, ModelRejected):
        if (
            isinstance(exc, ContextLengthExceeded)
            or exc.status_code == 413
            or _CONTEXT_TOO_LONG.search(msg)
        ):
            text = f"the request is too large for the model: {msg}"
            return ErrorInfo(400, "invalid_request_error", "context_length_exceeded", text, param)
        return ErrorInfo(502, "upstream_error", exc.code, f"the model refused: {msg}", param)
    if isinstance(exc, ModelTimeout):
        return ErrorInfo(504, "upstream_error", exc.code, msg, param)
    if isinstance(exc, ModelUnavailable | ModelLoadError | ServiceStarting):
        waits = isinstance(exc, ModelOverloaded | CircuitOpen)
        retry = str(max(1, round(exc.retry_after_s))) if waits else "5"
        return ErrorInfo(503, "upstream_error", exc.code, msg, param, {"Retry-After": retry})
    if isinstance(exc, ModelError):
        return ErrorInfo(502, "upstream_error", exc.code, msg, param)
    return ErrorInfo(500, "server_error", exc.code, msg, param)


#: the most of each text field of a step an error body carries (a 504 lists every step done)
STEP_TEXT_CHARS = 2000


def _capped(step: dict[str, Any]) -> dict[str, Any]:
    """A step for an error body: long texts (a model that wrote megabytes) cut, marked so."""
    for name in ("output", "memory_entry", "error", "parse_error", "sub_question"):
        value = step.get(name)
        if isinstance(value, str) and len(value) > STEP_TEXT_CHARS:
            cut = len(value) - STEP_TEXT_CHARS
            step[name] = value[:STEP_TEXT_CHARS] + f"... [{cut} more characters]"
    return step


def _describe_http(exc: StarletteHTTPException) -> ErrorInfo:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    headers = dict(exc.headers or {})
    if status == 404:
        return ErrorInfo(404, "invalid_request_error", "not_found", detail, None, headers)
    if status == 405:
        return ErrorInfo(405, "invalid_request_error", "method_not_allowed", detail, None, headers)
    if status == 413:
        return ErrorInfo(413, "invalid_request_error", "request_too_large", detail, None, headers)
    if status == 400 and detail == "There was an error parsing the body":  # FastAPI's words
        message = "the request body could not be parsed (invalid JSON, encoding or form data)"
        return ErrorInfo(400, "invalid_request_error", "invalid_body", message, None, headers)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ErrorInfo(status, kind, None, detail, None, headers)


def describe_validation(errors: Sequence[Any]) -> ErrorInfo:
    """Pydantic / FastAPI validation errors -> one readable 400 naming the first bad field."""
    if not errors:
        return ErrorInfo(400, "invalid_request_error", "invalid_value", "invalid request")
    # the most specific error first (a union reports one error per member: take the deepest)
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    kind = first.get("type")
    if kind == "json_invalid":
        where = (first.get("ctx") or {}).get("error", "")
        message = f"malformed JSON body: {where}".rstrip(": ")
        return ErrorInfo(400, "invalid_request_error", "json_invalid", message)
    loc = [str(p) for p in first.get("loc", ()) if not _is_noise(p)]
    param = _join_loc(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if param is None and kind in ("model_attributes_type", "dict_type", "model_type"):
        message = "the request body must be a JSON object (Content-Type: application/json)"
        return ErrorInfo(400, "invalid_request_error", "invalid_value", message)
    if kind == "missing":
        message = f"missing required field '{param}'" if param else "missing request body"
    elif param:
        message = f"invalid value for '{param}': {msg}"
    else:
        message = f"invalid request body: {msg}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return ErrorInfo(400, "invalid_request_error", "invalid_value", message, param)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _is_noise(part: object) -> bool:
    """Loc parts that are not field names: the request part, pydantic's union-member tags."""
    if isinstance(part, int):
        return False
    text = str(part)
    return text in ("body", "query", "header") or text in _TYPE_TAGS or "[" in text


def _join_loc(loc: Sequence[str]) -> str:
    out = ""
    for part in loc:
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(info: ErrorInfo, request_id: str | None) -> JSONResponse:
    headers = dict(info.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(info.body(request_id), status_code=info.status, headers=headers)


def sse_error(exc: BaseException, request_id: str | None, *, event: str | None = None) -> str:
    """The streaming twin: one SSE event carrying the error envelope (after the 200)."""
    info = describe(exc)
    data = json.dumps(info.body(request_id), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n"


def log_unexpected(exc: BaseException, request_id: str | None) -> None:
    log.error("unexpected error", exc_info=exc, extra={"request_id": request_id, "event": "error"})


def log_failure(exc: BaseException, info: ErrorInfo, request_id: str | None) -> None:
    """5xx only: our errors as a warning line, anything else with its traceback."""
    if info.status < 500:
        return
    if isinstance(exc, ProReasonError):
        extra = {"request_id": request_id, "status": info.status, "code": info.code}
        if exc.detail:  # upstream address / body: for the log only
            log.warning("request failed: %s (%s)", info.message, exc.detail, extra=extra)
        else:
            log.warning("request failed: %s", info.message, extra=extra)
    else:
        log_unexpected(exc, request_id)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the framework or our code raises through ``describe``."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        info = describe(exc)
        request_id = request_id_of(request)
        log_failure(exc, info, request_id)
        return error_response(info, request_id)

    app.add_exception_handler(ProReasonError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
