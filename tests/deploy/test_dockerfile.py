"""The Dockerfile: lint clean, slim and non-root, dependencies cached before the source."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import DOCKERFILE, ROOT, dockerfile_stages

#: packages that must never enter the slim service image
GPU_PACKAGES = ("torch", "transformers", "vllm", "nvidia", "cuda", "triton")


def test_hadolint_clean(hadolint_bin: str):
    proc = subprocess.run(
        [hadolint_bin, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_ignores_carry_a_reason():
    for number, line in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        m = re.search(r"#\s*hadolint\s+(?:global\s+)?ignore=\S+(.*)", line)
        if m:
            reason = m.group(1).strip(" -:#")
            assert len(reason) >= 10, f"Dockerfile:{number}: say why the rule is ignored"


def test_stages():
    stages = dockerfile_stages()
    names = [s.name for s in stages]
    assert names[-1] == "service", "`docker build .` must give the slim image (last stage)"
    by_name = {s.name: s for s in stages}
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", by_name["service"].base)
    assert by_name["service"].base == by_name["build"].base, "the venv moves between stages"
    assert by_name["gpu"].base == "vllm/vllm-openai:${VLLM_TAG}"


def test_service_image_runs_as_non_root_with_proreason_serve():
    service = {s.name: s for s in dockerfile_stages()}["service"]
    (user,) = service.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric, non-root"
    entry = service.all("ENTRYPOINT")[-1]
    assert json.loads(entry) == ["proreason", "serve"]
    assert "8080" in service.all("EXPOSE")
    env = service.env()
    assert env["PROREASON_SERVER__HOST"] == "0.0.0.0"
    profile = env["PROREASON_PROFILE"]
    assert (ROOT / "configs" / f"{profile}.yaml").is_file()
    configs_copy = [c for c in service.all("COPY") if c.split()[-1].rstrip("/") == "/app/configs"]
    assert configs_copy and env["PROREASON_CONFIGS_DIR"] == "/app/configs"
    # the prompt templates are found as ./configs/prompts from the working directory
    assert service.all("WORKDIR")[-1] == "/app"


def test_dependencies_are_cached_before_the_source():
    build = {s.name: s for s in dockerfile_stages()}["build"]
    steps = build.instructions
    first_source = next(
        i for i, (ins, args) in enumerate(steps) if ins == "COPY" and args.startswith("app/")
    )
    deps = next(
        i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "pip install -r" in args
    )
    pyproject = next(
        i for i, (ins, args) in enumerate(steps) if ins == "COPY" and args.startswith("pyproject")
    )
    assert pyproject < deps < first_source
    copied_before_deps = [args for ins, args in steps[:deps] if ins == "COPY"]
    assert copied_before_deps == ["pyproject.toml ./"], "only pyproject.toml may precede deps"
    assert any(ins == "RUN" and "--no-deps" in args for ins, args in steps[first_source:])


def test_dependency_layer_installs_the_base_dependencies_only(tmp_path: Path):
    """Run the Dockerfile's own requirements extraction on pyproject.toml: it must list exactly
    the base dependencies, and none of them may be a GPU package."""
    tomllib = pytest.importorskip("tomllib", reason="the image's Python (3.11) has tomllib")
    build = {s.name: s for s in dockerfile_stages()}["build"]
    run = next(args for ins, args in build.instructions if "tomllib" in args and ins == "RUN")
    command = run.split(">", 1)[0].strip()  # python -c "..."  (before the redirect)
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = subprocess.run(
        [sys.executable, "-c", argv[2]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    with (ROOT / "pyproject.toml").open("rb") as f:
        expected = tomllib.load(f)["project"]["dependencies"]
    assert out == expected
    for requirement in out:
        name = re.split(r"[<>=!~\[;]", requirement, maxsplit=1)[0].lower()
        assert not name.startswith(GPU_PACKAGES), f"{requirement} in the slim image"


def test_build_context_has_what_the_dockerfile_copies():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for stage in dockerfile_stages():
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            for source in args.split()[:-1]:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: missing from the repository"
                top = source.rstrip("/").split("/")[0]
                assert top not in ignored, f"COPY {source}: excluded by .dockerignore"
    for secret in (".env", "**/.env"):
        assert secret in ignored, "secrets must stay out of the build context"


def _packaged() -> set[str]:
    """The top-level packages pyproject.toml installs (its ``packages.find`` include list)."""
    tomllib = pytest.importorskip("tomllib")
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*") for pattern in include}


@pytest.mark.parametrize("stage_name", ["build", "gpu"])
def test_images_copy_exactly_the_packaged_sources(stage_name: str):
    """What pip installs in the image is what pyproject.toml packages: a package left out of the
    COPY list (evals/ once was) would make its command fail inside the image."""
    stage = {s.name: s for s in dockerfile_stages()}[stage_name]
    copied = set()
    for args in stage.all("COPY"):
        for source in args.split()[:-1]:
            top = source.rstrip("/")
            if (ROOT / top / "__init__.py").is_file():
                copied.add(top)
    assert copied == _packaged()
