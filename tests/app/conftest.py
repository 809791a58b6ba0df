"""Fixtures of the HTTP service tests: settings, apps, clients, images, SSE parsing, a live
server. The model test double is tests.fakes.models.FakeModel."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
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
from tests.fakes.models import FakeModel

# --------------------------------------------------------------------------- settings / apps


def make_settings(**sections: Any) -> Settings:
    """Settings from the 'tiny' profile with the given sections merged in (never loads models)."""
    server = {"max_in_flight": 8, "request_timeout_s": 30, **sections.pop("server", {})}
    return load_settings("tiny", server=server, **sections)


@pytest.fixture
def vision() -> FakeModel:
    return FakeModel(name="scripted-vlm", backend="scripted")


@pytest.fixture
def text() -> FakeModel:
    return FakeModel(name="scripted-llm", backend="scripted")


@pytest.fixture
def models(vision: FakeModel, text: FakeModel) -> ModelSet:
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
