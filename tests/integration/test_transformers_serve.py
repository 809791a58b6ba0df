"""What ``transformers serve`` (characterised on transformers 5.24.0) does, with the official
``openai`` client and raw httpx against the tiny models, and how OpenAIBackend copes with it.
docs/upstreams.md writes these findings down; a test here failing after a transformers upgrade
means the server changed: update the doc and the recommended BackendConfig with it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from models.config import BackendConfig
from models.errors import ModelRejected
from models.openai_backend import OpenAIBackend
from models.types import GenerationRequest, ImageInput, ImagePart, Message, SamplingParams, TextPart
from tests.integration.conftest import ModelSet, TServePool
from tests.integration.tserve import TransformersServe

pytestmark = pytest.mark.slow

#: image tokens the tiny LLaVA expands one <image> into ((32 / 8) ** 2)
TINY_IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def servers(tserve: TServePool, tiny_set: ModelSet) -> tuple[TransformersServe, TransformersServe]:
    vision, text = tserve(tiny_set.vision, tiny_set.text)
    return vision, text


@pytest.fixture(scope="module")
def vision(servers: tuple[TransformersServe, TransformersServe]) -> TransformersServe:
    return servers[0]


@pytest.fixture(scope="module")
def text(servers: tuple[TransformersServe, TransformersServe]) -> TransformersServe:
    return servers[1]


def oai(server: TransformersServe) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def image_url(fmt: str = "PNG", size: tuple[int, int] = (64, 64), mime: str | None = None) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format=fmt)
    mime = mime or f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def image_turn(url: str, question: str = "What shape?") -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def chat(server: TransformersServe, **body: object) -> httpx.Response:
    body = {"model": server.model, "max_tokens": 4, **body}
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)


# --------------------------------------------------------------------------- the server
def test_health_and_models_list_exactly_the_served_folder(text: TransformersServe) -> None:
    assert httpx.get(text.root_url + "/health").json() == {"status": "ok"}
    cards = oai(text).models.list().data
    assert [c.id for c in cards] == [text.model]
    assert "max_model_len" not in (cards[0].model_extra or {})  # no context length to learn


def test_text_chat_with_the_official_client(text: TransformersServe) -> None:
    resp = oai(text).chat.completions.create(
        model=text.model, messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert resp.model == text.model
    assert resp.choices[0].finish_reason in ("length", "stop")
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    assert 1 <= resp.usage.completion_tokens <= 5
    assert resp.usage.prompt_tokens_details is None  # no image / cached token counts


def test_the_model_must_be_the_folder_it_serves(text: TransformersServe) -> None:
    r = chat(text, model="some-other-name", messages=[{"role": "user", "content": "hi"}])
    assert r.status_code == 400 and "pinned" in r.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        image_url("PNG"),
        image_url("JPEG"),
        image_url("WEBP"),
        image_url("GIF"),
        image_url("PNG", size=(1200, 900)),  # resized by the processor
        image_url("PNG", mime="image/jpeg"),  # the MIME type is not checked
        image_url("PNG").split(",", 1)[1],  # bare base64, no data: prefix
    ],
    ids=["png", "jpeg", "webp", "gif", "large", "wrong-mime", "bare-base64"],
)
def test_llava_takes_data_url_images(vision: TransformersServe, url: str) -> None:
    with_image = chat(vision, messages=image_turn(url))
    assert with_image.status_code == 200, with_image.text
    without = chat(vision, messages=[{"role": "user", "content": "What shape?"}])
    extra = with_image.json()["usage"]["prompt_tokens"] - without.json()["usage"]["prompt_tokens"]
    assert extra == TINY_IMAGE_TOKENS  # the <image> placeholder, expanded


def test_undecodable_image_is_a_plain_text_500(vision: TransformersServe) -> None:
    r = chat(vision, messages=image_turn("data:image/png;base64,AAAA"))
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "Internal Server Error"


def test_a_literal_image_token_in_the_text_is_a_plain_text_500(vision: TransformersServe) -> None:
    for messages in (
        [{"role": "user", "content": "what is <image> here?"}],
        image_turn(image_url(), "and <image> too?"),
    ):
        r = chat(vision, messages=messages)
        assert (r.status_code, r.text) == (500, "Internal Server Error")


def test_images_sent_to_a_text_model_are_dropped_silently(text: TransformersServe) -> None:
    with_image = chat(text, messages=image_turn(image_url()))
    without = chat(text, messages=[{"role": "user", "content": "What shape?"}])
    assert with_image.status_code == 200
    assert with_image.json()["usage"]["prompt_tokens"] == without.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("field,value", [
    ("min_tokens", 2), ("top_k", 5), ("min_p", 0.1), ("repetition_penalty", 1.1),
])  # fmt: skip
def test_vllm_extra_sampling_fields_are_refused_with_422(
    text: TransformersServe, field: str, value: object
) -> None:
    r = chat(text, messages=[{"role": "user", "content": "hi"}], **{field: value})
    assert r.status_code == 422
    assert r.json() == {"detail": f"Unexpected fields in the request: {{'{field}'}}"}


@pytest.mark.parametrize("field,value", [
    ("max_completion_tokens", 3), ("seed", 7), ("temperature", 0.0), ("top_p", 0.9),
    ("stop", ["zzz"]), ("frequency_penalty", 0.1), ("stream_options", {"include_usage": True}),
    ("response_format", {"type": "json_object"}), ("user", "u1"),
])  # fmt: skip
def test_openai_fields_are_accepted(text: TransformersServe, field: str, value: object) -> None:
    r = chat(text, messages=[{"role": "user", "content": "hi"}], **{field: value})
    assert r.status_code == 200, r.text


def test_response_format_is_ignored(text: TransformersServe) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = chat(text, messages=[{"role": "user", "content": "hi"}], response_format=fmt, max_tokens=8)
    content = r.json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(content)  # random weights, unconstrained: not JSON


def test_max_completion_tokens_wins_over_max_tokens(text: TransformersServe) -> None:
    messages = [{"role": "user", "content": "hello world " * 50}]
    r = chat(text, messages=messages, max_tokens=9, max_completion_tokens=2, stop=["zzzz"])
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_no_context_length_is_enforced(text: TransformersServe) -> None:
    # the tiny model has 4096 positions; the server runs a longer prompt anyway
    r = chat(text, messages=[{"role": "user", "content": "hello world " * 600}], max_tokens=2)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 4096


def test_stream_has_no_done_and_usage_rides_on_the_finish_chunk(text: TransformersServe) -> None:
    body = {
        "model": text.model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", text.base_url + "/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in data
    events = [json.loads(d) for d in data]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(e["choices"] for e in events)  # no separate choices: [] usage chunk
    last = events[-1]
    assert last["choices"][0]["finish_reason"] in ("length", "stop")
    assert last["usage"]["completion_tokens"] >= 1
    assert not any("usage" in e for e in events[:-1])


def test_the_official_client_streams_it(text: TransformersServe) -> None:
    stream = oai(text).chat.completions.create(
        model=text.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_a_failing_stream_fails_before_the_200(vision: TransformersServe) -> None:
    body = {"model": vision.model, "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "a <image> b"}]}  # fmt: skip
    with httpx.stream("POST", vision.base_url + "/chat/completions", json=body) as r:
        assert r.status_code == 500
    with pytest.raises(openai.InternalServerError):
        oai(vision).chat.completions.create(**body)


async def test_requests_are_generated_one_at_a_time(text: TransformersServe) -> None:
    """No batching: a second stream gets its first token only after the first one finished."""
    body = {"model": text.model, "stream": True, "max_tokens": 300, "stop": ["zzzz"],
            "messages": [{"role": "user", "content": "hello world " * 100}]}  # fmt: skip

    async def stream(client: httpx.AsyncClient) -> tuple[float, float]:
        first = last = 0.0
        async with client.stream("POST", text.base_url + "/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if '"content"' in line:
                    first = first or time.monotonic()
                if '"finish_reason"' in line:
                    last = time.monotonic()
        return first, last

    async with httpx.AsyncClient(timeout=60) as client:
        (f1, l1), (f2, l2) = await asyncio.gather(stream(client), stream(client))
    (_, end_a), (start_b, _) = sorted([(f1, l1), (f2, l2)])
    assert start_b >= end_a


# --------------------------------------------------------------------------- OpenAIBackend on it
def _request(*parts: TextPart | ImagePart, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        messages=(Message(role="user", content=tuple(parts)),),
        sampling=SamplingParams(**{"max_tokens": 6, **sampling}),  # type: ignore[arg-type]
    )


async def test_backend_generates_and_streams_on_it(
    vision: TransformersServe,
    upstream_config: Callable[..., BackendConfig],
    shapes_image: Image.Image,
) -> None:
    backend = OpenAIBackend(upstream_config(vision))
    try:
        await backend.start()
        assert await backend.health()
        request = _request(
            ImagePart(ImageInput(shapes_image)), TextPart("What shape?"), min_tokens=2, seed=1
        )
        result = await backend.generate(request)
        assert result.finish_reason in ("length", "stop")
        assert result.usage.prompt_tokens > TINY_IMAGE_TOKENS
        assert result.usage.image_tokens is None  # the server does not say
        deltas = [d async for d in backend.stream(request)]
        final = deltas[-1]
        assert final.finish_reason in ("length", "stop")  # ended without [DONE]
        assert final.usage.prompt_tokens == result.usage.prompt_tokens
        assert final.usage.completion_tokens >= 1
        assert "".join(d.text for d in deltas) == result.text  # greedy, same prompt
    finally:
        await backend.close()


async def test_backend_without_omit_fields_gets_a_readable_422(
    text: TransformersServe, upstream_config: Callable[..., BackendConfig]
) -> None:
    backend = OpenAIBackend(upstream_config(text, omit_fields=[]))
    try:
        with pytest.raises(ModelRejected, match=r"min_tokens.*omit_fields") as info:
            await backend.generate(_request(TextPart("hi"), min_tokens=2))
        assert info.value.status_code == 422
    finally:
        await backend.close()


async def test_backend_does_not_retry_a_request_the_server_always_fails(
    vision: TransformersServe, upstream_config: Callable[..., BackendConfig]
) -> None:
    backend = OpenAIBackend(upstream_config(vision, max_retries=3, retry_backoff_s=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(ModelRejected, match="Internal Server Error") as info:
            await backend.generate(_request(TextPart("what is <image> here?")))
        assert info.value.status_code == 500
        assert time.monotonic() - started < 3  # one retry, not 3 with growing backoff
        with pytest.raises(ModelRejected, match="Internal Server Error"):
            [d async for d in backend.stream(_request(TextPart("a <image> b")))]
    finally:
        await backend.close()
