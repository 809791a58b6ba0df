"""Decoding user-supplied image bytes into the ``ImageInput`` every backend takes.

    bytes ─ size cap ─ header-only open (PNG, JPEG, WebP, GIF, BMP decoders only) ─ pixel cap
          BEFORE decoding ─ load (truncated/corrupt -> refused) ─ EXIF transpose ─ RGB (alpha on
          white) ─ first frame only ─ downscale to max_side  ->  ImageInput

Every refusal is an :class:`ImageRefused` (a ``models.errors.MediaError``: a 4xx at the edge,
never a 500) whose ``reason`` is a short code. Used by the HTTP edge (``app.media`` fetches URLs
and hands the bytes here), the CLI and the evaluations (local files).

Decompression bombs: PIL's ``Image.open`` reads only the header, so ``width * height`` is checked
against ``max_pixels`` before a single pixel is decoded. PIL's own guard stays on: creating a
decoder raises ``PIL.Image.MAX_IMAGE_PIXELS`` to at least ``max_pixels`` (never lowers it, so PIL
never refuses an image the config accepts) and turns PIL's ``DecompressionBombWarning`` into an
error for the process (once); both PIL outcomes are mapped to ImageRefused. Only the PNG, JPEG,
WebP, GIF and BMP decoders are ever tried on user bytes (``Image.open(formats=...)``), which keeps
PIL's riskier plugins (EPS via Ghostscript, ...) out of reach.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import struct
import threading
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import MediaError
from models.types import ImageInput

logger = logging.getLogger(__name__)

#: the defaults of the media settings (``app.settings.MediaConfig`` uses these)
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 1536

#: PIL format names of the decoders user bytes may reach
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF, BMP"
_WHITE = (255, 255, 255)


class ImageRefused(MediaError):
    """A MediaError that says why (``reason``, also in ``param``) and which image (``index``)."""

    def __init__(self, message: str, *, reason: str, index: int | None = None) -> None:
        super().__init__(message, param=reason)
        self.reason = reason
        self.index = index


def refuse(message: str, reason: str) -> ImageRefused:
    return ImageRefused(message, reason=reason)


def short(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# PIL set-up (process-wide, idempotent)

_pil_lock = threading.Lock()
_pil_warning_is_error = False


def _configure_pil(max_pixels: int) -> None:
    """Keep PIL's bomb guard on, never stricter than the config, and make its warning an error."""
    global _pil_warning_is_error
    with _pil_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is None or current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
        if not _pil_warning_is_error:
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
            _pil_warning_is_error = True


# --------------------------------------------------------------------------------------------
# Decoding (synchronous; runs in a worker thread)

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"%PDF", 0, "PDF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
)


def _not_an_image(data: bytes) -> ImageRefused:
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return refuse(
                f"unsupported image format {name} (supported: {SUPPORTED_TEXT})",
                "unsupported_format",
            )
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return refuse(
            f"unsupported image format SVG (supported: {SUPPORTED_TEXT})", "unsupported_format"
        )
    return refuse(
        f"cannot decode image: not a supported image (supported formats: {SUPPORTED_TEXT})",
        "not_an_image",
    )


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageRefused:
    return refuse(
        f"image is too large: {width}x{height} = {width * height} pixels "
        f"(limit {max_pixels} pixels)",
        "too_many_pixels",
    )


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as exc:
        # A broken EXIF block does not make the pixels unusable: keep them as stored.
        logger.info("media: ignoring unreadable EXIF orientation: %s", exc)
        return img.copy()
    return transposed if transposed is not None else img.copy()


def decode_image(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Bytes -> a normalised RGB image (longest side <= max_side), or ImageRefused.

    The pixel count is checked from the header before anything is decoded.
    """
    if not data:
        raise refuse("cannot decode image: the image is empty", "not_an_image")
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise _not_an_image(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise refuse(f"image is too large: {exc}", "too_many_pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise refuse(f"cannot decode image: {exc}", "decode_failed") from None

    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise refuse("cannot decode image: it has no pixels", "decode_failed")
        if width * height > max_pixels:
            raise _too_many_pixels(width, height, max_pixels)
        fmt = img.format or "image"
        try:
            if fmt == "JPEG" and max(width, height) > max_side:
                # JPEG can decode at 1/2, 1/4, 1/8 scale: much less memory and CPU for big photos
                img.draft("RGB", (max_side, max_side))
            img.load()  # first frame only for animations (GIF, WebP)
            out = _exif_transpose(img)
            out = _flatten_to_rgb(out)
            if max(out.size) > max_side:
                out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise refuse(f"image is too large: {exc}", "too_many_pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as exc:
            # (struct.error / IndexError: decoder faults on hostile input, not our bugs)
            detail = str(exc) or type(exc).__name__
            if "truncated" in detail or isinstance(exc, EOFError):
                raise refuse(
                    f"cannot decode image: truncated {fmt} ({detail})", "decode_failed"
                ) from None
            raise refuse(
                f"cannot decode image: corrupt {fmt} ({detail})", "decode_failed"
            ) from None
    return out  # always a new image: exif_transpose copies, so closing ``img`` is safe




class ImageDecoder:
    """Bytes -> ImageInput in worker threads, at most ``concurrency`` at once (each decode may hold
    up to ``max_pixels`` x 4 bytes)."""

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        concurrency: int | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.concurrency = concurrency or max(1, min(4, os.cpu_count() or 1))
        self._slots = LoopSemaphore(self.concurrency)
        _configure_pil(max_pixels)

    async def decode(self, data: bytes, source: str = "upload") -> ImageInput:
        """Encoded bytes (size-checked here) -> a decoded, normalised image."""
        if len(data) > self.max_bytes:
            msg = f"image is too large: {len(data)} bytes (limit {self.max_bytes} bytes)"
            raise refuse(f"{short(source, 60)}: {msg}", "too_large")
        async with self._slots.get():
            image = await asyncio.to_thread(self.decode_sync, bytes(data))
        logger.debug("images: decoded %s from %s", image, source)
        return image

    def decode_sync(self, data: bytes) -> ImageInput:
        img = decode_image(data, max_pixels=self.max_pixels, max_side=self.max_side)
        return ImageInput(img)


class LoopSemaphore:
    """An ``asyncio.Semaphore`` for whichever event loop is running (a primitive binds to one
    loop; a decoder may be used from several, e.g. the CLI's and a test's)."""

    def __init__(self, value: int) -> None:
        self.value = value
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore = asyncio.Semaphore(self.value)
            self._loop = loop
        return self._semaphore
