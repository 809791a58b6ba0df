"""Fixtures for the model-backend tests: one loopback OpenAI-compatible server per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from models.config import BackendConfig
from models.openai_backend import OpenAIBackend
from tests.fakes.openai_server import FakeOpenAIServer

FAKE_MODEL = "fake-vlm"


@pytest.fixture(scope="session")
def _openai_server_session() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(model=FAKE_MODEL) as server:
        yield server


@pytest.fixture
def openai_server(_openai_server_session: FakeOpenAIServer) -> FakeOpenAIServer:
    """The shared fake server, reset to its defaults for this test."""
    _openai_server_session.reset()
    return _openai_server_session


@pytest.fixture
def backend_config(openai_server: FakeOpenAIServer) -> Callable[..., BackendConfig]:
    """BackendConfig for the fake server with fast test timings; keyword overrides."""

    def make(**overrides: Any) -> BackendConfig:
        values: dict[str, Any] = {
            "backend": "openai",
            "model": FAKE_MODEL,
            "base_url": openai_server.base_url,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 5.0,
            "max_retries": 2,
            "retry_backoff_s": 0.01,
            "max_concurrency": 8,
        }
        values.update(overrides)
        return BackendConfig(**values)

    return make


@pytest_asyncio.fixture(loop_scope="function")  # the test's loop: the client lives there
async def make_backend(
    backend_config: Callable[..., BackendConfig],
) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    """Build OpenAIBackends (closed after the test)."""
    made: list[OpenAIBackend] = []

    def make(**overrides: Any) -> OpenAIBackend:
        backend = OpenAIBackend(backend_config(**overrides))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()
