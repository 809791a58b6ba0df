"""OpenAIBackend against a real loopback OpenAI-compatible server (tests/fakes/openai_server.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate

import openai
import pytest
from PIL import Image

from app.errors import describe
from models.config import BackendConfig
from models.errors import (
    ContextLengthExceeded,
    ModelError,
    ModelOverloaded,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
)
from models.http_retry import (
    MAX_BACKOFF_S,
    MAX_RETRY_AFTER_S,
    backoff_delay,
    error_message,
    parse_retry_after,
)
from models.openai_backend import OpenAIBackend, build_chat_body, parse_usage
from models.types import (
    GenerationRequest,
    ImageInput,
    ImagePart,
    Message,
    SamplingParams,
    StreamDelta,
    TextPart,
    Usage,
)
from tests.fakes.openai_server import Failure, FakeOpenAIServer, Reply

from .conftest import FAKE_MODEL

MakeBackend = Callable[..., OpenAIBackend]


def _request(text: str = "what shape is red?", **kwargs: object) -> GenerationRequest:
    return GenerationRequest(messages=(Message.user(text),), **kwargs)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _collect(backend: OpenAIBackend, request: GenerationRequest) -> list[StreamDelta]:
    return [delta async for delta in backend.stream(request)]


# --------------------------------------------------------------------------- request body
async def test_generate_sends_image_first_and_parses_the_answer(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, shapes_image: Image.Image
) -> None:
    image = ImageInput(shapes_image)
    request = GenerationRequest(
        messages=(Message.text("system", "Be brief."), Message.user("What is red?", [image])),
        sampling=SamplingParams(max_tokens=32, temperature=0.0, top_p=0.9, stop=("\n",), seed=7),
    )
    result = await make_backend().generate(request)

    assert result.text == "echo: What is red?"
    assert result.finish_reason == "stop"
    assert result.model == FAKE_MODEL
    assert result.latency_s > 0
    # the fake charges 64 tokens per image plus one per word; the image count is not reported
    assert result.usage == Usage(prompt_tokens=64 + 5, completion_tokens=4, image_tokens=None)

    (call,) = openai_server.chat_requests
    body = call.body
    assert body["model"] == FAKE_MODEL
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    user = body["messages"][1]
    assert user["role"] == "user"
    assert user["content"] == [
        # the sha256 as vLLM's media id, beside image_url (vLLM 0.33 chat_message.py)
        {"type": "image_url", "image_url": {"url": image.data_url()}, "uuid": image.sha256},
        {"type": "text", "text": "What is red?"},
    ]
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["max_completion_tokens"] == 32  # max_tokens is deprecated in vLLM 0.33
    assert "max_tokens" not in body
    assert body["temperature"] == 0.0
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\n"]
    assert body["seed"] == 7
    assert "min_tokens" not in body
    assert "response_format" not in body
    assert "stream" not in body
    assert call.headers["content-type"] == "application/json"
    assert "authorization" not in call.headers


def test_unset_sampling_fields_are_omitted_and_min_tokens_is_sent_when_set() -> None:
    body = build_chat_body(_request("hi"), "m", structured_output=True)
    assert set(body) == {"model", "messages", "max_completion_tokens"}
    assert body["messages"] == [{"role": "user", "content": "hi"}]

    body = build_chat_body(
        _request("hi", sampling=SamplingParams(max_tokens=4, min_tokens=4)),
        "m",
        structured_output=True,
    )
    assert body["min_tokens"] == 4


def test_part_order_is_kept_and_data_urls_are_encoded_once(shapes_image: Image.Image) -> None:
    first, second = ImageInput(shapes_image), ImageInput(shapes_image.rotate(90))

    message = Message(
        role="user",
        content=(TextPart("compare"), ImagePart(first), TextPart("with"), ImagePart(second)),
    )
    request = GenerationRequest(messages=(message,))
    body1 = build_chat_body(request, "m", structured_output=False)
    body2 = build_chat_body(request, "m", structured_output=False)
    parts = body1["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url"]
    assert parts[1]["image_url"]["url"] != parts[3]["image_url"]["url"]
    # the same cached string object is reused, not re-encoded
    assert parts[1]["image_url"]["url"] is body2["messages"][0]["content"][1]["image_url"]["url"]


def test_media_ids_can_be_turned_off_for_strict_servers(shapes_image: Image.Image) -> None:
    request = GenerationRequest(messages=(Message.user("hi", [ImageInput(shapes_image)]),))
    (part, _) = build_chat_body(request, "m", structured_output=False, media_ids=False)["messages"][
        0
    ]["content"]
    assert set(part) == {"type", "image_url"}


def test_the_body_uses_only_fields_transformers_serve_accepts() -> None:
    """``transformers serve`` answers 422 to unknown top-level fields: every field we may send
    (min_tokens aside, a vLLM extra sent only when asked for) is in its allow-list."""
    serving = pytest.importorskip("transformers.cli.serving.chat_completion")
    allowed = serving.TransformersCompletionCreateParamsStreaming.__mutable_keys__
    request = _request(
        "hi", sampling=SamplingParams(max_tokens=4, temperature=0.1, top_p=0.9, stop=("x",), seed=1)
    )
    body = build_chat_body(request, "m", structured_output=True, stream=True)
    assert "max_completion_tokens" in allowed
    assert set(body) <= set(allowed)


SCHEMA = {
    "title": "Dispatcher decision",
    "type": "object",
    "properties": {"expert": {"type": "string", "enum": ["vision", "insight"]}},
    "required": ["expert"],
}


async def test_json_schema_becomes_response_format(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: '{"expert": "vision"}'
    backend = make_backend()
    assert backend.supports_json_schema is True
    result = await backend.generate(_request(json_schema=SCHEMA))
    assert result.text == '{"expert": "vision"}'
    fmt = openai_server.chat_requests[0].body["response_format"]
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "Dispatcher_decision", "schema": SCHEMA},
    }


async def test_structured_output_off_sends_no_response_format(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = make_backend(structured_output=False)
    assert backend.supports_json_schema is False
    await backend.generate(_request(json_schema=SCHEMA))
    assert "response_format" not in openai_server.chat_requests[0].body


# --------------------------------------------------------------------------- response parsing
async def test_image_tokens_from_vllm_prompt_tokens_details(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, shapes_image: Image.Image
) -> None:
    openai_server.report_prompt_details = True
    request = GenerationRequest(messages=(Message.user("hi", [ImageInput(shapes_image)] * 2),))
    result = await make_backend().generate(request)
    assert result.usage.image_tokens == 128
    assert result.usage.prompt_tokens == 128 + 1


def test_parse_usage_accepts_openai_and_vllm_shapes() -> None:
    assert parse_usage(None) == Usage()
    assert parse_usage({"prompt_tokens": 5, "completion_tokens": 2}) == Usage(5, 2, None)
    openai_shape = {
        "prompt_tokens": 90,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 0, "image_tokens": 85},
    }
    assert parse_usage(openai_shape).image_tokens == 85
    assert parse_usage(openai_shape).cached_tokens == 0
    vllm_text_only = {"prompt_tokens": 9, "prompt_tokens_details": {"multimodal_tokens": None}}
    assert parse_usage(vllm_text_only) == Usage(9, 0, None)
    vllm_details = {
        "prompt_tokens": 300,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 272, "multimodal_tokens": {"image": 256}},
    }
    assert parse_usage(vllm_details) == Usage(300, 4, image_tokens=256, cached_tokens=272)


async def test_cached_tokens_from_prompt_tokens_details(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    details = {"prompt_tokens_details": {"cached_tokens": 16, "multimodal_tokens": None}}
    openai_server.responder = lambda body: Reply("ok", prompt_tokens=20, usage_extra=details)
    backend = make_backend()
    result = await backend.generate(_request())
    assert result.usage.cached_tokens == 16
    final = (await _collect(backend, _request()))[-1]
    assert final.usage is not None and final.usage.cached_tokens == 16
    total = result.usage + final.usage + Usage(1, 1)
    assert total.cached_tokens == 32


@pytest.mark.parametrize("reason", ["error", "abort", "content_filter"])
async def test_a_failed_finish_reason_raises_instead_of_answering(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, reason: str
) -> None:
    openai_server.responder = lambda body: Reply("half an answ", finish_reason=reason)
    expected = ModelRejected if reason == "content_filter" else ModelUnavailable
    with pytest.raises(expected, match=f"finish_reason={reason}"):
        await make_backend().generate(_request())
    with pytest.raises(expected, match=f"finish_reason={reason}"):
        await _collect(make_backend(), _request())


async def test_finish_reason_length_and_reported_usage(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: Reply(
        "cut sh", finish_reason="length", prompt_tokens=11, completion_tokens=2
    )
    result = await make_backend().generate(_request())
    assert (result.text, result.finish_reason) == ("cut sh", "length")
    assert result.usage == Usage(prompt_tokens=11, completion_tokens=2)


async def test_malformed_success_body_is_a_model_error(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.raw(200, {"unexpected": True}))
    with pytest.raises(ModelError, match="malformed"):
        await make_backend().generate(_request())


# --------------------------------------------------------------------------- streaming
async def test_stream_yields_text_then_one_final_delta_with_usage(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    deltas = await _collect(make_backend(), _request("name three shapes"))
    assert "".join(d.text for d in deltas) == "echo: name three shapes"
    assert len(deltas) == 5  # four words, then the final delta
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    final = deltas[-1]
    assert final.text == ""
    assert final.finish_reason == "stop"
    assert final.usage == Usage(prompt_tokens=3, completion_tokens=4)
    body = openai_server.chat_requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert openai_server.chat_requests[0].headers["accept"] == "text/event-stream"


async def test_in_stream_error_raises_model_error_after_partial_text(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.stream_error("KV cache exhausted"))
    seen: list[StreamDelta] = []
    with pytest.raises(ModelError, match="KV cache exhausted") as info:
        async for delta in make_backend().stream(_request()):
            seen.append(delta)
    assert type(info.value) is ModelError
    assert [d.text for d in seen] == ["partial"]
    assert len(openai_server.chat_requests) == 1  # not retried: text was already delivered


async def test_stream_is_retried_before_the_first_byte(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.status(503))
    deltas = await _collect(make_backend(), _request("hello"))
    assert "".join(d.text for d in deltas) == "echo: hello"
    assert len(openai_server.chat_requests) == 2


async def test_stream_rejected_is_not_retried(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.vllm_error(400, "too many images", param="messages"))
    with pytest.raises(ModelRejected, match="too many images"):
        await _collect(make_backend(), _request())
    assert len(openai_server.chat_requests) == 1


SSE = {"content-type": "text/event-stream"}


async def test_a_stream_that_ends_without_finishing_is_unavailable(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    chunk = '{"choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": null}]}'
    openai_server.fail_next(Failure.raw(200, f"data: {chunk}\n\n", headers=SSE))
    seen: list[str] = []
    with pytest.raises(ModelUnavailable, match="unfinished"):
        async for delta in make_backend().stream(_request()):
            seen.append(delta.text)
    assert seen == ["half"]


async def test_a_malformed_stream_event_is_a_model_error(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.raw(200, "data: {not json\n\n", headers=SSE))
    with pytest.raises(ModelError, match="malformed stream event"):
        await _collect(make_backend(), _request())


async def test_a_slow_answer_within_the_read_timeout_arrives(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.hang(0.2))
    result = await make_backend(read_timeout_s=2.0).generate(_request("slow"))
    assert result.text == "echo: slow"
    assert result.latency_s >= 0.2
    assert openai_server.disconnects == 0


# --------------------------------------------------------------------------- retries
async def test_503_is_retried_then_succeeds(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.status(503), times=2)
    result = await make_backend(max_retries=2).generate(_request("again"))
    assert result.text == "echo: again"
    assert len(openai_server.chat_requests) == 3


async def test_retries_exhausted_is_model_unavailable(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.status(503, message="engine overloaded"), times=5)
    with pytest.raises(ModelUnavailable, match="engine overloaded") as info:
        await make_backend(max_retries=2).generate(_request())
    assert "3 attempt" in str(info.value)
    assert len(openai_server.chat_requests) == 3


async def test_retry_after_is_honoured(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.status(503, retry_after=0.4))
    started = time.monotonic()
    await make_backend(retry_backoff_s=0.01).generate(_request())
    assert time.monotonic() - started >= 0.35
    first, second = openai_server.chat_requests
    assert second.received_at - first.received_at >= 0.35


async def test_429_is_retried(openai_server: FakeOpenAIServer, make_backend: MakeBackend) -> None:
    openai_server.fail_next(Failure.status(429, retry_after=0))
    result = await make_backend().generate(_request("x"))
    assert result.text == "echo: x"
    assert len(openai_server.chat_requests) == 2


async def test_dropped_connection_is_retried(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.close())
    result = await make_backend().generate(_request("y"))
    assert result.text == "echo: y"
    assert len(openai_server.chat_requests) == 2


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (Failure.vllm_error(400, "prompt is longer than max_model_len"), 400, None),
        (
            Failure.openai_error(400, "bad image", code="invalid_image", param="messages"),
            400,
            None,
        ),
        (Failure.openai_error(422, "unprocessable", code=None), 422, None),
        (Failure.raw(413, "request entity too large"), 413, "request entity too large"),
    ],
)
async def test_other_4xx_are_rejected_without_retry(
    openai_server: FakeOpenAIServer,
    make_backend: MakeBackend,
    failure: Failure,
    status: int,
    message: str | None,
) -> None:
    openai_server.fail_next(failure, times=3)
    with pytest.raises(ModelRejected) as info:
        await make_backend(max_retries=3).generate(_request())
    expected = message or failure.body["error"]["message"]
    assert info.value.message == expected
    assert info.value.status_code == status
    assert len(openai_server.chat_requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        # renderers/params.py _token_len_check: parameter "input_tokens"
        Failure.vllm_error(
            400,
            "This model's maximum context length is 4096 tokens. However, your prompt contains "
            "5000 input tokens, which exceeds this limit even without any output tokens.",
            param="input_tokens",
        ),
        Failure.vllm_error(
            400, "The decoder prompt (length 5000) is longer than the maximum model length of 4096."
        ),
        Failure.vllm_error(400, "At most 2 image(s) may be provided in one prompt.", param="image"),
        Failure.vllm_error(400, "the upstream's own words", param="input_tokens"),
    ],
)
async def test_a_prompt_too_large_for_the_model_is_context_length_exceeded(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, failure: Failure
) -> None:
    openai_server.fail_next(failure)
    with pytest.raises(ContextLengthExceeded) as info:
        await make_backend().generate(_request())
    assert info.value.status_code == 400
    assert len(openai_server.chat_requests) == 1
    described = describe(info.value)
    assert (described.status, described.code) == (400, "context_length_exceeded")


async def test_overload_outliving_the_retries_is_model_overloaded_with_retry_after(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    # vLLM's QueueOverflowError (--max-num-queued-reqs) reaches HTTP clients as a 503
    openai_server.fail_next(Failure.status(503, retry_after=0.02), times=3)
    with pytest.raises(ModelOverloaded) as info:
        await make_backend(max_retries=2).generate(_request())
    assert info.value.retry_after_s == pytest.approx(0.02)
    described = describe(info.value)
    assert described.status == 503 and "Retry-After" in described.headers

    openai_server.fail_next(Failure.status(502), times=3)  # (a repeated 500 is a rejection)
    with pytest.raises(ModelUnavailable) as plain:
        await make_backend(max_retries=2).generate(_request())
    assert not isinstance(plain.value, ModelOverloaded)

    openai_server.fail_next(Failure.status(429), times=3)
    with pytest.raises(ModelOverloaded):
        await _collect(make_backend(max_retries=2), _request())


async def test_unknown_model_is_rejected_with_404(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    with pytest.raises(ModelRejected, match="does not exist") as info:
        await make_backend(model="no-such-model").generate(_request())
    assert info.value.status_code == 404


async def test_connection_refused_is_unavailable_quickly(make_backend: MakeBackend) -> None:
    backend = make_backend(base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=2)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="ConnectError"):
        await backend.generate(_request())
    assert time.monotonic() - started < 2.0


async def test_read_timeout_is_model_timeout_and_not_retried(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.fail_next(Failure.hang(5.0), times=3)
    started = time.monotonic()
    with pytest.raises(ModelTimeout):
        await make_backend(read_timeout_s=0.3, max_retries=2).generate(_request())
    assert time.monotonic() - started < 2.0
    assert len(openai_server.chat_requests) == 1
    assert await openai_server.wait_for_disconnects(1)


# --------------------------------------------------------------------------- cancellation
async def test_cancelling_the_caller_closes_the_upstream_request(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.delay_s = 10.0
    task = asyncio.create_task(make_backend().generate(_request()))
    assert await openai_server.wait_for_async(lambda: len(openai_server.chat_requests) == 1)
    assert openai_server.disconnects == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await openai_server.wait_for_disconnects(1, timeout=3.0)
    assert openai_server.completed == 0


async def test_abandoning_a_stream_closes_the_upstream_request(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.chunk_delay_s = 0.2
    stream = make_backend().stream(_request("one two three four five six seven"))
    first = await anext(stream)
    assert first.text == "echo:"
    await stream.aclose()
    assert await openai_server.wait_for_disconnects(1, timeout=3.0)
    assert openai_server.completed == 0


# --------------------------------------------------------------------------- concurrency
async def test_concurrency_limit_is_respected(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.delay_s = 0.15
    backend = make_backend(max_concurrency=2)
    results = await asyncio.gather(*(backend.generate(_request(f"q{i}")) for i in range(6)))
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(6)]
    assert openai_server.max_in_flight == 2


async def test_requests_run_concurrently_up_to_the_limit(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.delay_s = 0.3
    backend = make_backend(max_concurrency=8)
    started = time.monotonic()
    await asyncio.gather(*(backend.generate(_request(f"q{i}")) for i in range(4)))
    assert openai_server.max_in_flight == 4
    assert time.monotonic() - started < 1.0  # concurrent, not 4 x 0.3 s


# --------------------------------------------------------------------------- health / auth / info
async def test_health_and_context_length_from_models(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.max_model_len = 32768
    backend = make_backend()
    assert backend.context_length is None
    assert await backend.health() is True
    assert backend.context_length == 32768
    paths = [r.path for r in openai_server.requests]
    assert paths == ["/health", "/v1/models"]


async def test_start_learns_context_length_but_keeps_a_configured_one(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    learned = make_backend()
    await learned.start()
    assert learned.context_length == 4096
    configured = make_backend(context_length=1000)
    await configured.start()
    assert configured.context_length == 1000


async def test_start_does_not_fail_when_the_upstream_is_down(make_backend: MakeBackend) -> None:
    backend = make_backend(base_url=f"http://127.0.0.1:{_free_port()}/v1")
    await backend.start()
    assert backend.context_length is None
    assert await backend.health() is False


async def test_health_false_when_the_engine_is_dead(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.healthy = False
    assert await make_backend().health() is False


async def test_api_key_is_sent_as_bearer(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.api_key = "s3cret"
    result = await make_backend(api_key="s3cret").generate(_request("k"))
    assert result.text == "echo: k"
    assert openai_server.chat_requests[0].headers["authorization"] == "Bearer s3cret"

    with pytest.raises(ModelRejected, match="Unauthorized") as info:
        await make_backend().generate(_request())
    assert info.value.status_code == 401


async def test_request_id_is_forwarded(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    await make_backend().generate(_request(request_id="req-42"))
    assert openai_server.chat_requests[0].headers["x-request-id"] == "req-42"
    assert "x-session-id" not in openai_server.chat_requests[0].headers


async def test_every_call_of_a_question_carries_its_session_id(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    """One X-Session-ID per question (vLLM 0.33's SESSION_ID_HEADER; a consistent-hash balancer
    keys on it), one X-Request-Id per call."""
    backend = make_backend()
    await backend.generate(_request(request_id="run9-0", session_id="run9"))
    await _collect(backend, _request(request_id="run9-1", session_id="run9"))
    first, second = openai_server.chat_requests
    assert first.headers["x-session-id"] == second.headers["x-session-id"] == "run9"
    assert (first.headers["x-request-id"], second.headers["x-request-id"]) == ("run9-0", "run9-1")


async def test_a_backend_survives_a_new_event_loop(openai_server: FakeOpenAIServer) -> None:
    """A CLI may run several asyncio.run() calls on one backend: it must not break."""
    config = BackendConfig(backend="openai", model=FAKE_MODEL, base_url=openai_server.base_url)
    backend = OpenAIBackend(config)

    def run_once(text: str) -> str:
        async def go() -> str:
            return (await backend.generate(_request(text))).text

        return asyncio.run(go())

    loop = asyncio.get_running_loop()
    first = await loop.run_in_executor(None, run_once, "a")
    second = await loop.run_in_executor(None, run_once, "b")
    assert (first, second) == ("echo: a", "echo: b")


# --------------------------------------------------------------------------- the fake itself
async def test_the_fake_speaks_the_protocol_of_the_official_client(
    openai_server: FakeOpenAIServer,
) -> None:
    """Other suites reuse the fake as an upstream; the official SDK must accept its answers."""
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="x", max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "ping"}]
        )
        assert completion.choices[0].message.content == "echo: ping"
        assert completion.usage is not None and completion.usage.completion_tokens == 2
        chunks = await client.chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "ping"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        texts, usage = [], None
        async for chunk in chunks:
            texts.extend(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        assert "".join(texts) == "echo: ping"
        assert usage is not None and usage.prompt_tokens == 1
        models = await client.models.list()
        assert [m.id for m in models.data] == [FAKE_MODEL]
    finally:
        await client.close()


# --------------------------------------------------------------------------- retry policy units
def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-1"}) is None
    assert parse_retry_after({}) is None
    now = time.time()
    in_ten = parse_retry_after({"retry-after": formatdate(now + 10, usegmt=True)}, now=now)
    assert in_ten is not None and 8.5 <= in_ten <= 10.5


def test_backoff_delay_caps() -> None:
    assert backoff_delay(0, 0.5, retry_after_s=3.0) == 3.0
    assert backoff_delay(0, 0.5, retry_after_s=3600.0) == MAX_RETRY_AFTER_S
    assert backoff_delay(2, 0.5, jitter=False) == 2.0
    assert backoff_delay(20, 0.5, jitter=False) == MAX_BACKOFF_S
    assert 0.75 * 1.0 <= backoff_delay(1, 0.5) <= 1.0


def test_error_message_accepts_every_known_body() -> None:
    assert error_message(b'{"error": {"message": "m1", "code": 400}}', 400) == "m1"
    assert error_message(b'{"error": {"message": "m2", "code": "bad"}}', 400) == "m2"
    assert error_message(b'{"error": {"message": "m3", "code": null}}', 400) == "m3"
    assert error_message(b'{"error": "Unauthorized"}', 401) == "Unauthorized"
    assert error_message(b'{"object": "error", "message": "old vllm", "code": 400}', 400) == (
        "old vllm"
    )
    assert error_message(b'{"detail": "Not Found"}', 404) == "Not Found"
    assert error_message(b"<html>bad gateway</html>", 502) == "bad gateway"
    assert error_message(b"", 502) == "HTTP 502"


class _ThreadRecordingImage(ImageInput):
    """Records the thread that PNG-encodes it."""

    __slots__ = ("encoded_on",)

    def data_url(self) -> str:
        if not self.encoded:
            self.encoded_on = threading.get_ident()
        return super().data_url()


async def test_images_are_encoded_off_the_event_loop(
    make_backend: Callable[..., OpenAIBackend], shapes_image: Image.Image
) -> None:
    image = _ThreadRecordingImage(shapes_image)
    request = GenerationRequest(messages=(Message.user("What is shown?", [image]),))
    backend = make_backend()
    await backend.generate(request)
    assert image.encoded and image.encoded_on != threading.get_ident()
    async for _ in backend.stream(request):  # already encoded: no second encode, no thread hop
        pass
    assert image.encoded
