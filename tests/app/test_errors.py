"""Bad input -> a clear 4xx in the OpenAI envelope (never a 5xx); model errors -> one mapping."""

# ruff: noqa: E501  (the bad-input table keeps one case per line)

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from agents.types import ModelSet
from app.errors import Overloaded
from app.main import create_app
from models.errors import (
    ModelLoadError,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    ProReasonError,
)
from tests.app.conftest import make_settings, parse_sse, png_data_url
from tests.fakes.models import FakeModel

PUBLIC_IP = "93.184.216.34"  # an IP literal: no DNS needed, the MockTransport answers it


def b64_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression-bomb shape), with tiny data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
    head += struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    body = struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return head + body + end


class RecordingWeb:
    """A MockTransport 'internet': a PNG at /shapes.png, a redirect to loopback at /bounce."""

    def __init__(self, png: bytes) -> None:
        self.png = png
        self.hosts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.path == "/bounce":
            return httpx.Response(302, headers={"Location": "http://127.0.0.1:8080/admin.png"})
        if request.url.path == "/shapes.png":
            return httpx.Response(200, content=self.png, headers={"Content-Type": "image/png"})
        return httpx.Response(404)


@pytest.fixture
def web(png_bytes: bytes) -> RecordingWeb:
    return RecordingWeb(png_bytes)


@pytest.fixture
def client(models: ModelSet, web: RecordingWeb) -> Iterator[TestClient]:
    settings = make_settings(server={"max_body_bytes": 256 * 1024})
    media_client = httpx.AsyncClient(transport=httpx.MockTransport(web))
    app = create_app(settings, models=models, media_client=media_client)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def q(**extra: Any) -> dict[str, Any]:
    return {"question": "Where is the square?", **extra}


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "proreason", "messages": list(messages), **extra}


def user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def img(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


TEXT = {"type": "text", "text": "What is this?"}
PNG_2X2 = png_data_url(2, 2)

# (name, path, request kwargs, expected status, a fragment of the message, expected param)
# fmt: off
BAD_INPUTS: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
    ("malformed json", "/v1/reason", {"content": b'{"question": "x",', "headers": {"content-type": "application/json"}}, 400, "malformed JSON", None),
    ("json array body", "/v1/reason", {"json": [1, 2]}, 400, "JSON object", None),
    ("question wrong type", "/v1/reason", {"json": {"question": 12}}, 400, "question", "question"),
    ("missing question", "/v1/reason", {"json": {"images": []}}, 400, "missing required field", "question"),
    ("blank question", "/v1/reason", {"json": q(question="   ")}, 400, "blank", "question"),
    ("images not a list", "/v1/reason", {"json": q(images="abc")}, 400, "images", "images"),
    ("bad base64", "/v1/reason", {"json": q(images=["data:image/png;base64,!!!not-base64!!!"])}, 400, "base64", "images[0]"),
    ("non-image bytes", "/v1/reason", {"json": q(images=[b64_url(b"hello, I am text" * 10)])}, 400, "image", "images[0]"),
    ("truncated png", "/v1/reason", {"json": q(images=["TRUNCATED"])}, 400, "image", "images[0]"),
    ("20000x20000 declared", "/v1/reason", {"json": q(images=[b64_url(png_declaring(20000, 20000))])}, 400, "pixels", "images[0]"),
    ("too many images", "/v1/reason", {"json": q(images=[PNG_2X2] * 9)}, 400, "too many images", "images"),
    ("oversized body", "/v1/reason", {"json": q(images=["x" * 300_000])}, 413, "too large", None),
    ("ssrf loopback", "/v1/reason", {"json": q(images=["http://127.0.0.1/a.png"])}, 400, "image 1", "images[0]"),
    ("ssrf private", "/v1/reason", {"json": q(images=["http://10.0.0.1/a.png"])}, 400, "image 1", "images[0]"),
    ("ssrf metadata", "/v1/reason", {"json": q(images=["http://169.254.169.254/latest/meta-data/"])}, 400, "image 1", "images[0]"),
    ("ssrf ipv6 loopback", "/v1/reason", {"json": q(images=["http://[::1]/a.png"])}, 400, "image 1", "images[0]"),
    ("redirect to loopback", "/v1/reason", {"json": q(images=[f"http://{PUBLIC_IP}/bounce"])}, 400, "image 1", "images[0]"),
    ("file url", "/v1/reason", {"json": q(images=["file:///etc/passwd"])}, 400, "image 1", "images[0]"),
    ("unknown method", "/v1/reason", {"json": q(method="magic")}, 400, "method", "method"),
    ("bad mode", "/v1/reason", {"json": q(mode="hybrid")}, 400, "mode", "mode"),
    ("max_rounds 0", "/v1/reason", {"json": q(max_rounds=0)}, 400, "greater than or equal to 1", "max_rounds"),
    ("max_rounds 1000", "/v1/reason", {"json": q(max_rounds=1000)}, 400, "less than or equal to 32", "max_rounds"),
    ("temperature -1", "/v1/reason", {"json": q(temperature=-1)}, 400, "temperature", "temperature"),
    ("multiple_choice without options", "/v1/reason", {"json": q(answer_format="multiple_choice")}, 400, "at least 2 'options'", None),
    ("options on an open question", "/v1/reason", {"json": q(options=["a", "b"])}, 400, "only allowed", None),
    ("unknown field", "/v1/reason", {"json": q(questoin="typo")}, 400, "questoin", "questoin"),
    ("stream not a bool", "/v1/reason", {"json": q(stream="yes please")}, 400, "stream", "stream"),
    ("negative timeout", "/v1/reason", {"json": q(timeout_s=-5)}, 400, "timeout_s", "timeout_s"),
    ("empty messages", "/v1/chat/completions", {"json": chat()}, 400, "messages", "messages"),
    ("last message not user", "/v1/chat/completions", {"json": chat(user(TEXT), {"role": "assistant", "content": "hi"})}, 400, "last message must be a user message", "messages"),
    ("only a system message", "/v1/chat/completions", {"json": chat({"role": "system", "content": "be nice"})}, 400, "user message", "messages"),
    ("unknown model", "/v1/chat/completions", {"json": {**chat(user(TEXT)), "model": "gpt-4o"}}, 404, "does not exist", "model"),
    ("missing model", "/v1/chat/completions", {"json": {"messages": [user(TEXT)]}}, 400, "missing required field 'model'", "model"),
    ("unknown content part", "/v1/chat/completions", {"json": chat(user({"type": "input_audio", "input_audio": {}}))}, 400, "input_audio", None),
    ("image in a system message", "/v1/chat/completions", {"json": chat({"role": "system", "content": [img(PNG_2X2)]}, user(TEXT))}, 400, "only allowed in user messages", "messages[0].content"),
    ("n=2", "/v1/chat/completions", {"json": chat(user(TEXT), n=2)}, 400, "n=1", "n"),
    ("tools", "/v1/chat/completions", {"json": chat(user(TEXT), tools=[{"type": "function", "function": {"name": "f"}}])}, 400, "tools", "tools"),
    ("stream_options without stream", "/v1/chat/completions", {"json": chat(user(TEXT), stream_options={"include_usage": True})}, 400, "stream_options", "stream_options"),
    ("image but no text", "/v1/chat/completions", {"json": chat(user(img(PNG_2X2)))}, 400, "no text", "messages[0].content"),
    ("chat temperature -1", "/v1/chat/completions", {"json": chat(user(TEXT), temperature=-1)}, 400, "temperature", "temperature"),
    ("chat bad image", "/v1/chat/completions", {"json": chat(user(TEXT, img("data:image/png;base64,AAAA")))}, 400, "image", "messages[0].content[1].image_url"),
    ("chat ssrf", "/v1/chat/completions", {"json": chat(user(img("http://169.254.169.254/x"), TEXT))}, 400, "image", "messages[0].content[0].image_url"),
    ("tool role", "/v1/chat/completions", {"json": chat({"role": "tool", "content": "x"}, user(TEXT))}, 400, "role", "messages[0].role"),
    ("chat mc without options", "/v1/chat/completions", {"json": chat(user(TEXT), proreason={"answer_format": "multiple_choice"})}, 400, "options", "proreason.options"),
    ("json_schema response_format", "/v1/chat/completions", {"json": chat(user(TEXT), response_format={"type": "json_schema"})}, 400, "response_format", "response_format"),
    ("upload non-image", "/v1/reason/upload", {"data": {"question": "What?"}, "files": [("files", ("a.png", b"not an image at all", "image/png"))]}, 400, "image", "files[0]"),
    ("upload without question", "/v1/reason/upload", {"data": {"method": "direct"}}, 400, "question", "question"),
    ("upload bad max_rounds", "/v1/reason/upload", {"data": {"question": "x", "max_rounds": "many"}}, 400, "max_rounds", "max_rounds"),
    ("invalid utf-8", "/v1/reason", {"content": b'{"question": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, 400, "could not be parsed", None),
    ("json nested 100000 deep", "/v1/reason", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}}, 400, "could not be parsed", None),
    ("empty body", "/v1/reason", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "missing request body", None),
    ("empty upload", "/v1/reason/upload", {"data": {"question": "What?"}, "files": [("files", ("a.png", b"", "image/png"))]}, 400, "empty", "files[0]"),
    ("ipv4-mapped loopback", "/v1/chat/completions", {"json": chat(user(img("http://[::ffff:127.0.0.1]/x"), TEXT))}, 400, "not allowed", "messages[0].content[0].image_url"),
    ("text/plain body", "/v1/reason", {"content": b"question=x", "headers": {"content-type": "text/plain"}}, 400, "JSON object", None),
]
# fmt: on


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment", "param"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_a_clear_4xx(
    client: TestClient,
    png_bytes: bytes,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    fragment: str,
    param: str | None,
) -> None:
    if kwargs.get("json", {}) and "TRUNCATED" in json.dumps(kwargs["json"]):
        kwargs = {"json": q(images=[b64_url(png_bytes[: len(png_bytes) // 2])])}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment.lower() in error["message"].lower(), error
    assert error["type"] == ("invalid_request_error")
    assert error["request_id"] == r.headers["x-request-id"]
    if param is not None:
        assert error["param"] == param, error


def test_the_bad_input_table_is_big_enough() -> None:
    assert len(BAD_INPUTS) >= 25


def test_refused_urls_are_never_contacted(client: TestClient, web: RecordingWeb) -> None:
    for ref in ("http://127.0.0.1/a.png", "http://10.0.0.1/a.png", "http://[::1]/a.png"):
        assert client.post("/v1/reason", json=q(images=[ref])).status_code == 400
    r = client.post("/v1/reason", json=q(images=[f"http://{PUBLIC_IP}/bounce"]))
    assert r.status_code == 400
    assert web.hosts == [PUBLIC_IP]  # the redirect target was checked and refused, not fetched


def test_allowed_url_is_fetched(client: TestClient, web: RecordingWeb, vision: FakeModel) -> None:
    r = client.post("/v1/reason", json=q(images=[f"http://{PUBLIC_IP}/shapes.png"]))
    assert r.status_code == 200, r.text
    assert vision.calls[0].request.images[0].size == (64, 64)


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/reason")
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_bad_input_never_reaches_the_models(
    client: TestClient, vision: FakeModel, text: FakeModel
) -> None:
    for case in BAD_INPUTS[:12]:
        client.post(case[1], **case[2])
    assert vision.calls == [] and text.calls == []


def test_assisted_mode_without_a_text_model_is_a_400(data_url: str) -> None:
    app = create_app(make_settings(), models=ModelSet(vision=FakeModel()))
    with TestClient(app) as c:
        r = c.post("/v1/reason", json=q(images=[data_url], mode="assisted"))
        assert r.status_code == 400
        assert "text model" in r.json()["error"]["message"]
        assert c.post("/v1/reason", json=q(images=[data_url], mode="pure")).status_code == 200


# --------------------------------------------------------------------------- model errors


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (ModelUnavailable("upstream down"), 503, "model_unavailable", "5"),
        (Overloaded("upstream busy", retry_after_s=3), 429, "overloaded", "3"),
        (ModelLoadError("no weights"), 503, "model_load_error", "5"),
        (ModelTimeout("upstream slow"), 504, "model_timeout", None),
        (ModelRejected("bad request", status_code=400), 502, "model_rejected", None),
        (
            ModelRejected("This model's maximum context length is 4096 tokens", status_code=400),
            400,
            "context_length_exceeded",
            None,
        ),
    ],
)
def test_model_errors_map_to_status(
    client: TestClient,
    data_url: str,
    text: FakeModel,
    exc: ProReasonError,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    text.raise_on["summarizer"] = exc
    r = client.post("/v1/reason", json=q(images=[data_url]))
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert r.headers.get("retry-after") == retry_after


def test_a_bug_is_a_500_that_leaks_nothing(
    client: TestClient, data_url: str, text: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    text.raise_on["summarizer"] = RuntimeError("secret-internal-detail")
    r = client.post("/v1/reason", json=q(images=[data_url]), headers={"X-Request-Id": "bug-1"})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
        "request_id": "bug-1",
    }
    assert "secret-internal-detail" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and rec.levelname == "ERROR"]
    assert logged and getattr(logged[0], "request_id", None) == "bug-1"


def test_openai_client_sees_model_errors(client: TestClient, text: FakeModel) -> None:
    text.raise_on["answer"] = ModelUnavailable("upstream down")
    oai = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="proreason", messages=[user(TEXT)])
    assert info.value.status_code == 503


# --------------------------------------------------------------------------- inside a stream


def test_error_after_the_stream_started_is_an_error_event(
    client: TestClient, data_url: str, text: FakeModel
) -> None:
    text.raise_on["summarizer"] = ModelUnavailable("upstream down")
    r = client.post("/v1/reason", json=q(images=[data_url], stream=True))
    assert r.status_code == 200
    events = parse_sse(r.text)
    # the failed summarizer call is a recorded step; then the error, then the end
    assert [e for e, _ in events] == ["dispatch", "vision", "verdict", "answer", "error", "done"]
    assert "upstream down" in json.loads(events[3][1])["error"]
    assert json.loads(events[4][1])["error"]["code"] == "model_unavailable"


def test_chat_stream_error_reaches_the_openai_client(
    client: TestClient, data_url: str, text: FakeModel
) -> None:
    text.raise_on["summarizer"] = ModelTimeout("upstream slow")
    oai = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    stream = oai.chat.completions.create(
        model="proreason", messages=[user(TEXT, img(data_url))], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.append(chunk)
    assert "upstream slow" in info.value.message
    assert seen[0].choices[0].delta.role == "assistant"


def test_invalid_request_is_rejected_before_the_stream_starts(client: TestClient) -> None:
    r = client.post("/v1/reason", json=q(images=["http://10.0.0.1/a.png"], stream=True))
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
