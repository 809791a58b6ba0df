"""Wire schemas every endpoint family shares: usage, a model call (step), the error envelope.

Protocol types only, no logic. Each family (``app.chat``, ``app.reason``) has its own schemas next
to its route; these are the parts they have in common.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from agents.types import Step
from models.types import Usage

#: the shortest per-request deadline (``timeout_s``) accepted: below it no model call can finish,
#: so a smaller value is a 400, not a certain 504
MIN_TIMEOUT_S = 0.1


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
    #: why the call ended: "stop", "length" (cut at max_tokens: a decision then is not read), ...
    finish_reason: str | None = None
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


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        image_tokens=usage.image_tokens,
    )


def step_out(step: Step) -> StepOut:
    return StepOut.model_validate(step, from_attributes=True)
