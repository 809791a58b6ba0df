"""The chat wire format against OpenAI's spec: null members the spec requires, integer usage
details, finish_reason "length", stop / seed / top_p, logprobs refused, GET /v1/models/{id}."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.app.conftest import parse_sse
from tests.fakes.models import FakeModel

ANSWER = "the red square is left of the blue circle"
TEXT_ONLY = {"role": "user", "content": "What is 2 + 2?"}


@pytest.fixture
def oai(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


def user_turn(text: str, url: str) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def chat(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/chat/completions", json={"model": "proreason", **body})
    assert r.status_code == 200, r.text
    return r.json()


def stream_chunks(client: TestClient, **body: object) -> list[dict]:
    r = client.post("/v1/chat/completions", json={"model": "proreason", "stream": True, **body})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1] == (None, "[DONE]")
    return [json.loads(d) for _, d in events[:-1]]


def _no_nulls(details: dict) -> None:
    assert all(isinstance(v, int) for v in details.values()), details


# --------------------------------------------------------------------------- 1. null members


def test_non_streaming_body_has_the_members_the_spec_requires(client: TestClient) -> None:
    body = chat(client, messages=[TEXT_ONLY])
    choice = body["choices"][0]
    assert "logprobs" in choice and choice["logprobs"] is None
    assert "refusal" in choice["message"] and choice["message"]["refusal"] is None
    assert "proreason" not in body  # the extension only when asked for


def test_usage_details_are_integers_or_absent(
    client: TestClient, data_url: str, vision: FakeModel, text: FakeModel
) -> None:
    vision.image_tokens = text.image_tokens = None  # the upstream does not count image tokens
    messages = [user_turn("Where?", data_url)]
    body = chat(client, messages=messages)
    _no_nulls(body["usage"]["prompt_tokens_details"])
    assert "image_tokens" not in body["usage"]["prompt_tokens_details"]
    chunks = stream_chunks(client, messages=messages, stream_options={"include_usage": True})
    _no_nulls(chunks[-1]["usage"]["prompt_tokens_details"])
    assert "image_tokens" not in chunks[-1]["usage"]["prompt_tokens_details"]


# --------------------------------------------------------------------------- 2. finish_reason


@pytest.mark.parametrize(("model", "role"), [("proreason", "summarizer"), ("direct", "answer")])
def test_finish_reason_length_when_the_answer_was_cut(
    client: TestClient, data_url: str, vision: FakeModel, text: FakeModel, model: str, role: str
) -> None:
    vision.finish[role] = text.finish[role] = "length"
    messages = [user_turn("Where?", data_url)]
    body = chat(client, messages=messages, model=model)
    assert body["choices"][0]["finish_reason"] == "length"
    chunks = stream_chunks(client, messages=messages, model=model)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finishes if f] == ["length"]


def test_a_cut_intermediate_step_does_not_make_the_answer_length(
    client: TestClient, data_url: str, vision: FakeModel
) -> None:
    vision.finish["vision"] = "length"
    body = chat(client, messages=[user_turn("Where?", data_url)])
    assert body["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------- 3. parameters


@pytest.mark.parametrize(("stop", "expected"), [("square", "the red "), (["blue", " red"], "the")])
def test_stop_cuts_the_answer(oai: OpenAI, data_url: str, stop: object, expected: str) -> None:
    resp = oai.chat.completions.create(
        model="proreason", messages=[user_turn("Where?", data_url)], stop=stop
    )
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"
    chunks = list(
        oai.chat.completions.create(
            model="proreason", messages=[user_turn("Where?", data_url)], stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


def _streamed(chunks: list[dict]) -> tuple[list[str], str | None]:
    """The content pieces of a stream and its finish_reason."""
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    pieces = [ch["delta"]["content"] for ch in choices if ch["delta"].get("content")]
    return pieces, next((ch["finish_reason"] for ch in choices if ch["finish_reason"]), None)


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("e i", "the red squar"),  # across two of the model's pieces ("square", " is")
        (["circle", " blue"], "the red square is left of the"),
        ("the", ""),  # at the very start: no content at all
        ("purple", ANSWER),  # never: held back as it may start, sent at the end
    ],
)
def test_a_streamed_answer_is_cut_at_stop_as_the_whole_one(
    client: TestClient, data_url: str, stop: object, expected: str
) -> None:
    messages = [user_turn("Where?", data_url)]
    whole = chat(client, messages=messages, stop=stop)["choices"][0]
    pieces, finish = _streamed(stream_chunks(client, messages=messages, stop=stop))
    assert "".join(pieces) == whole["message"]["content"] == expected
    assert finish == whole["finish_reason"] == "stop"
    if len(expected) > 12:
        assert len(pieces) >= 3  # still streamed before the cut


def test_a_streamed_answer_cut_at_max_tokens_says_length(
    client: TestClient, data_url: str, text: FakeModel
) -> None:
    text.finish["summarizer"] = "length"
    messages = [user_turn("Where?", data_url)]
    whole = chat(client, messages=messages)["choices"][0]
    pieces, finish = _streamed(stream_chunks(client, messages=messages))
    assert "".join(pieces) == whole["message"]["content"] == ANSWER and len(pieces) > 3
    assert finish == whole["finish_reason"] == "length"


def test_a_streamed_multiple_choice_answer_is_the_option_letter(
    client: TestClient, data_url: str, text: FakeModel
) -> None:
    text.script["summarizer"] = "The notes name a blue circle.\nAnswer: (B)"
    body = {
        "messages": [user_turn("Which shape is blue?", data_url)],
        "proreason": {
            "answer_format": "multiple_choice",
            "options": ["a red square", "a blue circle"],
        },
    }
    whole = chat(client, **body)["choices"][0]
    pieces, finish = _streamed(stream_chunks(client, **body))
    assert pieces == ["B"] and whole["message"]["content"] == "B"
    assert finish == whole["finish_reason"] == "stop"


def test_an_answer_line_after_the_streamed_line_keeps_the_whole_replys_answer(
    client: TestClient, data_url: str, text: FakeModel
) -> None:
    text.script["summarizer"] = "Red.\nNo, the notes say otherwise.\nAnswer: blue"
    body = {"messages": [user_turn("Which colour?", data_url)], "proreason": {"trace": True}}
    whole = chat(client, **body)
    chunks = stream_chunks(client, **body)
    pieces, _ = _streamed(chunks)
    assert whole["choices"][0]["message"]["content"] == "blue"
    assert pieces == ["Red"]  # the documented exception: the stream showed the first line
    assert chunks[-1]["proreason"]["steps"][-1]["output"].endswith("Answer: blue")


def test_stop_wins_over_length(client: TestClient, data_url: str, text: FakeModel) -> None:
    text.finish["summarizer"] = "length"
    body = chat(client, messages=[user_turn("Where?", data_url)], stop="blue")
    assert body["choices"][0]["message"]["content"] == "the red square is left of the "
    assert body["choices"][0]["finish_reason"] == "stop"


def test_stop_is_not_sent_to_the_intermediate_calls(
    client: TestClient, data_url: str, vision: FakeModel, text: FakeModel
) -> None:
    chat(client, messages=[user_turn("Where?", data_url)], stop=["}"])
    assert all(c.request.sampling.stop == () for c in vision.calls + text.calls)


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [""], ""])
def test_bad_stop_is_a_400(client: TestClient, stop: object) -> None:
    r = client.post(
        "/v1/chat/completions", json={"model": "proreason", "messages": [TEXT_ONLY], "stop": stop}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"


def test_seed_and_top_p_reach_every_model_call(
    oai: OpenAI, data_url: str, vision: FakeModel, text: FakeModel
) -> None:
    oai.chat.completions.create(
        model="proreason", messages=[user_turn("Where?", data_url)], seed=7, top_p=0.5
    )
    calls = vision.calls + text.calls
    assert len(calls) == 4
    assert {(c.request.sampling.seed, c.request.sampling.top_p) for c in calls} == {(7, 0.5)}


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs")],
)
def test_logprobs_are_refused(oai: OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="proreason", messages=[TEXT_ONLY], **extra)
    assert info.value.body["param"] == param
    assert "logprobs" in info.value.message


def test_logprobs_false_is_fine(client: TestClient) -> None:
    body = chat(client, messages=[TEXT_ONLY], logprobs=False)
    assert body["choices"][0]["message"]["content"] and body["choices"][0]["logprobs"] is None


# --------------------------------------------------------------------------- 4. models/{id}


def test_retrieve_a_model(oai: OpenAI) -> None:
    card = oai.models.retrieve("proreason-direct")
    assert card.id == "proreason-direct" and card.object == "model"
    assert card.model_extra["method"] == "direct"


def test_retrieve_an_unknown_model_is_404(oai: OpenAI, client: TestClient) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    body = client.get("/v1/models/gpt-4o").json()
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "model"


# --------------------------------------------------------------------------- 5. strict types


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", True),
        ("top_p", True),
        ("max_tokens", True),
        ("max_tokens", 12.0),
        ("seed", False),
        ("stream", 1),
        ("temperature", "0.5"),
        ("logprobs", 0),
    ],
)
def test_request_types_are_strict(client: TestClient, field: str, value: object) -> None:
    r = client.post(
        "/v1/chat/completions", json={"model": "proreason", "messages": [TEXT_ONLY], field: value}
    )
    assert r.status_code == 400, (field, value)
    assert field in r.json()["error"]["param"]


def test_strict_extension_types(client: TestClient) -> None:
    body = {"model": "proreason", "messages": [TEXT_ONLY], "proreason": {"trace": 1}}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400


def test_ints_are_accepted_for_floats(client: TestClient, text: FakeModel) -> None:
    chat(client, messages=[TEXT_ONLY], temperature=1, top_p=1)
    assert text.calls[0].request.sampling.temperature == 1.0
