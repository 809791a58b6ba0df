"""models/ocr.py: the OCR engine on images with rendered text (real RapidOCR, offline), reading
order, the per-image cache, concurrent reads, the timeout and engine failures (injected)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from PIL import Image

from models.errors import ModelError, ModelTimeout
from models.ocr import OcrEngine, OcrLine, group_rows, reading_order
from models.types import ImageInput
from tests.fakes.ocr_images import basic_cases


@pytest.mark.parametrize("case", basic_cases(), ids=lambda c: c.name)
async def test_reads_words_numbers_and_a_table_in_reading_order(ocr_engine, case) -> None:
    result = await ocr_engine.read(ImageInput(case.image))
    assert tuple(line.text for line in result.lines) == case.cells
    assert tuple(tuple(line.text for line in row) for row in result.rows) == case.rows
    assert result.size == case.image.size
    for line in result.lines:  # boxes inside the image, confident
        x0, y0, x1, y1 = line.box
        assert 0 <= x0 < x1 <= case.image.width + 2 and 0 <= y0 < y1 <= case.image.height + 2
        assert line.score >= 0.5


async def test_a_blank_image_has_no_text(ocr_engine) -> None:
    result = await ocr_engine.read(ImageInput(Image.new("RGB", (64, 64), "white")))
    assert result.lines == () and result.text == ""


def _line(text: str, x: int, y: int, h: int = 20) -> OcrLine:
    return OcrLine(text, 1.0, (x, y, x + 10 * len(text), y + h))


def test_reading_order_groups_rows_top_to_bottom_left_to_right() -> None:
    # a row whose cells sit a few pixels apart vertically is still one row
    lines = [_line("c", 300, 4), _line("b", 150, 0), _line("a", 0, 2), _line("d", 0, 40),
             _line("e", 200, 43)]  # fmt: skip
    rows = group_rows(list(reversed(lines)))
    assert [[ln.text for ln in row] for row in rows] == [["a", "b", "c"], ["d", "e"]]
    assert [ln.text for ln in reading_order(lines)] == ["a", "b", "c", "d", "e"]


class Counting:
    """An injected recognizer: counts calls, optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.fail = fail
        self.threads: set[str] = set()

    def __call__(self, image: Image.Image):
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("onnx went wrong")
        return [("world", 0.9, [[60, 0], [100, 0], [100, 20], [60, 20]]),
                ("hello", 0.95, [0, 0, 50, 20]), ("noise", 0.1, [0, 30, 9, 40])]  # fmt: skip


def _img(color: str = "white") -> ImageInput:
    return ImageInput(Image.new("RGB", (120, 50), color))


async def test_cached_per_image_hash_and_off_the_event_loop() -> None:
    rec = Counting()
    engine = OcrEngine(recognize=rec)
    first = await engine.read(_img())
    assert [ln.text for ln in first.lines] == ["hello", "world"]  # order; low score dropped
    assert first.lines[1].box == (60, 0, 100, 20) and not first.cached
    again = await engine.read(_img())  # another ImageInput, the same pixels: the same sha256
    assert again.cached and again.lines == first.lines and again.latency_s == 0
    await engine.read(_img("black"))
    assert rec.calls == 2 and rec.threads == {"ocr_0"}
    assert threading.current_thread().name not in rec.threads


async def test_concurrent_reads_of_one_image_share_one_call_and_the_cache_is_bounded() -> None:
    rec = Counting(delay_s=0.05)
    engine = OcrEngine(recognize=rec, cache_size=1)
    results = await asyncio.gather(*(engine.read(_img()) for _ in range(4)))
    assert rec.calls == 1 and len({r.lines for r in results}) == 1
    await engine.read(_img("black"))  # evicts the white one
    await engine.read(_img())
    assert rec.calls == 3


async def test_timeout_raises_model_timeout_and_the_late_result_is_cached() -> None:
    rec = Counting(delay_s=0.3)
    engine = OcrEngine(recognize=rec, timeout_s=0.05)
    with pytest.raises(ModelTimeout, match=r"OCR took longer than 0\.05s"):
        await engine.read(_img())
    await asyncio.sleep(0.4)
    assert (await engine.read(_img())).cached and rec.calls == 1


async def test_an_engine_failure_is_a_model_error_and_not_cached() -> None:
    rec = Counting(fail=True)
    engine = OcrEngine(recognize=rec)
    for _ in range(2):
        with pytest.raises(ModelError, match="OCR failed: RuntimeError: onnx went wrong"):
            await engine.read(_img())
    assert rec.calls == 2
