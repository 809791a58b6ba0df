"""Shared helpers for the deployment checks: run ``docker-compose config``, read the Dockerfile,
nginx.conf and .env.example, map ``PROREASON_*`` names to settings fields.

Static checks only: no Docker engine runs on the development and CI machines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
ONE_GPU = DOCKER / "docker-compose.one-gpu.yml"
OFFLINE = DOCKER / "docker-compose.offline.yml"
NGINX_CONF = DOCKER / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

#: every override-file combination the README documents (base file always first)
FILE_SETS: dict[str, tuple[Path, ...]] = {
    "two-gpu": (COMPOSE,),
    "one-gpu": (COMPOSE, ONE_GPU),
    "offline": (COMPOSE, OFFLINE),
    "one-gpu+offline": (COMPOSE, ONE_GPU, OFFLINE),
}
#: every profile combination
PROFILE_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "scale": ("scale",),
    "inprocess": ("inprocess",),
    "scale+inprocess": ("scale", "inprocess"),
    "lora": ("lora",),
}
#: the secret .env.example leaves empty on purpose; tests supply it
TEST_SECRETS = {"API_KEYS": "test-key-1,test-key-2"}
#: the app's routes as documented (used until app.main.create_app exists)
DOCUMENTED_APP_PATHS = frozenset(
    {"/health", "/ready", "/metrics", "/v1/chat/completions", "/v1/reason", "/v1/models"}
)
#: read by app.settings itself, not fields of Settings
SETTINGS_LOCATOR_VARS = frozenset({"PROREASON_PROFILE", "PROREASON_CONFIGS_DIR"})
ENV_PREFIX = "PROREASON_"


def find_tool(name: str) -> str | None:
    """A console script of the test extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal process environment: the caller's shell variables must not leak into
    compose interpolation (a CI runner with VLM_MODEL set would hide a missing .env entry)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env["COMPOSE_PROJECT_NAME"] = "proreason"
    env.update(extra or {})
    return env


@dataclass
class Rendered:
    files: tuple[Path, ...]
    profiles: tuple[str, ...]
    config: dict[str, Any]
    stderr: str

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.config["services"]


def compose_cmd(
    binary: str, files: tuple[Path, ...], profiles: tuple[str, ...], env_file: Path | None
) -> list[str]:
    cmd = [binary]
    for f in files:
        cmd += ["-f", str(f)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    for p in profiles:
        cmd += ["--profile", p]
    return cmd


def run_compose(
    binary: str,
    files: tuple[Path, ...],
    profiles: tuple[str, ...],
    *args: str,
    env_file: Path | None = ENV_EXAMPLE,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_cmd(binary, files, profiles, env_file), *args],
        capture_output=True,
        text=True,
        env=clean_env(TEST_SECRETS if env is None else env),
        timeout=60,
        check=False,
    )


def render(binary: str, files: tuple[Path, ...], profiles: tuple[str, ...]) -> Rendered:
    proc = run_compose(binary, files, profiles, "config", "--format", "json")
    if proc.returncode != 0:
        raise AssertionError(f"docker-compose config failed:\n{proc.stderr}")
    return Rendered(files, profiles, json.loads(proc.stdout), proc.stderr)


# ------------------------------------------------------------------------------ .env / ${VAR}

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def compose_variables(path: Path) -> set[str]:
    """Every ${VAR} a compose file interpolates (comments included: they document usage)."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return set(_VAR_RE.findall(text))


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise AssertionError(f"{path.name}: not KEY=value: {raw!r}")
        values[key.strip()] = value.strip()
    return values


# ------------------------------------------------------------------------------ vLLM commands


@dataclass
class VLLMServe:
    """A `vllm serve` invocation: entry point + command of a compose service."""

    model: str
    flags: dict[str, list[str]] = field(default_factory=dict)

    def one(self, flag: str) -> str:
        values = self.flags.get(flag)
        if not values:
            raise AssertionError(f"vllm serve has no {flag}")
        return values[-1]  # argparse: the last occurrence wins


def parse_vllm_serve(service: dict[str, Any]) -> VLLMServe:
    argv = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
    if argv[:2] != ["vllm", "serve"]:
        raise AssertionError(f"not a `vllm serve` command: {argv}")
    model: str | None = None
    flags: dict[str, list[str]] = {}
    rest = argv[2:]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("--"):
            name, eq, inline = token.partition("=")
            if eq:
                flags.setdefault(name, []).append(inline)
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                flags.setdefault(name, []).append(rest[i + 1])
                i += 1
            else:
                flags.setdefault(name, []).append("")
        elif model is None:
            model = token
        else:
            raise AssertionError(f"second positional argument {token!r} in {argv}")
        i += 1
    if model is None:
        raise AssertionError(f"no model in {argv}")
    return VLLMServe(model, flags)


def gpu_device_ids(service: dict[str, Any]) -> list[str]:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    ids: list[str] = []
    for d in devices:
        assert d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []), d
        ids += d.get("device_ids", [])
    return ids


def duration_s(value: str) -> float:
    """Compose durations as rendered: '30m0s', '10s', '1h2m3.5s'."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise AssertionError(f"cannot parse duration {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------ Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuations joined

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                if not sep:
                    raise AssertionError(f"use ENV key=value, not {args!r}")
                values[key] = value
        return values


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0], instructions=[]))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def healthcheck_command(stage: Stage) -> list[str]:
    (args,) = stage.all("HEALTHCHECK")
    _, _, cmd = args.partition("CMD ")
    return json.loads(cmd)


# ------------------------------------------------------------------------------ nginx.conf


def nginx_directives(path: Path = NGINX_CONF) -> list[tuple[str, list[str]]]:
    """(directive, arguments) in file order, comments dropped, blocks flattened."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    out: list[tuple[str, list[str]]] = []
    for statement in re.split(r"[;{}]", text):
        words = shlex.split(statement)
        if words:
            out.append((words[0], words[1:]))
    return out


def nginx_size_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    if not m:
        raise AssertionError(f"cannot parse nginx size {value!r}")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * scale


def nginx_time_s(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    if not m:
        raise AssertionError(f"cannot parse nginx time {value!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# ------------------------------------------------------------------------------ settings


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None``, ``Optional[X]``; None for leaves."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        models = [a for a in get_args(annotation) if _model_type(a) is not None]
        return _model_type(models[0]) if len(models) == 1 else None
    return None


def settings_field_for(env_name: str, root: type[BaseModel]) -> str | None:
    """``PROREASON_MODELS__VISION__BASE_URL`` -> ``models.vision.base_url`` if that is a field
    of the settings class, else None."""
    if not env_name.startswith(ENV_PREFIX):
        raise ValueError(env_name)
    parts = env_name[len(ENV_PREFIX) :].lower().split("__")
    model: type[BaseModel] | None = root
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = _model_type(annotation)
        if i < len(parts) - 1 and model is None:
            return None
    return ".".join(parts)
