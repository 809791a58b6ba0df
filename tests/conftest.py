"""Session-wide fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def shapes_png() -> Path:
    """A real 64x64 PNG: a red square and a blue circle on white."""
    return DATA / "shapes.png"


@pytest.fixture(scope="session")
def shapes_image(shapes_png: Path) -> Image.Image:
    with Image.open(shapes_png) as img:
        return img.convert("RGB")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The offline tiny LVLM and text LM (``models.tiny``), built once per test session.

    ``{"vision": folder, "text": folder}``; load them with the production backend code.
    """
    from models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def ocr_engine():
    """The real OCR engine (RapidOCR, bundled ONNX models), loaded once per test session;
    skipped without the ``ocr`` extra. Its cache is shared, so each drawn image is read once."""
    from models.ocr import OcrEngine, ocr_available

    if not ocr_available():
        pytest.skip("the ocr extra (rapidocr, onnxruntime) is not installed")
    return OcrEngine(timeout_s=120)
