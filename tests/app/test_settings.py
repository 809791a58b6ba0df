"""Settings that refuse to start: an open non-loopback bind, a misspelt PROREASON_* variable."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from agents.types import ModelSet
from app.cli import main
from app.main import create_app
from app.settings import ENV_PREFIX, NON_FIELD_VARS, field_paths, is_loopback, load_settings
from tests.app.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_proreason_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's shell must not decide these tests."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------- secure defaults


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_every_bundled_profile_binds_loopback(profile: str) -> None:
    settings = load_settings(profile)
    assert settings.server.host == "127.0.0.1"
    assert not settings.server.api_keys and not settings.server.allow_unauthenticated


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("proreason.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5"])
def test_non_loopback_without_keys_refuses_to_start(host: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings("vllm", server={"host": host})
    (error,) = info.value.errors()
    assert error["loc"] == ("server",)
    assert "server.api_keys" in error["msg"] and "server.allow_unauthenticated" in error["msg"]
    assert host in error["msg"] and "\n" not in error["msg"]


def test_env_host_without_keys_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROREASON_SERVER__HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match=r"server\.api_keys"):
        load_settings("vllm")
    monkeypatch.setenv("PROREASON_SERVER__API_KEYS", "k1")
    assert load_settings("vllm").server.host == "0.0.0.0"


def test_non_loopback_with_keys_or_explicit_opt_out_starts() -> None:
    keyed = load_settings("vllm", server={"host": "0.0.0.0", "api_keys": "k1,k2"})
    assert [k.get_secret_value() for k in keyed.server.api_keys] == ["k1", "k2"]
    assert not keyed.server.open_to_network
    opted = load_settings("vllm", server={"host": "0.0.0.0", "allow_unauthenticated": True})
    assert opted.server.open_to_network


def test_opt_out_logs_one_warning_at_start(
    models: ModelSet, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(server={"host": "0.0.0.0", "allow_unauthenticated": True})
    with caplog.at_level(logging.WARNING, logger="app.main"):
        with TestClient(create_app(settings, models=models)) as client:
            assert client.get("/v1/models").status_code == 200  # open, as asked
            client.get("/v1/models")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "without authentication" in warnings[0].getMessage()


def test_loopback_or_keyed_start_logs_no_warning(
    models: ModelSet, caplog: pytest.LogCaptureFixture
) -> None:
    for server in ({}, {"host": "0.0.0.0", "api_keys": "k"}):
        with caplog.at_level(logging.WARNING, logger="app.main"):
            with TestClient(create_app(make_settings(server=server), models=models)):
                pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cli_serve_refuses_an_open_bind_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--profile", "vllm", "--host", "0.0.0.0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: invalid settings (server): host 0.0.0.0 is not loopback")
    assert "server.api_keys" in line and "server.allow_unauthenticated: true" in line


# --------------------------------------------------------------------------- PROREASON_* names


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("PROREASON_SERVER__PROT", "PROREASON_SERVER__PORT (server.port)"),
        ("PROREASON_SEVER__PORT", "PROREASON_SERVER__PORT (server.port)"),
        ("PROREASON_MODELS__VISION__BASEURL", "PROREASON_MODELS__VISION__BASE_URL"),
        ("PROREASON_PROFILES", "PROREASON_PROFILE?"),
        ("proreason_server__api_key", "PROREASON_SERVER__API_KEYS (server.api_keys)"),
    ],
)
def test_unknown_variable_refuses_to_start_naming_the_closest(
    monkeypatch: pytest.MonkeyPatch, name: str, closest: str
) -> None:
    monkeypatch.setenv(name, "9000")
    with pytest.raises(ValidationError) as info:
        load_settings("tiny")
    (error,) = info.value.errors()
    assert error["loc"] == (name,)
    assert f"did you mean {closest}" in error["msg"]


def test_a_name_like_nothing_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROREASON_XYZZY", "1")
    with pytest.raises(ValidationError, match="no setting has this name"):
        load_settings("tiny")


def test_every_field_and_the_known_extras_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = dict(field_paths())
    assert {"server.port", "server.metrics_token", "models.text.base_url", "agent"} <= set(paths)
    assert paths["models.vision.engine_args"] is True  # a mapping takes sub-keys
    for extra in NON_FIELD_VARS - {"PROREASON_PROFILE", "PROREASON_CONFIGS_DIR"}:
        monkeypatch.setenv(extra, "1")
    monkeypatch.setenv("PROREASON_SERVER__PORT", "9001")
    monkeypatch.setenv("PROREASON_MODELS__VISION__ENGINE_ARGS__MAX_MODEL_LEN", "4096")
    settings = load_settings("tiny")
    assert settings.server.port == 9001
    assert settings.models.vision.engine_args == {"max_model_len": "4096"}


def test_every_proreason_variable_the_repository_reads_is_known() -> None:
    """A new PROREASON_FOO read anywhere (code, tests, compose) must be a setting or listed in
    NON_FIELD_VARS, or the service would refuse a shell that exports it."""
    valid = {ENV_PREFIX + p.replace(".", "__").upper() for p, _ in field_paths()}
    pattern = re.compile(r"PROREASON_[A-Z0-9_]*[A-Z0-9]")
    found: set[str] = set()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".py", ".yml", ".yaml", ".md", ".toml", ".example", ".conf", ""}:
            if path.is_file() and path != Path(__file__):
                found |= set(pattern.findall(path.read_text(errors="ignore")))
    #: invented on purpose: the checks of the checker (tests/deploy/test_consistency.py) and the
    #: misspelling README.md shows
    invalid_on_purpose = {
        "PROREASON_SERVER__PROT",
        "PROREASON_PORT",
        "PROREASON_SERVER__PORT__X",
        "PROREASON_MODELS__TEXT__BASE_URLS",
    }
    unknown = {
        n
        for n in found - valid - NON_FIELD_VARS - invalid_on_purpose
        if not n.startswith("PROREASON_MODELS__VISION__ENGINE_ARGS__")
        and not n.startswith("PROREASON_MODELS__TEXT__ENGINE_ARGS__")
    }
    assert unknown == set()


def test_cli_names_the_misspelt_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROREASON_SERVER__PROT", "9000")
    assert main(["serve", "--profile", "tiny"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: invalid settings (PROREASON_SERVER__PROT): unknown PROREASON_ variable, "
        "did you mean PROREASON_SERVER__PORT (server.port)?"
    )
