"""One benchmark end to end on tiny parameters: real engine and service processes, real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main


@pytest.mark.slow
def test_throughput_quick_writes_sane_json(tmp_path: Path) -> None:
    argv = ["throughput", "--quick", "--levels", "1,4", "--window", "1.5", "--no-plot"]
    argv += ["--out", str(tmp_path), "--sim", "step_base_ms=1.0", "--sim", "max_num_seqs=4"]
    assert main(argv) == 0
    data = json.loads((tmp_path / "bench_throughput.json").read_text())
    assert data["bench"] == "throughput"
    assert data["machine"]["cores"] >= 1
    assert data["config"]["cost_model"]["max_num_seqs"] == 4
    levels = data["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    for lv in levels:
        assert lv["errors"] == 0
        assert lv["questions"] > 0 and lv["qps"] > 0
        assert lv["p50_s"] <= lv["p99_s"]
        assert lv["calls_per_question"] == pytest.approx(7.0, abs=1.0)  # solve2: 7 calls
        assert lv["model_calls_per_s"] > lv["qps"]
        assert 0 < lv["fraction_of_bound"] <= 1.1
        assert lv["service_rss_peak_mb"] > 10
    # four questions in flight are more than one: the batch is really shared
    assert levels[1]["qps"] > 1.5 * levels[0]["qps"]
    assert levels[1]["engine_mean_batch"] > levels[0]["engine_mean_batch"]
    assert data["saturation"]["concurrency"] == 4
