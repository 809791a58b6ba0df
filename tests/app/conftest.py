"""Fixtures of the HTTP service tests: a scripted ModelBackend test double, settings, apps, clients.

``ScriptedModel`` answers each agent role from a script (recognised by the role's system prompt in
configs/prompts), can block on a gate, sleep, fail, or report unhealthy, and records every call,
including calls that were cancelled (the client went away, the deadline passed).
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from agents.types import ModelSet
from app.main import create_app
from app.settings import Settings, load_settings
from models.base import ModelBackend
from models.types import GenerationRequest, GenerationResult, Usage
from tests.fakes.roles import DEFAULT_SCRIPT, role_of


@dataclass
class Call:
    role: str
    request: GenerationRequest
    cancelled: bool = False
    done: bool = False


@dataclass(eq=False)
class ScriptedModel(ModelBackend):
    """A ModelBackend test double. ``script[role]``: text, or ``fn(request, n) -> text``;
    ``raise_on[role]``: an exception to raise; ``delay_s[role]``: seconds to sleep; ``gate``: when
    set, every call waits for it (so tests can hold calls in flight)."""

    name: str = "scripted-vlm"
    backend: str = "scripted"
    script: dict[str, Any] = field(default_factory=dict)
    raise_on: dict[str, BaseException] = field(default_factory=dict)
    delay_s: dict[str, float] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    healthy: bool = True
    calls: list[Call] = field(default_factory=list)
    started: asyncio.Event | None = None

    def __post_init__(self) -> None:
        super().__init__(self.name)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        role = role_of(request)
        call = Call(role, request)
        self.calls.append(call)
        if self.started is not None:
            self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay_s.get(role):
                await asyncio.sleep(self.delay_s[role])
            if role in self.raise_on:
                raise self.raise_on[role]
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        call.done = True
        text = self.script.get(role, DEFAULT_SCRIPT[role])
        if callable(text):
            text = text(request, sum(c.role == role for c in self.calls))
        usage = Usage(
            prompt_tokens=sum(len(m.text_content.split()) for m in request.messages)
            + 7 * len(request.images),
            completion_tokens=len(text.split()),
            image_tokens=7 * len(request.images),
        )
        return GenerationResult(text=text, usage=usage, model=self.name)

    async def health(self) -> bool:
        return self.healthy

    def roles(self) -> list[str]:
        return [c.role for c in self.calls]

    @property
    def cancelled(self) -> list[Call]:
        return [c for c in self.calls if c.cancelled]


# --------------------------------------------------------------------------- settings / apps


def make_settings(**sections: Any) -> Settings:
    """Settings from the 'tiny' profile with the given sections merged in (never loads models)."""
    server = {"max_in_flight": 8, "request_timeout_s": 30, **sections.pop("server", {})}
    return load_settings("tiny", server=server, **sections)


@pytest.fixture
def vision() -> ScriptedModel:
    return ScriptedModel(name="scripted-vlm")


@pytest.fixture
def text() -> ScriptedModel:
    return ScriptedModel(name="scripted-llm")


@pytest.fixture
def models(vision: ScriptedModel, text: ScriptedModel) -> ModelSet:
    return ModelSet(vision=vision, text=text)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings, models: ModelSet) -> FastAPI:
    return create_app(settings, models=models)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="session")
def png_bytes(shapes_png: Path) -> bytes:
    return shapes_png.read_bytes()


@pytest.fixture(scope="session")
def data_url(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode()


def png_data_url(width: int, height: int, color: str = "red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------- SSE


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """``(event, data)`` pairs of an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((event, "\n".join(data)))
    return out


# --------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The app served by uvicorn in a background thread on a loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
