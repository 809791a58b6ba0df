"""``POST /v1/reason`` (JSON) and ``POST /v1/reason/upload`` (multipart with image files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import Field

from app.convert import Upload
from app.deps import Authorized, ServiceDep
from app.routes.docs import REASONING_ERRORS
from app.schemas import QUESTION_MAX_CHARS, ReasonParams, ReasonRequest, ReasonResponse
from app.serving import serve_reason
from app.sse import EventStream

router = APIRouter(tags=["reasoning"], dependencies=[Authorized])

_STREAM_DOC = {
    "description": "The answer (JSON), or with `stream: true` server-sent events: one event per "
    "model call (`dispatch`, `vision`, `insight`, `verdict`, `answer`, `fallback` ..., data: the "
    "step), then `result` (the whole response), then `done`; an error after the start arrives "
    "as `event: error` with the error envelope.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


class ReasonForm(ReasonParams):
    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)
    images: list[str] = Field(default_factory=list, description="http(s) or data: URLs")


@router.post(
    "/v1/reason",
    response_model=ReasonResponse,
    response_model_exclude_none=True,
    responses={200: _STREAM_DOC, **REASONING_ERRORS},
    summary="Answer a question about images with ProReason (or a baseline)",
)
async def reason(
    body: ReasonRequest, request: Request, service: ServiceDep
) -> ReasonResponse | EventStream:
    return await serve_reason(request, service, body, body.question, body.images)


@router.post(
    "/v1/reason/upload",
    response_model=ReasonResponse,
    response_model_exclude_none=True,
    responses={200: _STREAM_DOC, **REASONING_ERRORS},
    summary="Same as /v1/reason, as multipart/form-data with uploaded image files",
)
async def reason_upload(
    form: Annotated[ReasonForm, Form()],
    request: Request,
    service: ServiceDep,
    files: Annotated[list[UploadFile], File(description="image files")] = [],  # noqa: B006
) -> ReasonResponse | EventStream:
    uploads = [Upload(await f.read(), f.filename or f"upload-{i}") for i, f in enumerate(files)]
    return await serve_reason(request, service, form, form.question, form.images, uploads)
