"""The ``ocr`` flag of ``/v1/reason`` and of the chat ``proreason`` extension reaches the run
(an injected recognizer stands in for RapidOCR)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from models.ocr import OcrEngine

OCR = '{"thought": "printed", "expert": "ocr", "question": "Read it."}'


@pytest.fixture(autouse=True)
def fake_ocr(monkeypatch: pytest.MonkeyPatch) -> None:
    def engine(**kwargs: object) -> OcrEngine:
        return OcrEngine(recognize=lambda image: [("SALE", 0.99, [1, 1, 30, 12])], **kwargs)

    monkeypatch.setattr("agents.reasoner.OcrEngine", engine)
    monkeypatch.setattr("agents.reasoner.ocr_available", lambda: True)


def test_reason_ocr_flag(client: TestClient, data_url: str, text) -> None:
    text.script["dispatcher"] = OCR
    r = client.post(
        "/v1/reason",
        json={"question": "What does it say?", "images": [data_url], "trace": True, "ocr": True},
    )
    assert r.status_code == 200, r.text
    trace = r.json()["trace"]
    assert [s["role"] for s in trace] == ["dispatcher", "ocr", "referee", "summarizer"]
    assert trace[1]["output"] == "Image 1 (64x64 px):\n[1,1,30,12] SALE"
    off = client.post("/v1/reason", json={"question": "What?", "images": [data_url]})
    assert off.status_code == 200 and "OCR" not in text.of("dispatcher")[-1].text


def test_chat_extension_ocr_flag(client: TestClient, data_url: str, text) -> None:
    text.script["dispatcher"] = OCR
    content = [{"type": "text", "text": "What does it say?"},
               {"type": "image_url", "image_url": {"url": data_url}}]  # fmt: skip
    body = {"model": "proreason", "messages": [{"role": "user", "content": content}],
            "proreason": {"ocr": True, "trace": True}}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert "ocr" in [s["role"] for s in r.json()["proreason"]["steps"]]
    body["proreason"] = {"ocr": "yes"}
    assert client.post("/v1/chat/completions", json=body).status_code == 400
