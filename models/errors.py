"""The errors of the model layer and the agents (the base of the project's one hierarchy).

    ProReasonError                 base; carries a short machine-readable ``code``
    ├── InvalidRequest             the caller asked for something malformed or impossible   (4xx)
    │   ├── MediaError             an image that cannot be accepted (format, size, SSRF ...)
    │   └── NotFound               unknown model / pipeline / route target
    └── ModelError                 a model backend failed                                   (5xx)
        ├── ModelUnavailable       cannot reach / load the model (connection, 5xx after retries)
        │   ├── ModelOverloaded    up, but refusing new work for now; carries ``retry_after_s``
        │   └── CircuitOpen        an upstream's breaker is open: not called; ``retry_after_s``
        ├── ModelTimeout           the model did not answer in time
        ├── ModelRejected          the model server refused this request (its 4xx)
        │   └── ContextLengthExceeded  ... because it is too large for the model (client's 400)
        └── ModelLoadError         weights/config cannot be loaded (bad id, missing extra)

Errors only the HTTP edge raises (API keys, backpressure, deadlines, start-up) live in
``app.errors``, which is also the only place that maps every error to an HTTP status and body.
Model *output* problems (unparseable JSON, unknown expert) are not errors: the agents record them
on the trace and go on. Errors here are for things that stop a request.
"""

from __future__ import annotations

import re


class ProReasonError(Exception):
    code: str = "internal_error"
    #: server-side detail (upstream address, upstream body excerpt): logged, never sent to clients
    detail: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ProReasonError):
    code = "invalid_request"


class MediaError(InvalidRequest):
    code = "invalid_image"


class NotFound(InvalidRequest):
    code = "not_found"


class ModelError(ProReasonError):
    code = "model_error"


class ModelUnavailable(ModelError):
    code = "model_unavailable"


#: the wait an overloaded model asks for when it names none (vLLM's admission errors name none)
DEFAULT_RETRY_AFTER_S = 5.0


class ModelOverloaded(ModelUnavailable):
    """The model server is up but refuses new work for now: vLLM's ``QueueOverflowError`` /
    ``MaxQueuedTokensError`` (``--max-num-queued-reqs`` / ``-tokens``), ``RetryableRequestError``
    (a paused engine), or HTTP 429/503 that outlived the retries. Retry after ``retry_after_s``.
    Same ``code`` as its base: on the wire it is the 503 it always was, now with a Retry-After."""

    def __init__(self, message: str, *, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitOpen(ModelUnavailable):
    """An upstream failed repeatedly (connection errors / 5xx) and is not being called for a
    cool-down: calls fail at once instead of waiting for retries. Same ``code`` as its base."""

    def __init__(self, message: str, *, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelTimeout(ModelError):
    code = "model_timeout"


class ModelRejected(ModelError):
    code = "model_rejected"

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class ContextLengthExceeded(ModelRejected):
    """The model refused the request as too large for it: prompt (text + image tokens) longer
    than its context, or more images than it accepts per prompt. The client's fault (a 400), not
    the upstream's, so the edge reports ``context_length_exceeded``; ``status_code`` stays the
    upstream's (vLLM: 400)."""

    code = "context_length_exceeded"


# What vLLM (0.33: renderers/params.py ``_token_len_check``, v1/engine/input_processor.py
# ``_validate_prompt_len``, multimodal/processing/context.py ``validate_num_items``), OpenAI and
# other servers say when a prompt is too large.
_TOO_LARGE = re.compile(
    r"maximum context length|maximum model length|context length|context window|max_model_len|"
    r"prompt is too long|too many tokens|too many images|may be provided in one prompt",
    re.IGNORECASE,
)
#: the ``param`` vLLM's renderer reports for a prompt longer than the context
CONTEXT_LENGTH_PARAMS = frozenset({"input_tokens"})


def is_context_length_error(message: str, param: str | None = None) -> bool:
    """Whether an upstream's refusal means "the prompt is too large for the model"."""
    return param in CONTEXT_LENGTH_PARAMS or bool(_TOO_LARGE.search(message))


class ModelLoadError(ModelError):
    code = "model_load_error"
