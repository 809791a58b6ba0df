"""Wire schemas of ``/v1/reason``, the operations endpoints and the error envelope.

Protocol types only: no logic. ``app.convert`` turns requests into ``agents`` types once;
``app.render`` turns results into these responses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.types import AnswerFormat, Method, Mode

# --------------------------------------------------------------------------- shared parts


class UsageOut(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: image tokens included in prompt_tokens (null: the backend cannot tell)
    image_tokens: int | None = None


class StepOut(BaseModel):
    """One model call of a run."""

    model_config = ConfigDict(from_attributes=True)

    index: int
    round: int
    role: str
    model: str
    backend: str
    sub_question: str | None = None
    output: str = ""
    memory_entry: str | None = None
    decision: dict[str, Any] | None = None
    parse_error: str | None = None
    error: str | None = None
    usage: UsageOut
    latency_s: float = 0.0
    started_at: float = 0.0
    parallel: bool = False


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None
    request_id: str | None = None
    #: on 504 (deadline): the model calls done before the deadline
    steps: list[StepOut] | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorObject

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "message": "invalid value for 'max_rounds': Input should be less than "
                        "or equal to 32",
                        "type": "invalid_request_error",
                        "param": "max_rounds",
                        "code": "invalid_value",
                        "request_id": "3f2c9a1e6b7d4c0f",
                    }
                }
            ]
        }
    )


# --------------------------------------------------------------------------- /v1/reason

QUESTION_MAX_CHARS = 32_000


def check_choices(answer_format: str, options: list[str] | None) -> None:
    """multiple_choice needs >= 2 non-empty options; open questions take none (ValueError)."""
    if answer_format == "multiple_choice":
        if not options or len(options) < 2:
            raise ValueError("answer_format 'multiple_choice' needs at least 2 'options'")
        if any(not o.strip() for o in options):
            raise ValueError("'options' must not contain empty strings")
    elif options:
        raise ValueError("'options' are only allowed with answer_format 'multiple_choice'")


class ReasonParams(BaseModel):
    """The run settings shared by the JSON and the multipart variant."""

    method: Method | None = Field(None, description="default: the server's agent.method")
    mode: Mode | None = Field(None, description="default: the server's agent.mode")
    max_rounds: int | None = Field(None, ge=1, le=32, description="default: agent.max_rounds")
    answer_format: AnswerFormat = "open"
    options: list[str] | None = Field(
        None, max_length=26, description="the choices of a multiple_choice question"
    )
    trace: bool = Field(False, description="include every model call (steps) in the response")
    parallel_perception: bool | None = Field(
        None, description="let the dispatcher ask several visual sub-questions at once"
    )
    stream: bool = Field(False, description="answer as server-sent events, one per model call")
    max_tokens: int | None = Field(None, ge=1, le=65_536, description="per model call")
    temperature: float | None = Field(None, ge=0, le=2)
    timeout_s: float | None = Field(
        None, gt=0, description="lower the server's request deadline for this request"
    )

    @model_validator(mode="after")
    def _check_options(self) -> ReasonParams:
        check_choices(self.answer_format, self.options)
        return self


class ReasonRequest(ReasonParams):
    model_config = ConfigDict(
        extra="forbid",
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


# --------------------------------------------------------------------------- operations


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "proreason"
    #: what the pipeline runs (extension)
    method: Method
    mode: Mode
    parallel_perception: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    #: role -> healthy
    backends: dict[str, bool]
    failed: list[str] = Field(default_factory=list)
