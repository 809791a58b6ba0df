"""The ``proreason`` command as a user runs it: real processes where start-up matters, in-process
``main()`` for the rest. Models: the tiny offline ones and a loopback OpenAI-compatible upstream."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import main
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.roles import RoleResponder

PROREASON = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[3]


def write_profile(path: Path, models: dict[str, Any], **sections: Any) -> Path:
    path.write_text(yaml.safe_dump({"models": models, **sections}))
    return path


def tiny_backend(folder: Path) -> dict[str, Any]:
    return {
        "backend": "transformers",
        "model": str(folder),
        "device": "cpu",
        "allow_download": False,
    }


@pytest.fixture
def tiny_profile(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    return write_profile(
        tmp_path / "tiny.yaml",
        {"vision": tiny_backend(tiny_models["vision"]), "text": tiny_backend(tiny_models["text"])},
        agent={"max_rounds": 2, "max_tokens": 8},
    )


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(model="fake-vlm", responder=RoleResponder()) as server:
        yield server


@pytest.fixture
def upstream_profile(tmp_path: Path, upstream: FakeOpenAIServer) -> Path:
    backend = {"backend": "openai", "model": "fake-vlm", "base_url": upstream.base_url}
    return write_profile(tmp_path / "pure.yaml", {"vision": backend}, agent={"mode": "pure"})


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PROREASON, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_ask_end_to_end_on_tiny_models(tiny_profile: Path, shapes_png: Path) -> None:
    proc = run("ask", "--profile", str(tiny_profile), "--json", "-i", str(shapes_png), "Colour?")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["method"] == "proreason" and result["mode"] == "assisted"
    assert result["stop_reason"] in {"solved", "max_rounds_fallback"}
    roles = [s["role"] for s in result["steps"]]
    assert roles[0] == "dispatcher" and len(roles) >= 3
    # every step ran on a real model and counted its tokens; the image reached the LVLM
    assert all(s["usage"]["prompt_tokens"] > 0 for s in result["steps"])
    assert result["usage"]["image_tokens"] and result["usage"]["image_tokens"] > 0


def test_ask_prints_a_readable_trace(
    upstream_profile: Path, upstream: FakeOpenAIServer, shapes_png: Path, capsys
) -> None:
    code = main(["ask", "--profile", str(upstream_profile), "-i", str(shapes_png), "Where?"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == "the red square is left of the blue circle"
    note, *lines = err.splitlines()
    assert note.startswith("running the models in-process") and "--url" in note
    assert (
        lines[0].startswith("[r1] dispatcher")
        and "-> vision: Which shapes are visible?" in lines[0]
    )
    assert lines[1].startswith("[r1] vision") and "a red square" in lines[1]
    assert lines[2].startswith("[r1] referee") and "solvable" in lines[2]
    assert lines[3].startswith("[--] summarizer") or lines[3].startswith("[r1] summarizer")
    assert "[solved] 1 round(s), 4 model calls" in lines[4]
    assert upstream.responder.roles == ["dispatcher", "vision", "referee", "summarizer"]


def test_ask_multiple_choice_and_baseline(
    upstream_profile: Path, upstream: FakeOpenAIServer, shapes_png: Path, capsys
) -> None:
    args = ["ask", "--profile", str(upstream_profile), "-i", str(shapes_png), "--json"]
    assert main([*args, "--method", "direct", "What is shown?"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stop_reason"] == "baseline" and len(result["steps"]) == 1
    assert upstream.responder.roles == ["answer"]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["-i", "missing.png"], "error: image 1: no such file: missing.png", 2),
        (["-i", "{text_file}"], "error: image 1", 2),
        (["--profile", "no-such-profile"], "error: profile 'no-such-profile' not found", 2),
        (["--max-rounds", "0"], "error: ", 2),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], message: str, code: int, upstream_profile: Path, tmp_path: Path, capsys
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    args = [a.replace("{text_file}", str(text_file)) for a in args]
    if "--profile" not in args:
        args = ["--profile", str(upstream_profile), *args]
    assert main(["ask", *args, "What?"]) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_unsupported_image_format_is_named(upstream_profile: Path, tmp_path: Path, capsys) -> None:
    tiff = tmp_path / "scan.tiff"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tiff)
    assert main(["ask", "--profile", str(upstream_profile), "-i", str(tiff), "What?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: image 1") and "TIFF" in err.upper() and err.count("\n") == 1


def test_model_that_cannot_be_loaded(tmp_path: Path, shapes_png: Path, capsys) -> None:
    profile = write_profile(tmp_path / "p.yaml", {"vision": tiny_backend(tmp_path / "nope")})
    assert main(["ask", "--profile", str(profile), "-i", str(shapes_png), "What?"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load model") and err.count("\n") == 1, err


def test_unreachable_upstream(tmp_path: Path, shapes_png: Path, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = {
        "backend": "openai",
        "model": "m",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "max_retries": 1,
        "retry_backoff_s": 0.01,
    }
    profile = write_profile(
        tmp_path / "p.yaml", {"vision": backend}, agent={"mode": "pure", "method": "direct"}
    )
    assert main(["ask", "--profile", str(profile), "-i", str(shapes_png), "What?"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_default_profile_offline_fails_in_one_line(tmp_path: Path) -> None:
    """The default profile names real hub models: without a hub, serve says so in one line."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = run("serve", env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        "error: cannot load model 'llava-hf/llava-interleave-qwen-0.5b-hf'"
    )
    assert "unreachable" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_eval_on_tiny_models(tiny_profile: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    code = main(
        [
            "eval",
            "--profile",
            str(tiny_profile),
            "--limit",
            "3",
            "--method",
            "proreason",
            "--method",
            "direct",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "proreason" in table and "direct" in table
    report = json.loads((out / "report.json").read_text())
    by_method = {r["method"]: r for r in report["reports"]}
    assert by_method["direct"]["n"] == 3 and by_method["direct"]["stop_reasons"] == {"baseline": 3}
    proreason = by_method["proreason"]
    assert sum(proreason["stop_reasons"].values()) + proreason["errors"] == 3
    assert proreason["model_calls_per_question"] >= 2
    rows = (out / "predictions-proreason.jsonl").read_text().splitlines()
    assert len(rows) == 3 and {"verdict", "stop_reason", "reference"} <= json.loads(rows[0]).keys()


def test_profiles_and_help(capsys) -> None:
    assert main(["profiles"]) == 0
    listed = capsys.readouterr().out
    for name in ("default", "tiny", "vllm", "pure", "vllm-inprocess"):
        assert f"{name} " in listed
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("ask", "serve", "eval", "build-tiny", "profiles", "bench"):
        assert command in help_text


def test_bench_help_lists_the_benchmarks(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("overhead", "throughput", "baseline", "parallel", "memory"):
        assert name in out


def test_ask_url_asks_a_running_service(shapes_png: Path, capsys) -> None:
    """--url: the trace and the answer come from the service over its API; nothing is loaded."""
    from agents.types import ModelSet
    from app.main import create_app
    from tests.app.conftest import LiveServer, make_settings
    from tests.fakes.models import FakeModel

    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    app = create_app(make_settings(), models=ModelSet(vision=vision, text=text))
    with LiveServer(app) as live:
        code = main(["ask", "--url", live.url, "-i", str(shapes_png), "Where is the square?"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == "the red square is left of the blue circle"
    note, *lines = err.splitlines()
    assert note == f"asking the service at {live.url}"
    assert lines[0].startswith("[r1] dispatcher") and "-> vision:" in lines[0]
    assert "[solved] 1 round(s), 4 model calls" in lines[-1]
    assert vision.roles() == ["vision"] and text.roles()[0] == "dispatcher"


def test_ask_url_reports_service_errors_in_one_line(shapes_png: Path, capsys) -> None:
    from agents.types import ModelSet
    from app.main import create_app
    from tests.app.conftest import LiveServer, make_settings
    from tests.fakes.models import FakeModel

    settings = make_settings(server={"api_keys": ["k1"]})
    app = create_app(settings, models=ModelSet(vision=FakeModel(), text=FakeModel()))
    with LiveServer(app) as live:
        assert main(["ask", "--url", live.url, "-i", str(shapes_png), "Where?"]) == 1
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith("error: the service answered 401") and "API key" in err
        assert main(["ask", "--url", live.url, "--api-key", "k1", "-q", "Where?"]) == 0
        assert capsys.readouterr().out.strip()


def test_serve_on_a_busy_port_fails_before_loading_models(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the vision model does not exist: had it been loaded first, the error would name it
        profile = write_profile(tmp_path / "p.yaml", {"vision": tiny_backend(tmp_path / "nope")})
        proc = run("serve", "--profile", str(profile), "--port", str(port))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_serve_tiny_before_build_tiny_names_the_command(tmp_path: Path) -> None:
    """The tiny profile reads ~/.cache/proreason/tiny: with an empty HOME it is not built yet."""
    env = {"HOME": str(tmp_path), "PROREASON_SERVER__PORT": "0"}
    proc = run("serve", "--profile", "tiny", env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot load model"), proc.stderr
    assert proc.stderr.rstrip().endswith("build it first with: proreason build-tiny")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_eval_keeps_its_results_by_default_and_prints_the_table_once(
    upstream_profile: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    jsonl = tmp_path / "items.jsonl"
    image = ROOT / "tests" / "data" / "shapes.png"
    jsonl.write_text(json.dumps({"question": "Where?", "images": [str(image)], "answer": "x"}))
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--profile", str(upstream_profile), "--dataset", str(jsonl), "--limit", "1"]
    assert main([*argv, "--method", "direct"]) == 0
    out = capsys.readouterr().out
    assert out.count("direct") == 1, out  # one table, one row
    (run_dir,) = (tmp_path / "results").iterdir()
    assert run_dir.name.startswith("items-")
    assert (run_dir / "report.json").is_file() and (run_dir / "predictions-direct.jsonl").is_file()


def test_bench_help_names_the_command(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert capsys.readouterr().out.startswith("usage: proreason bench")


def test_every_flag_has_help() -> None:
    from app.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest != "help":
                assert action.help, f"proreason {name}: {action.option_strings or action.dest}"


def test_eval_mmmu_report_plots_and_resume(
    upstream_profile: Path, upstream: FakeOpenAIServer, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("pyarrow")
    from tests.evals import fixtures

    data = fixtures.mmmu(tmp_path / "mmmu")
    out = tmp_path / "results"
    argv = ["eval", "--profile", str(upstream_profile), "--dataset", "mmmu",
            "--data-dir", str(data), "--method", "proreason", "--method", "direct",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "mmmu" in table and "proreason" in table and "direct" in table
    for name in ("report.md", "report.json", "accuracy.png", "calls.png",
                 "predictions-proreason.jsonl", "predictions-direct.jsonl"):  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    by_method = {r["method"]: r for r in report["reports"]}
    assert by_method["direct"]["n"] == 3 and by_method["direct"]["errors"] == 1  # the bad image
    assert by_method["proreason"]["vs_direct"]["n"] == 3
    assert len(by_method["proreason"]["accuracy_ci95"]) == 2
    assert "| mmmu | proreason |" in (out / "report.md").read_text()
    calls = len(upstream.responder.roles)
    assert calls >= 2 + 4  # two good items per method
    assert main(argv) == 0  # resumed: nothing finished is asked again
    assert len(upstream.responder.roles) == calls
    rows = (out / "predictions-direct.jsonl").read_text().splitlines()
    assert len({json.loads(r)["id"] for r in rows}) == 3


def test_eval_endpoint_asks_a_running_service(tmp_path: Path, capsys) -> None:
    from agents.types import ModelSet
    from app.main import create_app
    from tests.app.conftest import LiveServer, make_settings
    from tests.fakes.models import FakeModel

    jsonl = tmp_path / "items.jsonl"
    image = ROOT / "tests" / "data" / "shapes.png"
    rows = [
        {"id": "a", "question": "Where?", "images": [str(image)], "answer": "left"},
        {"id": "b", "question": "Which?", "images": [str(image)], "answer": "A",
         "options": ["square", "circle"]},
    ]  # fmt: skip
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    app = create_app(make_settings(), models=ModelSet(vision=vision, text=text))
    out = tmp_path / "out"
    with LiveServer(app) as live:
        argv = ["eval", "--endpoint", live.url, "--dataset", str(jsonl), "--method", "proreason",
                "--method", "direct", "--out", str(out), "--no-progress"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    by_method = {r["method"]: r for r in report["reports"]}
    assert by_method["proreason"]["errors"] == 0 and by_method["proreason"]["n"] == 2
    assert by_method["proreason"]["stop_reasons"].get("solved") == 2
    assert by_method["proreason"]["model_calls_per_question"] == 4
    assert by_method["direct"]["stop_reasons"] == {"baseline": 2}
    assert vision.roles()[0] == "vision"


def test_reproduce_runs_the_benchmarks_below_data_dir(
    upstream_profile: Path, tmp_path: Path, capsys
) -> None:
    from tests.evals import fixtures
    from tests.evals.test_benchmarks import HB_ROWS

    fixtures.hallusionbench(tmp_path / "data" / "hallusionbench", HB_ROWS)
    out = tmp_path / "paper"
    argv = ["reproduce", "--profile", str(upstream_profile), "--data-dir", str(tmp_path / "data"),
            "--benchmark", "hallusionbench", "--method", "direct", "--mode", "pure",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    (row,) = report["reports"]
    assert row["benchmark"] == "hallusionbench" and row["column"] == "direct-pure"
    assert {"aAcc", "fAcc", "qAcc", "easy_aAcc", "hard_aAcc"} <= row["official"].keys()
    assert (out / "hallusionbench" / "predictions-direct-pure.jsonl").is_file()
    missing = ["reproduce", "--profile", str(upstream_profile), "--data-dir", str(tmp_path)]
    assert main([*missing, "--benchmark", "mme"]) == 2
    assert "mme: no folder" in capsys.readouterr().err
