"""Operations: API keys, request ids, logs, metrics, readiness, backpressure, deadlines,
disconnects, body limits, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI

from agents.types import ModelSet
from app.logs import JsonFormatter
from app.main import create_app
from tests.app.conftest import make_settings, parse_sse
from tests.fakes.models import FakeModel

# --------------------------------------------------------------------------- API keys


@pytest.fixture
def keyed(models: ModelSet) -> Iterator[TestClient]:
    app = create_app(make_settings(server={"api_keys": "key-one, key-two"}), models=models)
    with TestClient(app) as c:
        yield c


def test_api_keys_are_enforced(keyed: TestClient) -> None:
    body = {"question": "What is 2 + 2?"}
    r = keyed.post("/v1/reason", json=body)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    wrong = keyed.post("/v1/reason", json=body, headers={"Authorization": "Bearer key-three"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
    basic = keyed.post("/v1/reason", json=body, headers={"Authorization": "Basic a2V5LW9uZQ=="})
    assert basic.status_code == 401
    for key in ("key-one", "key-two"):
        ok = keyed.post("/v1/reason", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200


def test_probes_stay_open_and_the_rest_is_protected(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200
    for path in ("/metrics", "/v1/models"):
        assert keyed.get(path).status_code == 401
        assert keyed.get(path, headers={"Authorization": "Bearer key-two"}).status_code == 200
    chat = {"model": "proreason", "messages": [{"role": "user", "content": "hi"}]}
    assert keyed.post("/v1/chat/completions", json=chat).status_code == 401


def test_openai_client_with_and_without_the_key(keyed: TestClient) -> None:
    good = OpenAI(base_url="http://testserver/v1", api_key="key-one", http_client=keyed)
    assert good.models.list().data
    bad = OpenAI(base_url="http://testserver/v1", api_key="nope", http_client=keyed)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_metrics_token_opens_metrics_and_nothing_else(models: ModelSet) -> None:
    server = {"api_keys": "key-one", "metrics_token": "scrape-me"}
    with TestClient(create_app(make_settings(server=server), models=models)) as c:
        scrape = {"Authorization": "Bearer scrape-me"}
        r = c.get("/metrics", headers=scrape)
        assert r.status_code == 200 and "text/plain" in r.headers["content-type"]
        assert c.get("/metrics", headers={"Authorization": "Bearer key-one"}).status_code == 200
        assert c.get("/metrics").status_code == 401
        wrong = c.get("/metrics", headers={"Authorization": "Bearer scrape-me-not"})
        assert wrong.status_code == 401
        assert c.get("/v1/models", headers=scrape).status_code == 401
        body = {"question": "What is 2 + 2?"}
        assert c.post("/v1/reason", json=body, headers=scrape).status_code == 401


def test_metrics_token_alone_protects_only_metrics(models: ModelSet) -> None:
    with TestClient(
        create_app(make_settings(server={"metrics_token": "scrape-me"}), models=models)
    ) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
        assert c.get("/v1/models").status_code == 200  # no API keys: the API stays open


def test_metrics_open_without_keys_or_token(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 200


def test_metrics_token_is_a_secret_and_env_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROREASON_SERVER__METRICS_TOKEN", "from-env")
    settings = make_settings()
    assert settings.server.metrics_token is not None
    assert settings.server.metrics_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    monkeypatch.setenv("PROREASON_SERVER__METRICS_TOKEN", "")
    assert make_settings().server.metrics_token is None


# --------------------------------------------------------------------------- request ids and logs


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    r = client.get("/health", headers={"X-Request-Id": "trace-abc.123:x"})
    assert r.headers["x-request-id"] == "trace-abc.123:x"
    for bad in ("has spaces", "x" * 129, "<script>", ""):
        r = client.get("/health", headers={"X-Request-Id": bad})
        generated = r.headers["x-request-id"]
        assert generated != bad and len(generated) == 32
    r = client.post("/v1/reason", json={}, headers={"X-Request-Id": "req-42"})
    assert r.json()["error"]["request_id"] == "req-42"


def test_one_json_log_line_per_request(
    client: TestClient, data_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="proreason.access"):
        r = client.post(
            "/v1/reason",
            json={"question": "Where?", "images": [data_url]},
            headers={"X-Request-Id": "log-me"},
        )
    assert r.status_code == 200
    lines = [rec for rec in caplog.records if rec.name == "proreason.access"]
    assert len(lines) == 1
    entry = json.loads(JsonFormatter().format(lines[0]))
    assert entry["msg"] == "request"
    assert entry["request_id"] == "log-me"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/v1/reason", 200)
    assert entry["stop_reason"] == "solved"
    assert entry["latency_ms"] >= 0


# --------------------------------------------------------------------------- metrics and probes


def test_metrics_count_requests_model_calls_rounds_and_stop_reasons(
    client: TestClient, data_url: str
) -> None:
    client.post("/v1/reason", json={"question": "Where?", "images": [data_url]})
    client.post("/v1/reason", json={"question": "  "})
    text = client.get("/metrics").text
    expected = [
        'proreason_http_requests_total{endpoint="/v1/reason",method="POST",status="200"} 1.0',
        'proreason_http_requests_total{endpoint="/v1/reason",method="POST",status="400"} 1.0',
        'proreason_http_request_duration_seconds_count{endpoint="/v1/reason"} 2.0',
        'proreason_model_calls_total{backend="scripted",outcome="ok",role="vision"} 1.0',
        'proreason_model_calls_total{backend="scripted",outcome="ok",role="dispatcher"} 1.0',
        'proreason_model_call_duration_seconds_count{backend="scripted",role="referee"} 1.0',
        'proreason_model_tokens_total{backend="scripted",kind="image",role="vision"} 7.0',
        "proreason_rounds_count 1.0",
        'proreason_stop_reasons_total{stop_reason="solved"} 1.0',
        'proreason_questions_total{method="proreason",mode="assisted",outcome="ok"} 1.0',
        "proreason_questions_in_flight 0.0",
        "proreason_http_requests_in_flight 1.0",  # the /metrics request itself
        "proreason_rejected_total 0.0",
    ]
    for line in expected:
        assert line in text, line


def test_each_app_has_its_own_registry(models: ModelSet) -> None:
    a, b = create_app(make_settings(), models=models), create_app(make_settings(), models=models)
    with TestClient(a) as ca, TestClient(b) as cb:
        ca.get("/health")
        assert 'endpoint="/health"' in ca.get("/metrics").text
        assert 'endpoint="/health"' not in cb.get("/metrics").text


def test_ready_reports_unhealthy_backends(client: TestClient, vision: FakeModel) -> None:
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "backends": {"vision": True, "text": True}, "failed": []}
    vision.healthy = False
    r = client.get("/ready")
    assert r.status_code == 503
    assert r.json()["failed"] == ["vision"]
    assert client.get("/health").status_code == 200  # liveness does not depend on the models


def test_before_start_up_probes_say_not_ready(app: FastAPI) -> None:
    c = TestClient(app)  # not entered: the lifespan has not run, no service yet
    assert c.get("/health").status_code == 200
    r = c.get("/ready")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_unavailable"
    assert c.post("/v1/reason", json={"question": "x"}).status_code == 503


def test_openapi_documents_routes_schemas_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/reason", "/v1/reason/upload", "/v1/chat/completions", "/v1/models"):
        assert path in paths
    reason = paths["/v1/reason"]["post"]
    assert {"400", "413", "429", "504"} <= set(reason["responses"])
    assert "text/event-stream" in reason["responses"]["200"]["content"]
    upload = paths["/v1/reason/upload"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    schemas = spec["components"]["schemas"]
    assert {"ReasonRequest", "ReasonResponse", "ChatCompletionRequest", "ErrorResponse"} <= set(
        schemas
    )
    assert schemas["ReasonRequest"].get("examples")
    assert client.get("/docs").status_code == 200


def _sse_events(text: str) -> list[dict[str, str]]:
    """The events of an SSE body as the objects SSE tools read (``event`` only when named)."""
    events = []
    for event, data in parse_sse(text):
        events.append({"data": data} if event is None else {"event": event, "data": data})
    return events


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "proreason", "messages": [{"role": "user", "content": "2+2?"}]},
        ),
        ("/v1/reason", {"question": "What is 2 + 2?"}),
    ],
)
def test_openapi_describes_each_streamed_event(client: TestClient, path: str, body: dict) -> None:
    """Before OpenAPI 3.2 the ``schema`` of ``text/event-stream`` is read as ONE event (an object
    with ``data`` and maybe ``event``), as schemathesis does: real events validate against it."""
    from jsonschema import Draft202012Validator

    spec = client.get("/openapi.json").json()
    content = spec["paths"][path]["post"]["responses"]["200"]["content"]
    validator = Draft202012Validator(content["text/event-stream"]["schema"])
    r = client.post(path, json={**body, "stream": True})
    events = _sse_events(r.text)
    assert len(events) >= 3
    for event in events:
        assert not list(validator.iter_errors(event)), event
    assert list(validator.iter_errors("data: [DONE]"))  # the whole stream is not one event


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]


def test_openapi_has_no_422_validation_errors_are_400(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    posts = [(p, op) for p, m, op in _operations(spec) if m == "post"]
    assert len(posts) >= 3
    for path, op in posts:
        assert "422" not in op["responses"], path
        assert "400" in op["responses"], path
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    r = client.post("/v1/chat/completions", json={"model": "proreason"})
    assert r.status_code == 400  # what the spec says


def test_openapi_declares_security_only_with_api_keys(client: TestClient, models: ModelSet) -> None:
    open_spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert not any("security" in op for _, _, op in _operations(open_spec))
    assert not any("401" in op["responses"] for _, _, op in _operations(open_spec))
    app = create_app(make_settings(server={"api_keys": "k"}), models=models)
    with TestClient(app) as keyed:
        spec = keyed.get("/openapi.json").json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    secured = {p for p, _, op in _operations(spec) if op.get("security")}
    assert {"/v1/chat/completions", "/v1/reason", "/v1/models", "/metrics"} <= secured
    assert not {"/health", "/ready"} & secured
    assert "401" in spec["paths"]["/v1/chat/completions"]["post"]["responses"]


# --------------------------------------------------------------------------- body limits


def test_declared_and_streamed_oversize_bodies_are_413(models: ModelSet) -> None:
    app = create_app(make_settings(server={"max_body_bytes": 4096}), models=models)
    with TestClient(app) as c:
        r = c.post("/v1/reason", json={"question": "x" * 5000})
        assert r.status_code == 413
        assert "at most 4096" in r.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to check
            yield b'{"question": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        r = c.post("/v1/reason", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"


# --------------------------------------------------------------------------- async helpers


@dataclass
class Gated:
    asgi: Any  # the app with its lifespan running
    app: FastAPI
    gate: asyncio.Event


@pytest.fixture
async def gated(vision: FakeModel, text: FakeModel) -> AsyncIterator[Gated]:
    """An app whose model calls all wait for a gate (opened at teardown)."""
    gate = asyncio.Event()
    vision.gate = text.gate = gate
    settings = make_settings(server={"max_in_flight": 2})
    app = create_app(settings, models=ModelSet(vision=vision, text=text))
    async with LifespanManager(app) as manager:
        yield Gated(manager.app, app, gate)
        gate.set()


def http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - polling a test double's plain attributes
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


# --------------------------------------------------------------------------- backpressure


async def test_overload_is_429_with_retry_after(gated: Gated, text: FakeModel) -> None:
    async with http(gated.asgi) as client:
        body = {"question": "What is 2 + 2?"}
        held = [asyncio.create_task(client.post("/v1/reason", json=body)) for _ in range(2)]
        await wait_for(lambda: len(text.calls) == 2)
        r = await client.post("/v1/reason", json=body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        chat = {"model": "proreason", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 429
        assert len(text.calls) == 2  # rejected requests never reached a model
        gated.gate.set()
        assert [(await t).status_code for t in held] == [200, 200]
        assert (await client.post("/v1/reason", json=body)).status_code == 200  # slots freed
        metrics = (await client.get("/metrics")).text
        assert "proreason_rejected_total 2.0" in metrics
        assert "proreason_questions_in_flight 0.0" in metrics


# --------------------------------------------------------------------------- deadlines


async def test_deadline_is_504_with_the_steps_done_so_far(
    gated: Gated, vision: FakeModel, text: FakeModel
) -> None:
    text.gate = None  # the dispatcher answers, the vision expert hangs
    async with http(gated.asgi) as client:
        r = await client.post(
            "/v1/reason",
            json={"question": "Where?", "images": [png()], "timeout_s": 0.3},
        )
    assert r.status_code == 504
    error = r.json()["error"]
    assert error["code"] == "deadline_exceeded"
    assert [s["role"] for s in error["steps"]] == ["dispatcher"]
    assert error["steps"][0]["decision"]["expert"] == "vision"
    await wait_for(lambda: bool(vision.cancelled))  # the hanging model call was cancelled


async def test_streamed_deadline_is_an_error_event_after_the_steps(
    gated: Gated, vision: FakeModel, text: FakeModel
) -> None:
    text.gate = None
    async with http(gated.asgi) as client:
        r = await client.post(
            "/v1/reason",
            json={"question": "Where?", "images": [png()], "timeout_s": 0.3, "stream": True},
        )
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert [e for e, _ in events] == ["dispatch", "error", "done"]
    error = json.loads(events[1][1])["error"]
    assert error["code"] == "deadline_exceeded" and len(error["steps"]) == 1
    await wait_for(lambda: bool(vision.cancelled))


# --------------------------------------------------------------------------- disconnects


def png() -> str:
    from tests.app.conftest import png_data_url

    return png_data_url(8, 8)


async def call_and_disconnect(
    app: Any, path: str, body: dict[str, Any], disconnect: asyncio.Event
) -> list[dict[str, Any]]:
    """Drive the ASGI app directly: send the body, then report http.disconnect on ``disconnect``."""
    raw = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"app"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("app", 80),
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/reason", {"question": "Where?"}),
        ("/v1/reason", {"question": "Where?", "stream": True}),
        (
            "/v1/chat/completions",
            {"model": "proreason", "messages": [{"role": "user", "content": "hi"}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "proreason", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ),
    ],
    ids=["reason", "reason-stream", "chat", "chat-stream"],
)
async def test_client_disconnect_cancels_the_model_call(
    gated: Gated, text: FakeModel, path: str, body: dict[str, Any]
) -> None:
    disconnect = asyncio.Event()
    call = asyncio.create_task(call_and_disconnect(gated.asgi, path, body, disconnect))
    await wait_for(lambda: len(text.calls) == 1)  # the model call is in flight (gated)
    disconnect.set()
    await call
    assert text.calls[0].cancelled and not text.calls[0].done
    runner = gated.app.state.runner
    assert runner.admission.in_flight == 0  # the slot was released


# --------------------------------------------------------------------------- keep-alive


async def test_idle_streams_get_keep_alive_comments(gated: Gated, text: FakeModel) -> None:
    gated.app.state.runner.heartbeat_s = 0.05
    text.gate = None
    text.delay_s["answer"] = 0.3
    async with http(gated.asgi) as client:
        r = await client.post("/v1/reason", json={"question": "What is 2 + 2?", "stream": True})
        chat = {"model": "proreason", "messages": [{"role": "user", "content": "hi"}]}
        rc = await client.post("/v1/chat/completions", json={**chat, "stream": True})
    assert r.text.count(": keep-alive\n\n") >= 2
    assert [e for e, _ in parse_sse(r.text)] == ["answer", "result", "done"]
    assert rc.text.count(": keep-alive\n\n") >= 2
    assert parse_sse(rc.text)[-1] == (None, "[DONE]")
