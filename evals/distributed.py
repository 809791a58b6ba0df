"""Large runs on Ray (``ray.data``): the items are sharded across workers, each calling the
service endpoint or running its own in-process pipeline; the driver appends every record to the
column's predictions file as its batch finishes, in the same resumable format as
:func:`evals.runner.run_column` (re-running skips the items already done).

    pip install 'proreason[ray]'

``make_answerer`` is called once per worker (a picklable zero-argument callable returning an
:class:`evals.runner.Answerer`, or an awaitable of one), e.g.
``functools.partial(Endpoint, "http://gpu-box:8080")``, or one that builds an in-process
pipeline on the worker (``proreason eval --ray N`` without ``--endpoint`` does that).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evals.datasets import EvalItem
from evals.runner import Answerer, Column, ItemRecord, _Appender, _one, read_results


class _Worker:
    """One Ray actor: its own answerer, a batch of items answered concurrently."""

    def __init__(
        self, make_answerer: Callable[[], Answerer], column: Column, concurrency: int
    ) -> None:
        self.column, self.concurrency = column, concurrency
        self.loop = asyncio.new_event_loop()
        answerer = make_answerer()
        if inspect.isawaitable(answerer):  # e.g. an in-process pipeline that opens its models
            answerer = self.loop.run_until_complete(answerer)
        self.answerer = answerer

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [pickle.loads(blob) for blob in batch["item"]]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: EvalItem) -> ItemRecord:
            async with gate:
                return await _one(self.answerer, item, self.column, None)

        async def run() -> list[ItemRecord]:
            return await asyncio.gather(*(one(i) for i in items))

        records = self.loop.run_until_complete(run())
        return {"record": [json.dumps(asdict(r), ensure_ascii=False) for r in records]}


def run_ray(
    make_answerer: Callable[[], Answerer],
    items: list[EvalItem],
    column: Column,
    results: Path,
    *,
    workers: int = 2,
    batch_size: int = 4,
    concurrency: int = 4,
) -> list[ItemRecord]:
    """Answer the items not yet in ``results`` on ``workers`` Ray actors; all records in item
    order. Ray must be initialised by the caller (``ray.init(...)``) or is started locally."""
    import ray
    import ray.data

    done = {k: r for k, r in read_results(results).items() if r.verdict != "error"}
    todo = [item for item in items if item.id not in done]
    if todo:
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        pool = min(workers, len(todo))  # no idle actors for a short remainder
        blocks = max(pool, min(len(todo), workers * 4))
        dataset = ray.data.from_items(
            [{"item": pickle.dumps(item)} for item in todo], override_num_blocks=blocks
        )
        answered = dataset.map_batches(
            _Worker,
            fn_constructor_args=(make_answerer, column, concurrency),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=pool),
            # the workers wait on a model or a service, not on this CPU
            num_cpus=0.25,
            batch_format="numpy",
        )
        appender = _Appender(results)
        try:
            for row in answered.iter_rows():  # streamed: written as each batch finishes
                record = ItemRecord.from_json(json.loads(row["record"]))
                appender.write(record)
                done[record.id] = record
        finally:
            appender.close()
    return [done[item.id] for item in items]
