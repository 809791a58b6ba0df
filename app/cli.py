"""The ``proreason`` command line.

    proreason ask --image cat.png "What is the cat sitting on?"   answer with a readable trace
    proreason serve [--profile vllm]                               run the HTTP service
    proreason build-tiny                                           build the offline tiny models
    proreason profiles                                             list the configuration profiles
    proreason bench NAME ...                                       run a benchmark (see bench/)

Every failure a user can cause or meet (missing image, unknown profile, a model that cannot be
loaded, an unreachable server) ends as one ``error: ...`` line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.errors import InvalidRequest, MediaError, ModelUnavailable, ProReasonError

log = logging.getLogger("proreason")

EXIT_USAGE = 2  # bad input: arguments, images, profile
EXIT_FAILURE = 1  # the models or the service failed


class CLIError(Exception):
    """A one-line error for the user."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- settings


def _load_settings(args: argparse.Namespace, **overrides: Any):  # -> Settings
    from app.settings import load_settings

    try:
        return load_settings(args.profile, **overrides)
    except FileNotFoundError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CLIError(f"invalid settings ({where}): {first.get('msg')}") from None


# --------------------------------------------------------------------------- ask


def _format_step(step: Any) -> str:
    """One readable line (or two) per model call."""
    where = f"r{step.round}" if step.round else "--"
    usage = step.usage
    cost = f"{step.latency_s:5.2f}s {usage.prompt_tokens:>5}+{usage.completion_tokens:<4}tok"
    head = f"[{where}] {step.role:<11} {cost}"
    if step.error:
        return f"{head}  ! model error: {step.error}"
    if step.parse_error:
        return f"{head}  ! unusable output ({step.parse_error}): {_clip(step.output)}"
    if step.role == "dispatcher" and step.decision:
        expert = step.decision.get("expert", "?")
        asked = step.decision.get("questions") or [step.decision.get("question", "")]
        return f"{head}  -> {expert}: {_clip(' | '.join(asked))}"
    if step.role == "referee" and step.decision:
        verdict = "solvable" if step.decision.get("solvable") else "not yet"
        return f"{head}  {verdict}: {_clip(str(step.decision.get('reasoning', '')))}"
    text = step.memory_entry if step.memory_entry is not None else step.output
    return f"{head}  {_clip(text)}"


def _clip(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    return obj


def _read_image_file(ref: str, index: int) -> bytes:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise CLIError(f"image {index}: no such file: {ref}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CLIError(f"image {index}: cannot read {ref}: {exc.strerror}") from None


async def _load_cli_images(settings: Any, refs: Sequence[str]) -> list[Any]:
    """Local paths are read here; URLs go through the same guarded loader as the service."""
    from app.media import MediaLoader

    if len(refs) > settings.media.max_images:
        raise CLIError(f"too many images: {len(refs)} (at most {settings.media.max_images})")
    loader = MediaLoader(settings.media)
    try:
        images = []
        for i, ref in enumerate(refs, start=1):
            if ref.startswith(("http://", "https://", "data:")):
                images.append(await loader.load(ref))
                continue
            data = await asyncio.to_thread(_read_image_file, ref, i)
            try:
                images.append(await loader.load_bytes(data, source=ref))
            except MediaError as exc:
                raise CLIError(f"image {i} ({ref}): {exc.message}") from None
        return images
    finally:
        await loader.aclose()


def _run_options(args: argparse.Namespace, settings: Any, method: str | None) -> Any:
    """RunOptions from the command line, the profile's agent section filling the gaps."""
    from agents import RunOptions

    agent = settings.agent
    return RunOptions(
        method=method or agent.method,
        mode=args.mode or agent.mode,
        max_rounds=agent.max_rounds if args.max_rounds is None else args.max_rounds,
        parallel_perception=args.parallel or agent.parallel_perception,
        max_tokens=getattr(args, "max_tokens", None),
        temperature=getattr(args, "temperature", None),
    )


async def _open_healthy(settings: Any):  # -> ModelSet
    """Open the models and fail in one line, before any work, if one cannot answer."""
    from app.backends import close_models, open_models

    models = await open_models(settings.models)
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


async def _ask(args: argparse.Namespace) -> int:
    from agents import Question, Reasoner, RunResult
    from app.backends import close_models

    settings = _load_settings(args)
    images = await _load_cli_images(settings, args.image)
    question = Question(
        text=args.question,
        images=tuple(images),
        answer_format="multiple_choice" if args.choice else "open",
        options=tuple(args.choice),
    )
    options = _run_options(args, settings, args.method)
    models = await _open_healthy(settings)
    try:
        reasoner = Reasoner(models, settings.agent)
        result: RunResult | None = None
        async for event in reasoner.stream(reasoner.prepare(question, options)):
            if isinstance(event, RunResult):
                result = event
            elif not args.json and not args.quiet:
                print(_format_step(event), file=sys.stderr, flush=True)
    finally:
        await close_models(models)
    if result is None:  # the reasoner contract is to end with a result
        raise CLIError("the reasoner ended without an answer", EXIT_FAILURE)
    if args.json:
        print(json.dumps(_to_jsonable(result), indent=2, ensure_ascii=False))
    else:
        if not args.quiet:
            print(
                f"[{result.stop_reason}] {result.rounds} round(s), {len(result.steps)} model "
                f"calls, {result.usage.total_tokens} tokens, {result.latency_s:.2f}s",
                file=sys.stderr,
            )
        print(result.answer)
    return 0


# --------------------------------------------------------------------------- other commands


async def _eval(args: argparse.Namespace) -> int:
    from agents import Reasoner
    from app.backends import close_models
    from evals.datasets import load_dataset
    from evals.runner import evaluate, format_reports, write_outputs
    from models.images import ImageDecoder

    settings = _load_settings(args)
    items = load_dataset(args.dataset, split=args.split, limit=args.limit, seed=args.seed)
    if not items:
        raise CLIError(f"dataset {args.dataset!r} has no items")
    models = await _open_healthy(settings)
    m = settings.media
    decoder = ImageDecoder(
        max_bytes=m.max_image_bytes, max_pixels=m.max_pixels, max_side=m.max_side
    )
    reports, records = [], {}
    try:
        reasoner = Reasoner(models, settings.agent)
        for method in args.method or [settings.agent.method]:
            options = _run_options(args, settings, method)
            report, records[method] = await evaluate(
                reasoner, items, options, decoder, concurrency=args.concurrency
            )
            reports.append(report)
            print(format_reports([report]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        await close_models(models)
    print(format_reports(reports))
    if args.out:
        meta = {
            "dataset": args.dataset,
            "split": args.split,
            "limit": args.limit,
            "seed": args.seed,
            "profile": settings.profile,
            "vision_model": settings.models.vision.model,
            "text_model": settings.models.text.model if settings.models.text else None,
        }
        await asyncio.to_thread(write_outputs, Path(args.out), reports, records, meta)
        print(f"report.json and predictions written to {args.out}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from app.main import run_server

    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
    settings = _load_settings(args, server=server) if server else _load_settings(args)
    run_server(settings)
    return 0


def _build_tiny(args: argparse.Namespace) -> int:
    from models.tiny import build_tiny_models

    paths = build_tiny_models(Path(args.dir).expanduser(), force=args.force)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print("start the service on them with: proreason serve --profile tiny", file=sys.stderr)
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from app.settings import configs_dir, load_settings

    for path in sorted(configs_dir().glob("*.yaml")):
        try:
            s = load_settings(path.stem)
        except (ValidationError, FileNotFoundError) as exc:
            print(f"{path.stem:<16} (invalid: {type(exc).__name__})")
            continue
        text = f"{s.models.text.backend}:{s.models.text.model}" if s.models.text else "-"
        print(
            f"{path.stem:<16} mode={s.agent.mode:<8} vision={s.models.vision.backend}:"
            f"{s.models.vision.model}  text={text}"
        )
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proreason",
        description="ProReason visual reasoning: proactive perception by an LVLM, reasoning by a "
        "text LLM. Configuration: a YAML profile (--profile or PROREASON_PROFILE) overridden by "
        "PROREASON_<SECTION>__<FIELD> environment variables.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_profile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile",
            default=None,
            help="profile name in configs/ (default, tiny, vllm, pure, ...) or a YAML path; "
            "default: $PROREASON_PROFILE or 'default'",
        )

    ask = sub.add_parser("ask", help="answer a question about images, with a readable trace")
    with_profile(ask)
    ask.add_argument("question", help="the question")
    ask.add_argument(
        "--image",
        "-i",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="an image file, http(s) URL or data URL (repeat for several images)",
    )
    ask.add_argument("--method", choices=["proreason", "direct", "cot", "ccot", "caption"])
    ask.add_argument("--mode", choices=["pure", "assisted"])
    ask.add_argument("--max-rounds", type=int, metavar="N")
    ask.add_argument("--parallel", action="store_true", help="parallel perception (opt-in)")
    ask.add_argument(
        "--choice",
        action="append",
        default=[],
        metavar="OPTION",
        help="a multiple-choice option (repeat); makes the question multiple-choice",
    )
    ask.add_argument("--max-tokens", type=int, metavar="N", help="per model call")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ask.add_argument("--quiet", "-q", action="store_true", help="print only the answer")
    ask.set_defaults(func=lambda a: asyncio.run(_ask(a)))

    ev = sub.add_parser(
        "eval",
        help="evaluate methods on a dataset (easy-vqa offline, or a JSONL file): accuracy with "
        "stop reasons, fallback rate, parse failures, calls and tokens per question",
    )
    with_profile(ev)
    ev.add_argument("--dataset", default="easy-vqa", help="'easy-vqa' or a JSONL file")
    ev.add_argument("--split", default="test")
    ev.add_argument("--limit", type=int, default=100, help="seeded random sample size")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--method",
        action="append",
        choices=["proreason", "direct", "cot", "ccot", "caption"],
        help="repeat to compare methods side by side (default: the profile's)",
    )
    ev.add_argument("--mode", choices=["pure", "assisted"])
    ev.add_argument("--max-rounds", type=int, metavar="N")
    ev.add_argument("--parallel", action="store_true", help="parallel perception (opt-in)")
    ev.add_argument("--concurrency", type=int, default=8, help="questions in flight")
    ev.add_argument("--out", help="folder for predictions-<method>.jsonl and report.json")
    ev.set_defaults(func=lambda a: asyncio.run(_eval(a)))

    serve = sub.add_parser("serve", help="run the HTTP service (OpenAI-compatible + /v1/reason)")
    with_profile(serve)
    serve.add_argument("--host", help="bind address (default: from the profile)")
    serve.add_argument("--port", type=int, help="port (default: from the profile)")
    serve.set_defaults(func=_serve)

    tiny = sub.add_parser(
        "build-tiny",
        help="build tiny random-weight models offline for the 'tiny' profile (like vLLM's "
        "--load-format dummy: real code paths, gibberish answers)",
    )
    tiny.add_argument("dir", nargs="?", default="~/.cache/proreason/tiny")
    tiny.add_argument("--force", action="store_true", help="rebuild even if present")
    tiny.set_defaults(func=_build_tiny)

    profiles = sub.add_parser("profiles", help="list the configuration profiles")
    profiles.set_defaults(func=_profiles)

    # dispatched in main() before parsing; listed here for --help
    sub.add_parser("bench", help="run a benchmark (proreason bench --help lists them)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmarks own their arguments (and --help)
        from bench.__main__ import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except InvalidRequest as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ProReasonError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
