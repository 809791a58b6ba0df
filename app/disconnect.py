"""Cancel a request's work when its client disconnects (non-streaming requests).

Streams are covered by ``app.sse.EventStream``; a plain request runs its work in a task while a
watcher waits for ``http.disconnect`` on the ASGI receive channel (the body was already read, so
the next message is the disconnect). Whichever finishes first wins: a disconnect cancels the work,
and so the model calls in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from app.errors import ClientClosedRequest

T = TypeVar("T")

CANCEL_WAIT_S = 5.0


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientClosedRequest."""
    task = asyncio.create_task(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if watcher.exception() is not None:  # cannot watch: just wait for the work
            return await task
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_WAIT_S)
        raise ClientClosedRequest("the client disconnected; the request was cancelled")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
