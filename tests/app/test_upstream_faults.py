"""The service against failing loopback upstreams (backend "openai", default retry settings):
fail fast with 503 + Retry-After, never leak upstream addresses or bodies, cap what an answer puts
into error bodies, and /ready that notices a wrong model id or an open breaker."""

from __future__ import annotations

import ast
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_settings
from tests.fakes.openai_server import Failure, FakeOpenAIServer, Reply
from tests.fakes.roles import RoleResponder

CONTEXT_ERROR = "This model's maximum context length is 4096 tokens. However, you requested 9000"
Upstreams = tuple[FakeOpenAIServer, FakeOpenAIServer]


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    vlm = FakeOpenAIServer(model="fake-vlm", responder=RoleResponder())
    llm = FakeOpenAIServer(model="fake-llm", responder=RoleResponder())
    with vlm, llm:
        yield vlm, llm


def settings_for(vlm: FakeOpenAIServer, llm: FakeOpenAIServer, **model: Any) -> Settings:
    def backend(s: FakeOpenAIServer) -> dict[str, Any]:
        # the shipped retry defaults (3 retries, 0.5 s backoff, breaker after 5 failures)
        return {"backend": "openai", "model": s.model, "base_url": s.base_url, **model}

    return make_settings(
        models={"vision": backend(vlm), "text": backend(llm)},
        agent={"structured_decisions": True, "max_rounds": 8},
    )


@pytest.fixture
def client(upstreams: Upstreams) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(*upstreams)), raise_server_exceptions=False) as c:
        yield c


def _ask(client: TestClient, data_url: str, **extra: Any) -> Any:
    return client.post("/v1/reason", json={"question": "Where?", "images": [data_url], **extra})


def _down(server: FakeOpenAIServer) -> None:
    server.responder = lambda body: Failure.status(502, message="bad gateway")


def test_a_down_text_model_is_a_fast_503_not_a_fallback_answer(
    client: TestClient, upstreams: Upstreams, data_url: str
) -> None:
    vlm, llm = upstreams
    _down(llm)
    started = time.monotonic()
    r = _ask(client, data_url)
    first_s = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_unavailable"
    assert r.headers["Retry-After"]
    assert len(llm.chat_requests) == 4  # one call and its 3 retries, no round after it
    assert first_s < 6
    assert vlm.chat_requests == []  # no fallback answer from the vision model

    started = time.monotonic()
    r = _ask(client, data_url)  # 5th failure opens the breaker: at once from then on
    r = _ask(client, data_url)
    assert r.status_code == 503 and time.monotonic() - started < 1.0
    assert len(llm.chat_requests) == 5
    assert int(r.headers["Retry-After"]) >= 5  # the breaker's cool-down left
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["failed"] == ["text"]
    metrics = client.get("/metrics").text
    assert 'proreason_upstream_circuit_open{role="text"} 1.0' in metrics
    assert 'proreason_upstream_circuit_open{role="vision"} 0.0' in metrics


def test_an_unreachable_text_upstream_is_a_503(upstreams: Upstreams, data_url: str) -> None:
    vlm, llm = upstreams
    app = create_app(settings_for(vlm, llm))
    with TestClient(app, raise_server_exceptions=False) as client:
        llm.stop()  # connection refused from now on
        started = time.monotonic()
        r = _ask(client, data_url)
        assert r.status_code == 503, r.text
        assert time.monotonic() - started < 6
        assert vlm.chat_requests == []


def test_context_length_from_the_dispatcher_surfaces_at_once(
    client: TestClient, upstreams: Upstreams, data_url: str
) -> None:
    llm = upstreams[1]
    llm.responder.fail["dispatcher"] = Failure.vllm_error(400, CONTEXT_ERROR)
    r = _ask(client, data_url)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert len(llm.chat_requests) == 1  # not once per round


@pytest.mark.parametrize(
    "failure",
    [
        Failure.status(503),
        Failure.status(502, message="upstream {url} is gone"),
        Failure.raw(500, "<html><body><h1>500</h1>" + "Traceback (most recent) " * 30 + "</html>"),
        Failure.raw(200, "{not json"),
        Failure.raw(200, {"choices": "nope", "debug": "{url}"}),
        Failure.vllm_error(400, "refused by {url}"),
        Failure.hang(5),
        "refused",
    ],
    ids=["503", "echo-url", "html", "bad-json", "malformed", "4xx", "timeout", "conn-refused"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_no_error_body_names_an_upstream_address(
    upstreams: Upstreams,
    data_url: str,
    caplog: pytest.LogCaptureFixture,
    failure: Failure | str,
    stream: bool,
) -> None:
    vlm, llm = upstreams
    settings = settings_for(vlm, llm, max_retries=1, retry_backoff_s=0.01, read_timeout_s=0.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        if isinstance(failure, str):
            llm.stop()
        else:
            text = str(failure.body).replace("{url}", llm.base_url)
            if isinstance(failure.body, dict):
                failure = Failure.raw(failure.status_code, ast.literal_eval(text))
            elif failure.kind == "status":
                failure = Failure.raw(failure.status_code, text)
            llm.responder.fail["dispatcher"] = failure
        with caplog.at_level(logging.INFO):
            r = _ask(client, data_url, stream=stream, trace=True, timeout_s=10)
    body = r.text  # an error, or a 200 whose trace records the failed calls
    assert "error" in body
    for secret in (llm.base_url, llm.root_url, f"127.0.0.1:{llm.port}", "Traceback"):
        assert secret not in body, body
    # the detail is in the server's log, with the request id
    if r.status_code >= 500:
        request_id = r.json()["error"]["request_id"]
        logged = [rec for rec in caplog.records if getattr(rec, "request_id", None) == request_id]
        assert any(llm.base_url in rec.getMessage() for rec in logged), [
            rec.getMessage() for rec in logged
        ]


def test_an_oversized_answer_is_a_short_error_quickly(
    client: TestClient, upstreams: Upstreams, data_url: str
) -> None:
    vlm = upstreams[0]
    vlm.responder = lambda body: Reply("x" * 5_000_000)
    started = time.monotonic()
    r = _ask(client, data_url, max_rounds=1)
    assert r.status_code == 502, r.text[:300]
    assert len(r.content) < 2000
    assert "larger than 1048576 bytes" in r.json()["error"]["message"]
    assert time.monotonic() - started < 10


def test_a_deadline_error_body_caps_each_step_output(
    client: TestClient, upstreams: Upstreams, data_url: str
) -> None:
    vlm, llm = upstreams
    vlm.responder = lambda body: "a red square " * 20_000  # 260 kB: under the answer cap
    llm.responder.fail["referee"] = Failure.hang(10)
    r = _ask(client, data_url, timeout_s=2)
    assert r.status_code == 504, r.text[:300]
    steps = r.json()["error"]["steps"]
    assert [s["role"] for s in steps] == ["dispatcher", "vision"]
    assert 2000 <= len(steps[1]["output"]) < 2100
    assert steps[1]["output"].endswith("more characters]")
    assert len(r.content) < 20_000


def test_ready_needs_each_upstream_to_serve_its_model(
    client: TestClient, upstreams: Upstreams
) -> None:
    assert client.get("/ready").status_code == 200
    upstreams[1].model = "some-other-model"  # every call would be "model not found"
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["failed"] == ["text"]
