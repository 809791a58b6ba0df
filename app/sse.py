"""Server-sent events: the response that stops work when the client leaves and always cleans up,
and the two small formatters every stream uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: an SSE comment: ignored by clients, keeps proxies from closing an idle stream
KEEP_ALIVE = ": keep-alive\n\n"


def sse(event: str, data: object) -> str:
    """One named event with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """``text/event-stream`` over an async generator of ready-made SSE text.

    - Watches for ``http.disconnect`` whatever ASGI spec version the server speaks, and cancels
      the generator (and so the model calls behind it) when the client goes away.
    - Always closes the generator and calls ``on_close`` (releasing the admission slot), even if
      the response never started.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[str],
        *,
        on_close: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, headers={**SSE_HEADERS, **(headers or {})})
        self._events = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            try:
                aclose = getattr(self._events, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            finally:
                self._on_close()
