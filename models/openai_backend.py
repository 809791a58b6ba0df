"""A backend for any OpenAI-compatible chat-completions server (vLLM first), over plain ``httpx``.

- One ``httpx.AsyncClient`` per backend (keep-alive pool sized to ``max_concurrency``), explicit
  connect / read timeouts, optional Bearer key.
- Concurrent ``generate`` calls are how requests reach vLLM's continuous batching; an
  ``asyncio.Semaphore(max_concurrency)`` bounds what is in flight to this upstream.
- Retries (``models.http_retry``): connection errors, 429 and 5xx, with exponential backoff
  honouring ``Retry-After``; other 4xx -> ``ModelRejected`` with the upstream's message; still
  failing after the retries -> ``ModelUnavailable``; read timeout -> ``ModelTimeout``. A stream is
  retried only while nothing has been yielded to the caller.
- A 500 that repeats with the same body while the server reports itself healthy is a failure this
  request causes (``transformers serve`` answers a literal ``<image>`` in the text that way): it is
  ``ModelRejected(status_code=500)`` after two attempts, not ``ModelUnavailable`` after all of them.
- ``config.omit_fields`` are dropped from every request body (servers that 422 unknown fields).
- A stream may end without ``data: [DONE]`` once a ``finish_reason`` arrived; usage is read from
  whichever chunk carries it (the finish chunk, or vLLM's ``choices: []`` chunk).
- Cancelling the awaiting task closes the in-flight HTTP request (the server sees the disconnect,
  and vLLM aborts the generation).
- vLLM 0.33 (``entrypoints/openai/chat_completion/protocol.py``): ``max_completion_tokens``
  (``max_tokens`` is deprecated there; OpenAI and ``transformers serve`` take it too); image parts
  carry ``"uuid": <sha256>`` beside ``image_url`` (``renderers/chat_utils/chat_message.py``), so
  vLLM skips re-processing an image every perception round repeats; ``usage.prompt_tokens_details``
  (``cached_tokens``, ``multimodal_tokens``) when the server runs with
  ``--enable-prompt-tokens-details``.
- Headers: ``X-Request-Id`` (this call) and ``X-Session-ID`` (the question: every call of one run
  carries it, so a consistent-hash balancer keeps the run on one server and its prefix cache;
  vLLM 0.33 reads the same header as the request's ``session_id``,
  ``entrypoints/generate/base/serving.py`` ``SESSION_ID_HEADER``).
- Answers are read as a stream with a cap (``max_response_bytes``; SSE: total bytes and
  ``max_stream_line_bytes`` per line): a larger one fails the call (``ModelError``), unbuffered.
- A circuit breaker per upstream (``models.http_retry.CircuitBreaker``): after
  ``breaker_failures`` consecutive connection failures / 5xx, calls raise ``CircuitOpen`` at once
  for ``breaker_cooldown_s``, then one call probes; ``health()`` is False meanwhile.
- Messages name the model, never ``base_url`` (scrubbed from upstream text too); the address and
  raw upstream text go to ``error.detail``, which only the log shows. ``health()`` also needs
  ``/models`` to list the configured model.
- A 400 about the prompt's size -> ``ContextLengthExceeded``; 429/503 still there after the
  retries -> ``ModelOverloaded`` (with the upstream's ``Retry-After``). A failed finish reason
  (``error``, ``abort``, ``content_filter``) raises (``models.types.map_finish_reason``).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from models.base import ModelBackend
from models.config import BackendConfig
from models.errors import (
    CircuitOpen,
    ContextLengthExceeded,
    ModelError,
    ModelLoadError,
    ModelOverloaded,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    is_context_length_error,
)
from models.http_retry import (
    CircuitBreaker,
    backoff_delay,
    error_message,
    error_param,
    is_retryable_status,
    parse_retry_after,
)
from models.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ImagePart,
    Message,
    StreamDelta,
    TextPart,
    Usage,
    map_finish_reason,
)

log = logging.getLogger(__name__)

#: health probes use at most this timeout (seconds)
HEALTH_TIMEOUT_S = 5.0

#: the header that names the question (run) a call belongs to; vLLM 0.33 reads it as the
#: request's session id, and consistent-hash balancers can key on it
SESSION_ID_HEADER = "X-Session-ID"
#: at most this much of an error body is read
ERROR_BODY_BYTES = 65_536
#: a non-JSON error body longer than this (after HTML is stripped) is not shown to clients
PUBLIC_TEXT_CHARS = 100
#: answers larger than this are parsed in a worker thread
OFF_LOOP_JSON_BYTES = 131_072


# Connection-level failures worth another attempt (the request did not reach a model, or the
# connection broke before an answer). Read/write/pool timeouts are not in here: see ModelTimeout.
_RETRYABLE_TRANSPORT = (httpx.ConnectTimeout, httpx.NetworkError, httpx.RemoteProtocolError)


# --------------------------------------------------------------------------- wire conversion
def message_to_wire(message: Message, *, media_ids: bool = True) -> dict[str, Any]:
    """A message as chat-completions JSON: string content when text-only, else ordered parts;
    with ``media_ids`` each image part carries its sha256 as vLLM's ``uuid``."""
    if all(isinstance(p, TextPart) for p in message.content):
        return {"role": message.role, "content": message.text_content}
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            wire: dict[str, Any] = {
                "type": "image_url",
                "image_url": {"url": part.image.data_url()},
            }
            if media_ids:
                wire["uuid"] = part.image.sha256
            parts.append(wire)
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": message.role, "content": parts}


def _schema_name(schema: Mapping[str, Any]) -> str:
    """OpenAI requires ``^[a-zA-Z0-9_-]{1,64}$`` for ``json_schema.name``."""
    title = schema.get("title")
    name = re.sub(r"[^a-zA-Z0-9_-]+", "_", title) if isinstance(title, str) else ""
    return name.strip("_")[:64] or "response"


async def encode_images_off_loop(request: GenerationRequest) -> None:
    """PNG-encode (once, cached on the image) off the event loop: a large photo takes tens of ms."""
    pending = [image for image in request.images if not image.encoded]
    if pending:
        await asyncio.to_thread(lambda: [image.data_url() for image in pending])


def build_chat_body(
    request: GenerationRequest,
    model: str,
    *,
    structured_output: bool,
    stream: bool = False,
    media_ids: bool = True,
) -> dict[str, Any]:
    """The chat-completions request body for ``request``; optional fields only when set."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_to_wire(m, media_ids=media_ids) for m in request.messages],
        # max_tokens is deprecated in vLLM 0.33; OpenAI and transformers serve (5.x,
        # cli/serving/chat_completion.py) take max_completion_tokens as well
        "max_completion_tokens": s.max_tokens,
    }
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.min_tokens is not None:
        body["min_tokens"] = s.min_tokens  # vLLM extra sampling field
    if request.json_schema is not None and structured_output:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": _schema_name(request.json_schema),
                "schema": request.json_schema,
            },
        }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def parse_usage(data: Any) -> Usage:
    """``usage`` -> Usage, with image and prefix-cached tokens when the server reports them.

    OpenAI: ``prompt_tokens_details.image_tokens`` / ``.cached_tokens``; vLLM (only with
    ``--enable-prompt-tokens-details``; 0.33 ``PromptTokenUsageInfo`` in
    ``entrypoints/serve/engine/protocol.py``): ``prompt_tokens_details.multimodal_tokens.image``
    and ``.cached_tokens``. Otherwise those are None (unknown).
    """
    if not isinstance(data, Mapping):
        return Usage()
    image_tokens: int | None = None
    cached_tokens: int | None = None
    details = data.get("prompt_tokens_details")
    if isinstance(details, Mapping):
        if _is_count(details.get("image_tokens")):
            image_tokens = details["image_tokens"]
        multimodal = details.get("multimodal_tokens")
        if isinstance(multimodal, Mapping) and _is_count(multimodal.get("image")):
            image_tokens = multimodal["image"]
        if _is_count(details.get("cached_tokens")):
            cached_tokens = details["cached_tokens"]
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        image_tokens=image_tokens,
        cached_tokens=cached_tokens,
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_completion(data: Any, default_model: str) -> GenerationResult:
    """A chat-completion response body -> GenerationResult (latency filled by the caller)."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelError(f"malformed chat completion from upstream: {str(data)[:200]}") from exc
    if not isinstance(text, str):
        raise ModelError(f"malformed chat completion content from upstream: {text!r:.200}")
    return GenerationResult(
        text=text,
        finish_reason=map_finish_reason(choice.get("finish_reason"), model=default_model),
        usage=parse_usage(data.get("usage")),
        model=str(data.get("model") or default_model),
    )


class _StreamTooLarge(Exception):
    def __init__(self, what: str, limit: int) -> None:
        super().__init__(what)
        self.what = what
        self.limit = limit


async def _lines(response: httpx.Response, max_bytes: int, max_line: int) -> AsyncIterator[str]:
    """The body's lines (``\n``, ``\r\n`` or ``\r``), at most ``max_bytes`` in all and
    ``max_line`` per line (else _StreamTooLarge, before buffering more)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    total = 0
    pending = ""
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise _StreamTooLarge("stream", max_bytes)
        pending += decoder.decode(chunk)
        carry_cr = pending.endswith("\r")
        if carry_cr:
            pending = pending[:-1]
        parts = pending.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        pending = parts.pop() + ("\r" if carry_cr else "")
        for line in parts:
            if len(line) > max_line:
                raise _StreamTooLarge("stream line", max_line)
            yield line
        if len(pending) > max_line:
            raise _StreamTooLarge("stream line", max_line)
    pending += decoder.decode(b"", final=True)
    if pending.rstrip("\r"):
        yield pending.rstrip("\r")


async def _sse_data(
    response: httpx.Response, max_bytes: int = 1 << 20, max_line: int = 1 << 18
) -> AsyncIterator[str]:
    """The ``data`` payload of each server-sent event (multi-line data joined with newlines)."""
    lines: list[str] = []
    size = 0
    async for line in _lines(response, max_bytes, max_line):
        if not line:
            if lines:
                yield "\n".join(lines)
                lines, size = [], 0
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
            size += len(value)
            if size > max_line:
                raise _StreamTooLarge("stream event", max_line)
    if lines:
        yield "\n".join(lines)


def _is_json(content: bytes) -> bool:
    try:
        json.loads(content)
    except ValueError:
        return False
    return True


class _RetryableStatus(Exception):
    def __init__(
        self, status_code: int, message: str, retry_after_s: float | None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after_s = retry_after_s
        self.detail = detail or message


# --------------------------------------------------------------------------- the backend
class OpenAIBackend(ModelBackend):
    """Chat completions over HTTP against ``config.base_url`` (vLLM's ``/v1`` or any compatible)."""

    backend = "openai"

    def __init__(self, config: BackendConfig) -> None:
        if config.backend != "openai":
            raise ValueError(f"OpenAIBackend needs backend='openai', got {config.backend!r}")
        base_url = config.base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ModelLoadError(f"base_url must be an http(s) URL, got {config.base_url!r}")
        super().__init__(config.model, context_length=config.context_length)
        self.config = config
        self.base_url = base_url
        self.supports_json_schema = config.structured_output
        self.adapters = frozenset(config.adapters)
        self._headers = {"Accept": "application/json", "User-Agent": "proreason"}
        if config.api_key is not None:
            self._headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._timeout = httpx.Timeout(
            connect=config.connect_timeout_s,
            read=config.read_timeout_s,
            write=config.read_timeout_s,
            pool=config.read_timeout_s,
        )
        # Created on first use inside the running loop (both are bound to one event loop).
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._netloc = httpx.URL(base_url).netloc.decode("ascii", "replace")
        self._breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)

    @property
    def circuit_state(self) -> str:
        """``closed`` (calls go through), ``open`` (failing fast) or ``half_open`` (probing)."""
        return self._breaker.state

    # ------------------------------------------------------------------ client lifecycle
    def _ensure_client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._semaphore is None or self._loop is not loop:
            if self._client is not None:
                # A client is tied to the loop that made it; a new loop (a second asyncio.run)
                # gets a new client. The old one's sockets die with its loop.
                log.debug("%r: event loop changed, opening a new HTTP client", self)
            slots = self.config.max_concurrency
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                headers=self._headers,
                # +2: health probes never wait behind generations for a connection
                limits=httpx.Limits(max_connections=slots + 2, max_keepalive_connections=slots + 2),
                follow_redirects=False,
            )
            self._semaphore = asyncio.Semaphore(slots)
            self._loop = loop
        return self._client, self._semaphore

    async def start(self) -> None:
        """Open the client; learn ``context_length`` from ``/models`` when not configured.

        Never fails on an unreachable upstream (it may still be loading): ``health()`` tells.
        """
        client, _ = self._ensure_client()
        if self.context_length is None:
            try:
                await self._read_model_info(client)
            except httpx.HTTPError as exc:
                log.info("%r: could not read /models at start-up: %r", self, exc)

    async def close(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._semaphore = self._loop = None
        if client is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            await client.aclose()

    # ------------------------------------------------------------------ requests
    def _request_headers(self, request: GenerationRequest) -> dict[str, str]:
        headers: dict[str, str] = {}
        if request.request_id:
            headers["X-Request-Id"] = request.request_id
        if request.session_id:
            headers[SESSION_ID_HEADER] = request.session_id
        return headers

    def _body(self, request: GenerationRequest, *, stream: bool = False) -> dict[str, Any]:
        body = build_chat_body(
            request,
            request.adapter or self.model,  # a LoRA adapter is addressed by its served name
            structured_output=self.supports_json_schema,
            stream=stream,
            media_ids=self.config.media_ids,
        )
        for name in self.config.omit_fields:
            body.pop(name, None)
        return body

    # ------------------------------------------------------------------ failures
    @property
    def label(self) -> str:
        """How client-facing messages name this upstream: the model, never the address."""
        return f"model {self.model!r}"

    def _scrub(self, text: str) -> str:
        """``text`` without this upstream's address (an upstream may echo its own URL)."""
        for secret in (self.base_url, self.config.base_url, self._netloc):
            if secret:
                text = text.replace(secret, "<upstream>")
        return text

    def _fail(self, error: ModelError, detail: str | None = None) -> ModelError:
        """``error`` with its message scrubbed and the server-side detail (address, upstream
        text) attached for the log."""
        error.message = self._scrub(error.message)
        error.args = (error.message,)
        error.detail = f"{self.model} at {self.base_url}: {detail or error.message}"
        return error

    def _status_error(self, status: int, headers: httpx.Headers, content: bytes) -> Exception:
        """A non-2xx answer -> ModelRejected / ContextLengthExceeded (final) or _RetryableStatus
        (429 / 5xx). The upstream's message reaches the client from a JSON error body, or when a
        plain-text body is one short line; any other body only reaches the log."""
        message = error_message(content, status)
        short = len(message) <= PUBLIC_TEXT_CHARS
        public = message if short or _is_json(content) else f"HTTP {status} (non-JSON error body)"
        public = self._scrub(public)
        if is_retryable_status(status):
            return _RetryableStatus(status, public, parse_retry_after(headers), detail=message)
        if status in (400, 413) and is_context_length_error(message, error_param(content)):
            return self._fail(ContextLengthExceeded(public, status_code=status), message)
        if status == 422 and "unexpected field" in message.lower():
            public += " (list such fields in this model's omit_fields)"
        return self._fail(ModelRejected(public, status_code=status), message)

    async def _check_repeated_500(self, exc: _RetryableStatus, previous: str | None) -> str | None:
        """Raise ModelRejected when this 500 repeats the previous attempt's body and the server is
        healthy (the request, not the server, is at fault); else return what to compare next."""
        if exc.status_code != 500:
            return None
        # Twice: a server whose handler raised closes that connection just after its 500
        # (uvicorn), and the first probe may race it on the pooled connection.
        if exc.message == previous and (await self._probe() or await self._probe()):
            self._breaker.success()  # the server is fine; this request is not
            raise self._fail(
                ModelRejected(
                    f"{self.label} failed this request twice with HTTP 500 while healthy "
                    f"(not retried further): {exc.message}",
                    status_code=500,
                ),
                exc.detail,
            )
        return exc.message

    def _timeout_error(self, exc: httpx.TimeoutException) -> ModelError:
        return self._fail(
            ModelTimeout(
                f"{self.label}: no answer within {self.config.read_timeout_s:g}s "
                f"({type(exc).__name__})"
            )
        )

    async def _wait_before_retry(self, attempt: int, why: str, retry_after: float | None) -> None:
        delay = backoff_delay(attempt, self.config.retry_backoff_s, retry_after)
        log.warning(
            "%s at %s: %s; retry %d/%d in %.2fs",
            self.model,
            self.base_url,
            why,
            attempt + 1,
            self.config.max_retries,
            delay,
        )
        await asyncio.sleep(delay)

    def _unavailable(
        self, attempts: int, why: str, last: _RetryableStatus | None = None, detail: str = ""
    ) -> ModelError:
        text = f"{self.label} unavailable after {attempts} attempt(s): {why}"
        error: ModelUnavailable
        if last is not None and last.status_code in (429, 503):  # up, but refusing work
            if last.retry_after_s is None:
                error = ModelOverloaded(text)
            else:
                error = ModelOverloaded(text, retry_after_s=last.retry_after_s)
        else:
            error = ModelUnavailable(text)
        return self._fail(error, detail or why)

    def _check_breaker(self, attempts: int, why: str) -> None:
        """Raise CircuitOpen at once while this upstream's breaker is open."""
        wait = self._breaker.before_call()
        if wait is None:
            return
        tried = f" after {attempts} attempt(s): {why}" if attempts else ""
        raise self._fail(
            CircuitOpen(
                f"{self.label} unavailable: it failed {self._breaker.failures} time(s) in a row "
                f"and is not called for {wait:.1f}s more{tried}",
                retry_after_s=wait,
            )
        )

    def _too_large(self, what: str, limit: int) -> ModelError:
        return self._fail(ModelError(f"{self.label}: {what} larger than {limit} bytes; not read"))

    async def _read_body(self, response: httpx.Response, *, error: bool = False) -> bytes:
        """The body, at most ``max_response_bytes`` (an error body: its first 64 KiB, silently
        cut); a larger answer raises ModelError without being buffered."""
        limit = self.config.max_response_bytes
        if error:
            limit = min(limit, ERROR_BODY_BYTES)
        declared = response.headers.get("content-length", "")
        if not error and declared.isdigit() and int(declared) > limit:
            raise self._too_large("answer", limit)
        buf = bytearray()
        async for chunk in response.aiter_bytes():
            buf += chunk
            if len(buf) > limit:
                if error:
                    return bytes(buf[:limit])
                raise self._too_large("answer", limit)
        return bytes(buf)

    async def _decode(self, raw: bytes) -> Any:
        """JSON, parsed off the event loop when large."""
        try:
            if len(raw) > OFF_LOOP_JSON_BYTES:
                return await asyncio.to_thread(json.loads, raw)
            return json.loads(raw)
        except ValueError as exc:
            excerpt = raw[:200].decode("utf-8", "replace")
            raise self._fail(
                ModelError(f"{self.label} answered with invalid JSON"), f"invalid JSON: {excerpt!r}"
            ) from exc

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await encode_images_off_loop(request)
        started = time.perf_counter()
        body = self._body(request)
        client, slots = self._ensure_client()
        url = self.base_url + "/chat/completions"
        headers = self._request_headers(request)
        why = ""
        last: _RetryableStatus | None = None
        last_500: str | None = None
        for attempt in range(self.config.max_retries + 1):
            self._check_breaker(attempt, why)
            retry_after: float | None = None
            verdict = "neutral"
            try:
                async with slots, client.stream("POST", url, json=body, headers=headers) as resp:
                    if resp.status_code >= 300:
                        content = await self._read_body(resp, error=True)
                        raise self._status_error(resp.status_code, resp.headers, content)
                    verdict = "success"
                    raw = await self._read_body(resp)
                data = await self._decode(raw)
                try:
                    result = parse_completion(data, self.model)
                except ModelError as exc:
                    if exc.message.startswith("malformed"):  # carries a raw excerpt: log only
                        public = ModelError(f"{self.label}: malformed chat completion")
                        raise self._fail(public, exc.message) from exc
                    raise self._fail(exc) from exc
                result.latency_s = time.perf_counter() - started
                return result
            except _RetryableStatus as exc:
                verdict = "neutral" if exc.status_code == 429 else "failure"
                last_500 = await self._check_repeated_500(exc, last_500)
                why, retry_after = f"HTTP {exc.status_code}: {exc.message}", exc.retry_after_s
                last = exc
            except ModelRejected:
                verdict = "success"  # the upstream answered: this request is at fault
                raise
            except _RETRYABLE_TRANSPORT as exc:
                if verdict != "success":
                    verdict = "failure"
                why, last = type(exc).__name__, None
                log.info("%s at %s: %r", self.model, self.base_url, exc)
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc) from exc
            except httpx.TransportError as exc:
                verdict = "failure"
                raise self._unavailable(attempt + 1, type(exc).__name__, detail=repr(exc)) from exc
            finally:
                self._record(verdict)
            if attempt < self.config.max_retries:
                self._check_breaker(attempt + 1, why)  # just opened: no wait for nothing
                await self._wait_before_retry(attempt, why, retry_after)
        raise self._unavailable(self.config.max_retries + 1, why, last)

    def _record(self, verdict: str) -> None:
        if verdict == "success":
            self._breaker.success()
        elif verdict == "failure":
            self._breaker.failure()
            if self._breaker.is_open:
                log.warning(
                    "%s at %s: circuit open after %d consecutive failure(s)",
                    self.model,
                    self.base_url,
                    self._breaker.failures,
                )
        else:
            self._breaker.neutral()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        await encode_images_off_loop(request)
        body = self._body(request, stream=True)
        client, slots = self._ensure_client()
        url = self.base_url + "/chat/completions"
        headers = {**self._request_headers(request), "Accept": "text/event-stream"}
        why = ""
        last: _RetryableStatus | None = None
        last_500: str | None = None
        for attempt in range(self.config.max_retries + 1):
            self._check_breaker(attempt, why)
            retry_after: float | None = None
            yielded = False
            verdict = "neutral"
            try:
                async with slots, client.stream("POST", url, json=body, headers=headers) as resp:
                    if resp.status_code >= 300:
                        content = await self._read_body(resp, error=True)
                        raise self._status_error(resp.status_code, resp.headers, content)
                    verdict = "success"
                    self._record(verdict)
                    async with contextlib.aclosing(self._parse_stream(resp)) as deltas:
                        async for delta in deltas:
                            yielded = True
                            yield delta
                return
            except _RetryableStatus as exc:
                verdict = "neutral" if exc.status_code == 429 else "failure"
                last_500 = await self._check_repeated_500(exc, last_500)
                why, retry_after = f"HTTP {exc.status_code}: {exc.message}", exc.retry_after_s
                last = exc
            except ModelRejected:
                verdict = "success"
                raise
            except _RETRYABLE_TRANSPORT as exc:
                if yielded:
                    raise self._fail(
                        ModelUnavailable(f"{self.label}: stream broke off ({type(exc).__name__})"),
                        repr(exc),
                    ) from exc
                if verdict != "success":
                    verdict = "failure"
                why, last = type(exc).__name__, None
                log.info("%s at %s: %r", self.model, self.base_url, exc)
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc) from exc
            except httpx.TransportError as exc:
                verdict = "failure"
                raise self._unavailable(attempt + 1, type(exc).__name__, detail=repr(exc)) from exc
            finally:
                if verdict != "success":  # success was recorded when the stream started
                    self._record(verdict)
            if attempt < self.config.max_retries:
                self._check_breaker(attempt + 1, why)  # just opened: no wait for nothing
                await self._wait_before_retry(attempt, why, retry_after)
        raise self._unavailable(self.config.max_retries + 1, why, last)

    async def _parse_stream(self, response: httpx.Response) -> AsyncIterator[StreamDelta]:
        """SSE chat-completion chunks -> text deltas, then one final delta with finish + usage."""
        finish: FinishReason | None = None
        usage: Usage | None = None
        done = False
        events = _sse_data(
            response, self.config.max_response_bytes, self.config.max_stream_line_bytes
        )
        try:
            async for data in events:
                if data.strip() == "[DONE]":
                    done = True
                    break
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise self._fail(
                        ModelError(f"{self.label}: malformed stream event"), repr(data[:200])
                    ) from exc
                if not isinstance(event, dict):
                    raise self._fail(
                        ModelError(f"{self.label}: malformed stream event"), repr(data[:200])
                    )
                if event.get("error") is not None:
                    raise self._fail(
                        ModelError(f"{self.label} failed mid-stream: {error_message(data, 500)}")
                    )
                if event.get("usage"):
                    usage = parse_usage(event["usage"])
                for choice in event.get("choices") or ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield StreamDelta(text=text)
                    if choice.get("finish_reason") is not None:
                        finish = map_finish_reason(choice["finish_reason"], model=self.model)
        except _StreamTooLarge as exc:
            raise self._too_large(exc.what, exc.limit) from None
        if not done and finish is None:
            raise self._fail(ModelUnavailable(f"{self.label}: stream ended unfinished"))
        yield StreamDelta(finish_reason=finish or "stop", usage=usage or Usage())

    # ------------------------------------------------------------------ health / info
    async def _read_model_info(self, client: httpx.AsyncClient) -> bool:
        """GET /models: True when it answers 200 and lists ``self.model`` (a server that lists no
        models at all is taken at its word); learn ``max_model_len`` (vLLM reports it) when no
        context_length is set."""
        timeout = httpx.Timeout(min(HEALTH_TIMEOUT_S, self.config.read_timeout_s))
        response = await client.get(self.base_url + "/models", timeout=timeout)
        if response.status_code != 200:
            return False
        try:
            cards = response.json().get("data") or []
        except (ValueError, AttributeError):
            cards = []
        if not isinstance(cards, list):
            cards = []
        ids = [card.get("id") for card in cards if isinstance(card, dict)]
        for card in cards:
            if isinstance(card, dict) and card.get("id") == self.model:
                max_len = card.get("max_model_len")
                if self.context_length is None and isinstance(max_len, int) and max_len > 0:
                    self.context_length = max_len
                    log.info("%r: context length %d (from /models)", self, max_len)
        if ids and self.model not in ids:
            log.warning(
                "%s at %s does not serve this model; it lists %s",
                self.model,
                self.base_url,
                ", ".join(map(str, ids[:10])),
            )
            return False
        return True

    async def _probe(self) -> bool:
        """The upstream's own health: ``/models`` answers 200 and lists the model and, for
        vLLM-style ``.../v1`` URLs, ``/health`` is not 5xx (vLLM answers 503 when its engine
        died)."""
        client, _ = self._ensure_client()
        timeout = httpx.Timeout(min(HEALTH_TIMEOUT_S, self.config.read_timeout_s))
        try:
            if self.base_url.endswith("/v1"):
                probe = await client.get(self.base_url[: -len("/v1")] + "/health", timeout=timeout)
                if probe.status_code >= 500:
                    return False
            return await self._read_model_info(client)
        except httpx.HTTPError as exc:
            log.info("%r: health check failed: %r", self, exc)
            return False

    async def health(self) -> bool:
        """False while the circuit breaker is open (calls fail fast now), else ``_probe()``."""
        if self._breaker.is_open:
            log.info("%r: not healthy: circuit %s", self, self._breaker.state)
            return False
        return await self._probe()
