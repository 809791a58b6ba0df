"""Real chat responses against OpenAI's published OpenAPI schemas (tests/app/openai_schema.py):
every non-streamed completion, every streamed chunk, every error body the chat route sends, and
/v1/models."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agents.types import ModelSet
from app.main import create_app
from models.errors import ModelRejected, ModelTimeout, ModelUnavailable
from tests.app.conftest import make_settings, parse_sse
from tests.app.openai_schema import CHUNK, COMPLETION, ERROR, MODEL, MODELS, assert_valid, errors
from tests.fakes.models import FakeModel

TEXT_ONLY = {"role": "user", "content": "What is 2 + 2?"}


def image_turn(url: str, text: str = "Where is the square?") -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def _chat(client: TestClient, **body: Any):
    return client.post("/v1/chat/completions", json={"model": "proreason", **body})


# --------------------------------------------------------------------------- the validator


def test_the_validator_rejects_what_the_spec_forbids(client: TestClient, data_url: str) -> None:
    """Guards the guard: a real body passes, and each single breach of the spec is caught (so
    the nullable rewrite and the $ref resolution do not wave everything through)."""
    good = _chat(client, messages=[image_turn(data_url)]).json()
    assert errors(COMPLETION, good) == []
    breaches: list[tuple[str, Any]] = [
        ("choices.0.logprobs", ...),  # required (null is fine, absent is not)
        ("choices.0.finish_reason", "solved"),
        ("choices.0.finish_reason", None),  # nullable only in a chunk
        ("choices.0.message.refusal", ...),
        ("object", "chat.completion.chunk"),
        ("usage.prompt_tokens_details.cached_tokens", None),
        ("created", "1700000000"),
    ]
    for path, value in breaches:
        body = copy.deepcopy(good)
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
        assert errors(COMPLETION, body), f"{path}={value!r} passed"
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    null_finish = [{"index": 0, "delta": {}, "finish_reason": None, "logprobs": None}]
    assert errors(CHUNK, {**chunk, "choices": null_finish}) == []  # nullable in a chunk
    assert errors(CHUNK, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "x"}]})
    assert errors(CHUNK, {**chunk, "choices": [{"index": 0, "delta": {}}]})  # finish_reason
    assert errors(CHUNK, {**chunk, "choices": [], "usage": {"prompt_tokens": 1}})
    error = {"message": "m", "type": "t", "param": None, "code": None}
    assert errors(ERROR, {"error": error}) == []
    assert errors(ERROR, {"error": {k: v for k, v in error.items() if k != "param"}})


# --------------------------------------------------------------------------- completions


REQUESTS: dict[str, dict[str, Any]] = {
    "text only": {},
    "image": {"image": True},
    "trace": {"image": True, "proreason": {"trace": True}},
    "baseline": {"image": True, "model": "proreason-direct"},
    "stop": {"image": True, "stop": ["blue"]},
    "sampling": {"image": True, "temperature": 0.5, "top_p": 0.9, "seed": 3, "max_tokens": 64},
    "multiple choice": {
        "image": True,
        "proreason": {"answer_format": "multiple_choice", "options": ["left", "right"]},
    },
    "conversation": {"image": True, "history": True},
}


def _body(data_url: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    question = image_turn(data_url) if spec.pop("image", False) else TEXT_ONLY
    messages = [question]
    if spec.pop("history", False):
        messages = [
            {"role": "system", "content": "Be brief."},
            question,
            {"role": "assistant", "content": "Left of the circle."},
            {"role": "user", "content": "And what colour is it?"},
        ]
    return {"model": "proreason", "messages": messages, **spec}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_completions_match_the_published_schema(
    client: TestClient, data_url: str, name: str
) -> None:
    r = client.post("/v1/chat/completions", json=_body(data_url, REQUESTS[name]))
    assert r.status_code == 200, r.text
    assert_valid(COMPLETION, r.json())


@pytest.mark.parametrize("name", list(REQUESTS))
@pytest.mark.parametrize("step_field", ["reasoning", "reasoning_content", "none"])
def test_every_stream_chunk_matches_the_published_schema(
    client: TestClient, data_url: str, name: str, step_field: str
) -> None:
    body = _body(data_url, REQUESTS[name])
    body["proreason"] = {**body.get("proreason", {}), "step_field": step_field}
    body.update(stream=True, stream_options={"include_usage": True})
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) >= 4  # role, answer, finish, usage
    for chunk in chunks:
        assert_valid(CHUNK, chunk)


def test_cut_answers_and_unknown_image_tokens_match_the_schema(
    client: TestClient, data_url: str, vision: FakeModel, text: FakeModel
) -> None:
    """finish_reason "length", and usage without image_tokens (the backend cannot tell)."""
    text.finish["summarizer"] = "length"
    vision.image_tokens = text.image_tokens = None
    body = _chat(client, messages=[image_turn(data_url)]).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert_valid(COMPLETION, body)
    r = _chat(client, messages=[image_turn(data_url)], stream=True)
    for _, data in parse_sse(r.text)[:-1]:
        assert_valid(CHUNK, json.loads(data))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"messages": [TEXT_ONLY], "max_tokens": "5"}),
        (400, {"messages": []}),
        (400, {"messages": [TEXT_ONLY], "n": 2}),
        (400, {"messages": [TEXT_ONLY], "proreason": {"nope": 1}}),
        (404, {"messages": [TEXT_ONLY], "model": "nope"}),
    ],
)
def test_request_errors_match_the_published_error_schema(
    client: TestClient, status: int, body: dict
) -> None:
    r = _chat(client, **body)
    assert r.status_code == status
    assert_valid(ERROR, r.json())


def test_malformed_json_and_other_routes_errors_match_the_schema(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert_valid(ERROR, r.json())
    for r in (client.get("/v1/chat/completions"), client.get("/v1/nothing-here")):
        assert r.status_code in (404, 405)
        assert_valid(ERROR, r.json())


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ModelUnavailable("upstream down"), 503),
        (ModelTimeout("upstream slow"), 504),
        (ModelRejected("bad request", status_code=400), 502),
        (RuntimeError("a bug"), 500),
    ],
)
def test_model_errors_match_the_schema_before_and_inside_a_stream(
    client: TestClient, data_url: str, text: FakeModel, exc: Exception, status: int
) -> None:
    text.raise_on["summarizer"] = exc
    r = _chat(client, messages=[image_turn(data_url)])
    assert r.status_code == status
    assert_valid(ERROR, r.json())
    r = _chat(client, messages=[image_turn(data_url)], stream=True)
    events = [json.loads(d) for _, d in parse_sse(r.text)[:-1]]
    assert "error" in events[-1]
    assert_valid(ERROR, events[-1])
    for chunk in events[:-1]:
        assert_valid(CHUNK, chunk)


def test_auth_and_deadline_errors_match_the_schema(data_url: str) -> None:
    vision, text = FakeModel(name="v"), FakeModel(name="t", delay_s={"referee": 5})
    settings = make_settings(server={"api_keys": "k"})
    with TestClient(create_app(settings, models=ModelSet(vision=vision, text=text))) as client:
        r = _chat(client, messages=[TEXT_ONLY])
        assert r.status_code == 401
        assert_valid(ERROR, r.json())
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "proreason",
                "messages": [image_turn(data_url)],
                "proreason": {"timeout_s": 0.3},
            },
            headers={"Authorization": "Bearer k"},
        )
        assert r.status_code == 504
        assert r.json()["error"]["steps"]  # our extra member is allowed by the schema
        assert_valid(ERROR, r.json())


def test_models_match_the_published_schema(client: TestClient) -> None:
    assert_valid(MODELS, client.get("/v1/models").json())
    assert_valid(MODEL, client.get("/v1/models/proreason").json())
    r = client.get("/v1/models/nope")
    assert r.status_code == 404
    assert_valid(ERROR, r.json())
