"""The OCR engine behind the OCR expert: RapidOCR (PP-OCR models on ONNX Runtime, CPU, offline).

Not a :class:`~models.base.ModelBackend`: it takes an image, not messages, and returns the text
lines it recognised, with their boxes, in reading order. Used by ``agents/`` (the OCR expert).

- **Off the event loop.** Recognition runs on one worker thread of its own (ONNX Runtime already
  uses every core for one image, so a second concurrent image would only slow both down).
- **Cached per image** (``ImageInput.sha256``, LRU, ``cache_size`` images): every round and every
  request that shows the same image reads it once. Concurrent reads of one image share one call.
- **Timed out** (``timeout_s``, queueing included): :class:`~models.errors.ModelTimeout`. A thread
  cannot be killed, so a timed-out recognition still finishes in the background (and is cached).
- The engine is loaded lazily, on the first read or on :meth:`OcrEngine.start` (about 4 s).

The recogniser is injectable (``recognize``: PIL image -> ``[(text, score, box)]``) for tests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from PIL import Image

from models.errors import ModelError, ModelLoadError, ModelTimeout
from models.types import ImageInput

logger = logging.getLogger(__name__)

#: one recognised line: (text, confidence 0..1, box as 4 (x, y) corners or (x0, y0, x1, y1))
RawLine = tuple[str, float, Sequence[Any]]
Recognize = Callable[[Image.Image], list[RawLine]]

ENGINE_NAME = "rapidocr"


def ocr_available() -> bool:
    """Whether RapidOCR and ONNX Runtime are installed (the ``ocr`` extra)."""
    return find_spec("rapidocr") is not None and find_spec("onnxruntime") is not None


@dataclass(frozen=True)
class OcrLine:
    text: str
    score: float
    #: the axis-aligned box in pixels: left, top, right, bottom
    box: tuple[int, int, int, int]

    @property
    def center_y(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def height(self) -> int:
        return max(1, self.box[3] - self.box[1])


@dataclass(frozen=True)
class OcrResult:
    """The text of one image, lines in reading order (rows top to bottom, left to right)."""

    sha256: str
    size: tuple[int, int]
    lines: tuple[OcrLine, ...]
    #: seconds the recognition took (0 when it came from the cache)
    latency_s: float = 0.0
    cached: bool = False

    @property
    def rows(self) -> list[list[OcrLine]]:
        return group_rows(self.lines)

    @property
    def text(self) -> str:
        """Rows on their own lines, cells of a row separated by `` | ``."""
        return "\n".join(" | ".join(line.text for line in row) for row in self.rows)


def _box(raw: Sequence[Any]) -> tuple[int, int, int, int]:
    points = list(raw)
    if len(points) == 4 and all(isinstance(v, (int, float)) for v in points):
        x0, y0, x1, y1 = (float(v) for v in points)
    else:
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    return round(x0), round(y0), round(x1), round(y1)


def group_rows(lines: Sequence[OcrLine]) -> list[list[OcrLine]]:
    """Reading order: lines whose vertical centres lie within half a line height of a row's
    centre join that row; rows top to bottom, each row left to right."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.center_y, ln.box[0])):
        if rows:
            row = rows[-1]
            center = sum(ln.center_y for ln in row) / len(row)
            height = sum(ln.height for ln in row) / len(row)
            if abs(line.center_y - center) <= 0.5 * min(height, line.height):
                row.append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda ln: ln.box[0]) for row in rows]


def reading_order(lines: Sequence[OcrLine]) -> tuple[OcrLine, ...]:
    return tuple(line for row in group_rows(lines) for line in row)


def _rapidocr(threads: int = 0) -> Recognize:
    """Load RapidOCR (its bundled ONNX models); raises ModelLoadError when it is not installed."""
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError("the OCR expert needs RapidOCR: pip install 'proreason[ocr]'") from exc
    params: dict[str, Any] = {
        "Global.log_level": "warning",  # not every model file it opens
        # the orientation classifier: our text is upright, and it costs a third of the time
        "Global.use_cls": False,
    }
    if threads > 0:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
    engine = RapidOCR(params=params)

    def recognize(image: Image.Image) -> list[RawLine]:
        out = engine(image)
        if out.txts is None or out.boxes is None:
            return []
        scores = out.scores if out.scores is not None else [1.0] * len(out.txts)
        return [
            (str(t), float(s), b.tolist() if hasattr(b, "tolist") else b)
            for t, s, b in zip(out.txts, scores, out.boxes, strict=True)
        ]

    return recognize


class OcrEngine:
    """Reads the text in images: cached, off the event loop, with a timeout. Share one."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        cache_size: int = 256,
        min_score: float = 0.5,
        recognize: Recognize | None = None,
        threads: int = 0,
    ) -> None:
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self.min_score = min_score
        self.name = ENGINE_NAME if recognize is None else getattr(recognize, "name", "ocr")
        self._recognize = recognize
        #: ONNX Runtime threads per recognition (0: its default, every core)
        self.threads = threads
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocr")
        self._cache: OrderedDict[str, OcrResult] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[OcrResult]] = {}
        #: recognitions actually run (not served from the cache)
        self.calls = 0

    def _engine(self) -> Recognize:
        with self._load_lock:
            if self._recognize is None:
                started = time.perf_counter()
                self._recognize = _rapidocr(self.threads)
                logger.info("OCR engine loaded in %.1fs", time.perf_counter() - started)
            return self._recognize

    async def start(self) -> None:
        """Load the engine now (off the event loop) rather than on the first read."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._engine)

    def _run(self, image: ImageInput) -> OcrResult:
        started = time.perf_counter()
        raw = self._engine()(image.image)
        self.calls += 1
        lines = [
            OcrLine(text.strip(), float(score), _box(box))
            for text, score, box in raw
            if text and text.strip() and float(score) >= self.min_score
        ]
        return OcrResult(
            image.sha256, image.size, reading_order(lines), time.perf_counter() - started
        )

    def cached(self, sha256: str) -> OcrResult | None:
        hit = self._cache.get(sha256)
        if hit is not None:
            self._cache.move_to_end(sha256)
        return hit

    def _store(self, result: OcrResult) -> None:
        self._cache[result.sha256] = result
        self._cache.move_to_end(result.sha256)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def read(self, image: ImageInput) -> OcrResult:
        """The image's text in reading order. Raises ModelTimeout after ``timeout_s``."""
        hit = self.cached(image.sha256)
        if hit is not None:
            return OcrResult(hit.sha256, hit.size, hit.lines, 0.0, cached=True)
        future = self._inflight.get(image.sha256)
        if future is None:
            future = asyncio.ensure_future(
                asyncio.wrap_future(self._executor.submit(self._run, image))
            )
            self._inflight[image.sha256] = future

            def settle(done: asyncio.Future[OcrResult], sha: str = image.sha256) -> None:
                self._inflight.pop(sha, None)
                if not done.cancelled() and done.exception() is None:
                    self._store(done.result())

            future.add_done_callback(settle)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError as exc:
            raise ModelTimeout(f"OCR took longer than {self.timeout_s:g}s") from exc
        except ModelError:
            raise
        except Exception as exc:  # the engine failed on this image: a failed call, not a bug
            raise ModelError(f"OCR failed: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
