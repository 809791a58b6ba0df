"""docker-compose files: every file / profile combination validates, variables are documented,
and the model servers follow the serving conventions (docs: serving.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy.conftest import COMBINATIONS
from tests.deploy.helpers import (
    COMPOSE,
    DOCKER,
    DOCKERFILE,
    ENV_EXAMPLE,
    FILE_SETS,
    ONE_GPU,
    PROFILE_SETS,
    TEST_SECRETS,
    compose_variables,
    duration_s,
    gpu_device_ids,
    parse_vllm_serve,
    read_env_file,
    run_compose,
)

VLLM_SERVICES = ("vlm", "llm")
COMPOSE_FILES = sorted(DOCKER.glob("docker-compose*.yml"))


@pytest.mark.parametrize(("files", "profiles"), COMBINATIONS)
def test_config_validates(compose_bin: str, files: tuple[Path, ...], profiles: tuple[str, ...]):
    proc = run_compose(compose_bin, files, profiles, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    # .env.example must set every variable: compose warns "The X variable is not set"
    assert "is not set" not in proc.stderr, proc.stderr


def test_every_compose_file_and_profile_is_checked(compose_bin: str):
    covered = {f for files in FILE_SETS.values() for f in files}
    assert set(COMPOSE_FILES) == covered, "add new compose files to FILE_SETS"
    declared: set[str] = set()
    for files in FILE_SETS.values():
        proc = run_compose(compose_bin, files, (), "config", "--profiles")
        assert proc.returncode == 0, proc.stderr
        declared |= set(proc.stdout.split())
    assert declared == {p for ps in PROFILE_SETS.values() for p in ps}


def test_env_example_covers_every_variable():
    used = set().union(*(compose_variables(f) for f in COMPOSE_FILES))
    documented = set(read_env_file(ENV_EXAMPLE))
    assert used - documented == set(), "variables missing from .env.example"
    assert documented - used == set(), "stale variables in .env.example"


def test_secrets_have_no_working_default(compose_bin: str):
    """.env.example leaves API_KEYS empty: copying it unedited must stop compose, by name."""
    assert read_env_file(ENV_EXAMPLE)["API_KEYS"] == ""
    proc = run_compose(compose_bin, (COMPOSE,), (), "config", "--quiet", env={})
    assert proc.returncode != 0
    assert "API_KEYS" in proc.stderr
    # and the test secret really is what makes the difference
    proc = run_compose(compose_bin, (COMPOSE,), (), "config", "--quiet", env=TEST_SECRETS)
    assert proc.returncode == 0, proc.stderr


def test_one_vllm_tag_everywhere(compose_bin: str):
    """The pinned vLLM tag: .env.example, the compose defaults and the Dockerfile agree."""
    tag = read_env_file(ENV_EXAMPLE)["VLLM_TAG"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag!r}"
    text = "\n".join(f.read_text() for f in COMPOSE_FILES)
    defaults = set(re.findall(r"\$\{VLLM_TAG:-([^}]*)\}", text))
    assert defaults == {tag}
    dockerfile = DOCKERFILE.read_text()
    assert f"ARG VLLM_TAG={tag}\n" in dockerfile


@pytest.mark.parametrize(("files", "profiles"), COMBINATIONS)
def test_model_servers(rendered, files: tuple[Path, ...], profiles: tuple[str, ...]):
    cfg = rendered(files, profiles)
    internal = {n for n, net in cfg.config["networks"].items() if net.get("internal")}
    env_tag = read_env_file(ENV_EXAMPLE)["VLLM_TAG"]
    for name in VLLM_SERVICES:
        svc = cfg.services[name]
        assert svc["image"] == f"vllm/vllm-openai:{env_tag}"
        assert svc["ipc"] == "host"
        assert not svc.get("ports"), f"{name} must not publish ports"
        assert set(svc["networks"]) & internal, f"{name} must be on an internal network"
        assert gpu_device_ids(svc), f"{name} reserves no GPU"
        volumes = {v["target"]: v for v in svc["volumes"]}
        for target in ("/root/.cache/huggingface", "/root/.cache/vllm"):
            assert volumes[target]["type"] == "volume", f"{name}: {target} is not a named volume"
        health = svc["healthcheck"]
        assert health["test"][:3] == ["CMD", "python3", "-c"]
        assert "/health" in health["test"][3]
        assert duration_s(health["start_period"]) >= 10 * 60, "loading takes minutes"

        serve = parse_vllm_serve(svc)
        assert serve.one("--served-model-name") == serve.model
        assert "--enable-prefix-caching" in serve.flags
        assert "--enable-prompt-tokens-details" in serve.flags  # image + cached tokens in usage
        assert serve.one("--host") == "0.0.0.0"
        # media fetching locked down: the app sends only data: URLs
        assert "--allowed-local-media-path" not in serve.flags
        domains = serve.flags["--allowed-media-domains"][-1].split()
        assert domains and all(d.endswith(".invalid") for d in domains), domains
        assert svc["environment"]["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"

    limit = json.loads(parse_vllm_serve(cfg.services["vlm"]).one("--limit-mm-per-prompt"))
    assert limit["image"] >= 1 and limit.get("video", 0) == 0


@pytest.mark.parametrize(("files", "profiles"), COMBINATIONS)
def test_gpu_layout(rendered, files: tuple[Path, ...], profiles: tuple[str, ...]):
    cfg = rendered(files, profiles)
    vlm, llm = (cfg.services[n] for n in VLLM_SERVICES)
    ids = gpu_device_ids(vlm) + gpu_device_ids(llm)
    fractions = [float(parse_vllm_serve(s).one("--gpu-memory-utilization")) for s in (vlm, llm)]
    if ONE_GPU in files:
        assert len(set(ids)) == 1, f"one-GPU variant uses devices {ids}"
        assert sum(fractions) < 1.0, f"fractions {fractions} share one GPU"
        # sequential start on a shared GPU
        assert llm["depends_on"]["vlm"]["condition"] == "service_healthy"
    else:
        assert len(set(ids)) == len(ids) == 2, f"two-GPU variant uses devices {ids}"
        assert all(0 < f < 1 for f in fractions)


@pytest.mark.parametrize(("files", "profiles"), COMBINATIONS)
def test_app_services(rendered, files: tuple[Path, ...], profiles: tuple[str, ...]):
    cfg = rendered(files, profiles)
    app = cfg.services["app"]
    for dep in VLLM_SERVICES:
        assert app["depends_on"][dep]["condition"] == "service_healthy"
    assert app["build"]["target"] == "service"
    assert Path(app["build"]["context"]).resolve() == COMPOSE.parent.parent.resolve()
    assert [p["target"] for p in app["ports"]] == [8080]
    if "scale" in profiles:
        replica = cfg.services["app-replica"]
        assert not replica.get("ports"), "replicas sit behind the proxy"
        assert replica["image"] == app["image"]
        assert replica["environment"] == app["environment"]
        assert replica["deploy"]["replicas"] >= 1
        proxy = cfg.services["proxy"]
        assert {m["target"]: m["source"] for m in proxy["volumes"]}["/etc/nginx/nginx.conf"] == str(
            DOCKER / "nginx.conf"
        )
        assert {p["target"] for p in proxy["ports"]} == {8080}
    else:
        assert "proxy" not in cfg.services and "app-replica" not in cfg.services
    if "inprocess" in profiles:
        gpu = cfg.services["app-inprocess"]
        assert gpu["build"]["target"] == "gpu"
        assert gpu["ipc"] == "host" and gpu_device_ids(gpu)
        assert gpu["environment"]["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"
    if any(f.name == "docker-compose.offline.yml" for f in files):
        for name in VLLM_SERVICES:
            svc = cfg.services[name]
            assert svc["environment"]["HF_HUB_OFFLINE"] == "1"
            assert all(cfg.config["networks"][n].get("internal") for n in svc["networks"])


def test_nginx_tag_supports_upstream_resolve():
    """nginx.conf re-resolves replicas (`server ... resolve`): open-source nginx >= 1.27.3."""
    tag = read_env_file(ENV_EXAMPLE)["NGINX_TAG"]
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", tag)
    assert m, f"pin an nginx version, not {tag!r}"
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 99))
    assert version >= (1, 27, 3)


def test_readme_documents_every_file_and_profile():
    readme = (DOCKER / "README.md").read_text()
    for f in COMPOSE_FILES:
        assert f.name in readme, f"docker/README.md does not mention {f.name}"
    for profile in {p for ps in PROFILE_SETS.values() for p in ps}:
        assert f"--profile {profile}" in readme
