"""The service over a real loopback socket (uvicorn in a thread), driven by the official openai
client (sync, async, streaming) and by plain httpx (/v1/reason JSON, multipart and SSE)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from agents.types import ModelSet
from app.main import create_app
from tests.app.conftest import LiveServer, make_settings, parse_sse, wait_until
from tests.fakes.models import FakeModel

ANSWER = "the red square is left of the blue circle"


@pytest.fixture
def live(vision: FakeModel, text: FakeModel) -> Iterator[LiveServer]:
    settings = make_settings(server={"api_keys": "live-key"})
    app = create_app(settings, models=ModelSet(vision=vision, text=text))
    with LiveServer(app) as server:
        yield server


def image_turn(text: str, url: str) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def test_openai_sync_client(live: LiveServer, data_url: str) -> None:
    oai = OpenAI(base_url=f"{live.url}/v1", api_key="live-key", max_retries=0)
    assert "proreason-pure" in [m.id for m in oai.models.list().data]
    resp = oai.chat.completions.create(model="proreason", messages=[image_turn("Where?", data_url)])
    assert resp.choices[0].message.content == ANSWER
    assert resp.usage is not None and resp.usage.prompt_tokens_details.image_tokens == 7
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_openai_sync_streaming_with_usage(live: LiveServer, data_url: str) -> None:
    oai = OpenAI(base_url=f"{live.url}/v1", api_key="live-key", max_retries=0)
    with oai.chat.completions.create(
        model="proreason",
        messages=[image_turn("Where?", data_url)],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    steps = [c.choices[0].delta.model_extra.get("reasoning") for c in chunks if c.choices]
    assert sum(1 for s in steps if s) == 4
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


async def test_openai_async_client(live: LiveServer, data_url: str) -> None:
    oai = AsyncOpenAI(base_url=f"{live.url}/v1", api_key="live-key", max_retries=0)
    try:
        resp = await oai.chat.completions.create(
            model="proreason-pure", messages=[image_turn("Where?", data_url)]
        )
        assert resp.choices[0].message.content == ANSWER
        stream = await oai.chat.completions.create(
            model="proreason-direct", messages=[image_turn("Where?", data_url)], stream=True
        )
        content = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(x or "" for x in content) == "a red square and a blue circle"
    finally:
        await oai.close()


def test_reason_sse_arrives_event_by_event(
    live: LiveServer, data_url: str, text: FakeModel
) -> None:
    text.delay_s["referee"] = 0.3  # the dispatch and vision events arrive before the verdict
    headers = {"Authorization": "Bearer live-key"}
    body = {"question": "Where?", "images": [data_url], "stream": True}
    kinds = []
    with httpx.stream("POST", f"{live.url}/v1/reason", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                kinds.append(line[6:].strip())
                if kinds == ["dispatch", "vision"]:
                    assert not any(c.role == "referee" and c.done for c in text.calls)
    assert kinds == ["dispatch", "vision", "verdict", "answer", "result", "done"]


def test_reason_json_and_multipart(live: LiveServer, data_url: str, png_bytes: bytes) -> None:
    headers = {"Authorization": "Bearer live-key", "X-Request-Id": "live-1"}
    r = httpx.post(
        f"{live.url}/v1/reason",
        json={"question": "Where?", "images": [data_url], "trace": True},
        headers=headers,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "live-1"
    assert len(r.json()["trace"]) == 4
    r = httpx.post(
        f"{live.url}/v1/reason/upload",
        data={"question": "Where?", "stream": "true"},
        files=[("files", ("shapes.png", png_bytes, "image/png"))],
        headers=headers,
    )
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert json.loads(dict(events)["result"])["stop_reason"] == "solved"


def test_client_disconnect_over_a_socket_cancels_the_model_call(
    live: LiveServer, text: FakeModel
) -> None:
    text.delay_s["answer"] = 30
    headers = {"Authorization": "Bearer live-key"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{live.url}/v1/reason",
            json={"question": "What is 2 + 2?"},
            headers=headers,
            timeout=httpx.Timeout(5, read=0.5),
        )
    assert wait_until(lambda: bool(text.cancelled), timeout=5)
    assert not text.calls[0].done


def test_stream_disconnect_over_a_socket_cancels_the_model_call(
    live: LiveServer, vision: FakeModel, data_url: str
) -> None:
    vision.delay_s["vision"] = 30
    oai = OpenAI(base_url=f"{live.url}/v1", api_key="live-key", max_retries=0)
    stream = oai.chat.completions.create(
        model="proreason", messages=[image_turn("Where?", data_url)], stream=True
    )
    first = next(iter(stream))  # the role chunk; the vision expert is now working
    assert first.choices[0].delta.role == "assistant"
    assert wait_until(lambda: any(c.role == "vision" for c in vision.calls))
    stream.close()
    assert wait_until(lambda: bool(vision.cancelled), timeout=5)


# --------------------------------------------------------------------------- the answer, streamed


@pytest.mark.parametrize(
    ("model", "reply", "answer"),
    [
        ("proreason", None, ANSWER),  # the summarizer answers
        ("proreason-direct", "A red square and a blue circle.", "A red square and a blue circle"),
        ("proreason-cot", "Step 1: two shapes.\nAnswer: a red square and a blue circle.",
         "a red square and a blue circle"),
    ],
)  # fmt: skip
def test_the_answer_streams_token_by_token_through_the_openai_client(
    live: LiveServer,
    data_url: str,
    vision: FakeModel,
    text: FakeModel,
    model: str,
    reply: str | None,
    answer: str,
) -> None:
    if reply is not None:
        vision.script["answer"] = reply
    for backend in (vision, text):
        backend.token_delay_s = 0.03
    oai = OpenAI(base_url=f"{live.url}/v1", api_key="live-key", max_retries=0)
    messages = [image_turn("Where?", data_url)]
    expected = oai.chat.completions.create(model=model, messages=messages)
    assert expected.choices[0].message.content == answer
    answering = text if model == "proreason" else vision
    answering.calls.clear()
    with oai.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    ) as stream:
        arrived = [
            (c, not any(call.done and call.streamed for call in answering.calls)) for c in stream
        ]
    chunks = [c for c, _ in arrived]
    kinds = []
    for chunk, generating in arrived[1:]:
        if not chunk.choices:
            kinds.append("usage")
            continue
        delta, finish = chunk.choices[0].delta, chunk.choices[0].finish_reason
        if delta.model_extra.get("reasoning"):
            kinds.append("reasoning")
        elif delta.content:
            kinds.append("content" if generating else "content after the call")
        elif finish:
            kinds.append("finish")
    reasoning = kinds.count("reasoning")
    pieces = kinds.count("content")
    assert reasoning >= 1 and kinds[:reasoning] == ["reasoning"] * reasoning
    # several pieces while the model was still generating, in order, then finish and usage
    assert pieces >= 3 and kinds[reasoning : reasoning + pieces] == ["content"] * pieces
    assert kinds[-2:] == ["finish", "usage"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == answer
    assert chunks[-2].choices[0].finish_reason == expected.choices[0].finish_reason == "stop"
    assert chunks[-1].usage.total_tokens == expected.usage.total_tokens


def test_a_disconnect_while_the_answer_streams_cancels_its_model_call(
    live: LiveServer, text: FakeModel, data_url: str
) -> None:
    text.token_delay_s = 0.5  # ~10 pieces: the summarizer is still writing when the client goes
    oai = OpenAI(base_url=f"{live.url}/v1", api_key="live-key", max_retries=0)
    stream = oai.chat.completions.create(
        model="proreason", messages=[image_turn("Where?", data_url)], stream=True
    )
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    assert first.choices[0].delta.content == "the red"
    stream.close()
    assert wait_until(lambda: bool(text.cancelled), timeout=5)
    (summarizer,) = text.of("summarizer")
    assert summarizer.cancelled and summarizer.streamed and not summarizer.done
    assert summarizer.pieces < 10
