"""OpenAIBackend against servers that differ from vLLM (``transformers serve`` first), on the fake
server: plain-text 500s, repeated deterministic 500s, fields a server refuses, streams without
``[DONE]``. The same behaviours against the real ``transformers serve`` are in
tests/integration/test_transformers_serve.py."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from models.config import BackendConfig
from models.errors import ModelError, ModelRejected, ModelUnavailable
from models.openai_backend import OpenAIBackend
from models.types import GenerationRequest, Message, SamplingParams, StreamDelta
from tests.fakes.openai_server import Failure, FakeOpenAIServer

MakeBackend = Callable[..., OpenAIBackend]
PLAIN_500 = Failure.raw(500, "Internal Server Error", headers={"content-type": "text/plain"})
SSE = {"content-type": "text/event-stream"}


def _request(text: str = "what shape is red?", **kwargs: object) -> GenerationRequest:
    return GenerationRequest(messages=(Message.user(text),), **kwargs)  # type: ignore[arg-type]


async def _collect(backend: OpenAIBackend, request: GenerationRequest) -> list[StreamDelta]:
    return [delta async for delta in backend.stream(request)]


# --------------------------------------------------------------------------- repeated 500s
async def test_a_repeated_plain_text_500_is_a_rejection_after_two_attempts(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(PLAIN_500, times=5)
    with pytest.raises(ModelRejected) as info:
        await make_backend(max_retries=3).generate(_request())
    assert info.value.status_code == 500
    assert "Internal Server Error" in info.value.message
    assert "twice" in info.value.message
    assert len(openai_server.chat_requests) == 2


async def test_a_repeated_500_on_a_stream_is_a_rejection_too(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(PLAIN_500, times=5)
    with pytest.raises(ModelRejected, match="Internal Server Error"):
        await _collect(make_backend(max_retries=3), _request())
    assert len(openai_server.chat_requests) == 2


async def test_a_single_500_is_still_retried(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(PLAIN_500)
    result = await make_backend(max_retries=3).generate(_request("again"))
    assert result.text == "echo: again"
    assert len(openai_server.chat_requests) == 2


async def test_500s_that_differ_are_retried_to_the_end(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    for n in range(3):
        openai_server.fail_next(Failure.vllm_error(500, f"engine hiccup {n}"))
    with pytest.raises(ModelUnavailable, match="engine hiccup 2"):
        await make_backend(max_retries=2).generate(_request())
    assert len(openai_server.chat_requests) == 3


async def test_a_repeated_500_from_an_unhealthy_server_is_unavailable(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.healthy = False  # /health 503: the server, not the request, is broken
    openai_server.fail_next(PLAIN_500, times=5)
    with pytest.raises(ModelUnavailable, match="Internal Server Error"):
        await make_backend(max_retries=2).generate(_request())
    assert len(openai_server.chat_requests) == 3


async def test_a_repeated_503_is_not_a_rejection(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.status(503, message="overloaded"), times=5)
    with pytest.raises(ModelUnavailable):
        await make_backend(max_retries=2).generate(_request())
    assert len(openai_server.chat_requests) == 3


# --------------------------------------------------------------------------- error bodies
async def test_an_html_error_page_is_reported_as_text(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    page = "<html><body>\n<h1>413 Request Entity Too Large</h1>\n<hr>nginx</body></html>"
    openai_server.fail_next(Failure.raw(413, page, headers={"content-type": "text/html"}))
    with pytest.raises(ModelRejected) as info:
        await make_backend().generate(_request())
    assert info.value.message == "413 Request Entity Too Large nginx"


async def test_a_422_for_unexpected_fields_points_at_omit_fields(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    detail = {"detail": "Unexpected fields in the request: {'min_tokens'}"}
    openai_server.fail_next(Failure.raw(422, detail), times=3)
    with pytest.raises(ModelRejected, match="omit_fields") as info:
        await make_backend().generate(_request())
    assert info.value.status_code == 422
    assert "min_tokens" in info.value.message
    assert len(openai_server.chat_requests) == 1


# --------------------------------------------------------------------------- omit_fields
async def test_omit_fields_are_never_sent(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = make_backend(omit_fields=["min_tokens", "seed", "stream_options"])
    sampling = SamplingParams(max_tokens=4, min_tokens=2, seed=3, temperature=0.0)
    await backend.generate(_request(sampling=sampling))
    await _collect(backend, _request(sampling=sampling))
    plain, streamed = (r.body for r in openai_server.chat_requests)
    for body in (plain, streamed):
        assert not {"min_tokens", "seed", "stream_options"} & body.keys()
        assert body["temperature"] == 0.0 and body["max_completion_tokens"] == 4
    assert streamed["stream"] is True


def test_omit_fields_cannot_drop_what_every_request_needs() -> None:
    with pytest.raises(ValidationError, match="messages"):
        BackendConfig(backend="openai", model="m", omit_fields=["messages"])


# --------------------------------------------------------------------------- streams
def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
    event: dict = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        event["usage"] = usage
    return f"data: {json.dumps(event)}\n\n"


async def test_a_stream_without_done_ends_at_the_finish_chunk_with_its_usage(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    usage = {"prompt_tokens": 18, "completion_tokens": 6, "total_tokens": 24}
    body = (
        _chunk({"role": "assistant"})
        + _chunk({"content": "a red "})
        + _chunk({"content": "circle"})
        + _chunk({}, finish="length", usage=usage)  # transformers serve: no [DONE] after it
    )
    openai_server.fail_next(Failure.raw(200, body, headers=SSE))
    deltas = await _collect(make_backend(), _request())
    assert "".join(d.text for d in deltas) == "a red circle"
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (18, 6)


async def test_a_string_error_event_mid_stream_is_reported(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    body = _chunk({"content": "par"}) + 'data: {"error": "generation failed"}\n\n'
    openai_server.fail_next(Failure.raw(200, body, headers=SSE))
    with pytest.raises(ModelError, match="generation failed"):
        await _collect(make_backend(), _request())
