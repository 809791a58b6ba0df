"""Third-party OpenAI clients against the real service on a loopback socket: LiteLLM and
LangChain (``langchain_openai.ChatOpenAI``), plain and streaming, each through the conversation
every chat UI sends: turn 1 an image (a data URL) and a question, turn 2 a text-only follow-up
with the assistant's turn-1 answer in the history. The follow-up's run must still show the vision
expert the turn-1 image, and its answer must come back.

Offline: LiteLLM fetches its model cost map from the network at import unless
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (set below, before the import); LangChain needs nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

from collections.abc import Iterator

import litellm
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from agents.types import ModelSet
from app.main import create_app
from tests.app.conftest import LiveServer, make_settings, png_data_url
from tests.fakes.models import FakeModel

#: litellm's GitHub Copilot provider (imported lazily on a call) declares TypedDicts with
#: ``ReadOnly`` items, which pydantic warns about; the suite turns warnings into errors
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item.* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning"
)

KEY = "clients-key"
QUESTION = "What shape is in the picture?"
FOLLOW_UP = "And what colour is it?"
#: the summarizer's answers, turn by turn
ANSWERS = ("a square", "it is red")
RED = (255, 0, 0)


@pytest.fixture
def vision() -> FakeModel:
    return FakeModel(name="clients-vlm")


@pytest.fixture
def text() -> FakeModel:
    return FakeModel(name="clients-llm", script={"summarizer": [f"Answer: {a}" for a in ANSWERS]})


@pytest.fixture
def live(vision: FakeModel, text: FakeModel) -> Iterator[LiveServer]:
    settings = make_settings(server={"api_keys": KEY})
    app = create_app(settings, models=ModelSet(vision=vision, text=text))
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def red_url() -> str:
    return png_data_url(16, 16, "red")


def turn_one(url: str) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": QUESTION},
        ],
    }


def conversation(url: str, first_answer: str) -> list[dict]:
    return [
        turn_one(url),
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": FOLLOW_UP},
    ]


def assert_follow_up_saw_turn_one(vision: FakeModel, text: FakeModel, first_answer: str) -> None:
    """The second run (the last dispatcher call onwards) showed the vision expert the turn-1
    image, and its text roles saw the history: the image's turn and the assistant's answer."""
    assert len(text.of("dispatcher")) == 2, text.roles()  # one run per turn
    dispatcher = text.of("dispatcher")[-1].user_text
    assert f"[image 1] {QUESTION}" in dispatcher
    assert f"Assistant: {first_answer}" in dispatcher
    assert FOLLOW_UP in dispatcher
    looks = vision.of("vision")
    assert len(looks) == 2
    follow_up = looks[-1]
    assert follow_up.n_images == 1
    assert follow_up.request.images[0].image.getpixel((0, 0)) == RED


# --------------------------------------------------------------------------- LiteLLM


def _litellm_args(live: LiveServer) -> dict:
    return {"model": "openai/proreason", "api_base": f"{live.url}/v1", "api_key": KEY}


def test_litellm_two_turns(
    live: LiveServer, vision: FakeModel, text: FakeModel, red_url: str
) -> None:
    first = litellm.completion(messages=[turn_one(red_url)], **_litellm_args(live))
    first_answer = first.choices[0].message.content
    assert first_answer == ANSWERS[0]
    second = litellm.completion(messages=conversation(red_url, first_answer), **_litellm_args(live))
    assert second.choices[0].message.content == ANSWERS[1]
    assert second.choices[0].finish_reason == "stop"
    assert second.usage.prompt_tokens > 0
    assert_follow_up_saw_turn_one(vision, text, first_answer)


def test_litellm_two_turns_streaming(
    live: LiveServer, vision: FakeModel, text: FakeModel, red_url: str
) -> None:
    def ask(messages: list[dict]) -> tuple[str, list]:
        chunks = list(litellm.completion(messages=messages, stream=True, **_litellm_args(live)))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    first_answer, _ = ask([turn_one(red_url)])
    assert first_answer == ANSWERS[0]
    second, chunks = ask(conversation(red_url, first_answer))
    assert second == ANSWERS[1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert_follow_up_saw_turn_one(vision, text, first_answer)


async def test_litellm_async_two_turns(
    live: LiveServer, vision: FakeModel, text: FakeModel, red_url: str
) -> None:
    first = await litellm.acompletion(messages=[turn_one(red_url)], **_litellm_args(live))
    first_answer = first.choices[0].message.content
    second = await litellm.acompletion(
        messages=conversation(red_url, first_answer), **_litellm_args(live)
    )
    assert (first_answer, second.choices[0].message.content) == ANSWERS
    assert_follow_up_saw_turn_one(vision, text, first_answer)


# --------------------------------------------------------------------------- LangChain


def _chat_model(live: LiveServer) -> ChatOpenAI:
    return ChatOpenAI(model="proreason", base_url=f"{live.url}/v1", api_key=KEY, max_retries=0)


def _lc_conversation(url: str, first_answer: str | None = None) -> list:
    messages: list = [HumanMessage(content=turn_one(url)["content"])]
    if first_answer is not None:
        messages += [AIMessage(content=first_answer), HumanMessage(content=FOLLOW_UP)]
    return messages


def test_langchain_invoke_two_turns(
    live: LiveServer, vision: FakeModel, text: FakeModel, red_url: str
) -> None:
    llm = _chat_model(live)
    first = llm.invoke(_lc_conversation(red_url))
    assert first.content == ANSWERS[0]
    second = llm.invoke(_lc_conversation(red_url, first.content))
    assert second.content == ANSWERS[1]
    assert second.response_metadata["finish_reason"] == "stop"
    assert second.usage_metadata["input_tokens"] > 0
    assert_follow_up_saw_turn_one(vision, text, first.content)


def test_langchain_stream_two_turns(
    live: LiveServer, vision: FakeModel, text: FakeModel, red_url: str
) -> None:
    llm = _chat_model(live)

    def ask(messages: list) -> str:
        return "".join(str(chunk.content) for chunk in llm.stream(messages))

    first_answer = ask(_lc_conversation(red_url))
    assert first_answer == ANSWERS[0]
    assert ask(_lc_conversation(red_url, first_answer)) == ANSWERS[1]
    assert_follow_up_saw_turn_one(vision, text, first_answer)


async def test_langchain_async_stream_two_turns(
    live: LiveServer, vision: FakeModel, text: FakeModel, red_url: str
) -> None:
    llm = _chat_model(live)
    first = await llm.ainvoke(_lc_conversation(red_url))
    parts = [str(c.content) async for c in llm.astream(_lc_conversation(red_url, first.content))]
    assert (first.content, "".join(parts)) == ANSWERS
    assert_follow_up_saw_turn_one(vision, text, first.content)
