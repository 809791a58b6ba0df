"""Wire schemas of the OpenAI-compatible ``/v1/chat/completions`` (request, response, chunks).

Numbers and booleans are strict (``"temperature": true`` or ``"max_tokens": "5"`` is a 400;
an integer is accepted for a float).
Unknown request fields are ignored (OpenAI clients send many); fields we cannot honour with a
different meaning (``n > 1``, tools, non-text ``response_format``) are rejected by
``app.chat.prepare``.
The ``proreason`` member is our extension (``extra_body={"proreason": {...}}`` in the SDK).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from agents.types import MAX_OPTIONS, MAX_ROUNDS, AnswerFormat
from app.schemas import MIN_TIMEOUT_S, StepOut

# --------------------------------------------------------------------------- request


class ImageURL(BaseModel):
    url: str = Field(description="http(s) or data: URL")
    detail: str | None = Field(None, description="accepted and ignored")


class TextContent(BaseModel):
    type: Literal["text"]
    text: str


class ImageContent(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL | str


class VideoURL(BaseModel):
    url: str = Field(description="http(s) or data:video/... URL")


class VideoContent(BaseModel):
    """vLLM's video part (``ChatCompletionContentPartVideoParam``): the service samples
    ``proreason.video_frames`` frames and shows them to the vision expert with their times."""

    type: Literal["video_url"]
    video_url: VideoURL | str


ContentPart = Annotated[TextContent | ImageContent | VideoContent, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ProReasonExtension(BaseModel):
    """Request extension: ``{"proreason": {...}}`` in the body."""

    model_config = ConfigDict(extra="forbid")

    trace: StrictBool = Field(False, description="add a `proreason` member with the steps")
    max_rounds: StrictInt | None = Field(None, ge=1, le=MAX_ROUNDS)
    answer_format: AnswerFormat = "open"
    options: list[str] | None = Field(None, max_length=MAX_OPTIONS)
    timeout_s: StrictFloat | None = Field(None, ge=MIN_TIMEOUT_S)
    #: the prompt set: "default" (JSON decisions) or "reference" (the authors' text protocol)
    prompts: str | None = Field(None, max_length=32)
    #: offer the dispatcher the OCR expert (reads the text in the image); None: agent.ocr
    ocr: StrictBool | None = None
    #: frames sampled from a `video_url` part; None: media.video_frames
    video_frames: StrictInt | None = Field(None, ge=1, description="default: media.video_frames")
    #: how they are chosen: evenly spaced, or at scene changes; None: media.video_sampling
    video_sampling: Literal["uniform", "scene"] | None = None
    #: where streamed agent steps go: the delta field vLLM uses for reasoning text, the older
    #: DeepSeek name, or nowhere
    step_field: Literal["reasoning", "reasoning_content", "none"] = "reasoning"


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "proreason",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": "data:image/png;..."}},
                                {"type": "text", "text": "What is left of the blue circle?"},
                            ],
                        }
                    ],
                    "max_tokens": 512,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            ]
        },
    )

    model: str = Field(description="a pipeline listed by /v1/models")
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(None, ge=1, le=65_536, description="per model call")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=65_536)
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | None = Field(None, gt=0, le=1, description="sent with every model call")
    n: StrictInt | None = Field(None, ge=1, description="only 1 is supported")
    stop: str | list[str] | None = Field(
        None, description="up to 4 sequences; the final answer is cut at the first one"
    )
    logprobs: StrictBool | None = Field(None, description="not supported: `true` is a 400")
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20, description="not supported (400)")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    seed: StrictInt | None = Field(None, description="sent with every model call")
    user: str | None = None
    proreason: ProReasonExtension | None = None


# --------------------------------------------------------------------------- response


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    #: image tokens included in prompt_tokens (absent: the backend cannot tell)
    image_tokens: int | None = None
    #: absent when image_tokens is
    text_tokens: int | None = None


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None  # always null (required by the spec)


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: None = None


class ProReasonInfo(BaseModel):
    """Response extension (when ``proreason.trace`` was asked for)."""

    method: str
    mode: str
    stop_reason: str
    rounds: int
    parse_failures: int
    answer_extracted: bool = True
    steps: list[StepOut]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    system_fingerprint: str | None = None
    proreason: ProReasonInfo | None = None


class ChunkDelta(BaseModel):
    model_config = ConfigDict(extra="allow")  # `reasoning` / `reasoning_content` steps

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None
    proreason: ProReasonInfo | None = None
