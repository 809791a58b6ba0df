"""``POST /v1/reason`` (JSON) and ``POST /v1/reason/upload`` (multipart with image files or a
video file)."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.deps import Authorized, MediaDep, RunnerDep
from app.media import MediaLoader, Upload
from app.openapi import REASONING_ERRORS, event_stream
from app.reason.prepare import prepare_reason
from app.reason.render import reason_events, reason_response
from app.reason.schemas import ReasonForm, ReasonParams, ReasonRequest, ReasonResponse
from app.runner import Runner
from app.sse import EventStream

router = APIRouter(tags=["reasoning"], dependencies=[Authorized])

_STREAM_DOC = event_stream(
    "The answer (JSON), or with `stream: true` server-sent events: one event per "
    "model call (`dispatch`, `vision`, `insight`, `verdict`, `answer`, `fallback` ..., data: the "
    "step), then `result` (the whole response), then `done`; an error after the start arrives "
    "as `event: error` with the error envelope.",
    event="the step's role event (`dispatch`, `vision`, `verdict` ...), `result`, `error` or "
    "`done`",
    data="JSON: the step, the whole response (`result`) or the error envelope; `[DONE]` for `done`",
)
_ROUTE = {
    "response_model": ReasonResponse,
    "response_model_exclude_none": True,
    "responses": {200: _STREAM_DOC, **REASONING_ERRORS},
}


@router.post(
    "/v1/reason", summary="Answer a question about images with ProReason (or a baseline)", **_ROUTE
)
async def reason(
    body: ReasonRequest, request: Request, runner: RunnerDep, media: MediaDep
) -> ReasonResponse | EventStream:
    return await _serve(request, runner, media, body, body.question, body.images, (), body.video)


@router.post(
    "/v1/reason/upload",
    summary="Same as /v1/reason, as multipart/form-data with uploaded image files",
    **_ROUTE,
)
async def reason_upload(
    form: Annotated[ReasonForm, Form()],
    request: Request,
    runner: RunnerDep,
    media: MediaDep,
    files: Annotated[list[UploadFile], File(description="image files")] = [],  # noqa: B006
    video_file: Annotated[UploadFile | None, File(description="a video file")] = None,
) -> ReasonResponse | EventStream:
    uploads = [Upload(await f.read(), f.filename or f"upload-{i}") for i, f in enumerate(files)]
    clip = Upload(await video_file.read(), video_file.filename or "video") if video_file else None
    return await _serve(
        request, runner, media, form, form.question, form.images, uploads, form.video, clip
    )


async def _serve(
    request: Request,
    runner: Runner,
    media: MediaLoader,
    params: ReasonParams,
    question: str,
    refs: list[str],
    uploads: list[Upload] | tuple[()],
    video: str | None = None,
    video_file: Upload | None = None,
) -> ReasonResponse | EventStream:
    """route -> prepare -> run -> render, for both variants."""
    started = time.perf_counter()
    request_id: str = request.state.request_id
    slot = runner.admit()
    work = prepare_reason(
        params, question, refs, uploads, video=video, video_file=video_file,
        settings=runner.settings, media=media, reasoner=runner.reasoner,
    )  # fmt: skip
    prepared = await runner.within(request, slot, work)
    if params.stream:
        render = partial(
            reason_events, request_id=request_id, prepared=prepared, started=started,
            trace=params.trace,
        )  # fmt: skip
        return runner.stream(request, slot, prepared, render)
    result = await runner.answer(request, slot, prepared)
    total = time.perf_counter() - started
    return reason_response(request_id, result, prepared, total, trace=params.trace)
