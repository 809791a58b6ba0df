"""`proreason ask --video`: in-process (over a loopback OpenAI-compatible upstream) and against a
running service (--url); the frames reach the LVLM as labelled image parts; bad videos are one
line."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from tests.app.cli.test_cli import upstream, upstream_profile  # noqa: F401 (fixtures)
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.videos import write_video


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", frames=40, fps=10, change_at=25)


def test_ask_video_in_process(
    upstream_profile: Path,  # noqa: F811
    upstream: FakeOpenAIServer,  # noqa: F811
    clip: Path,
    capsys,
) -> None:
    args = ["ask", "--profile", str(upstream_profile), "--video", str(clip), "--video-frames", "2"]
    code = main([*args, "When does it turn blue?"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == "the red square is left of the blue circle"
    vision = [r for r in upstream.chat_requests if "Frame 1 at" in str(r.body)]
    assert vision and [
        p["text"] for p in vision[0].body["messages"][-1]["content"] if p["type"] == "text"
    ][1:3] == ["Frame 1 at 1.00 s:", "Frame 2 at 3.00 s:"]


def test_ask_video_against_a_running_service(clip: Path, capsys) -> None:
    from agents.types import ModelSet
    from app.main import create_app
    from tests.app.conftest import LiveServer, make_settings
    from tests.fakes.models import FakeModel

    vision, text = FakeModel(name="vlm"), FakeModel(name="llm")
    app = create_app(make_settings(), models=ModelSet(vision=vision, text=text))
    with LiveServer(app) as live:
        code = main(["ask", "--url", live.url, "--video", str(clip), "--video-sampling", "scene",
                     "--video-frames", "2", "When?"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == "the red square is left of the blue circle"
    user = vision.of("vision")[0].request.messages[-1]
    assert [p.text for p in user.content if hasattr(p, "text")][1:3] == [
        "Frame 1 at 0.00 s:",
        "Frame 2 at 2.50 s:",
    ]


def test_bad_videos_are_one_line(
    upstream_profile: Path,  # noqa: F811
    tmp_path: Path,
    clip: Path,
    shapes_png: Path,
    capsys,
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"junk junk junk")
    base = ["ask", "--profile", str(upstream_profile)]
    for args, words in (
        (["--video", str(tmp_path / "missing.mp4")], "video: no such file"),
        (["--video", str(junk)], "not a supported video"),
        (["--video", str(clip), "--image", str(shapes_png)], "--image(s) or one --video"),
        (["--video", str(clip), "--video-frames", "99"], "video_frames must be"),
    ):
        assert main([*base, *args, "What?"]) != 0
        out, err = capsys.readouterr()
        assert out == "" and words in err and err.count("\n") == 1, err
