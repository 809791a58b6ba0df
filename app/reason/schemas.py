"""Wire schemas of ``/v1/reason`` (JSON) and ``/v1/reason/upload`` (multipart).

JSON types are strict, as on chat (``"max_rounds": true`` or ``"temperature": "1"`` is a 400;
an integer is accepted for a float). Multipart form fields are text by nature, so
``ReasonForm`` parses them (``max_rounds=2``, ``trace=true``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.types import MAX_OPTIONS, MAX_ROUNDS, AnswerFormat, Method, Mode
from app.schemas import MIN_TIMEOUT_S, StepOut, UsageOut

QUESTION_MAX_CHARS = 32_000


class ReasonParams(BaseModel):
    """The run settings shared by the JSON and the multipart variant."""

    method: Method | None = Field(None, description="default: the server's agent.method")
    mode: Mode | None = Field(None, description="default: the server's agent.mode")
    max_rounds: int | None = Field(
        None, ge=1, le=MAX_ROUNDS, description="default: agent.max_rounds"
    )
    answer_format: AnswerFormat = "open"
    options: list[str] | None = Field(
        None, max_length=MAX_OPTIONS, description="the choices of a multiple_choice question"
    )
    trace: bool = Field(False, description="include every model call (steps) in the response")
    parallel_perception: bool | None = Field(
        None, description="let the dispatcher ask several visual sub-questions at once"
    )
    stream: bool = Field(False, description="answer as server-sent events, one per model call")
    max_tokens: int | None = Field(None, ge=1, le=65_536, description="per model call")
    temperature: float | None = Field(None, ge=0, le=2)
    prompts: str | None = Field(
        None,
        max_length=32,
        description="the prompt set: 'default' (JSON decisions) or 'reference' (the authors' "
        "text protocol); default: the server's agent.prompts",
    )
    timeout_s: float | None = Field(
        None, ge=MIN_TIMEOUT_S, description="lower the server's request deadline for this request"
    )
    ocr: bool | None = Field(
        None,
        description="offer the dispatcher the OCR expert (reads the text in the image, with "
        "positions); default: the server's agent.ocr",
    )
    video_frames: int | None = Field(
        None, ge=1, description="frames sampled from the video; default: media.video_frames"
    )
    video_sampling: Literal["uniform", "scene"] | None = Field(
        None,
        description="'uniform' (evenly spaced) or 'scene' (at scene changes); "
        "default: media.video_sampling",
    )


class ReasonForm(ReasonParams):
    """``/v1/reason/upload``: the same fields as form fields (image files come separately)."""

    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)
    images: list[str] = Field(default_factory=list, description="http(s) or data: URLs")
    video: str | None = Field(
        None, description="a video as an http(s) or data:video/... URL (or upload `video_file`)"
    )


class ReasonRequest(ReasonParams):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "question": "Is the red square left of the blue circle?",
                    "images": ["https://example.com/shapes.png"],
                    "method": "proreason",
                    "mode": "assisted",
                    "max_rounds": 8,
                    "trace": True,
                },
                {
                    "question": "What happens after the square turns blue?",
                    "video": "https://example.com/clip.mp4",
                    "video_frames": 8,
                    "video_sampling": "scene",
                },
                {
                    "question": "Which shape is red?",
                    "images": ["data:image/png;base64,iVBORw0KGgo..."],
                    "answer_format": "multiple_choice",
                    "options": ["circle", "square", "triangle"],
                    "stream": True,
                },
            ]
        },
    )

    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)
    images: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="http(s) or data: URLs (the server's media.max_images applies)",
    )
    video: str | None = Field(
        None,
        description="a video (http(s) or data:video/mp4;base64,... URL): its sampled frames are "
        "what the vision expert sees; not together with images",
    )


class Timings(BaseModel):
    total_s: float = Field(description="wall time of the request in the service")
    media_s: float = Field(description="fetching and decoding the images")
    reasoning_s: float = Field(description="the reasoning run")
    by_role_s: dict[str, float] = Field(description="model time per role (summed)")


class ReasonResponse(BaseModel):
    id: str
    object: Literal["proreason.result"] = "proreason.result"
    created: int
    answer: str
    #: False: a multiple-choice answer could not be matched to an option (raw answer returned)
    answer_extracted: bool = True
    method: Method
    mode: Mode
    stop_reason: str
    rounds: int
    parse_failures: int
    usage: UsageOut
    usage_by_role: dict[str, UsageOut]
    timings: Timings
    notes: list[str] = Field(default_factory=list)
    trace: list[StepOut] | None = Field(None, description="the model calls, when trace=true")
