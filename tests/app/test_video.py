"""Video questions through the HTTP API: a `video_url` part in chat (data: or http(s) URL through
the SSRF guard), `video` / `video_file` in /v1/reason; the frames at the model's input (order,
labels, colours), the text roles told the timestamps; every refusal a 400 `invalid_video` naming
the field; the official openai client over a real socket; an OpenAI-compatible upstream receiving
the frames as image parts."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from agents.types import ModelSet
from app.main import create_app
from tests.app.conftest import LiveServer, make_settings, png_data_url
from tests.app.test_upstreams import openai_settings
from tests.fakes.models import FakeModel
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.roles import RoleResponder
from tests.fakes.videos import frames_shown, make_video


@pytest.fixture(scope="module")
def mp4() -> bytes:
    """4.0 s at 10 fps: the square red until frame 24, blue from frame 25 (2.5 s)."""
    return make_video(frames=40, fps=10, change_at=25)


def video_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def video_turn(text: str, url: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def chat(client: TestClient, messages: list[dict[str, Any]], **ext: Any):
    body: dict[str, Any] = {"model": "proreason", "messages": messages}
    if ext:
        body["proreason"] = ext
    return client.post("/v1/chat/completions", json=body)



def make_client(vision: FakeModel, text: FakeModel, **media: Any) -> TestClient:
    settings = make_settings(media=media) if media else make_settings()
    return TestClient(create_app(settings, models=ModelSet(vision=vision, text=text)),
                      raise_server_exceptions=False)  # fmt: skip


# ------------------------------------------------------------------------------ it works


def test_chat_video_frames_reach_the_vision_expert_in_order(
    client: TestClient, vision: FakeModel, text: FakeModel, mp4: bytes
) -> None:
    r = chat(client, [video_turn("When does it turn blue?", video_url(mp4))], video_frames=4,
             trace=True)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["proreason"]["stop_reason"] == "solved"
    (call,) = vision.of("vision")
    assert frames_shown(call) == [
        ("Frame 1 at 0.50 s:", "red"),
        ("Frame 2 at 1.50 s:", "red"),
        ("Frame 3 at 2.50 s:", "blue"),
        ("Frame 4 at 3.50 s:", "blue"),
    ]
    for c in text.calls:
        assert "4 frames, in time order: frame 1 at 0.50 s, frame 2 at 1.50 s" in c.user_text
    assert r.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 4 * 7


def test_chat_default_frames_and_scene_sampling(
    client: TestClient, vision: FakeModel, mp4: bytes
) -> None:
    r = chat(client, [video_turn("How many frames?", video_url(mp4))])
    assert r.status_code == 200, r.text
    assert len(frames_shown(vision.of("vision")[0])) == 8  # media.video_frames
    vision.calls.clear()
    r = chat(client, [video_turn("Cuts?", video_url(mp4))], video_frames=2, video_sampling="scene")
    assert r.status_code == 200, r.text
    assert frames_shown(vision.of("vision")[0]) == [
        ("Frame 1 at 0.00 s:", "red"),
        ("Frame 2 at 2.50 s:", "blue"),
    ]


def test_a_follow_up_turn_keeps_the_video(
    client: TestClient, vision: FakeModel, text: FakeModel, mp4: bytes
) -> None:
    url = video_url(mp4)
    messages = [
        video_turn("What is in the video?", url),
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "And what happens after 2 s?"},
    ]
    r = chat(client, messages, video_frames=2)
    assert r.status_code == 200, r.text
    assert [c for _, c in frames_shown(vision.of("vision")[0])] == ["red", "blue"]
    assert "User: [the video] What is in the video?" in text.calls[0].user_text


def test_reason_json_and_upload(client: TestClient, vision: FakeModel, mp4: bytes) -> None:
    r = client.post("/v1/reason", json={"question": "When?", "video": video_url(mp4),
                                        "video_frames": 3, "trace": True})  # fmt: skip
    assert r.status_code == 200, r.text
    assert [label for label, _ in frames_shown(vision.of("vision")[0])] == [
        "Frame 1 at 0.60 s:", "Frame 2 at 2.00 s:", "Frame 3 at 3.30 s:",
    ]  # fmt: skip
    vision.calls.clear()
    r = client.post(
        "/v1/reason/upload",
        data={"question": "When?", "video_frames": "2", "video_sampling": "scene"},
        files={"video_file": ("clip.mp4", mp4, "video/mp4")},
    )
    assert r.status_code == 200, r.text
    assert [c for _, c in frames_shown(vision.of("vision")[0])] == ["red", "blue"]


def test_reason_stream_with_a_video(client: TestClient, mp4: bytes) -> None:
    body = {"question": "When?", "video": video_url(mp4), "stream": True}
    with client.stream("POST", "/v1/reason", json=body) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert "event: vision" in text and "event: result" in text


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path, mp4: bytes) -> Iterator[str]:
    (tmp_path / "clip.mp4").write_bytes(mp4)
    handler = functools.partial(_Files, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_video_url_is_fetched_through_the_ssrf_guard(
    vision: FakeModel, text: FakeModel, file_server: str
) -> None:
    url = f"{file_server}/clip.mp4"
    with make_client(vision, text) as client:  # loopback is not allowed by default
        r = chat(client, [video_turn("When?", url)])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_video" and err["param"] == "messages[0].content[0].video_url"
    assert "127.0.0.1" in err["message"] and not vision.calls
    with make_client(vision, text, allow_hosts=["127.0.0.1"]) as client:
        r = chat(client, [video_turn("When?", url)], video_frames=2)
        assert r.status_code == 200, r.text
        assert [c for _, c in frames_shown(vision.of("vision")[0])] == ["red", "blue"]
        r = client.post("/v1/reason", json={"question": "When?", "video": f"{file_server}/nope"})
        assert r.status_code == 400 and "HTTP 404" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------ refusals


def refusal(r, param: str, words: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["request_id"]
    assert (err["code"], err["param"]) == ("invalid_video", param), err
    assert words in err["message"], err["message"]


PART = "messages[0].content[0].video_url"


def test_non_videos_and_corrupt_videos_are_400s(client: TestClient, vision: FakeModel, mp4) -> None:
    png = base64.b64decode(png_data_url(8, 8).split(",", 1)[1])
    refusal(chat(client, [video_turn("?", video_url(png))]), PART, "this is a PNG image")
    refusal(chat(client, [video_turn("?", video_url(b"not a video at all"))]), PART,
            "not a supported video")  # fmt: skip
    refusal(chat(client, [video_turn("?", video_url(mp4[: len(mp4) // 2]))]), PART,
            "cannot decode video")  # fmt: skip
    refusal(chat(client, [video_turn("?", png_data_url(8, 8))]), PART,
            "unsupported data URL type 'image/png'")  # fmt: skip
    refusal(chat(client, [video_turn("?", "file:///etc/passwd")]), PART, "unsupported URL scheme")
    refusal(client.post("/v1/reason", json={"question": "?", "video": "data:video/mp4;base64,@@"}),
            "video", "invalid base64")  # fmt: skip
    r = client.post("/v1/reason/upload", data={"question": "?"},
                    files={"video_file": ("x.mp4", b"\x89PNG\r\n\x1a\n", "video/mp4")})  # fmt: skip
    refusal(r, "video_file", "PNG image")
    assert not vision.calls


def test_the_limits_are_400s(vision: FakeModel, text: FakeModel, mp4: bytes) -> None:
    url = video_url(mp4)
    with make_client(vision, text, max_video_bytes=2048) as client:
        refusal(chat(client, [video_turn("?", url)]), PART, "video is too large")
    with make_client(vision, text, max_video_duration_s=3) as client:
        refusal(chat(client, [video_turn("?", url)]), PART, "video is too long: 4.0 s")
    with make_client(vision, text, max_video_pixels=1000) as client:
        refusal(client.post("/v1/reason", json={"question": "?", "video": url}), "video",
                "resolution is too large: 64x48")  # fmt: skip
    with make_client(vision, text, max_video_frames=4, video_frames=4) as client:
        refusal(chat(client, [video_turn("?", url)], video_frames=5), "proreason.video_frames",
                "from 1 to 4")  # fmt: skip
        refusal(client.post("/v1/reason", json={"question": "?", "video": url, "video_frames": 9}),
                "video_frames", "from 1 to 4")  # fmt: skip
    assert not vision.calls


def test_a_video_with_images_or_a_second_video_is_refused(client: TestClient, mp4: bytes) -> None:
    url, other = video_url(mp4), video_url(make_video(frames=20))
    turn = video_turn("?", url)
    turn["content"].insert(0, {"type": "image_url", "image_url": {"url": png_data_url(8, 8)}})
    refusal(chat(client, [turn]), "messages[0].content[1].video_url", "images or one video")
    two = video_turn("?", url)
    two["content"].insert(1, {"type": "video_url", "video_url": {"url": other}})
    refusal(chat(client, [two]), "messages[0].content[1].video_url", "at most one video")
    assistant = {"role": "assistant", "content": [{"type": "video_url", "video_url": url}]}
    refusal(chat(client, [assistant, video_turn("?", url)]), "messages[0].content",
            "only allowed in user messages")  # fmt: skip
    refusal(client.post("/v1/reason", json={"question": "?", "video": url,
                                           "images": [png_data_url(8, 8)]}),
            "video", "images or one video")  # fmt: skip
    r = client.post("/v1/reason/upload", data={"question": "?", "video": url},
                    files={"video_file": ("x.mp4", mp4, "video/mp4")})  # fmt: skip
    refusal(r, "video_file", "not both")


def test_bad_sampling_is_a_400(client: TestClient, mp4: bytes) -> None:
    r = chat(client, [video_turn("?", video_url(mp4))], video_sampling="random")
    assert r.status_code == 400 and r.json()["error"]["param"] == "proreason.video_sampling"


# ------------------------------------------------------------------------------ real sockets


def test_openai_client_over_a_live_server(
    vision: FakeModel, text: FakeModel, mp4: bytes
) -> None:
    app = create_app(make_settings(), models=ModelSet(vision=vision, text=text))
    with LiveServer(app) as live:
        oai = OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        reply = oai.chat.completions.create(
            model="proreason",
            messages=[video_turn("When does it turn blue?", video_url(mp4))],  # type: ignore[list-item]
            extra_body={"proreason": {"video_frames": 4}},
        )
        assert reply.choices[0].message.content == "the red square is left of the blue circle"
        shown = [c for _, c in frames_shown(vision.of("vision")[0])]
        assert shown == ["red", "red", "blue", "blue"]
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(
                model="proreason",
                messages=[video_turn("?", video_url(b"junk"))],  # type: ignore[list-item]
            )
        assert info.value.code == "invalid_video"


def test_an_openai_compatible_upstream_gets_the_frames_as_image_parts(mp4: bytes) -> None:
    vlm = FakeOpenAIServer(model="fake-vlm", responder=RoleResponder())
    llm = FakeOpenAIServer(model="fake-llm", responder=RoleResponder())
    with vlm, llm, TestClient(create_app(openai_settings(vlm, llm))) as client:
        r = client.post("/v1/reason", json={"question": "When?", "video": video_url(mp4),
                                            "video_frames": 4})  # fmt: skip
        assert r.status_code == 200, r.text
        parts = vlm.chat_requests[0].body["messages"][-1]["content"]
        kinds = [p["type"] for p in parts]
        assert kinds == ["text"] + ["text", "image_url"] * 4 + ["text"]
        labels = [p["text"] for p in parts[1:-1:2]]
        assert labels == [f"Frame {n} at {t} s:" for n, t in
                          enumerate(["0.50", "1.50", "2.50", "3.50"], start=1)]  # fmt: skip
        assert all(p["image_url"]["url"].startswith("data:image/png;base64,")
                   for p in parts if p["type"] == "image_url")  # fmt: skip
        text_body = llm.chat_requests[0].body["messages"][-1]["content"]
        assert "frame 3 at 2.50 s" in str(text_body)
