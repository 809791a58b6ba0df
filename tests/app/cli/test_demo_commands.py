"""The distillation pipeline from the terminal: record trajectories of real runs, fine-tune on
them. Models: a loopback OpenAI-compatible upstream that plays the roles; the tiny text LM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from app.cli import main
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.roles import RoleResponder

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    with FakeOpenAIServer(model="fake-vlm", responder=RoleResponder()) as server:
        backend = {"backend": "openai", "model": "fake-vlm", "base_url": server.base_url}
        path = tmp_path / "pure.yaml"
        path.write_text(yaml.safe_dump({"models": {"vision": backend}, "agent": {"mode": "pure"}}))
        yield path


def _dataset(tmp_path: Path) -> Path:
    image = ROOT / "tests" / "data" / "shapes.png"
    rows = [
        {"id": "a", "question": "Where is the square?", "images": [str(image)],
         "answer": "the red square is left of the blue circle"},
        {"id": "b", "question": "What colour?", "images": [str(image)], "answer": "green"},
    ]  # fmt: skip
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_trajectories_record_every_role_call_with_filters(
    profile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "records.jsonl"
    args = ["trajectories", "--profile", str(profile), "--dataset", str(_dataset(tmp_path)),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["role"] for r in records[:4]] == ["dispatcher", "vision", "referee", "summarizer"]
    first = records[0]
    assert {"messages", "reply", "item_id", "solved", "correct", "finish_reason"} <= first.keys()
    assert first["messages"][0]["role"] == "system"  # the exact messages sent
    vision = records[1]["messages"][-1]["content"]
    assert vision[0]["type"] == "image" and vision[0]["path"].endswith("shapes.png")
    assert {r["item_id"] for r in records} == {"a", "b"}

    assert main([*args, "--correct-only"]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept and {r["item_id"] for r in kept} == {"a"} and all(r["correct"] for r in kept)


def test_distill_fine_tunes_a_text_model_on_the_records(
    profile: Path, tmp_path: Path, tiny_models: dict[str, Path], capsys
) -> None:
    records = tmp_path / "records.jsonl"
    assert main(["trajectories", "--profile", str(profile), "--dataset",
                 str(_dataset(tmp_path)), "--out", str(records)]) == 0  # fmt: skip
    out = tmp_path / "distilled"
    code = main(["distill", str(records), "--model", str(tiny_models["text"]), "--out", str(out),
                 "--steps", "3", "--batch-size", "2", "--role", "referee"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "config.json").is_file() and (out / "run" / "losses.json").is_file()
    assert list((out / "run").glob("*.png")), "the loss curve is saved as a PNG"

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # loads like any model


def test_ask_ocr_reads_a_sign_with_the_committed_demo_models(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """``proreason ask --ocr`` in-process on the demo profile (the committed weights, the real
    RapidOCR): the trace shows the OCR expert's read and the answer is the sign's text;
    without ``--ocr`` the dispatcher has no OCR expert to ask."""
    pytest.importorskip("rapidocr")
    from evals.text_images import text_questions

    demo = ROOT / "tests" / "data" / "demo-models"
    monkeypatch.setenv("PROREASON_MODELS__VISION__MODEL", str(demo / "vision"))
    monkeypatch.setenv("PROREASON_MODELS__TEXT__MODEL", str(demo / "text"))
    q = next(q for q in text_questions("test", 12) if q.kind == "word")
    image = tmp_path / "sign.png"
    image.write_bytes(q.case.png())
    assert main(["ask", "--profile", "demo", "--ocr", "-i", str(image), q.question]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == q.answer, err
    trace = err.splitlines()[1:]
    assert [line.split()[1] for line in trace[:4]] == ["dispatcher", "ocr", "referee", "summarizer"]
    assert "-> ocr:" in trace[0] and q.answer in trace[1] and trace[-1].startswith("[solved]")
    assert main(["ask", "--profile", "demo", "-i", str(image), q.question]) == 0
    _, err = capsys.readouterr()
    trace = err.splitlines()[1:]
    assert "-> vision: What text is written in the image?" in trace[0]
    assert not any(line.split()[1] == "ocr" for line in trace if line.startswith("[r"))
