"""A new user's first minutes: ``proreason serve --profile demo`` (a real process, the trained
demo models committed under tests/data/demo-models, in-process transformers), then the
playground in a real chromium: upload an easy-VQA test image, ask, watch it solve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.test_playground import TIMEOUT_MS, ask, open_playground, roles

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo-models"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "PROREASON_MODELS__VISION__MODEL": str(DEMO / "vision"),
        "PROREASON_MODELS__TEXT__MODEL": str(DEMO / "text"),
    }
    log = tmp_path_factory.mktemp("demo-serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--profile", "demo", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"proreason serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"proreason serve did not become ready: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _easy_vqa_test_item(index: int) -> tuple[str, str, Path]:
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    return questions[index], answers[index], Path(easy_vqa.get_test_image_paths()[image_ids[index]])


def test_a_new_user_watches_the_demo_models_solve(visit, demo_server, artifacts: Path) -> None:
    question, answer, image = _easy_vqa_test_item(0)  # "what is the red shape?" -> triangle
    v = visit()
    page = open_playground(v, demo_server)
    ask(page, question, image)
    page.wait_for_selector(".run .step", timeout=TIMEOUT_MS * 4)
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS * 4)
    assert roles(page) == ["dispatcher", "vision", "referee", "summarizer"]
    dispatcher = page.locator(".step[data-role=dispatcher]").inner_text()
    assert "vision" in dispatcher and "What shape is in the image, and what colour is it?" in (
        dispatcher
    )
    assert "solvable: yes" in page.locator(".step[data-role=referee]").inner_text()
    final = page.locator(".run .final")
    assert final.locator(".answer-text").inner_text().strip().lower() == answer
    assert "stop reason: solved" in final.inner_text()
    page.screenshot(path=str(artifacts / "playground-demo.png"), full_page=True)
    assert v.off_loopback() == [] and v.console_errors == []


def test_the_demo_models_read_a_sign_with_the_ocr_expert(
    visit, demo_server, tmp_path: Path, artifacts: Path
) -> None:
    """The OCR toggle on, a rendered sign (a test image the models never saw): the trace shows
    the OCR expert's read with its position, and the answer is the sign's text. (Signs are
    what the demo text LM answers reliably with the OCR expert, docs/accuracy.md.)"""
    pytest.importorskip("rapidocr")
    from evals.text_images import text_questions

    q = next(q for q in text_questions("test", 8) if q.kind == "word")
    image = tmp_path / "sign.png"
    image.write_bytes(q.case.png())
    v = visit()
    page = open_playground(v, demo_server)
    page.get_by_label("OCR expert").check()
    ask(page, q.question, image)
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS * 8)
    assert roles(page) == ["dispatcher", "ocr", "referee", "summarizer"]
    read = page.locator(".step[data-role=ocr]").inner_text()
    assert q.answer in read and "px" in read
    final = page.locator(".run .final")
    assert final.locator(".answer-text").inner_text().strip() == q.answer
    assert "stop reason: solved" in final.inner_text()
    page.screenshot(path=str(artifacts / "playground-demo-ocr.png"), full_page=True)
    assert v.off_loopback() == [] and v.console_errors == []
