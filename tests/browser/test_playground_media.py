"""The playground's video upload (preview, options, what reaches the vision expert) and its OCR
expert toggle, in a real chromium against a live loopback server with scripted FakeModels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.types import ModelSet
from app.main import create_app
from models.types import ImagePart, TextPart
from tests.app.conftest import LiveServer, make_settings
from tests.browser.conftest import AXE_JS
from tests.browser.test_playground import TIMEOUT_MS, open_playground
from tests.fakes.models import FakeModel
from tests.fakes.videos import colour_of, write_video


@pytest.fixture
def served() -> Iterator[tuple[LiveServer, FakeModel, FakeModel]]:
    vision = FakeModel(name="scripted-vlm", backend="scripted")
    text = FakeModel(name="scripted-llm", backend="scripted")
    app = create_app(make_settings(), models=ModelSet(vision=vision, text=text))
    with LiveServer(app) as server:
        yield server, vision, text


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """WebM/VP9: Debian's chromium plays it (it has no H.264), so the preview loads."""
    return write_video(
        tmp_path / "clip.webm", frames=40, fps=10, change_at=25, container="webm",
        codec="libvpx-vp9",
    )  # fmt: skip


def labelled_frames(vision: FakeModel) -> list[tuple[str | None, str]]:
    call = vision.of("vision")[0]
    out, label = [], None
    for part in call.request.messages[-1].content:
        if isinstance(part, TextPart):
            label = part.text
        elif isinstance(part, ImagePart):
            out.append((label, colour_of(part.image.image)))
    return out


def test_a_video_is_previewed_uploaded_and_sampled(visit, served, clip: Path, shapes_png) -> None:
    server, vision, _ = served
    v = visit()
    page = open_playground(v, server.url)
    page.set_input_files("#files", str(shapes_png))
    assert page.locator("#thumbs img").count() == 1
    page.set_input_files("#files", str(clip))  # a video replaces the images (one or the other)
    assert page.locator("#thumbs img").count() == 0
    assert "kept the video" in page.locator("#media-status").inner_text()
    preview = page.get_by_label("Chosen video: clip.webm")
    preview.wait_for()
    page.wait_for_function(
        "() => document.getElementById('video-preview').readyState >= 1", timeout=TIMEOUT_MS
    )
    assert page.evaluate("document.getElementById('video-preview').duration") == pytest.approx(
        4.0, abs=0.2
    )
    page.get_by_label("Video frames").fill("4")
    page.get_by_label("Frame sampling").select_option("uniform")
    page.get_by_label("Question").fill("When does the square turn blue?")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
    assert "stop reason: solved" in page.locator(".run .final").inner_text()
    assert labelled_frames(vision) == [
        ("Frame 1 at 0.50 s:", "red"),
        ("Frame 2 at 1.50 s:", "red"),
        ("Frame 3 at 2.50 s:", "blue"),
        ("Frame 4 at 3.50 s:", "blue"),
    ]
    page.get_by_role("button", name="Copy as curl").click()
    curl = page.locator("#snippet").inner_text()
    assert "video_file=@clip.webm" in curl and "video_frames=4" in curl
    page.get_by_role("button", name="Copy as Python (openai client)").click()
    py = page.locator("#snippet").inner_text()
    assert '"video_url"' in py and 'data_url("clip.webm", "video/webm")' in py
    assert '"video_frames": 4' in py
    compile(py, "snippet.py", "exec")

    page.get_by_role("button", name="Remove video (clip.webm)").click()
    assert page.locator("#video-box").is_hidden()
    assert v.off_loopback() == [] and v.console_errors == []


def test_a_bad_video_is_a_plain_400(visit, served, tmp_path: Path) -> None:
    server, vision, _ = served
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100)
    page = open_playground(visit(), server.url)
    page.set_input_files("#files", str(broken))
    page.get_by_label("Question").fill("What happens?")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_selector(".run[data-state=error]", timeout=TIMEOUT_MS)
    assert page.locator(".run").get_attribute("data-status") == "400"
    assert "cannot decode video" in page.locator(".run .error").inner_text()
    assert not vision.calls


def test_the_ocr_toggle_sends_the_option(visit, served, shapes_png: Path) -> None:
    server, _, text = served
    page = open_playground(visit(), server.url)
    page.set_input_files("#files", str(shapes_png))
    page.get_by_label("Question").fill("What is written?")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
    assert "OCR expert" not in text.of("dispatcher")[0].text
    page.get_by_label("OCR expert").check()
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
    assert "OCR expert" in text.of("dispatcher")[-1].text
    page.get_by_role("button", name="Copy as curl").click()
    assert "ocr=true" in page.locator("#snippet").inner_text()
    page.get_by_role("button", name="Copy as Python (openai client)").click()
    assert '"ocr": True' in page.locator("#snippet").inner_text()


def test_the_media_controls_are_accessible_by_keyboard(visit, served, clip: Path) -> None:
    server, _, _ = served
    v = visit(bypass_csp=True)
    page = open_playground(v, server.url)
    page.set_input_files("#files", str(clip))
    page.get_by_label("Chosen video: clip.webm").wait_for()
    page.add_script_tag(path=str(AXE_JS))
    violations = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
             .map(v => ({id: v.id, impact: v.impact,
                         nodes: v.nodes.map(n => n.target.join(' '))}))"""
    )
    bad = [x for x in violations if x["impact"] in ("serious", "critical")]
    assert bad == [], json.dumps(bad, indent=1)
    # keyboard: the OCR toggle and the video controls are reached with Tab and work with keys
    page.get_by_label("OCR expert").focus()
    page.keyboard.press("Space")
    assert page.get_by_label("OCR expert").is_checked()
    page.get_by_label("Video frames").focus()
    page.keyboard.type("3")
    assert page.get_by_label("Video frames").input_value() == "3"
    remove = page.get_by_role("button", name="Remove video (clip.webm)")
    remove.focus()
    page.keyboard.press("Enter")
    assert page.locator("#video-box").is_hidden()
    assert page.evaluate("document.activeElement.id") == "files"
