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
