"""Retry policy for HTTP model upstreams (what is retried, how long to wait) and error-body parsing.

Retried: connection errors, 429 and 5xx. Never retried: any other 4xx (the request itself is wrong)
and read timeouts (the model is slow; sending the same work again doubles the load).
The wait is exponential with jitter, unless the upstream says how long with ``Retry-After``
(seconds or an HTTP date) or ``retry-after-ms``, which is honoured up to ``MAX_RETRY_AFTER_S``.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

#: longest wait we accept from a Retry-After header (an upstream asking for more is capped)
MAX_RETRY_AFTER_S = 30.0
#: longest exponential backoff step
MAX_BACKOFF_S = 8.0


def is_retryable_status(status_code: int) -> bool:
    return status_code == 429 or 500 <= status_code <= 599


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date), or None."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0 else None


def backoff_delay(
    attempt: int, base_s: float, retry_after_s: float | None = None, *, jitter: bool = True
) -> float:
    """Wait before retry number ``attempt`` (0 = first retry).

    ``Retry-After`` wins when given (capped at ``MAX_RETRY_AFTER_S``); otherwise
    ``base_s * 2**attempt`` capped at ``MAX_BACKOFF_S`` (or ``base_s`` if larger), minus up to 25%
    jitter so clients that failed together do not retry together.
    """
    if retry_after_s is not None:
        return min(retry_after_s, MAX_RETRY_AFTER_S)
    delay = min(base_s * (2**attempt), max(MAX_BACKOFF_S, base_s))
    if jitter:
        delay *= 1.0 - 0.25 * random.random()
    return max(0.0, delay)


def error_message(body: bytes | str, status_code: int) -> str:
    """The upstream's error message from an OpenAI / vLLM error body, else a short raw excerpt.

    Accepts ``{"error": {"message": ..., "code": 400 | "string" | null}}`` (OpenAI, recent vLLM),
    ``{"error": "Unauthorized"}`` (vLLM ``--api-key``), ``{"message": ..., "code": ...}`` (older
    vLLM) and ``{"detail": ...}`` (FastAPI). Any other body is shown as text: plain text
    (``transformers serve``'s 500 says ``Internal Server Error``) as it is, an HTML page (proxies)
    without its tags; whitespace collapsed, at most 300 characters.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    message: Any = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        if message is None:
            message = data.get("message") or data.get("detail")
    if message is None:
        message = _plain_text(text)[:300] or f"HTTP {status_code}"
    if not isinstance(message, str):
        message = json.dumps(message)[:300]
    return message


def error_param(body: bytes | str) -> str | None:
    """``error.param`` of an OpenAI / vLLM error body (vLLM names the refused parameter there,
    e.g. ``input_tokens`` for a prompt longer than the context), else None."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    param = err.get("param") if isinstance(err, dict) else None
    return param if isinstance(param, str) else None


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def _plain_text(text: str) -> str:
    """A non-JSON error body as one readable line (HTML tags dropped, whitespace collapsed)."""
    if re.match(r"\s*<(!doctype|html|head|body|h1|p|center)\b", text, re.IGNORECASE):
        text = _TAG.sub(" ", text)
    return " ".join(text.split())


# --------------------------------------------------------------------------- circuit breaker
class CircuitBreaker:
    """Consecutive-failure breaker for one upstream (one event loop; no locking needed).

    closed: calls go through; ``failure()`` counts consecutive connection failures / 5xx, and at
    ``threshold`` the breaker opens. open: ``before_call()`` returns the seconds left of the
    cool-down (the caller fails at once). After the cool-down one call goes through (half-open):
    its ``success()`` closes the breaker, its ``failure()`` opens it again for another cool-down;
    ``neutral()`` (cancelled, 429, timeout: no verdict) lets the next call probe instead.
    ``threshold == 0`` disables it.
    """

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    @property
    def is_open(self) -> bool:
        """Open (cool-down running) or half-open (a probe decides): not healthy."""
        return self._opened_at is not None

    def before_call(self) -> float | None:
        """None: go ahead (maybe as the half-open probe); else seconds until a call may probe."""
        if self._opened_at is None:
            return None
        left = self._opened_at + self.cooldown_s - self._clock()
        if left > 0:
            return left
        if self._probing:
            return min(1.0, self.cooldown_s)  # another call is probing right now
        self._probing = True
        return None

    def success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.threshold <= 0:
            return
        if self._probing or self.failures >= self.threshold:
            self._opened_at = self._clock()
            self._probing = False

    def neutral(self) -> None:
        self._probing = False
