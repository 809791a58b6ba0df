"""OpenAIBackend under upstream faults: answer size caps, the circuit breaker, what error messages
show (never the upstream's address) and whether /models lists the configured model."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from models.errors import (
    CircuitOpen,
    ModelError,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
)
from models.http_retry import CircuitBreaker
from models.openai_backend import OpenAIBackend
from models.types import GenerationRequest, Message
from tests.fakes.openai_server import Failure, FakeOpenAIServer, Reply

MakeBackend = Callable[..., OpenAIBackend]


def _request(text: str = "what shape is red?") -> GenerationRequest:
    return GenerationRequest(messages=(Message.user(text),))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _drain(backend: OpenAIBackend) -> str:
    return "".join([d.text async for d in backend.stream(_request())])


# --------------------------------------------------------------------------- answer size


async def test_an_oversized_answer_fails_the_call_with_a_short_message(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: Reply("x" * 3_000_000)  # ~3 MB JSON body
    backend = make_backend()
    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        await backend.generate(_request())
    assert "larger than 1048576 bytes" in info.value.message
    assert len(info.value.message) < 200
    assert len(openai_server.chat_requests) == 1  # not retried
    assert time.perf_counter() - started < 2.0
    assert backend.circuit_state == "closed"  # the upstream answered: not its failure


async def test_the_answer_cap_is_configurable_per_upstream(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: Reply("y" * 5000)
    with pytest.raises(ModelError, match="larger than 4096 bytes"):
        await make_backend(max_response_bytes=4096).generate(_request())
    result = await make_backend(max_response_bytes=16_384).generate(_request())
    assert result.text == "y" * 5000


async def test_an_oversized_stream_fails_on_total_bytes(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: Reply(" ".join(["word"] * 5000))  # many small chunks
    with pytest.raises(ModelError, match="stream larger than 8192 bytes"):
        await _drain(make_backend(max_response_bytes=8192))


async def test_an_overlong_stream_line_fails_before_it_is_buffered(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: Reply("z" * 20_000)  # one chunk, one 20 kB line
    with pytest.raises(ModelError, match="stream line larger than 4096 bytes"):
        await _drain(make_backend(max_stream_line_bytes=4096))
    assert await _drain(make_backend()) == "z" * 20_000  # the default (256 KiB) takes it


# --------------------------------------------------------------------------- circuit breaker


def test_breaker_states_with_a_fake_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, 10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed" and breaker.before_call() is None
    breaker.failure()
    assert breaker.state == "open" and breaker.before_call() == pytest.approx(10.0)
    now[0] = 10.0
    assert breaker.before_call() is None  # the probe
    assert breaker.state == "half_open"
    assert breaker.before_call() is not None  # only one probe at a time
    breaker.failure()  # the probe failed: open again, a new cool-down
    assert breaker.state == "open" and breaker.before_call() == pytest.approx(10.0)
    now[0] = 20.0
    assert breaker.before_call() is None
    breaker.neutral()  # e.g. cancelled: the next call probes instead
    assert breaker.before_call() is None
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0
    off = CircuitBreaker(0, 1.0)
    for _ in range(100):
        off.failure()
    assert off.before_call() is None


async def test_a_failing_upstream_opens_the_breaker_and_calls_fail_at_once(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.responder = lambda body: Failure.status(502, message="bad gateway")
    backend = make_backend(max_retries=5, breaker_failures=3, breaker_cooldown_s=0.5)
    with pytest.raises(CircuitOpen) as first:
        await backend.generate(_request())
    assert len(openai_server.chat_requests) == 3  # not 6: the retries stop once it opens
    assert backend.circuit_state == "open"
    assert not await backend.health()

    started = time.perf_counter()
    with pytest.raises(CircuitOpen) as second:
        await backend.generate(_request())
    with pytest.raises(CircuitOpen):
        await _drain(backend)
    assert time.perf_counter() - started < 0.1
    assert len(openai_server.chat_requests) == 3  # the upstream was not called again
    assert 0 < second.value.retry_after_s <= 0.5
    assert first.value.code == "model_unavailable"

    await asyncio.sleep(0.55)  # cool-down over: one probe; the upstream is still down
    with pytest.raises(CircuitOpen):
        await backend.generate(_request())
    assert len(openai_server.chat_requests) == 4 and backend.circuit_state == "open"

    openai_server.responder = lambda body: "back"  # the upstream recovers
    await asyncio.sleep(0.55)
    assert (await backend.generate(_request())).text == "back"
    assert backend.circuit_state == "closed" and await backend.health()


async def test_connection_refused_opens_the_breaker(make_backend: MakeBackend) -> None:
    backend = make_backend(
        base_url=f"http://127.0.0.1:{_free_port()}/v1",
        max_retries=3,
        breaker_failures=2,
        breaker_cooldown_s=30,
    )
    with pytest.raises(CircuitOpen):
        await backend.generate(_request())
    with pytest.raises(CircuitOpen) as info:
        await backend.generate(_request())
    assert info.value.retry_after_s > 29


@pytest.mark.parametrize(
    "failure",
    [Failure.vllm_error(400, "bad field"), Failure.status(429, retry_after=0)],
    ids=["4xx", "429"],
)
async def test_refusals_and_rate_limits_do_not_open_the_breaker(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, failure: Failure
) -> None:
    openai_server.responder = lambda body: failure
    backend = make_backend(max_retries=1, breaker_failures=2)
    for _ in range(4):
        with pytest.raises(ModelError) as info:
            await backend.generate(_request())
        assert not isinstance(info.value, CircuitOpen)
    assert backend.circuit_state == "closed"


async def test_a_success_resets_the_consecutive_count(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = make_backend(max_retries=1, breaker_failures=3)
    for _ in range(3):
        openai_server.fail_next(Failure.status(502), times=2)  # 2 failures, then a success
        with pytest.raises(ModelUnavailable):
            await backend.generate(_request())
        assert (await backend.generate(_request())).text.startswith("echo:")
    assert backend.circuit_state == "closed"


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "failure",
    [
        Failure.status(503),
        Failure.status(502, message="proxy at http://{netloc}/v1 failed"),
        Failure.raw(500, "<html><body>" + "stack trace " * 50 + "</body></html>"),
        Failure.raw(200, "not json at all"),
        Failure.raw(200, {"unexpected": "shape"}),
        Failure.vllm_error(400, "The model at http://{netloc}/v1 refused"),
        Failure.hang(3.0),
    ],
    ids=["503", "echoes-url", "html-500", "invalid-json", "malformed", "4xx-url", "timeout"],
)
async def test_messages_never_name_the_upstream_address(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, failure: Failure
) -> None:
    netloc = f"127.0.0.1:{openai_server.port}"
    if isinstance(failure.body, dict) and "error" in failure.body:
        failure.body["error"]["message"] = failure.body["error"]["message"].format(netloc=netloc)
    openai_server.fail_next(failure, times=3)
    backend = make_backend(max_retries=1, read_timeout_s=0.3)
    with pytest.raises(ModelError) as info:
        await backend.generate(_request())
    assert netloc not in info.value.message and netloc not in str(info.value)
    assert "stack trace" not in info.value.message
    if not isinstance(info.value, ModelRejected):  # a refusal is the upstream's own words
        assert "fake-vlm" in info.value.message  # names the model instead
    assert info.value.detail and openai_server.base_url in info.value.detail  # for the log
    if failure.kind == "hang":
        assert isinstance(info.value, ModelTimeout)


async def test_unreachable_upstream_message_names_the_model_only(
    make_backend: MakeBackend,
) -> None:
    port = _free_port()
    backend = make_backend(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(ModelUnavailable) as info:
        await backend.generate(_request())
    assert str(port) not in info.value.message
    assert "ConnectError" in info.value.message


# --------------------------------------------------------------------------- health


async def test_health_requires_the_configured_model_to_be_listed(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = make_backend()
    assert await backend.health()
    openai_server.model = "another-model"  # serves something else: every call would 404
    assert not await backend.health()
    with pytest.raises(ModelRejected, match="does not exist"):
        await backend.generate(_request())
