"""``proreason eval`` and ``proreason reproduce``: methods x modes x prompt sets side by side on
benchmarks, a table on stdout, the report, plots and predictions in ``--out``.

Runs are resumable: re-running the same command with the same ``--out`` skips the items already
in its ``predictions-*.jsonl``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.common import CLIError, load_settings, open_models

#: the paper's table: its benchmarks, in its order
PAPER_BENCHMARKS = ["mmmu", "mathvista", "hallusionbench", "mme"]


def default_out(dataset: str) -> Path:
    """``results/<dataset>-<UTC time>``: every run is kept unless told otherwise."""
    from evals.benchmarks import BENCHMARKS

    name = dataset if dataset == "easy-vqa" or dataset in BENCHMARKS else Path(dataset).stem
    return Path("results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _load(args: argparse.Namespace, dataset: str, data_dir: str | None) -> list[Any]:
    from evals.benchmarks import BENCHMARKS
    from evals.datasets import load_dataset

    limit = args.limit
    if limit is None and dataset not in BENCHMARKS:
        limit = 100  # easy-vqa / JSONL: a sample unless told; a benchmark: all of it
    items = load_dataset(dataset, split=args.split, limit=limit, seed=args.seed, data_dir=data_dir)
    if not items:
        raise CLIError(f"dataset {dataset!r} has no items")
    return items


def _columns(args: argparse.Namespace) -> list[Any]:
    from agents import RunOptions

    return [
        RunOptions(
            method=method,
            mode=mode,
            max_rounds=args.max_rounds,
            parallel_perception=args.parallel or None,
            prompts=prompts,
        )
        for method in (args.method or [None])
        for mode in (args.mode or [None])
        for prompts in (args.prompts or [None])
    ]


class _Named:
    """Names the columns of a Ray run whose pipelines live on the workers."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def resolve(self, options: Any) -> tuple[str, str]:
        return options.method or self.agent.method, options.mode or self.agent.mode


async def _worker_pipeline(profile: str | None) -> Any:
    """A Ray worker's own in-process pipeline (the profile's models, loaded on the worker)."""
    from agents import Reasoner
    from evals.runner import InProcess
    from models.images import ImageDecoder

    settings = load_settings(argparse.Namespace(profile=profile))
    m = settings.media
    decoder = ImageDecoder(
        max_bytes=m.max_image_bytes, max_pixels=m.max_pixels, max_side=m.max_side
    )
    models = await open_models(settings)
    return InProcess(Reasoner(models, settings.agent), decoder)


def _on_ray(args: argparse.Namespace, items: list[Any], column: Any, results: Path) -> Any:
    import functools

    from evals.distributed import run_ray
    from evals.runner import Endpoint

    if args.endpoint:
        factory: Any = functools.partial(Endpoint, args.endpoint, api_key=args.api_key)
    else:
        factory = functools.partial(_worker_pipeline, args.profile)
    started = time.perf_counter()
    rows = run_ray(factory, items, column, results, workers=args.ray, concurrency=args.concurrency)
    return rows, time.perf_counter() - started


async def _run(
    args: argparse.Namespace, datasets: list[tuple[str, list[Any], Path]], out: Path
) -> int:
    from evals.benchmarks import BENCHMARKS
    from evals.report import compare_with_direct, write_report
    from evals.runner import Column, Endpoint, InProcess, format_reports, run_column, summarize

    models = None
    settings = None
    judge = None
    if args.ray and args.judge:
        raise CLIError("--judge is not available with --ray")
    if args.ray and not args.endpoint:  # the workers load the models, not this process
        settings = load_settings(args)
        answerer: Any = _Named(settings.agent)
    elif args.endpoint:
        answerer = Endpoint(args.endpoint, api_key=args.api_key)
        if args.judge:
            raise CLIError("--judge runs the profile's text model in-process: not with --endpoint")
    else:
        from agents import Reasoner
        from models.images import ImageDecoder

        settings = load_settings(args)
        m = settings.media
        decoder = ImageDecoder(
            max_bytes=m.max_image_bytes, max_pixels=m.max_pixels, max_side=m.max_side
        )
        models = await open_models(settings)
        answerer = InProcess(Reasoner(models, settings.agent), decoder)
        if args.judge:
            from evals.judge import ModelJudge

            judge = ModelJudge(models.text or models.vision)
    reports, records = [], {}
    try:
        for name, items, folder in datasets:
            benchmark = name if name in BENCHMARKS else None
            for options in _columns(args):
                method, mode = answerer.resolve(options)
                column = Column(options, method, mode, benchmark)
                results = folder / f"predictions-{column.key}.jsonl"
                if args.ray:
                    rows, wall = await asyncio.to_thread(_on_ray, args, items, column, results)
                else:
                    rows, wall = await run_column(
                        answerer,
                        items,
                        column,
                        results,
                        concurrency=args.concurrency,
                        progress=not args.no_progress,
                        judge=judge,
                    )
                report = summarize(rows, column, wall)
                records[(benchmark, report.column)] = rows
                reports.append(report)
                print(
                    f"done: {name} {report.column} ({report.n} items, accuracy "
                    f"{report.accuracy:.1%}, {report.errors} errors)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if models is not None:
            from app.backends import close_models

            await close_models(models)
        if isinstance(answerer, Endpoint):
            await answerer.close()
    compare_with_direct(reports, records)
    print(format_reports(reports))
    meta = {
        "datasets": [name for name, _, _ in datasets],
        "data_dir": args.data_dir,
        "split": args.split,
        "limit": args.limit,
        "seed": args.seed,
        "endpoint": args.endpoint,
        "profile": settings.profile if settings else None,
        "vision_model": settings.models.vision.model if settings else None,
        "text_model": (settings.models.text.model if settings and settings.models.text else None),
    }
    await asyncio.to_thread(write_report, out, reports, meta)
    print(f"report.md, report.json, plots and predictions written to {out}", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    items = _load(args, args.dataset, args.data_dir)
    out = Path(args.out) if args.out else default_out(args.dataset)
    return asyncio.run(_run(args, [(args.dataset, items, out)], out))


def reproduce(args: argparse.Namespace) -> int:
    """The paper's table: every benchmark below ``--data-dir/<name>``, ProReason and ``direct``
    (and the other baselines with --method), each under pure and assisted mode."""
    root = Path(args.data_dir).expanduser()
    args.method = args.method or ["proreason", "direct"]
    args.mode = args.mode or ["pure", "assisted"]
    args.prompts = args.prompts or None
    out = Path(args.out) if args.out else default_out("reproduce")
    datasets = []
    for name in args.benchmark or PAPER_BENCHMARKS:
        folder = root / name
        if not folder.is_dir():
            raise CLIError(f"{name}: no folder {str(folder)!r} (see docs/evaluation.md)")
        datasets.append((name, _load(args, name, str(folder)), out / name))
    return asyncio.run(_run(args, datasets, out))
