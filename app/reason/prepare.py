"""``/v1/reason`` (JSON or multipart) -> a Prepared run: the images (or the video) loaded, the
Job validated."""

from __future__ import annotations

import time
from collections.abc import Sequence

from agents import Question, Reasoner, RunOptions
from app.media import MediaLoader, Upload
from app.reason.schemas import ReasonParams
from app.runner import Prepared, request_timeout
from app.settings import Settings
from models.errors import InvalidRequest
from models.video import VideoRefused


async def prepare_reason(
    params: ReasonParams,
    question: str,
    refs: Sequence[str],
    uploads: Sequence[Upload],
    *,
    video: str | None = None,
    video_file: Upload | None = None,
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
    common = {"answer_format": params.answer_format, "options": tuple(params.options or ())}
    started = time.perf_counter()
    if video is not None and video_file is not None:
        raise VideoRefused(
            "give the video as 'video' (a URL) or 'video_file', not both", reason="invalid_video"
        ).at("video_file")
    source = video if video is not None else video_file
    if source is not None:
        param = "video" if video is not None else "video_file"
        if refs or uploads:
            raise VideoRefused(
                "a request carries images or one video, not both", reason="video_with_images"
            ).at(param)
        frames, sampling = media.video_options(
            params.video_frames, params.video_sampling, param="video"
        )
        clip = await media.load_video(source, frames=frames, sampling=sampling, param=param)
        media_s = time.perf_counter() - started
        job = reasoner.prepare(Question.about_video(question, clip, **common), options)
        return Prepared(job, request_timeout(settings, params.timeout_s), media_s)
    paths = [f"images[{i}]" for i in range(len(refs))]
    images = await media.load_request(refs, paths, uploads, param="images")
    media_s = time.perf_counter() - started
    job = reasoner.prepare(Question(text=question, images=tuple(images), **common), options)
    return Prepared(job, request_timeout(settings, params.timeout_s), media_s)
