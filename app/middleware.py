"""The edge of every HTTP request (pure ASGI, so streams pass through untouched).

- request id: ``X-Request-Id`` if valid (``[A-Za-z0-9._:-]``, at most 128 chars), else a new one;
  stored in ``request.state.request_id`` and echoed in the response header;
- body limit: ``Content-Length`` above ``max_body_bytes`` -> 413 before reading; otherwise the body
  is read here counting bytes (chunked uploads included) and replayed to the app;
- the last line of defence: an unexpected exception -> a 500 envelope with the request id, logged
  with its traceback (never the exception text on the wire);
- one JSON log line and the request metrics per request, when the response ends (streams included).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, describe, error_response, log_unexpected
from app.metrics import Metrics

log = logging.getLogger("proreason.access")

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


def request_id_from(headers: Headers) -> str:
    given = headers.get(REQUEST_ID_HEADER)
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = request_id_from(headers)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            replay = await self._read_body(scope, headers, receive)
            await self.app(scope, replay, send_with_id)
        except PayloadTooLarge as exc:
            if not response_started:
                await error_response(describe(exc), request_id)(scope, receive, send_with_id)
        except Exception as exc:
            log_unexpected(exc, request_id)
            if not response_started:
                info = describe(exc)
                await error_response(info, request_id)(scope, receive, send_with_id)
        finally:
            self.metrics.http_in_flight.dec()
            self._finish(scope, state, request_id, status, time.perf_counter() - started)

    async def _read_body(self, scope: Scope, headers: Headers, receive: Receive) -> Receive:
        """Read the whole body (bounded) and return a receive that replays it, then passes on."""
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(self._too_large(int(declared)))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while uploading
                return _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(self._too_large(size, streamed=True))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return _replay([body], receive)

    def _too_large(self, size: int, streamed: bool = False) -> str:
        what = "more than" if streamed else ""
        return (
            f"request body too large: {what} {size} bytes (at most {self.max_body_bytes})"
        ).replace("  ", " ")

    def _finish(
        self, scope: Scope, state: dict, request_id: str, status: int, latency_s: float
    ) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(endpoint, scope["method"], status, latency_s)
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(latency_s * 1000, 1),
                "stop_reason": state.get("stop_reason"),
            },
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
