"""``proreason ask``: one question, answered in-process on the profile's models or by a running
service (``--url``), with a readable trace on stderr and the answer on stdout."""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import mimetypes
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.cli.common import EXIT_FAILURE, CLIError, format_step, load_settings, open_models
from models.errors import MediaError


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _read_file(ref: str, what: str) -> bytes:
    """A local media file's bytes; ``what`` names it in the error ("image 2", "video")."""
    path = Path(ref).expanduser()
    if not path.is_file():
        raise CLIError(f"{what}: no such file: {ref}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CLIError(f"{what}: cannot read {ref}: {exc.strerror}") from None


async def _load_video(settings: Any, args: argparse.Namespace) -> Any:
    """--video through the service's loader (URLs guarded, limits from the settings)."""
    from app.media import MediaLoader, Upload

    if args.image:
        raise CLIError("a question takes --image(s) or one --video, not both")
    async with MediaLoader(settings.media) as loader:
        try:
            frames, sampling = loader.video_options(
                args.video_frames, args.video_sampling, param="video"
            )
            ref = args.video
            if _is_url(ref):
                source = ref
            else:
                source = Upload(await asyncio.to_thread(_read_file, ref, "video"), ref)
            return await loader.load_video(source, frames=frames, sampling=sampling, param="video")
        except MediaError as exc:
            raise CLIError(f"{args.video}: {exc.message}") from None


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "data:"))


async def _load_images(settings: Any, refs: Sequence[str]) -> list[Any]:
    """Local files are read here; URLs go through the same guarded loader as the service."""
    from app.media import MediaLoader

    images = []
    async with MediaLoader(settings.media) as loader:
        try:
            loader.check_count(len(refs))
        except MediaError as exc:
            raise CLIError(exc.message) from None
        for i, ref in enumerate(refs, start=1):
            try:
                if _is_url(ref):
                    images.append(await loader.load(ref))
                else:
                    data = await asyncio.to_thread(_read_file, ref, f"image {i}")
                    images.append(await loader.load_bytes(data, source=ref))
            except MediaError as exc:
                raise CLIError(f"image {i} ({ref}): {exc.message}") from None
    return images


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.json and not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _summary(stop_reason: str, rounds: int, calls: int, tokens: int, seconds: float) -> str:
    return (
        f"[{stop_reason}] {rounds} round(s), {calls} model calls, {tokens} tokens, {seconds:.2f}s"
    )


async def ask(args: argparse.Namespace) -> int:
    if args.url:
        return await _ask_service(args)
    return await _ask_in_process(args)


async def _ask_in_process(args: argparse.Namespace) -> int:
    from agents import Question, Reasoner, RunOptions, RunResult
    from app.backends import close_models

    settings = load_settings(args)
    common: dict[str, Any] = {
        "answer_format": "multiple_choice" if args.choice else "open",
        "options": tuple(args.choice),
    }
    if args.video:
        question = Question.about_video(args.question, await _load_video(settings, args), **common)
    else:
        images = await _load_images(settings, args.image)
        question = Question(text=args.question, images=tuple(images), **common)
    options = RunOptions(
        method=args.method,
        mode=args.mode,
        max_rounds=args.max_rounds,
        parallel_perception=args.parallel or None,
        ocr=args.ocr or None,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )
    models = await open_models(settings)
    try:
        reasoner = Reasoner(models, settings.agent)
        job = reasoner.prepare(question, options)
        _note(
            args,
            f"running the models in-process (profile {settings.profile!r}; "
            "to ask a running service instead, pass --url)",
        )
        result: RunResult | None = None
        async for event in reasoner.stream(job):
            if isinstance(event, RunResult):
                result = event
            else:
                _note(args, format_step(event))
    finally:
        await close_models(models)
    if result is None:  # the reasoner contract is to end with a result
        raise CLIError("the reasoner ended without an answer", EXIT_FAILURE)
    if args.json:
        print(json.dumps(_jsonable(result), indent=2, ensure_ascii=False))
        return 0
    _note(
        args,
        _summary(
            result.stop_reason,
            result.rounds,
            len(result.steps),
            result.usage.total_tokens,
            result.latency_s,
        ),
    )
    print(result.answer)
    return 0


def _image_ref(ref: str, index: int) -> str:
    if _is_url(ref):
        return ref
    data = _read_file(ref, f"image {index}")
    mime = mimetypes.guess_type(ref)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _service_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "question": args.question,
        "images": [_image_ref(r, i) for i, r in enumerate(args.image, start=1)],
        "stream": True,
        "trace": True,
    }
    if args.choice:
        body.update(answer_format="multiple_choice", options=list(args.choice))
    if args.video:
        ref = args.video
        if not _is_url(ref):
            mime = mimetypes.guess_type(ref)[0] or "video/mp4"
            data = base64.b64encode(_read_file(ref, "video")).decode("ascii")
            ref = f"data:{mime};base64,{data}"
        body["video"] = ref
    for key, value in (
        ("method", args.method),
        ("mode", args.mode),
        ("max_rounds", args.max_rounds),
        ("parallel_perception", True if args.parallel else None),
        ("ocr", True if args.ocr else None),
        ("max_tokens", args.max_tokens),
        ("temperature", args.temperature),
        ("video_frames", args.video_frames),
        ("video_sampling", args.video_sampling),
    ):
        if value is not None:
            body[key] = value
    return body


async def _ask_service(args: argparse.Namespace) -> int:
    """POST /v1/reason with ``stream: true``: a trace line per step event, then the result."""
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    _note(args, f"asking the service at {url}")
    result: dict[str, Any] | None = None
    timeout = httpx.Timeout(10.0, read=None)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream(
                "POST", f"{url}/v1/reason", json=_service_body(args), headers=headers
            ) as response,
        ):
            if response.status_code != 200:
                await response.aread()
                raise CLIError(_service_error(response), EXIT_FAILURE)
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event not in (None, "done"):
                    data = json.loads(line[5:])
                    if event == "result":
                        result = data
                    elif event == "error":
                        raise CLIError(
                            f"the service failed: {data['error']['message']}", EXIT_FAILURE
                        )
                    else:
                        _note(args, format_step(data))
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach the service at {url}: {exc}", EXIT_FAILURE) from None
    if result is None:
        raise CLIError("the service ended the stream without an answer", EXIT_FAILURE)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    calls = len(result.get("trace") or [])
    _note(
        args,
        _summary(
            result["stop_reason"],
            result["rounds"],
            calls,
            result["usage"]["total_tokens"],
            result["timings"]["total_s"],
        ),
    )
    print(result["answer"])
    return 0


def _service_error(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    return f"the service answered {response.status_code}: {message}"
