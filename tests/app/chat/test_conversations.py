"""What every chat UI sends on its second turn: the conversation's images reach the vision expert.

Driven by the official openai client; the image is attached in turn 1 only.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from openai import OpenAI

from agents.types import ModelSet
from app.chat.prepare import NOT_SHOWN
from app.main import create_app
from tests.app.conftest import make_settings, png_data_url
from tests.fakes.models import FakeModel


def _user(text: str, *urls: str) -> dict:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _client(vision: FakeModel, text: FakeModel, **media: object) -> TestClient:
    settings = make_settings(media=media) if media else make_settings()
    return TestClient(create_app(settings, models=ModelSet(vision=vision, text=text)))


def test_an_image_from_turn_one_reaches_the_vision_expert_in_turn_two() -> None:
    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    red = png_data_url(8, 8, "red")
    with _client(vision, text) as client:
        oai = OpenAI(base_url="http://testserver/v1", api_key="-", http_client=client)
        reply = oai.chat.completions.create(
            model="proreason",
            messages=[
                _user("What shape is this?", red),
                _assistant("A square."),
                {"role": "user", "content": "And what colour is it?"},
            ],
            extra_body={"proreason": {"trace": True}},
        )
    info = reply.model_extra["proreason"]
    assert info["stop_reason"] == "solved"  # not no_image_direct: the loop saw the image
    (call,) = vision.of("vision")
    assert call.n_images == 1
    assert call.request.images[0].image.getpixel((0, 0)) == (255, 0, 0)
    # the text roles see which turn the image came from
    dispatcher = text.of("dispatcher")[0].user_text
    assert "User: [image 1] What shape is this?" in dispatcher
    assert "Assistant: A square." in dispatcher


def test_latest_images_come_first_then_earlier_turns_newest_first() -> None:
    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    red, green, blue = (png_data_url(8, 8, c) for c in ("red", "green", "blue"))
    with _client(vision, text) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "proreason",
                "messages": [
                    _user("first", red),
                    _assistant("ok"),
                    _user("second", green, red),  # red again: fetched and shown once
                    _assistant("ok"),
                    _user("Compare them.", blue),
                ],
            },
        )
    assert r.status_code == 200, r.text
    (call,) = vision.of("vision")
    colours = [img.image.getpixel((0, 0)) for img in call.request.images]
    assert colours == [(0, 0, 255), (0, 128, 0), (255, 0, 0)]
    dispatcher = text.of("dispatcher")[0].user_text
    assert "User: [image 3] first" in dispatcher
    assert "User: [image 2] [image 3] second" in dispatcher


def test_earlier_images_over_the_limit_are_not_loaded_and_say_so() -> None:
    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    old, new = png_data_url(8, 8, "red"), png_data_url(8, 8, "blue")
    with _client(vision, text, max_images=1) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "proreason",
                "messages": [_user("old", old), _assistant("ok"), _user("Now this?", new)],
            },
        )
        assert r.status_code == 200, r.text
        # the latest turn alone over the limit is still a clear 400
        over = client.post(
            "/v1/chat/completions",
            json={"model": "proreason", "messages": [_user("Both?", old, new)]},
        )
    (call,) = vision.of("vision")
    assert [img.image.getpixel((0, 0)) for img in call.request.images] == [(0, 0, 255)]
    assert NOT_SHOWN in text.of("dispatcher")[0].user_text
    assert over.status_code == 400 and "too many images" in over.json()["error"]["message"]
