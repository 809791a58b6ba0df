"""Fixtures of the tests against a real third-party upstream: ``transformers serve`` (tserve.py).

- ``tserve``: a session-wide pool; ``tserve(folder, ...)`` returns one running server per model
  folder (started on first use, several started in parallel, all stopped at the end of the
  session). Skips, with the install command, when the transformers serving extra is missing.
- ``model_set``: which model folders the end-to-end tests serve, parametrised: ``tiny`` (random
  weights built by ``models.tiny``; always there) and ``demo`` (the trained demo models committed
  under ``tests/data/demo-models/``, or the folder ``$PROREASON_DEMO_MODELS`` names, e.g. a fresh
  ``proreason build-demo``; each holds ``vision/`` and ``text/``).
- ``upstream_config``: a BackendConfig for a server, as docs/upstreams.md recommends for it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from models.config import BackendConfig
from tests.integration.tserve import TransformersServe, serving_available

DEMO_MODELS_ENV = "PROREASON_DEMO_MODELS"
#: the demo models the figures in docs/accuracy.md were measured on (docs/demo-models.md)
COMMITTED_DEMO_MODELS = Path(__file__).resolve().parents[1] / "data" / "demo-models"


@dataclass(frozen=True)
class ModelSet:
    name: str
    vision: Path
    text: Path
    #: random weights: answers are gibberish and the loop cannot solve anything
    random: bool
    context_length: int = 4096


class TServePool:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: dict[str, TransformersServe] = {}

    def __call__(self, *folders: str | Path) -> list[TransformersServe]:
        """Running servers for ``folders`` (in that order); new ones start in parallel."""
        keys = [str(f) for f in folders]
        new = [k for k in dict.fromkeys(keys) if k not in self.servers]
        for key in new:
            self.servers[key] = TransformersServe(key, self.log_dir).start()
        for key in new:
            self.servers[key].wait_ready()
        return [self.servers[k] for k in keys]

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


@pytest.fixture(scope="session")
def tserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TServePool]:
    reason = serving_available()
    if reason is not None:
        pytest.skip(reason)
    pool = TServePool(tmp_path_factory.mktemp("tserve-logs"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def tiny_set(tiny_models: dict[str, Path]) -> ModelSet:
    return ModelSet("tiny", tiny_models["vision"], tiny_models["text"], random=True)


def demo_set() -> ModelSet:
    folder = os.environ.get(DEMO_MODELS_ENV)
    root = Path(folder).expanduser().resolve() if folder else COMMITTED_DEMO_MODELS
    return ModelSet("demo", root / "vision", root / "text", random=False)


@pytest.fixture(scope="session", params=["tiny", "demo"])
def model_set(request: pytest.FixtureRequest) -> ModelSet:
    if request.param == "tiny":
        return request.getfixturevalue("tiny_set")
    models = demo_set()
    for folder in (models.vision, models.text):
        if not (folder / "config.json").is_file():
            pytest.fail(f"{folder} is not a model folder (see ${DEMO_MODELS_ENV})")
    return models


@pytest.fixture(scope="session")
def data_url(shapes_png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(shapes_png.read_bytes()).decode()


@pytest.fixture(scope="session")
def upstream_config() -> Callable[..., BackendConfig]:
    """BackendConfig for a ``transformers serve`` server (docs/upstreams.md); overrides."""

    def make(server: TransformersServe, **overrides: Any) -> BackendConfig:
        values: dict[str, Any] = {
            "backend": "openai",
            "model": server.model,  # the server answers only to the folder path it was given
            "base_url": server.base_url,
            "context_length": 4096,  # it neither reports nor enforces one
            "structured_output": False,  # it ignores response_format
            "omit_fields": ["min_tokens", "stream_options"],  # 422 / ignored
            "max_concurrency": 2,  # it generates one request at a time
            "connect_timeout_s": 2.0,
            "read_timeout_s": 60.0,
            "max_retries": 2,
            "retry_backoff_s": 0.05,
        }
        values.update(overrides)
        return BackendConfig(**values)

    return make
