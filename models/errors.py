"""The errors of the model layer and the agents (the base of the project's one hierarchy).

    ProReasonError                 base; carries a short machine-readable ``code``
    ├── InvalidRequest             the caller asked for something malformed or impossible   (4xx)
    │   ├── MediaError             an image that cannot be accepted (format, size, SSRF ...)
    │   └── NotFound               unknown model / pipeline / route target
    └── ModelError                 a model backend failed                                   (5xx)
        ├── ModelUnavailable       cannot reach / load the model (connection, 5xx after retries)
        ├── ModelTimeout           the model did not answer in time
        ├── ModelRejected          the model server refused this request (its 4xx)
        └── ModelLoadError         weights/config cannot be loaded (bad id, missing extra)

Errors only the HTTP edge raises (API keys, backpressure, deadlines, start-up) live in
``app.errors``, which is also the only place that maps every error to an HTTP status and body.
Model *output* problems (unparseable JSON, unknown expert) are not errors: the agents record them
on the trace and go on. Errors here are for things that stop a request.
"""

from __future__ import annotations


class ProReasonError(Exception):
    code: str = "internal_error"

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


class ModelTimeout(ModelError):
    code = "model_timeout"


class ModelRejected(ModelError):
    code = "model_rejected"

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class ModelLoadError(ModelError):
    code = "model_load_error"
