"""The service on real backends built by its own lifespan: two loopback OpenAI-compatible upstreams
(tests/fakes/openai_server.py, backend "openai") and the tiny offline transformers models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import LiveServer, make_settings
from tests.fakes.openai_server import Failure, FakeOpenAIServer
from tests.fakes.roles import RoleResponder

CONTEXT_ERROR = "This model's maximum context length is 4096 tokens. However, you requested 9000"


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    vlm = FakeOpenAIServer(model="fake-vlm", responder=RoleResponder(), report_prompt_details=True)
    llm = FakeOpenAIServer(model="fake-llm", responder=RoleResponder())
    with vlm, llm:
        yield vlm, llm


def openai_settings(vlm: FakeOpenAIServer, llm: FakeOpenAIServer, **server: Any) -> Settings:
    def backend(s: FakeOpenAIServer) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": s.model,
            "base_url": s.base_url,
            "max_retries": 0,
            "read_timeout_s": 30,
        }

    return make_settings(
        models={"vision": backend(vlm), "text": backend(llm)},
        agent={"structured_decisions": True},
        server=server,
    )


@pytest.fixture
def client(upstreams: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> Iterator[TestClient]:
    app = create_app(openai_settings(*upstreams))  # the lifespan builds the HTTP backends
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_reason_over_openai_compatible_upstreams(
    client: TestClient, upstreams: tuple[FakeOpenAIServer, FakeOpenAIServer], data_url: str
) -> None:
    vlm, llm = upstreams
    r = client.post("/v1/reason", json={"question": "Where?", "images": [data_url], "trace": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stop_reason"] == "solved"
    assert body["answer"] == "the red square is left of the blue circle"
    assert [s["backend"] for s in body["trace"]] == ["openai"] * 4
    assert vlm.responder.roles == ["vision"]
    assert llm.responder.roles == ["dispatcher", "referee", "summarizer"]
    # the image went upstream as a data URL, only to the LVLM
    parts = vlm.chat_requests[0].body["messages"][-1]["content"]
    assert any(
        p["type"] == "image_url" and p["image_url"]["url"].startswith("data:") for p in parts
    )
    assert body["usage_by_role"]["vision"]["image_tokens"] == 64


def test_chat_stream_over_upstreams(
    client: TestClient, upstreams: tuple[FakeOpenAIServer, FakeOpenAIServer], data_url: str
) -> None:
    oai = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    chunks = list(
        oai.chat.completions.create(
            model="proreason",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": "Where?"},
                    ],
                }
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == "the red square is left of the blue circle" and len(pieces) > 3
    assert chunks[-1].usage.prompt_tokens_details.image_tokens == 64
    # the summarizer's reply came as an upstream stream; the other calls did not
    vlm, llm = upstreams
    streamed = [r.body.get("stream", False) for r in vlm.chat_requests + llm.chat_requests]
    assert streamed.count(True) == 1
    assert llm.chat_requests[-1].body["stream"] is True


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (Failure.vllm_error(400, CONTEXT_ERROR), 400, "context_length_exceeded"),
        (Failure.vllm_error(400, "unsupported parameter"), 502, "model_rejected"),
        (Failure.status(503), 503, "model_unavailable"),
    ],
    ids=["context-too-long", "rejected", "unavailable"],
)
def test_upstream_failures_map_to_status(
    client: TestClient,
    upstreams: tuple[FakeOpenAIServer, FakeOpenAIServer],
    data_url: str,
    failure: Failure,
    status: int,
    code: str,
) -> None:
    upstreams[1].responder.fail["summarizer"] = failure
    r = client.post("/v1/reason", json={"question": "Where?", "images": [data_url]})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_ready_follows_upstream_health(
    client: TestClient, upstreams: tuple[FakeOpenAIServer, FakeOpenAIServer]
) -> None:
    assert client.get("/ready").status_code == 200
    upstreams[1].healthy = False
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["failed"] == ["text"]


def test_disconnect_and_deadline_cancel_the_upstream_call(
    upstreams: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    vlm, llm = upstreams
    llm.delay_s = 30  # every text-model call hangs
    app = create_app(openai_settings(vlm, llm))
    with LiveServer(app) as live:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{live.url}/v1/reason",
                json={"question": "What is 2 + 2?"},
                timeout=httpx.Timeout(5, read=0.5),
            )
        assert llm.wait_for(lambda: llm.disconnects == 1), "the upstream call was not cancelled"
        r = httpx.post(
            f"{live.url}/v1/reason", json={"question": "What is 2 + 2?", "timeout_s": 0.5}
        )
        assert r.status_code == 504
        assert llm.wait_for(lambda: llm.disconnects == 2), "the deadline did not cancel upstream"


# --------------------------------------------------------------------------- tiny models


@pytest.fixture
def tiny_client(tiny_models: dict[str, Path]) -> Iterator[TestClient]:
    def backend(kind: str) -> dict[str, Any]:
        return {
            "backend": "transformers",
            "model": str(tiny_models[kind]),
            "device": "cpu",
            "dtype": "float32",
            "allow_download": False,
        }

    settings = make_settings(
        models={"vision": backend("vision"), "text": backend("text")},
        agent={"max_rounds": 2, "max_tokens": 8, "structured_decisions": False},
    )
    with TestClient(create_app(settings)) as c:  # the lifespan loads the weights
        yield c


def test_tiny_transformers_models_end_to_end(tiny_client: TestClient, data_url: str) -> None:
    r = tiny_client.post(
        "/v1/reason", json={"question": "Where is the square?", "images": [data_url], "trace": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # random weights: assert on structure, never on text
    assert body["stop_reason"] in ("solved", "max_rounds_fallback")
    assert {s["backend"] for s in body["trace"]} == {"transformers"}
    assert body["usage"]["completion_tokens"] > 0
    vision_steps = [s for s in body["trace"] if s["role"] in ("vision", "fallback")]
    assert vision_steps and all(s["usage"]["prompt_tokens"] > 0 for s in vision_steps)
    oai = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tiny_client)
    resp = oai.chat.completions.create(
        model="proreason-direct",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": "What shape?"},
                ],
            }
        ],
        max_tokens=4,
    )
    assert resp.usage.completion_tokens <= 4
    assert tiny_client.get("/ready").json()["status"] == "ready"
