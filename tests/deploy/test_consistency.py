"""The compose files, the app's settings, nginx.conf and the Dockerfile agree with each other:
the app is loaded with exactly the environment its container gets and compared with the
model servers it is wired to."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest

from app.settings import Settings, unknown_env_vars
from models.config import BackendConfig
from tests.deploy.conftest import COMBINATIONS
from tests.deploy.helpers import (
    COMPOSE,
    DOCUMENTED_APP_PATHS,
    ENV_PREFIX,
    SETTINGS_LOCATOR_VARS,
    TEST_SECRETS,
    dockerfile_stages,
    healthcheck_command,
    nginx_directives,
    nginx_size_bytes,
    nginx_time_s,
    parse_vllm_serve,
    settings_field_for,
)

#: app service -> Dockerfile stage it runs
APP_SERVICES = {
    "app": "service",
    "app-replica": "service",
    "app-inprocess": "gpu",
    "app-lora": "service",
}
#: the API keys docker compose passes to every app service (from .env's API_KEYS)
TEST_KEYS = TEST_SECRETS["API_KEYS"]
#: the app's model role -> the compose service that serves it
UPSTREAMS = {"vision": "vlm", "text": "llm"}


def test_settings_field_mapping_is_strict():
    """The checker itself: real fields map, invented ones do not."""
    assert settings_field_for("PROREASON_SERVER__PORT", Settings) == "server.port"
    assert settings_field_for("PROREASON_MODELS__TEXT__BASE_URL", Settings) == (
        "models.text.base_url"
    )
    assert settings_field_for("PROREASON_MODELS__TEXT__BASE_URLS", Settings) is None
    assert settings_field_for("PROREASON_SERVER__PORT__X", Settings) is None
    assert settings_field_for("PROREASON_SERVER", Settings) == "server"
    assert settings_field_for("PROREASON_PORT", Settings) is None


@pytest.mark.parametrize(("files", "profiles"), COMBINATIONS)
def test_env_names_are_settings_fields(rendered, files, profiles):
    cfg = rendered(files, profiles)
    stages = {s.name: s for s in dockerfile_stages()}
    for service, stage in APP_SERVICES.items():
        if service not in cfg.services:
            continue
        env = {**stages[stage].env(), **cfg.services[service]["environment"]}
        unknown = [
            name
            for name in env
            if name.startswith(ENV_PREFIX)
            and name not in SETTINGS_LOCATOR_VARS
            and settings_field_for(name, Settings) is None
        ]
        assert unknown == [], f"{service}: no such settings field for {unknown}"
        assert unknown_env_vars(env) == {}, "the app itself would refuse to start"


@pytest.mark.parametrize(("files", "profiles"), COMBINATIONS)
def test_app_matches_model_servers(rendered, container_settings, files, profiles):
    cfg = rendered(files, profiles)
    for service in ("app", "app-replica"):
        if service not in cfg.services:
            continue
        settings = container_settings("service", cfg.services[service]["environment"])
        assert settings.server.host == "0.0.0.0"
        assert settings.server.api_keys, "the published app must require API keys"
        for role, upstream in UPSTREAMS.items():
            backend: BackendConfig | None = getattr(settings.models, role)
            assert backend is not None, f"{service}: no {role} model configured"
            vllm = cfg.services[upstream]
            serve = parse_vllm_serve(vllm)
            url = urlsplit(backend.base_url)
            assert backend.backend == "openai"
            assert url.hostname == upstream, f"{role} goes to {url.hostname}, not {upstream}"
            assert url.port == int(serve.one("--port"))
            assert url.path == "/v1"
            assert set(vllm["networks"]) & set(cfg.services[service]["networks"])
            assert backend.model == serve.one("--served-model-name") == serve.model
            assert backend.context_length == int(serve.one("--max-model-len"))
            assert backend.max_concurrency == int(serve.one("--max-num-seqs"))
        limit = json.loads(parse_vllm_serve(cfg.services["vlm"]).one("--limit-mm-per-prompt"))
        assert settings.media.max_images <= limit["image"]
        # the published port and the image's healthcheck reach the port the app binds
        if service == "app":
            assert [p["target"] for p in cfg.services[service]["ports"]] == [settings.server.port]


@pytest.mark.parametrize(("files", "profiles"), [c for c in COMBINATIONS if "inprocess" in c.id])
def test_inprocess_app_settings(rendered, container_settings, files, profiles):
    cfg = rendered(files, profiles)
    svc = cfg.services["app-inprocess"]
    settings = container_settings("gpu", svc["environment"])
    assert settings.server.host == "0.0.0.0"
    assert settings.server.api_keys, "the published app must require API keys"
    assert settings.models.vision.backend == "vllm"
    assert settings.models.text is not None and settings.models.text.backend == "vllm"
    fractions = [
        float(m.engine_args.get("gpu_memory_utilization", 0.9))
        for m in (settings.models.vision, settings.models.text)
    ]
    assert sum(fractions) < 1.0, "two in-process engines share one GPU"
    assert [p["target"] for p in svc["ports"]] == [settings.server.port]


def test_nginx_matches_app_settings(rendered, container_settings):
    cfg = rendered((COMPOSE,), ("scale",))
    settings = container_settings("service", cfg.services["app"]["environment"])
    directives = nginx_directives()
    values = {}
    for name, args in directives:
        values.setdefault(name, []).append(args)

    servers = [args[0] for name, args in directives if name == "server" and args]
    assert servers, "no upstream servers"
    for server in servers:
        host, _, port = server.partition(":")
        assert host in cfg.services, f"upstream {host} is no compose service"
        assert int(port) == settings.server.port
        assert set(cfg.services[host]["networks"]) & set(cfg.services["proxy"]["networks"])
    assert {"app", "app-replica"} <= {s.partition(":")[0] for s in servers}

    (listen,) = values["listen"]
    assert int(listen[0]) in {p["target"] for p in cfg.services["proxy"]["ports"]}
    (body,) = values["client_max_body_size"]
    assert nginx_size_bytes(body[0]) == settings.server.max_body_bytes
    (read_timeout,) = values["proxy_read_timeout"]
    assert nginx_time_s(read_timeout[0]) > settings.server.request_timeout_s
    assert ["off"] in values["proxy_buffering"], "SSE needs unbuffered proxying"
    assert ["1.1"] in values["proxy_http_version"]
    health = cfg.services["proxy"]["healthcheck"]["test"]
    assert any(f"127.0.0.1:{listen[0]}/nginx-health" in part for part in health), (
        "proxy healthcheck must hit its own listen port"
    )


def _app_get(path: str) -> int | None:
    """GET ``path`` on the real app (no lifespan: liveness needs no model), or None while
    app.main does not exist yet; then the path must be one of the documented routes."""
    try:
        from app.main import create_app
    except ModuleNotFoundError as exc:
        if exc.name != "app.main":
            raise
        return 200 if path in DOCUMENTED_APP_PATHS else 404
    from fastapi.testclient import TestClient

    from app.settings import load_settings

    app = create_app(load_settings("vllm"))
    assert path in app.openapi()["paths"], f"{path} is no route of the app"
    client = TestClient(app)
    try:
        return client.get(path).status_code
    finally:
        client.close()


def test_dockerfile_healthcheck_hits_a_real_route(container_settings):
    stages = [s for s in dockerfile_stages() if s.all("HEALTHCHECK")]
    assert {s.name for s in stages} == set(APP_SERVICES.values())
    for stage in stages:
        code = healthcheck_command(stage)[-1]
        match = re.search(r"'http://127\.0\.0\.1:%s(/[^']*)' % os\.environ\.get\('(\w+)'", code)
        assert match, f"{stage.name}: unexpected probe {code!r}"
        path, port_var = match.groups()
        assert path == "/health", "the container healthcheck is liveness"
        assert _app_get(path) == 200, f"{stage.name}: GET {path} fails on the app"
        assert port_var == "PROREASON_SERVER__PORT", "the probe must follow the app's port"
        # the key every compose service passes (PROREASON_SERVER__API_KEYS from API_KEYS): the
        # image binds 0.0.0.0 and refuses to start without one (test below)
        settings = container_settings(stage.name, {"PROREASON_SERVER__API_KEYS": TEST_KEYS})
        assert int(stage.env()[port_var]) == settings.server.port
        assert settings.server.host == "0.0.0.0"


@pytest.mark.parametrize(("files", "profiles"), [c for c in COMBINATIONS if "lora" in c.id])
def test_lora_app_names_the_adapters_its_text_server_serves(
    rendered, container_settings, files, profiles
):
    cfg = rendered(files, profiles)
    command = cfg.services["llm-lora"]["command"]
    assert "--enable-lora" in command
    start = command.index("--lora-modules") + 1
    modules = {}
    for token in command[start:]:
        if token.startswith("--"):
            break
        name, _, path = token.partition("=")
        modules[name] = path
    settings = container_settings("service", cfg.services["app-lora"]["environment"])
    text = settings.models.text
    assert text is not None and urlsplit(text.base_url).hostname == "llm-lora"
    assert set(text.adapters) == set(modules) == set(settings.agent.adapters.values())
    assert all(path.startswith("/adapters/") for path in modules.values())
    mounts = {v["target"]: v for v in cfg.services["llm-lora"]["volumes"]}
    assert mounts["/adapters"]["read_only"] is True
    assert text.model == cfg.services["llm-lora"]["command"][0]
#: the API keys docker compose passes to every app service (from .env's API_KEYS)
TEST_KEYS = TEST_SECRETS["API_KEYS"]
