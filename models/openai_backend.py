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
- A 400 about the prompt's size -> ``ContextLengthExceeded``; 429/503 still there after the
  retries -> ``ModelOverloaded`` (with the upstream's ``Retry-After``). A failed finish reason
  (``error``, ``abort``, ``content_filter``) raises (``models.types.map_finish_reason``).
"""

from __future__ import annotations

import asyncio
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


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` payload of each server-sent event (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


class _RetryableStatus(Exception):
    def __init__(self, status_code: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after_s = retry_after_s


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

    def _status_error(self, response: httpx.Response) -> Exception:
        """A non-2xx answer -> ModelRejected / ContextLengthExceeded (final) or _RetryableStatus
        (429 / 5xx)."""
        status = response.status_code
        message = error_message(response.content, status)
        if is_retryable_status(status):
            return _RetryableStatus(status, message, parse_retry_after(response.headers))
        if status in (400, 413) and is_context_length_error(message, error_param(response.content)):
            return ContextLengthExceeded(message, status_code=status)
        if status == 422 and "unexpected field" in message.lower():
            message += " (list such fields in this model's omit_fields)"
        return ModelRejected(message, status_code=status)

    async def _check_repeated_500(self, exc: _RetryableStatus, previous: str | None) -> str | None:
        """Raise ModelRejected when this 500 repeats the previous attempt's body and the server is
        healthy (the request, not the server, is at fault); else return what to compare next."""
        if exc.status_code != 500:
            return None
        # Twice: a server whose handler raised closes that connection just after its 500
        # (uvicorn), and the first probe may race it on the pooled connection.
        if exc.message == previous and (await self.health() or await self.health()):
            raise ModelRejected(
                f"{self.model} at {self.base_url} failed this request twice with HTTP 500 "
                f"while healthy (not retried further): {exc.message}",
                status_code=500,
            )
        return exc.message

    def _timeout_error(self, exc: httpx.TimeoutException) -> ModelTimeout:
        return ModelTimeout(
            f"{self.model} at {self.base_url}: no answer within {self.config.read_timeout_s:g}s "
            f"({type(exc).__name__})"
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
        self, attempts: int, why: str, last: _RetryableStatus | None = None
    ) -> ModelUnavailable:
        text = f"{self.model} at {self.base_url} unavailable after {attempts} attempt(s): {why}"
        if last is not None and last.status_code in (429, 503):  # up, but refusing work
            if last.retry_after_s is None:
                return ModelOverloaded(text)
            return ModelOverloaded(text, retry_after_s=last.retry_after_s)
        return ModelUnavailable(text)

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
            retry_after: float | None = None
            try:
                async with slots:
                    response = await client.post(url, json=body, headers=headers)
                if response.status_code >= 300:
                    raise self._status_error(response)
                try:
                    data = response.json()
                except ValueError as exc:
                    raise ModelError(
                        f"upstream answered with invalid JSON: {response.text[:200]!r}"
                    ) from exc
                result = parse_completion(data, self.model)
                result.latency_s = time.perf_counter() - started
                return result
            except _RetryableStatus as exc:
                last_500 = await self._check_repeated_500(exc, last_500)
                why, retry_after = f"HTTP {exc.status_code}: {exc.message}", exc.retry_after_s
                last = exc
            except _RETRYABLE_TRANSPORT as exc:
                why, last = f"{type(exc).__name__}: {exc}", None
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc) from exc
            except httpx.TransportError as exc:
                raise self._unavailable(attempt + 1, f"{type(exc).__name__}: {exc}") from exc
            if attempt < self.config.max_retries:
                await self._wait_before_retry(attempt, why, retry_after)
        raise self._unavailable(self.config.max_retries + 1, why, last)

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
            retry_after: float | None = None
            yielded = False
            try:
                async with slots, client.stream("POST", url, json=body, headers=headers) as resp:
                    if resp.status_code >= 300:
                        await resp.aread()
                        raise self._status_error(resp)
                    async with contextlib.aclosing(self._parse_stream(resp)) as deltas:
                        async for delta in deltas:
                            yielded = True
                            yield delta
                return
            except _RetryableStatus as exc:
                last_500 = await self._check_repeated_500(exc, last_500)
                why, retry_after = f"HTTP {exc.status_code}: {exc.message}", exc.retry_after_s
                last = exc
            except _RETRYABLE_TRANSPORT as exc:
                if yielded:
                    raise ModelUnavailable(
                        f"{self.model} at {self.base_url}: stream broke off: {exc!r}"
                    ) from exc
                why, last = f"{type(exc).__name__}: {exc}", None
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc) from exc
            except httpx.TransportError as exc:
                raise self._unavailable(attempt + 1, f"{type(exc).__name__}: {exc}") from exc
            if attempt < self.config.max_retries:
                await self._wait_before_retry(attempt, why, retry_after)
        raise self._unavailable(self.config.max_retries + 1, why, last)

    async def _parse_stream(self, response: httpx.Response) -> AsyncIterator[StreamDelta]:
        """SSE chat-completion chunks -> text deltas, then one final delta with finish + usage."""
        finish: FinishReason | None = None
        usage: Usage | None = None
        done = False
        async for data in _sse_data(response):
            if data.strip() == "[DONE]":
                done = True
                break
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise ModelError(f"malformed stream event from upstream: {data[:200]!r}") from exc
            if not isinstance(event, dict):
                raise ModelError(f"malformed stream event from upstream: {data[:200]!r}")
            if event.get("error") is not None:
                raise ModelError(f"upstream failed mid-stream: {error_message(data, 500)}")
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
        if not done and finish is None:
            raise ModelUnavailable(f"{self.model} at {self.base_url}: stream ended unfinished")
        yield StreamDelta(finish_reason=finish or "stop", usage=usage or Usage())

    # ------------------------------------------------------------------ health / info
    async def _read_model_info(self, client: httpx.AsyncClient) -> bool:
        """GET /models; learn ``max_model_len`` (vLLM reports it) when no context_length is set."""
        timeout = httpx.Timeout(min(HEALTH_TIMEOUT_S, self.config.read_timeout_s))
        response = await client.get(self.base_url + "/models", timeout=timeout)
        if response.status_code != 200:
            return False
        if self.context_length is None:
            try:
                cards = response.json().get("data") or []
            except (ValueError, AttributeError):
                cards = []
            for card in cards:
                if isinstance(card, dict) and card.get("id") == self.model:
                    max_len = card.get("max_model_len")
                    if isinstance(max_len, int) and max_len > 0:
                        self.context_length = max_len
                        log.info("%r: context length %d (from /models)", self, max_len)
        return True

    async def health(self) -> bool:
        """True when ``/models`` answers 200 and, for vLLM-style ``.../v1`` URLs, the server's
        ``/health`` is not 5xx (vLLM answers 503 there when its engine died)."""
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
