"""A real loopback OpenAI-compatible server for tests, speaking chat completions like vLLM.

It is a Starlette app served by uvicorn in a background thread on a free ``127.0.0.1`` port, so
clients under test use their real HTTP stack (connection pooling, timeouts, SSE parsing,
cancellation closing sockets). Usable as a context manager or through ``start()`` / ``stop()``::

    with FakeOpenAIServer(model="fake-vlm") as server:
        backend = OpenAIBackend(BackendConfig(backend="openai", model="fake-vlm",
                                              base_url=server.base_url))
        ...
        assert server.requests[0].body["messages"][0]["content"][0]["type"] == "image_url"

Endpoints (the vLLM shapes, see ``shared/docs/serving.md``):

- ``POST /v1/chat/completions``: JSON response, or SSE when ``stream`` is true (first chunk carries
  ``delta.role``, content chunks, the last content chunk carries ``finish_reason``, then one
  ``choices: []`` usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``).
  Errors use vLLM's body ``{"error": {"message", "type", "param", "code": <int status>}}``.
  An unknown ``model`` gets vLLM's 404; a missing/invalid ``messages`` list gets 400.
- ``GET /v1/models``: one model card with ``max_model_len``.
- ``GET /health``: 200, or 503 when ``server.healthy`` is False (vLLM when its engine died).
- With ``api_key`` set, ``/v1/*`` answers 401 ``{"error": "Unauthorized"}`` (vLLM's ``--api-key``
  behaviour) unless ``Authorization: Bearer <api_key>`` is sent.

Programming it (all attributes may be changed while it runs; ``reset()`` restores the defaults):

- ``responder``: ``body dict -> str | Reply | Failure`` (sync or async). A ``str`` is the answer
  text; ``Reply`` sets finish reason / usage; a ``Failure`` fails just this call. Default: an echo
  of the last user text (``"echo: <text>"``).
- ``fail_next(failure, times=1)``: queue failures for the next chat calls, consumed in order:
  ``Failure.status(503, retry_after=0.1)``, ``Failure.status(429)``,
  ``Failure.vllm_error(400, "too long")``, ``Failure.openai_error(400, "bad", code="x")``,
  ``Failure.hang(5.0)`` (wait, then answer normally), ``Failure.close()`` (send headers and part of
  the body, then drop the connection), ``Failure.stream_error("boom")`` (a 200 stream that carries
  ``data: {"error": ...}`` after the first content chunk; for non-stream calls: a 500).
- ``delay_s``: wait before every chat answer; ``chunk_delay_s``: wait between SSE chunks.
- ``report_prompt_details``: add ``usage.prompt_tokens_details`` (``cached_tokens`` and vLLM's
  ``multimodal_tokens: {"image": n}``), as vLLM does with ``--enable-prompt-tokens-details``.
- ``image_tokens_per_image``: what an image costs in the reported ``prompt_tokens``.

Observing it:

- ``requests``: every request received (method, path, headers, JSON body), in arrival order;
  ``chat_requests`` only the chat-completion calls.
- ``disconnects``: how many chat calls the client abandoned before the answer was complete
  (detected while waiting/hanging and while streaming); ``wait_for_disconnects(n)`` polls for it.
- ``in_flight`` / ``max_in_flight``: chat calls being answered now / at most at once.

Waits (delay, hang, chunk delay) watch for client disconnects every few milliseconds and end early,
so a test that abandons a call never leaves a handler running for long.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

FailureKind = Literal["status", "hang", "close", "stream_error"]


@dataclass(frozen=True)
class Failure:
    """One scripted failure. Build with the class methods."""

    kind: FailureKind
    status_code: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""

    @classmethod
    def status(
        cls, status_code: int, *, retry_after: float | str | None = None, message: str = ""
    ) -> Failure:
        """An HTTP error with vLLM's error body, optionally with ``Retry-After``."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        body = vllm_error_body(status_code, message or f"scripted {status_code}")
        return cls("status", status_code=status_code, body=body, headers=headers)

    @classmethod
    def vllm_error(cls, status_code: int, message: str, *, param: str | None = None) -> Failure:
        """vLLM's error body: the integer status in ``code``."""
        return cls(
            "status", status_code=status_code, body=vllm_error_body(status_code, message, param)
        )

    @classmethod
    def openai_error(
        cls, status_code: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> Failure:
        """OpenAI's error body: ``code`` is a string or null."""
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
        return cls("status", status_code=status_code, body=body)

    @classmethod
    def raw(cls, status_code: int, body: Any, headers: dict[str, str] | None = None) -> Failure:
        """Any status with any JSON body (or text when ``body`` is a str)."""
        return cls("status", status_code=status_code, body=body, headers=dict(headers or {}))

    @classmethod
    def hang(cls, seconds: float) -> Failure:
        """Say nothing for ``seconds`` (ends early when the client disconnects), then answer."""
        return cls("hang", seconds=seconds)

    @classmethod
    def close(cls) -> Failure:
        """Send a 200 with a Content-Length, part of the body, then drop the connection."""
        return cls("close")

    @classmethod
    def stream_error(cls, message: str = "engine failure", status_code: int = 500) -> Failure:
        """Streams: one content chunk, then ``data: {"error": ...}``. Otherwise a plain error."""
        return cls("stream_error", status_code=status_code, message=message)


@dataclass(frozen=True)
class Reply:
    """A scripted answer. Token counts default to the server's own estimate."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: extra fields merged into ``usage`` (e.g. ``{"prompt_tokens_details": {...}}``)
    usage_extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float


Responder = Callable[[dict[str, Any]], "str | Reply | Failure | Awaitable[str | Reply | Failure]"]


def vllm_error_body(status_code: int, message: str, param: str | None = None) -> dict[str, Any]:
    kinds = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}
    kind = kinds.get(status_code, "InternalServerError" if status_code >= 500 else "Error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status_code}}


def echo_responder(body: dict[str, Any]) -> str:
    """Default answer: ``echo: `` + the text of the last user message."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return "echo: " + _text_of(message.get("content"))
    return "echo:"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _count_images(body: dict[str, Any]) -> int:
    count = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            count += sum(1 for p in content if p.get("type") == "image_url")
    return count


def _words(text: str) -> list[str]:
    """Split text into pieces that concatenate back to it (one per stream chunk)."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [p for p in pieces if p]


class _Closed(Exception):
    """Raised after a partial body: uvicorn then drops the connection (Failure.close)."""


class FakeOpenAIServer:
    """An OpenAI-compatible (vLLM-flavoured) HTTP server on a loopback port; see the module doc."""

    def __init__(
        self,
        *,
        model: str = "fake-model",
        responder: Responder | None = None,
        api_key: str | None = None,
        max_model_len: int = 4096,
        delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        report_prompt_details: bool = False,
        image_tokens_per_image: int = 64,
        poll_s: float = 0.005,
    ) -> None:
        self._defaults = {
            "model": model,
            "responder": responder or echo_responder,
            "api_key": api_key,
            "max_model_len": max_model_len,
            "delay_s": delay_s,
            "chunk_delay_s": chunk_delay_s,
            "report_prompt_details": report_prompt_details,
            "image_tokens_per_image": image_tokens_per_image,
        }
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.app = self._build_app()
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Restore the constructor's settings; forget requests, failures and counters."""
        with self._lock:
            d = self._defaults
            self.model: str = d["model"]
            self.responder: Responder = d["responder"]
            self.api_key: str | None = d["api_key"]
            self.max_model_len: int = d["max_model_len"]
            self.delay_s: float = d["delay_s"]
            self.chunk_delay_s: float = d["chunk_delay_s"]
            self.report_prompt_details: bool = d["report_prompt_details"]
            self.image_tokens_per_image: int = d["image_tokens_per_image"]
            self.healthy = True
            self.requests: list[RecordedRequest] = []
            self._failures: deque[Failure] = deque()
            self.disconnects = 0
            self.completed = 0
            self.in_flight = 0
            self.max_in_flight = 0

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="critical",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``), what clients take as ``base_url``."""
        return self.root_url + "/v1"

    # ------------------------------------------------------------------ programming
    def fail_next(self, failure: Failure, times: int = 1) -> None:
        """Queue ``failure`` for the next ``times`` chat calls (after failures already queued)."""
        with self._lock:
            self._failures.extend([failure] * times)

    @property
    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.path.endswith("/chat/completions")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` from a test (sync) until true or timeout; returns the last value."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    async def wait_for_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def wait_for_disconnects(self, n: int = 1, timeout: float = 5.0) -> bool:
        return await self.wait_for_async(lambda: self.disconnects >= n, timeout)

    # ------------------------------------------------------------------ app
    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            received_at=time.monotonic(),
        )
        with self._lock:
            self.requests.append(rec)
        return body

    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return JSONResponse({"error": "Unauthorized"}, status_code=401)

    async def _health(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=200 if self.healthy else 503)

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        card = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        return JSONResponse({"object": "list", "data": [card]})

    def _next_failure(self) -> Failure | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the client disconnected meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            if await request.is_disconnected():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self.poll_s, remaining))

    def _disconnected(self) -> None:
        with self._lock:
            self.disconnects += 1

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        handed_off = False
        try:
            response = await self._answer(request, body)
            if isinstance(response, StreamingResponse):
                handed_off = True  # the stream generator decrements in_flight when it ends
            return response
        finally:
            if not handed_off:
                with self._lock:
                    self.in_flight -= 1

    async def _answer(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object")
        if body.get("model") != self.model:
            return self._error(
                404, f"The model `{body.get('model')}` does not exist.", param="model"
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages must be a non-empty list", param="messages")

        failure = self._next_failure()
        if failure is not None and failure.kind == "hang":
            if await self._wait(request, failure.seconds):
                self._disconnected()
                return Response(status_code=499)
            failure = None
        if self.delay_s > 0 and await self._wait(request, self.delay_s):
            self._disconnected()
            return Response(status_code=499)

        outcome: str | Reply | Failure
        if failure is not None:
            outcome = failure
        else:
            produced = self.responder(body)
            outcome = await produced if inspect.isawaitable(produced) else produced
        if isinstance(outcome, str):
            outcome = Reply(outcome)

        stream = bool(body.get("stream"))
        if isinstance(outcome, Failure):
            if outcome.kind == "close":
                return _PartialResponse()
            if outcome.kind == "stream_error" and stream:
                reply = Reply("partial answer before the failure")
                return self._stream(request, body, reply, error=outcome)
            if outcome.kind == "stream_error":
                return self._error(outcome.status_code, outcome.message)
            if isinstance(outcome.body, str):
                return Response(outcome.body, outcome.status_code, headers=outcome.headers)
            return JSONResponse(outcome.body, outcome.status_code, headers=outcome.headers)
        if stream:
            return self._stream(request, body, outcome)
        with self._lock:
            self.completed += 1
        return JSONResponse(self._completion(body, outcome))

    def _error(self, status_code: int, message: str, param: str | None = None) -> Response:
        return JSONResponse(vllm_error_body(status_code, message, param), status_code=status_code)

    def _usage(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        images = _count_images(body)
        text_tokens = sum(len(_text_of(m.get("content")).split()) for m in body["messages"])
        image_tokens = images * self.image_tokens_per_image
        prompt = (
            reply.prompt_tokens if reply.prompt_tokens is not None else text_tokens + image_tokens
        )
        completion = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else len(_words(reply.text))
        )
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }
        if self.report_prompt_details:
            usage["prompt_tokens_details"] = {
                "cached_tokens": 0,
                "multimodal_tokens": {"image": image_tokens} if images else None,
            }
        usage.update(reply.usage_extra)
        return usage

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                    "stop_reason": None,
                }
            ],
            "usage": self._usage(body, reply),
        }

    def _stream(
        self, request: Request, body: dict[str, Any], reply: Reply, error: Failure | None = None
    ) -> StreamingResponse:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> AsyncIterator[str]:
            finished = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                pieces = _words(reply.text) or [""]
                for i, piece in enumerate(pieces):
                    if self.chunk_delay_s > 0 and await self._wait(request, self.chunk_delay_s):
                        return
                    if error is not None and i == 1:
                        err = vllm_error_body(error.status_code, error.message)
                        yield f"data: {json.dumps(err)}\n\n"
                        finished = True
                        return
                    last = i == len(pieces) - 1
                    yield chunk({"content": piece}, reply.finish_reason if last else None)
                if include_usage:
                    usage_chunk = {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": self.model,
                        "choices": [],
                        "usage": self._usage(body, reply),
                    }
                    yield f"data: {json.dumps(usage_chunk)}\n\n"
                yield "data: [DONE]\n\n"
                finished = True
                with self._lock:
                    self.completed += 1
            finally:
                with self._lock:
                    self.in_flight -= 1
                if not finished:
                    self._disconnected()

        return StreamingResponse(events(), media_type="text/event-stream")


class _PartialResponse(Response):
    """Headers promising 1000 bytes, 10 bytes of body, then the connection is dropped."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "x"', "more_body": True})
        raise _Closed("scripted connection drop")
