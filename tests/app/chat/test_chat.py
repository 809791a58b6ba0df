"""``/v1/chat/completions`` and ``/v1/models`` in-process, driven by the official openai client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import AsyncOpenAI, OpenAI

from tests.app.conftest import parse_sse
from tests.fakes.models import FakeModel

ANSWER = "the red square is left of the blue circle"


@pytest.fixture
def oai(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


def user_turn(text: str, *urls: str) -> dict:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def test_models_lists_the_pipelines(oai: OpenAI) -> None:
    ids = [m.id for m in oai.models.list().data]
    assert ids[0] == "proreason"
    for name in (
        "proreason-pure",
        "proreason-parallel",
        "proreason-direct",
        "proreason-cot",
        "proreason-ccot",
        "proreason-caption",
    ):
        assert name in ids


def test_chat_completion_with_usage(oai: OpenAI, data_url: str, vision: FakeModel) -> None:
    resp = oai.chat.completions.create(
        model="proreason",
        messages=[user_turn("Where is the red square?", data_url)],
        max_tokens=40,
        temperature=0.2,
    )
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    usage = resp.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.image_tokens == 7
    assert usage.prompt_tokens_details.text_tokens == usage.prompt_tokens - 7
    assert {c.request.sampling.max_tokens for c in vision.calls} == {40}
    assert {c.request.sampling.temperature for c in vision.calls} == {0.2}
    assert getattr(resp, "proreason", None) is None  # the trace only when asked for


def test_max_completion_tokens_wins(oai: OpenAI, data_url: str, vision: FakeModel) -> None:
    oai.chat.completions.create(
        model="proreason-direct",
        messages=[user_turn("What?", data_url)],
        max_tokens=99,
        max_completion_tokens=21,
    )
    assert vision.calls[0].request.sampling.max_tokens == 21


def test_trace_extension(oai: OpenAI, data_url: str) -> None:
    resp = oai.chat.completions.create(
        model="proreason",
        messages=[user_turn("Where?", data_url)],
        extra_body={"proreason": {"trace": True}},
    )
    info = resp.model_extra["proreason"]
    assert info["stop_reason"] == "solved" and info["rounds"] == 1
    assert [s["role"] for s in info["steps"]] == ["dispatcher", "vision", "referee", "summarizer"]


@pytest.mark.parametrize(
    ("model", "method", "mode"),
    [
        ("proreason-pure", "proreason", "pure"),
        ("proreason-assisted", "proreason", "assisted"),
        ("direct", "direct", "assisted"),
        ("proreason-cot", "cot", "assisted"),
        ("proreason-caption", "caption", "assisted"),
        ("proreason-ccot", "ccot", "assisted"),
    ],
)
def test_model_selects_the_pipeline(
    oai: OpenAI, data_url: str, model: str, method: str, mode: str
) -> None:
    resp = oai.chat.completions.create(
        model=model,
        messages=[user_turn("What?", data_url)],
        extra_body={"proreason": {"trace": True}},
    )
    info = resp.model_extra["proreason"]
    assert (info["method"], info["mode"]) == (method, mode)
    assert resp.model == (model if model.startswith("proreason") else f"proreason-{model}")


def test_parallel_pipeline_sets_parallel_perception(
    oai: OpenAI, data_url: str, text: FakeModel, vision: FakeModel
) -> None:
    text.script["dispatcher"] = '{"expert": "vision", "questions": ["Colour?", "Shape?"]}'
    resp = oai.chat.completions.create(
        model="proreason-parallel",
        messages=[user_turn("What?", data_url)],
        extra_body={"proreason": {"trace": True}},
    )
    steps = resp.model_extra["proreason"]["steps"]
    assert [s["parallel"] for s in steps if s["role"] == "vision"] == [True, True]
    assert len(vision.calls) == 2


def test_history_and_system_messages_reach_the_question(
    oai: OpenAI, data_url: str, text: FakeModel
) -> None:
    resp = oai.chat.completions.create(
        model="proreason",
        messages=[
            {"role": "system", "content": "Be brief."},
            user_turn("What shapes are there?", data_url),
            {"role": "assistant", "content": "A square and a circle."},
            user_turn("And which one is PURPLE-ZEBRA?", data_url),
        ],
    )
    assert resp.choices[0].message.content == ANSWER
    dispatch = next(c for c in text.calls if c.role == "dispatcher")
    seen = "\n".join(m.text_content for m in dispatch.request.messages)
    assert "PURPLE-ZEBRA" in seen
    assert "A square and a circle." in seen  # the earlier turn is part of the question's context


def test_stream_chunks_reasoning_usage_and_done(oai: OpenAI, data_url: str) -> None:
    stream = oai.chat.completions.create(
        model="proreason",
        messages=[user_turn("Where?", data_url)],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = [
        c.choices[0].delta.model_extra.get("reasoning")
        for c in chunks
        if c.choices and c.choices[0].delta.model_extra.get("reasoning")
    ]
    assert len(reasoning) == 4 and reasoning[0].startswith("[round 1] dispatcher -> vision")
    assert reasoning[-1] == "[round 1] summarizer: writing the answer\n"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices]
    pieces = [x for x in content if x]
    assert "".join(pieces) == ANSWER and len(pieces) > 3  # streamed as the summarizer writes
    # every answer piece after every reasoning line
    kinds = [
        "r" if c.choices[0].delta.model_extra.get("reasoning") else "c"
        for c in chunks[1:]
        if c.choices and (c.choices[0].delta.content or c.choices[0].delta.model_extra)
    ]
    assert kinds == ["r"] * 4 + ["c"] * len(pieces)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


def test_stream_raw_wire_format(client: TestClient, data_url: str) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "proreason",
            "messages": [user_turn("Where?", data_url)],
            "stream": True,
            "proreason": {"step_field": "reasoning_content"},
        },
    )
    events = parse_sse(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert not any("usage" in c for c in chunks)  # only with include_usage
    assert sum("reasoning_content" in c["choices"][0]["delta"] for c in chunks) == 4
    assert not any("reasoning" in c["choices"][0]["delta"] for c in chunks)


def test_stream_without_steps(client: TestClient, data_url: str) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "proreason",
            "messages": [user_turn("Where?", data_url)],
            "stream": True,
            "proreason": {"step_field": "none", "trace": True},
        },
    )
    chunks = [json.loads(d) for _, d in parse_sse(r.text)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    pieces = [d for d in deltas[1:] if d]
    assert all(set(d) == {"content"} for d in pieces) and len(pieces) > 3
    assert "".join(d["content"] for d in pieces) == ANSWER
    assert len(chunks[-1]["proreason"]["steps"]) == 4  # the trace rides on the last chunk


def test_plain_string_content_and_text_only(oai: OpenAI) -> None:
    resp = oai.chat.completions.create(
        model="proreason", messages=[{"role": "user", "content": "What is 2 + 2?"}]
    )
    assert resp.choices[0].message.content == "a red square and a blue circle"


def test_unknown_model_is_model_not_found(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"
    assert "proreason-pure" in info.value.message


async def test_async_client_over_asgi_transport(app: FastAPI, data_url: str) -> None:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            oai = AsyncOpenAI(base_url="http://app/v1", api_key="x", http_client=http)
            resp = await oai.chat.completions.create(
                model="proreason", messages=[user_turn("Where?", data_url)]
            )
            assert resp.choices[0].message.content == ANSWER
            stream = await oai.chat.completions.create(
                model="proreason-direct",
                messages=[user_turn("Where?", data_url)],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
                "a red square and a blue circle"
            )
            assert chunks[-1].usage is not None
