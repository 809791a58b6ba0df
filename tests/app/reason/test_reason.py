"""``/v1/reason`` in-process: JSON, SSE and multipart, on the scripted test double."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import parse_sse
from tests.fakes.models import FakeModel


def test_reason_answers_with_trace_usage_and_timings(
    client: TestClient, data_url: str, vision: FakeModel, text: FakeModel
) -> None:
    r = client.post(
        "/v1/reason",
        json={"question": "Where is the red square?", "images": [data_url], "trace": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "the red square is left of the blue circle"
    assert body["stop_reason"] == "solved"
    assert (body["method"], body["mode"], body["rounds"]) == ("proreason", "assisted", 1)
    roles = [s["role"] for s in body["trace"]]
    assert roles == ["dispatcher", "vision", "referee", "summarizer"]
    # assisted mode: perception on the LVLM, the text roles on the text LLM
    assert vision.roles() == ["vision"]
    assert text.roles() == ["dispatcher", "referee", "summarizer"]
    assert body["usage"]["image_tokens"] == 7
    assert body["usage_by_role"]["vision"]["image_tokens"] == 7
    total = sum(u["total_tokens"] for u in body["usage_by_role"].values())
    assert body["usage"]["total_tokens"] == total
    assert set(body["timings"]["by_role_s"]) == set(roles)
    assert body["id"] == "reason-" + r.headers["x-request-id"]


def test_reason_without_trace_omits_steps(client: TestClient, data_url: str) -> None:
    r = client.post("/v1/reason", json={"question": "Where?", "images": [data_url]})
    assert r.status_code == 200
    assert "trace" not in r.json()


def test_reason_options_reach_the_run(
    client: TestClient, data_url: str, vision: FakeModel, text: FakeModel
) -> None:
    r = client.post(
        "/v1/reason",
        json={
            "question": "Which shape is red?",
            "images": [data_url],
            "mode": "pure",
            "answer_format": "multiple_choice",
            "options": ["circle", "square"],
            "max_tokens": 33,
            "temperature": 0.5,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "pure"
    assert text.calls == []  # pure mode: the LVLM plays every role
    sampling = [c.request.sampling for c in vision.calls]
    assert {s.max_tokens for s in sampling} == {33}
    assert {s.temperature for s in sampling} == {0.5}
    summary = next(c for c in vision.calls if c.role == "summarizer")
    prompt = "\n".join(m.text_content for m in summary.request.messages)
    assert "circle" in prompt and "square" in prompt


def test_reason_baseline_method(client: TestClient, data_url: str, vision: FakeModel) -> None:
    r = client.post(
        "/v1/reason", json={"question": "What?", "images": [data_url], "method": "direct"}
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["method"], body["stop_reason"], body["rounds"]) == ("direct", "baseline", 0)
    assert vision.roles() == ["answer"]
    assert len(vision.calls[0].request.images) == 1


def test_reason_stream_sends_one_event_per_step_then_result_then_done(
    client: TestClient, data_url: str
) -> None:
    r = client.post(
        "/v1/reason",
        json={"question": "Where is the square?", "images": [data_url], "stream": True},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    kinds = [e for e, _ in events]
    assert kinds == ["dispatch", "vision", "verdict", "answer", "result", "done"]
    dispatch = json.loads(events[0][1])
    assert dispatch["role"] == "dispatcher" and dispatch["decision"]["expert"] == "vision"
    result = json.loads(events[4][1])
    assert result["answer"] == "the red square is left of the blue circle"
    assert result["stop_reason"] == "solved"
    assert events[5][1] == "[DONE]"


def test_reason_stream_with_trace_puts_steps_in_the_result(
    client: TestClient, data_url: str
) -> None:
    r = client.post(
        "/v1/reason",
        json={"question": "Where?", "images": [data_url], "stream": True, "trace": True},
    )
    events = dict(parse_sse(r.text))
    assert len(json.loads(events["result"])["trace"]) == 4


def test_reason_upload_multipart(
    client: TestClient, png_bytes: bytes, data_url: str, vision: FakeModel
) -> None:
    r = client.post(
        "/v1/reason/upload",
        data={
            "question": "Which shape is red?",
            "answer_format": "multiple_choice",
            "options": ["circle", "square"],
            "images": [data_url],
            "trace": "true",
        },
        files=[("files", ("shapes.png", png_bytes, "image/png"))],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stop_reason"] == "solved"
    assert len(body["trace"]) == 4
    # one URL image + one uploaded file reach the vision expert
    assert len(vision.calls[0].request.images) == 2


def test_reason_upload_stream(client: TestClient, png_bytes: bytes) -> None:
    r = client.post(
        "/v1/reason/upload",
        data={"question": "Where?", "stream": "true"},
        files=[("files", ("a.png", png_bytes, "image/png"))],
    )
    assert r.status_code == 200
    assert [e for e, _ in parse_sse(r.text)][-2:] == ["result", "done"]


def test_no_image_question_is_answered_directly(client: TestClient, text: FakeModel) -> None:
    r = client.post("/v1/reason", json={"question": "What is 2 + 2?"})
    assert r.status_code == 200
    assert r.json()["stop_reason"] == "no_image_direct"


# --------------------------------------------------------------------------- strict wire types


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_rounds", True),
        ("max_rounds", "3"),
        ("max_rounds", 3.0),
        ("max_tokens", "64"),
        ("temperature", "1"),
        ("temperature", True),
        ("timeout_s", "30"),
        ("trace", 1),
        ("trace", "true"),
        ("stream", 0),
        ("parallel_perception", "yes"),
        ("ocr", 1),
        ("question", 12),
        ("options", [1, 2]),
    ],
)
def test_json_types_are_strict(client: TestClient, field: str, value: object) -> None:
    """``"max_rounds": true`` or ``"temperature": "1"`` is a 400 naming the field, not coerced."""
    body = {"question": "Where?", "answer_format": "multiple_choice", "options": ["a", "b"]}
    r = client.post("/v1/reason", json={**body, field: value})
    assert r.status_code == 400, (field, value, r.text)
    assert r.json()["error"]["param"].startswith(field)


def test_json_accepts_ints_for_floats(client: TestClient, text: FakeModel) -> None:
    r = client.post("/v1/reason", json={"question": "2 + 2?", "temperature": 1, "timeout_s": 30})
    assert r.status_code == 200, r.text
    assert text.calls[0].request.sampling.temperature == 1.0


def test_upload_form_fields_are_still_parsed_from_text(
    client: TestClient, png_bytes: bytes
) -> None:
    """Multipart fields are text by nature: ``max_rounds=2``, ``trace=true`` stay accepted."""
    r = client.post(
        "/v1/reason/upload",
        data={"question": "Where?", "max_rounds": "2", "trace": "true", "temperature": "0.5"},
        files=[("files", ("shapes.png", png_bytes, "image/png"))],
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["trace"]) == 4


@pytest.mark.parametrize("timeout_s", [1e-70, 5e-324, 0.05])
def test_a_deadline_too_short_for_any_model_call_is_a_400_not_a_504(
    client: TestClient, timeout_s: float
) -> None:
    """Found by schemathesis: ``timeout_s: 1e-70`` was accepted and ran into a certain 504."""
    reason = client.post("/v1/reason", json={"question": "2 + 2?", "timeout_s": timeout_s})
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": "proreason",
            "messages": [{"role": "user", "content": "2 + 2?"}],
            "proreason": {"timeout_s": timeout_s},
        },
    )
    assert (reason.status_code, chat.status_code) == (400, 400), (reason.text, chat.text)
    assert reason.json()["error"]["param"] == "timeout_s"
    assert chat.json()["error"]["param"] == "proreason.timeout_s"
    ok = client.post("/v1/reason", json={"question": "2 + 2?", "timeout_s": 0.1})
    assert ok.status_code == 200, ok.text
