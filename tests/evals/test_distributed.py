"""The Ray path (``ray.data``) on a local single-node Ray instance: items sharded across two
workers calling a live service, written in the resumable format.

Ray 2.x removed ``local_mode`` (``ray.init(local_mode=True)`` raises), so "local" here is a
local Ray instance on this machine, started and shut down by the test."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from agents import RunOptions
from evals.datasets import EvalItem
from evals.runner import Column, Endpoint, read_results

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
ROOT = Path(__file__).resolve().parents[2]


def test_ray_shards_items_over_workers_calling_the_service(
    tmp_path: Path, shapes_png: Path
) -> None:
    from agents.types import ModelSet
    from app.main import create_app
    from evals.distributed import run_ray
    from tests.app.conftest import LiveServer, make_settings
    from tests.fakes.models import FakeModel

    items = [EvalItem(f"q{i}", "Where is the square?", (shapes_png,), "left") for i in range(6)]
    items.append(EvalItem("bad", "Where?", (tmp_path / "missing.png",), "left"))
    column = Column(RunOptions(method="proreason"), "proreason", "server")
    results = tmp_path / "predictions-proreason.jsonl"
    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    app = create_app(make_settings(), models=ModelSet(vision=vision, text=text))
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        with LiveServer(app) as live:
            records = run_ray(functools.partial(Endpoint, live.url), items, column, results)
            assert [r.id for r in records] == [i.id for i in items]
            assert {r.stop_reason for r in records[:6]} == {"solved"}
            assert all(r.model_calls == 4 for r in records[:6])
            assert records[6].verdict == "error" and "missing.png" in records[6].error
            assert len(read_results(results)) == 7
            asked = len(vision.roles())
            # re-run: the finished items are not asked again (only the error is retried)
            again = run_ray(functools.partial(Endpoint, live.url), items, column, results)
            assert len(vision.roles()) == asked and again[6].verdict == "error"
    finally:
        ray.shutdown()
