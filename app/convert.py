"""Wire requests -> ``agents.Question`` + ``agents.RunOptions``, once, before any work starts.

Everything a client can get wrong is checked here (and in the schemas), including loading the
images, so that a streamed response never starts for a request that cannot run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agents.types import Job, Question, RunOptions
from app.chat_schemas import ChatCompletionRequest, ChatMessage, ImageContent, TextContent
from app.pipelines import Pipeline, resolve_pipeline
from app.schemas import ReasonParams
from app.settings import Settings
from models.errors import InvalidRequest, MediaError
from models.types import ContentPart, ImageInput, ImagePart, Message, TextPart

if TYPE_CHECKING:
    from app.media import MediaLoader


@dataclass(frozen=True)
class Upload:
    """An uploaded image file (multipart)."""

    data: bytes
    filename: str


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to run."""

    question: Question
    options: RunOptions
    timeout_s: float
    trace: bool
    media_s: float
    job: Job | None = None


def _timeout(settings: Settings, requested: float | None) -> float:
    limit = settings.server.request_timeout_s
    return min(limit, requested) if requested else limit


def _check_image_count(n: int, settings: Settings, param: str) -> None:
    limit = settings.media.max_images
    if n > limit:
        raise MediaError(f"too many images: {n} (at most {limit} per request)", param=param)


async def _load(
    media: MediaLoader,
    refs: Sequence[str],
    paths: Sequence[str],
    uploads: Sequence[Upload] = (),
) -> list[ImageInput]:
    """Load URLs then uploads; a refusal names the request field (``param``) it came from."""
    try:
        images = list(await media.load_all(list(refs))) if refs else []
    except MediaError as exc:
        index = getattr(exc, "index", None)
        if index is not None and 0 <= index < len(paths):
            exc.param = paths[index]
        raise
    for i, upload in enumerate(uploads):
        try:
            images.append(await media.load_bytes(upload.data, upload.filename))
        except MediaError as exc:
            exc.param = f"files[{i}]"
            raise
    return images


async def prepare_reason(
    params: ReasonParams,
    question: str,
    refs: Sequence[str],
    uploads: Sequence[Upload],
    *,
    settings: Settings,
    media: MediaLoader,
) -> Prepared:
    """``/v1/reason`` (JSON or multipart) -> a runnable request."""
    if not question.strip():
        raise InvalidRequest("'question' must not be blank", param="question")
    _check_image_count(len(refs) + len(uploads), settings, "images")
    started = time.perf_counter()
    paths = [f"images[{i}]" for i in range(len(refs))]
    images = await _load(media, refs, paths, uploads)
    media_s = time.perf_counter() - started
    agent = settings.agent
    options = RunOptions(
        method=params.method or agent.method,
        mode=params.mode or agent.mode,
        max_rounds=params.max_rounds or agent.max_rounds,
        parallel_perception=(
            agent.parallel_perception
            if params.parallel_perception is None
            else params.parallel_perception
        ),
        max_tokens=params.max_tokens,
        temperature=params.temperature,
    )
    q = Question(
        text=question,
        images=tuple(images),
        answer_format=params.answer_format,
        options=tuple(params.options or ()),
    )
    return Prepared(q, options, _timeout(settings, params.timeout_s), params.trace, media_s)


# --------------------------------------------------------------------------- chat


def _check_chat_fields(req: ChatCompletionRequest) -> None:
    if req.n not in (None, 1):
        raise InvalidRequest("only n=1 is supported", param="n")
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


def _image_refs(messages: Sequence[ChatMessage]) -> tuple[list[str], list[str]]:
    """The image URLs of ``messages`` in order, and the JSON path of each."""
    refs, paths = [], []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if isinstance(part, ImageContent):
                    url = part.image_url
                    refs.append(url if isinstance(url, str) else url.url)
                    paths.append(f"messages[{i}].content[{j}].image_url")
    return refs, paths


def _wire_text(m: ChatMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    parts = m.content or []
    return "\n".join(p.text for p in parts if isinstance(p, TextContent))


def _to_message(m: ChatMessage, images: list[ImageInput]) -> Message:
    """One chat message -> an internal Message, taking its images (in order) from ``images``."""
    role = "system" if m.role == "developer" else m.role
    parts: list[ContentPart] = []
    if isinstance(m.content, str):
        parts.append(TextPart(m.content))
    elif m.content is not None:
        for part in m.content:
            if isinstance(part, TextContent):
                parts.append(TextPart(part.text))
            else:
                parts.append(ImagePart(images.pop(0)))
    return Message(role=role, content=tuple(parts))


async def prepare_chat(
    req: ChatCompletionRequest, *, settings: Settings, media: MediaLoader
) -> tuple[Prepared, Pipeline]:
    """``/v1/chat/completions`` -> a runnable request and the pipeline its ``model`` names."""
    pipeline = resolve_pipeline(req.model, settings.server.served_model_prefix, settings.agent)
    _check_chat_fields(req)
    last_index = len(req.messages) - 1
    refs, paths = _image_refs(req.messages)
    for i, m in enumerate(req.messages):
        if m.role != "user" and _image_refs([m])[0]:
            raise MediaError(
                f"images are only allowed in user messages (message {i} is '{m.role}')",
                param=f"messages[{i}].content",
            )
    _check_image_count(len(refs), settings, "messages")
    question_text = _wire_text(req.messages[-1])
    if not question_text.strip():
        raise InvalidRequest(
            "the last user message has no text (a question is required)",
            param=f"messages[{last_index}].content",
        )
    started = time.perf_counter()
    images = await _load(media, refs, paths)
    media_s = time.perf_counter() - started
    converted = [_to_message(m, images) for m in req.messages]
    last = converted[-1]
    ext = req.proreason
    agent = settings.agent
    options = RunOptions(
        method=pipeline.method,
        mode=pipeline.mode,
        max_rounds=(ext.max_rounds if ext and ext.max_rounds else agent.max_rounds),
        parallel_perception=pipeline.parallel_perception,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
    )
    question = Question(
        text=question_text,
        images=tuple(last.images),
        history=tuple(converted[:-1]),
        answer_format=ext.answer_format if ext else "open",
        options=tuple(ext.options or ()) if ext else (),
    )
    timeout = _timeout(settings, ext.timeout_s if ext else None)
    trace = bool(ext and ext.trace)
    return Prepared(question, options, timeout, trace, media_s), pipeline
