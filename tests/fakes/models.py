"""The one scripted ModelBackend test double, for agent, app and CLI tests (never in the code).

``FakeModel`` recognises the role of each request from its system prompt (tests.fakes.roles),
answers from a per-role script, and records every call with timing, including calls that were
cancelled (the client went away, the deadline passed). It can fail chosen calls, sleep, block on a
gate, report unhealthy, claim JSON-schema support or not, and refuse images.

    FakeModel("lvlm", script={"referee": ['{"solvable": false, ...}', SOLVED]})
    script[role]   a string; a list consumed in order (its last item repeats); or a function
                   ``(request, n) -> text`` with n the 1-based call count of that role
    fail[role]     call numbers that raise ModelError ({1, 3})
    cut[role]      call numbers whose output ends at max_tokens (finish_reason "length")
    raise_on[role] an exception every call of that role raises
    delay_s        seconds to sleep per call (a number, or per role)
    gate           when set, every call waits for it (tests hold calls in flight)
    finish[role]   the finish_reason of that role's calls ("length": cut at max_tokens)
    image_tokens   tokens reported per image; None: the backend cannot tell (usage has none)
    token_delay_s  ``stream`` only: seconds between its pieces (a word and the space before it
                   each; the last delta carries finish_reason and usage, as every backend's)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from models.base import ModelBackend
from models.errors import ModelError
from models.types import FinishReason, GenerationRequest, GenerationResult, StreamDelta, Usage
from tests.fakes.roles import DEFAULT_SCRIPT, role_of

Script = str | Sequence[str] | Callable[[GenerationRequest, int], str]


@dataclass
class Call:
    role: str
    request: GenerationRequest
    started: float = 0.0
    finished: float = 0.0
    cancelled: bool = False
    done: bool = False
    #: the call was a ``stream``; ``pieces``: the text deltas it yielded
    streamed: bool = False
    pieces: int = 0

    @property
    def text(self) -> str:
        """All the text the model was shown (system + user)."""
        return "\n".join(m.text_content for m in self.request.messages)

    @property
    def user_text(self) -> str:
        return "\n".join(m.text_content for m in self.request.messages if m.role == "user")

    @property
    def n_images(self) -> int:
        return len(self.request.images)


@dataclass(eq=False)
class FakeModel(ModelBackend):
    name: str = "fake-lvlm"
    backend: str = "fake"
    script: dict[str, Script] = field(default_factory=dict)
    fail: dict[str, set[int]] = field(default_factory=dict)
    #: call numbers that end at max_tokens (finish_reason "length")
    cut: dict[str, set[int]] = field(default_factory=dict)
    raise_on: dict[str, BaseException] = field(default_factory=dict)
    delay_s: float | dict[str, float] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    started: asyncio.Event | None = None
    healthy: bool = True
    json_schema: bool = False
    context: int | None = None
    images_ok: bool = True
    #: image tokens reported per image (counted into prompt_tokens); None: not counted
    image_tokens: int | None = 7
    finish: dict[str, FinishReason] = field(default_factory=dict)
    token_delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.name, context_length=self.context)
        self.supports_json_schema = self.json_schema
        self.supports_images = self.images_ok

    def _answer(self, role: str, request: GenerationRequest, n: int) -> str:
        script = self.script.get(role, DEFAULT_SCRIPT[role])
        if isinstance(script, str):
            return script
        if callable(script):
            return script(request, n)
        return script[min(n, len(script)) - 1]

    def _delay(self, role: str) -> float:
        return self.delay_s.get(role, 0.0) if isinstance(self.delay_s, dict) else self.delay_s

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        call, result = await self._call(request)
        call.done = True
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """The scripted text in pieces (``token_delay_s`` apart), then finish_reason and usage."""
        call, result = await self._call(request, streamed=True)
        try:
            for piece in re.findall(r"\s*\S+|\s+", result.text):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                call.pieces += 1
                yield StreamDelta(text=piece)
        except (asyncio.CancelledError, GeneratorExit):
            call.cancelled = True
            raise
        finally:
            call.finished = time.perf_counter()
        call.done = True
        yield StreamDelta(finish_reason=result.finish_reason, usage=result.usage)

    async def _call(
        self, request: GenerationRequest, *, streamed: bool = False
    ) -> tuple[Call, GenerationResult]:
        role = role_of(request)
        n = self.counts[role] = self.counts.get(role, 0) + 1
        call = Call(role, request, started=time.perf_counter(), streamed=streamed)
        self.calls.append(call)
        if self.started is not None:
            self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self._delay(role):
                await asyncio.sleep(self._delay(role))
            if role in self.raise_on:
                raise self.raise_on[role]
            if n in self.fail.get(role, set()):
                raise ModelError(f"{self.name}: scripted failure of {role} call {n}")
            text = self._answer(role, request, n)
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            call.finished = time.perf_counter()
        images = None if self.image_tokens is None else self.image_tokens * len(request.images)
        usage = Usage(
            prompt_tokens=sum(self.count_tokens(m.text_content) for m in request.messages)
            + (images or 0),
            completion_tokens=self.count_tokens(text),
            image_tokens=images,
        )
        finish = "length" if n in self.cut.get(role, set()) else self.finish.get(role, "stop")
        return call, GenerationResult(text=text, finish_reason=finish, usage=usage, model=self.name)

    async def health(self) -> bool:
        return self.healthy

    def roles(self) -> list[str]:
        return [c.role for c in self.calls]

    def of(self, role: str) -> list[Call]:
        return [c for c in self.calls if c.role == role]

    @property
    def cancelled(self) -> list[Call]:
        return [c for c in self.calls if c.cancelled]
