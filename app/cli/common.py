"""What every command shares: one-line errors, settings loading, opening the models, step lines."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.errors import ModelLoadError, ModelUnavailable

EXIT_USAGE = 2  # bad input: arguments, images, profile
EXIT_FAILURE = 1  # the models or the service failed

#: where the offline models are built by default, and the command that builds them
BUILD_COMMANDS = {
    Path("~/.cache/proreason/tiny").expanduser(): "proreason build-tiny",
    Path("~/.cache/proreason/demo").expanduser(): "proreason build-demo",
}


class CLIError(Exception):
    """A one-line error for the user."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_settings(args: argparse.Namespace, **overrides: Any):  # -> Settings
    from app.settings import load_settings as load

    try:
        return load(args.profile, **overrides)
    except FileNotFoundError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CLIError(f"invalid settings ({where}): {first.get('msg')}") from None


def build_hint(model: str) -> str:
    """'; build it first with: proreason build-tiny' for a missing offline model folder, or ''."""
    path = Path(model).expanduser()
    if path.exists():
        return ""
    for folder, command in BUILD_COMMANDS.items():
        if path.is_relative_to(folder):
            return f"; build it first with: {command}"
    return ""


def load_failure(settings: Any, exc: ModelLoadError) -> CLIError:
    """A model that cannot be loaded: its one line, plus how to build it when it is ours."""
    configs = [c for c in (settings.models.vision, settings.models.text) if c is not None]
    hint = next((h for h in (build_hint(c.model) for c in configs) if h), "")
    return CLIError(exc.message + hint, EXIT_FAILURE)


async def open_models(settings: Any):  # -> ModelSet
    """Open the models and fail in one line, before any work, if one cannot answer."""
    from app.backends import close_models
    from app.backends import open_models as open_backends

    try:
        models = await open_backends(settings.models)
    except ModelLoadError as exc:
        raise load_failure(settings, exc) from None
    configs = {"vision": settings.models.vision, "text": settings.models.text}
    for name, backend in (("vision", models.vision), ("text", models.text)):
        if backend is not None and not await backend.health():
            await close_models(models)
            where = getattr(configs[name], "base_url", "") if backend.backend == "openai" else ""
            raise ModelUnavailable(
                f"the {name} model {backend.model!r} is not available"
                + (f" (no healthy server at {where})" if where else "")
            )
    return models


def clip(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_step(step: Any) -> str:
    """One readable line per model call (a Step, or its JSON form from the HTTP API)."""
    get = step.get if isinstance(step, dict) else lambda k, d=None: getattr(step, k, d)
    rnd = get("round")
    where = f"r{rnd}" if rnd else "--"
    usage = get("usage")
    usage = usage if isinstance(usage, dict) else dataclasses.asdict(usage)
    cost = (
        f"{get('latency_s', 0.0):5.2f}s "
        f"{usage.get('prompt_tokens', 0):>5}+{usage.get('completion_tokens', 0):<4}tok"
    )
    role = get("role")
    head = f"[{where}] {role:<11} {cost}"
    decision = get("decision") or {}
    if get("error"):
        return f"{head}  ! model error: {get('error')}"
    if get("parse_error"):
        return f"{head}  ! unusable output ({get('parse_error')}): {clip(get('output', ''))}"
    if role == "dispatcher" and decision:
        expert = decision.get("expert", "?")
        asked = decision.get("questions") or [decision.get("question", "")]
        return f"{head}  -> {expert}: {clip(' | '.join(str(q) for q in asked))}"
    if role == "referee" and decision:
        verdict = "solvable" if decision.get("solvable") else "not yet"
        return f"{head}  {verdict}: {clip(str(decision.get('reasoning', '')))}"
    entry = get("memory_entry")
    return f"{head}  {clip(entry if entry is not None else get('output', ''))}"


def report_built(folders: dict[str, Path], profile: str) -> int:
    """After build-tiny / build-demo: where the models are, and how to serve them."""
    for name, path in folders.items():
        print(f"{name}: {path}")
    print(f"start the service on them with: proreason serve --profile {profile}", file=sys.stderr)
    return 0
