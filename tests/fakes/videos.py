"""Short real videos made with PyAV for the tests: a square whose colour changes at a known frame.

    make_video(frames=40, fps=10, change_at=25)  ->  MP4 bytes: 4.0 s, the square red in frames
    0-24 (0.0-2.4 s) and blue from frame 25 (2.5 s) on, on a white background.

Every frame is encoded as shown (``g`` sets the key-frame interval), so which frame a sampler took
is read back from its colour (:func:`colour_of`).
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def make_video(
    *,
    frames: int = 40,
    fps: int = 10,
    change_at: int = 25,
    size: tuple[int, int] = (64, 48),
    container: str = "mp4",
    codec: str = "libx264",
    keyframe_interval: int = 5,
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] = (RED, BLUE),
) -> bytes:
    """A video of ``frames`` frames at ``fps``: the square has colours[0] before frame
    ``change_at`` and colours[1] from it on."""
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(keyframe_interval)}
        if codec == "libx264":  # key frames only every keyframe_interval (none at the cut)
            stream.options = {**stream.options, "sc_threshold": "0"}
        for i in range(frames):
            img = np.full((height, width, 3), WHITE, np.uint8)
            colour = colours[0] if i < change_at else colours[1]
            img[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def write_video(path: Path, **kwargs: object) -> Path:
    path.write_bytes(make_video(**kwargs))  # type: ignore[arg-type]
    return path


def colour_of(image: Image.Image) -> str:
    """"red", "blue" or "other": the colour at the centre of a frame."""
    r, g, b = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    if r > 200 and g < 60 and b < 60:
        return "red"
    if b > 200 and r < 60 and g < 60:
        return "blue"
    return "other"


def frames_shown(call) -> list[tuple[str | None, str]]:
    """(label, colour) of each image of a recorded call's user turn (``tests.fakes.models.Call``):
    the label is the text part right before the image, None when the image has none."""
    from models.types import ImagePart, TextPart

    user = next(m for m in call.request.messages if m.role == "user")
    out, label = [], None
    for part in user.content:
        if isinstance(part, TextPart):
            label = part.text
        elif isinstance(part, ImagePart):
            out.append((label, colour_of(part.image.image)))
            label = None
    return out
