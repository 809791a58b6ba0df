"""``/v1/reason`` (JSON or multipart) -> a Prepared run: the images loaded, the Job validated."""

from __future__ import annotations

import time
from collections.abc import Sequence

from agents import Question, Reasoner, RunOptions
from app.media import MediaLoader, Upload
from app.reason.schemas import ReasonParams
from app.runner import Prepared, request_timeout
from app.settings import Settings
from models.errors import InvalidRequest


async def prepare_reason(
    params: ReasonParams,
    question: str,
    refs: Sequence[str],
    uploads: Sequence[Upload],
    *,
    settings: Settings,
    media: MediaLoader,
    reasoner: Reasoner,
) -> Prepared:
    if not question.strip():
        raise InvalidRequest("'question' must not be blank", param="question")
    options = RunOptions(
        method=params.method,
        mode=params.mode,
        max_rounds=params.max_rounds,
        parallel_perception=params.parallel_perception,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        prompts=params.prompts,
        ocr=params.ocr,
    )
    started = time.perf_counter()
    paths = [f"images[{i}]" for i in range(len(refs))]
    images = await media.load_request(refs, paths, uploads, param="images")
    media_s = time.perf_counter() - started
    job = reasoner.prepare(
        Question(
            text=question,
            images=tuple(images),
            answer_format=params.answer_format,
            options=tuple(params.options or ()),
        ),
        options,
    )
    return Prepared(job, request_timeout(settings, params.timeout_s), media_s)
