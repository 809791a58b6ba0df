"""``/v1/chat/completions`` -> a Prepared run and the pipeline its ``model`` names.

Everything a client can get wrong is checked here or in the schemas, images included, so that a
streamed response never starts for a request that cannot run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from agents import Question, Reasoner, RunOptions
from app.chat.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ImageContent,
    TextContent,
    VideoContent,
)
from app.media import MediaLoader
from app.pipelines import Pipeline, resolve_pipeline
from app.runner import Prepared, request_timeout
from app.settings import Settings
from models.errors import InvalidRequest, MediaError
from models.types import ContentPart, ImageInput, ImagePart, Message, TextPart, VideoInput
from models.video import VideoRefused

#: fields of the ``proreason`` extension, as the Reasoner names them in its errors
_EXTENSION_PARAMS = ("options", "answer_format", "max_rounds", "prompts", "ocr")


#: OpenAI's limit on ``stop`` sequences
MAX_STOP = 4


def stop_sequences(req: ChatCompletionRequest) -> tuple[str, ...]:
    """``stop`` as a tuple (a string or a list of up to 4 non-empty strings)."""
    stop = req.stop
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOP:
        raise InvalidRequest(f"at most {MAX_STOP} stop sequences are allowed", param="stop")
    if not all(stops):
        raise InvalidRequest("stop sequences must not be empty", param="stop")
    return stops


def _check_fields(req: ChatCompletionRequest) -> None:
    if req.n not in (None, 1):
        raise InvalidRequest("only n=1 is supported", param="n")
    if req.logprobs:
        raise InvalidRequest("logprobs are not supported by this server", param="logprobs")
    if req.top_logprobs is not None:
        raise InvalidRequest(
            "top_logprobs is not supported by this server (logprobs are not returned)",
            param="top_logprobs",
        )
    stop_sequences(req)
    if req.tools:
        raise InvalidRequest("tools are not supported by this server", param="tools")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise InvalidRequest(
            "only response_format type 'text' is supported", param="response_format"
        )
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true", param="stream_options"
        )
    last = req.messages[-1]
    if last.role != "user":
        raise InvalidRequest(
            f"the last message must be a user message (got '{last.role}')", param="messages"
        )


@dataclass(frozen=True)
class _ImageRef:
    url: str
    path: str  # the JSON path of the part, for error messages
    message: int  # index of the message it came from


def _image_refs(messages: Sequence[ChatMessage]) -> list[_ImageRef]:
    """Every image part of ``messages`` in order; only user turns may carry images."""
    refs = []
    for i, m in enumerate(messages):
        if not isinstance(m.content, list):
            continue
        for j, part in enumerate(m.content):
            if isinstance(part, ImageContent):
                if m.role != "user":
                    raise MediaError(
                        f"images are only allowed in user messages (message {i} is '{m.role}')",
                        param=f"messages[{i}].content",
                    )
                url = part.image_url
                url = url if isinstance(url, str) else url.url
                refs.append(_ImageRef(url, f"messages[{i}].content[{j}].image_url", i))
    return refs


def _video_refs(messages: Sequence[ChatMessage], images: Sequence[_ImageRef]) -> _ImageRef | None:
    """The request's video: one distinct ``video_url`` (it may repeat in later turns), in a user
    turn, not together with images."""
    found: list[_ImageRef] = []
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
            if not isinstance(part, VideoContent):
                continue
            path = f"messages[{i}].content[{j}].video_url"
            if m.role != "user":
                raise VideoRefused(
                    f"videos are only allowed in user messages (message {i} is '{m.role}')",
                    reason="invalid_video",
                ).at(f"messages[{i}].content")
            url = part.video_url if isinstance(part.video_url, str) else part.video_url.url
            if found and url != found[0].url:
                raise VideoRefused(
                    "at most one video per request (a later turn may repeat the same URL)",
                    reason="too_many_videos",
                ).at(path)
            found.append(_ImageRef(url, path, i))
    if not found:
        return None
    if images:
        raise VideoRefused(
            "a request carries images or one video, not both", reason="video_with_images"
        ).at(found[0].path)
    return found[-1]


def _select(refs: list[_ImageRef], last: int, limit: int) -> list[_ImageRef]:
    """The images the vision expert sees: the latest turn's (all of them, in order; more than
    ``limit`` is a 400 from the loader), then earlier turns' newest first, up to ``limit``
    distinct URLs. Each distinct URL is fetched and checked once."""
    latest = [r for r in refs if r.message == last]
    earlier = [r for r in refs if r.message != last]
    earlier.sort(key=lambda r: r.message, reverse=True)  # stable: a turn keeps its part order
    chosen, seen = list(latest), {r.url for r in latest}
    for ref in earlier:
        if len(seen) >= limit:
            break
        if ref.url not in seen:
            seen.add(ref.url)
            chosen.append(ref)
    return chosen


def _wire_text(m: ChatMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    parts = m.content or []
    return "\n".join(p.text for p in parts if isinstance(p, TextContent))


#: stands in for an earlier turn's image that was not loaded (over media.max_images)
NOT_SHOWN = "[an earlier image, not shown to the models: over the per-request image limit]"
#: stands in for the video in an earlier turn's text (its frames are the question's images);
#: the space keeps it apart from the turn's text (parts are joined as they are)
VIDEO_SHOWN = "[the video] "


def _to_message(m: ChatMessage, images: dict[str, ImageInput]) -> Message:
    """One chat message -> an internal Message; its images by URL from ``images`` (loaded ones)."""
    role = "system" if m.role == "developer" else m.role
    parts: list[ContentPart] = []
    if isinstance(m.content, str):
        parts.append(TextPart(m.content))
    elif m.content is not None:
        for part in m.content:
            if isinstance(part, TextContent):
                parts.append(TextPart(part.text))
                continue
            if isinstance(part, VideoContent):
                parts.append(TextPart(VIDEO_SHOWN))
                continue
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            image = images.get(url)
            parts.append(ImagePart(image) if image is not None else TextPart(NOT_SHOWN))
    return Message(role=role, content=tuple(parts))


async def prepare_chat(
    req: ChatCompletionRequest,
    *,
    settings: Settings,
    media: MediaLoader,
    reasoner: Reasoner,
) -> tuple[Prepared, Pipeline]:
    pipeline = resolve_pipeline(req.model, settings.server.served_model_prefix, settings.agent)
    _check_fields(req)
    last_index = len(req.messages) - 1
    all_refs = _image_refs(req.messages)
    video_ref = _video_refs(req.messages, all_refs)
    refs = _select(all_refs, last_index, media.config.max_images)
    question_text = _wire_text(req.messages[-1])
    if not question_text.strip():
        raise InvalidRequest(
            "the last user message has no text (a question is required)",
            param=f"messages[{last_index}].content",
        )
    ext = req.proreason
    started = time.perf_counter()
    video: VideoInput | None = None
    if video_ref is not None:
        try:
            frames, sampling = media.video_options(
                ext.video_frames if ext else None, ext.video_sampling if ext else None,
                param="video",
            )  # fmt: skip
        except InvalidRequest as exc:
            exc.param = f"proreason.{exc.param}"
            raise
        video = await media.load_video(
            video_ref.url, frames=frames, sampling=sampling, param=video_ref.path
        )
    loaded = await media.load_request([r.url for r in refs], [r.path for r in refs],
                                      param="messages")  # fmt: skip
    media_s = time.perf_counter() - started
    by_url = {r.url: image for r, image in zip(refs, loaded, strict=True)}
    converted = [_to_message(m, by_url) for m in req.messages]
    options = RunOptions(
        method=pipeline.method,
        mode=pipeline.mode,
        max_rounds=ext.max_rounds if ext else None,
        parallel_perception=pipeline.parallel_perception,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
        prompts=ext.prompts if ext else None,
        ocr=ext.ocr if ext else None,
        top_p=req.top_p,
        seed=req.seed,
    )
    common = {
        "history": tuple(converted[:-1]),
        "answer_format": ext.answer_format if ext else "open",
        "options": tuple(ext.options or ()) if ext else (),
    }
    if video is not None:
        question = Question.about_video(question_text, video, **common)
    else:  # the latest turn's images first, then earlier turns' (newest first)
        question = Question(text=question_text, images=tuple(loaded), **common)
    try:
        job = reasoner.prepare(question, options)
    except InvalidRequest as exc:
        if exc.param in _EXTENSION_PARAMS:
            exc.param = f"proreason.{exc.param}"
        raise
    timeout = request_timeout(settings, ext.timeout_s if ext else None)
    return Prepared(job, timeout, media_s), pipeline
