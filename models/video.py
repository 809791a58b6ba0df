"""Decoding user-supplied video bytes into the few frames the vision expert looks at.

    bytes ─ size cap ─ container sniffed from its magic (MP4/MOV, Matroska/WebM, AVI only) ─
          demuxer opened on that format (headers only) ─ a video stream ─ resolution cap and
          duration cap from the headers (no frame decoded yet; a duration the headers do not
          give is read from the packets' timestamps, still without decoding) ─ sample N
          timestamps ─ seek to each (or decode on when it is close) ─ RGB, max side
          ->  VideoInput (frames as ImageInput, with their timestamps)

Sampling (``sampling``):

- ``uniform``: the centres of N equal segments of the video, ``t_i = D * (2i + 1) / (2N)``; the
  frame shown at ``t_i`` is taken (the last frame that starts at or before it).
- ``scene``: scene changes. ``candidates`` evenly spaced frames (at ``j * D / K``, K at most
  :data:`SCENE_CANDIDATES`) are decoded small; each is scored by how much it differs from the
  one before (mean absolute difference of 32x32 RGB thumbnails, 0-1). The first frame and the
  candidates that open a new scene (score at least :data:`SCENE_THRESHOLD`, largest change
  first) are kept, up to N; left-over places go to the candidates farthest (in time) from those
  already chosen. A cut is found to within one candidate spacing (``D / K``).

Reported timestamps are the chosen frames' own presentation times, in seconds from the start of
the video stream. The whole video is never decoded: each sample seeks to the key frame before it
and decodes forward from there (or decodes on, without seeking, when the sample is less than
:data:`SEEK_GAP_S` ahead), at most :data:`SAMPLE_FRAMES` frames per sample
(:data:`CANDIDATE_FRAMES` per scene candidate): when key frames are farther apart than that, the
frame reached is taken (earlier than asked for; its own timestamp is reported). The work per video
is so bounded by the number of samples, whatever its length or key-frame spacing.

Every refusal is a :class:`VideoRefused` (a ``models.errors.MediaError``, code
``invalid_video``: a 400 at the edge, never a 500) whose ``reason`` is a short code.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from PIL import Image

from models.errors import MediaError
from models.images import LoopSemaphore, short
from models.types import ImageInput, VideoInput

logger = logging.getLogger(__name__)

Sampling = Literal["uniform", "scene"]
SAMPLINGS: tuple[str, ...] = ("uniform", "scene")

#: the defaults of the video settings (``app.settings.MediaConfig`` uses these)
DEFAULT_MAX_VIDEO_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_VIDEO_DURATION_S = 600.0
DEFAULT_MAX_VIDEO_PIXELS = 3840 * 2160
DEFAULT_VIDEO_FRAMES = 8
DEFAULT_MAX_VIDEO_FRAMES = 32
DEFAULT_FRAME_SIDE = 768

#: scene sampling: candidate frames looked at, at most
SCENE_CANDIDATES = 64
#: scene sampling: the least change (0-1) that counts as a new scene
SCENE_THRESHOLD = 0.06
#: decode on instead of seeking when the next sample is less than this ahead (seconds)
SEEK_GAP_S = 2.0
#: frames decoded per sample, at most (a seek lands on the key frame before the sample)
SAMPLE_FRAMES = 300
#: the same per scene candidate (many more of them; a cut is then found less precisely)
CANDIDATE_FRAMES = 30

#: the containers user bytes may reach: (magic, offset) -> (name shown, FFmpeg demuxer)
_CONTAINERS: tuple[tuple[bytes, int, str, str], ...] = (
    (b"ftyp", 4, "MP4/MOV", "mov"),
    (b"moov", 4, "MP4/MOV", "mov"),
    (b"mdat", 4, "MP4/MOV", "mov"),
    (b"wide", 4, "MP4/MOV", "mov"),
    (b"free", 4, "MP4/MOV", "mov"),
    (b"\x1a\x45\xdf\xa3", 0, "Matroska/WebM", "matroska"),
)
SUPPORTED_TEXT = "MP4, MOV, WebM, MKV, AVI"
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
)


class VideoRefused(MediaError):
    """A video that cannot be accepted: ``reason`` says why (also in ``param`` until the edge
    replaces it with the field's path)."""

    code = "invalid_video"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, param=reason)
        self.reason = reason

    def at(self, param: str) -> VideoRefused:
        """This refusal, naming the request field it came from."""
        self.param = param
        return self


def refuse(message: str, reason: str) -> VideoRefused:
    return VideoRefused(message, reason=reason)


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    max_duration_s: float = DEFAULT_MAX_VIDEO_DURATION_S
    #: width x height of the video, from its headers
    max_pixels: int = DEFAULT_MAX_VIDEO_PIXELS
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    #: frames are downscaled so their longest side is at most this
    frame_side: int = DEFAULT_FRAME_SIDE


# --------------------------------------------------------------------------------------------
# Opening (headers only)


def _demuxer(data: bytes) -> str:
    """The FFmpeg demuxer for ``data``'s container, or VideoRefused (no other demuxer is tried)."""
    if not data:
        raise refuse("cannot decode video: the file is empty", "not_a_video")
    for magic, offset, _, demuxer in _CONTAINERS:
        if data[offset : offset + len(magic)] == magic:
            return demuxer
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    for magic, what in _IMAGE_MAGIC:
        if data.startswith(magic):
            raise refuse(
                f"not a video: this is {what} (send images as image parts / 'images')",
                "not_a_video",
            )
    raise refuse(f"not a supported video (supported containers: {SUPPORTED_TEXT})", "not_a_video")


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


@dataclass
class _Opened:
    container: Any
    stream: Any
    start_s: float
    duration_s: float
    width: int
    height: int
    fps: float | None


def _duration_from_packets(container: Any, stream: Any, start_s: float, limit: float) -> float:
    """The end of the last packet, read without decoding (for containers without a duration)."""
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        t = _seconds(packet.pts + (packet.duration or 0), stream.time_base) or 0.0
        end = max(end, t - start_s)
        if end > limit:
            break
    container.seek(0, stream=stream)
    return end


def open_video(data: bytes, limits: VideoLimits) -> _Opened:
    """Open ``data`` and check resolution and duration from the container (nothing decoded)."""
    import av

    demuxer = _demuxer(data)
    try:
        container = av.open(io.BytesIO(data), mode="r", format=demuxer)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise refuse(f"cannot decode video: corrupt or truncated ({short(str(exc), 120)})",
                     "decode_failed") from None  # fmt: skip
    try:
        if not container.streams.video:
            raise refuse("not a video: the file has no video stream", "not_a_video")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None:
            raise refuse("cannot decode video: unknown or unsupported codec", "decode_failed")
        width, height = codec.width, codec.height
        if width <= 0 or height <= 0:
            raise refuse("cannot decode video: its frame size is unknown", "decode_failed")
        if width * height > limits.max_pixels:
            raise refuse(
                f"video resolution is too large: {width}x{height} = {width * height} pixels "
                f"per frame (limit {limits.max_pixels})",
                "too_many_pixels",
            )
        if not stream.time_base:
            raise refuse("cannot decode video: its stream has no time base", "decode_failed")
        start_s = _seconds(stream.start_time, stream.time_base) or 0.0
        duration = _seconds(stream.duration, stream.time_base)
        if not duration and container.duration:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        if not duration:
            duration = _duration_from_packets(container, stream, start_s, limits.max_duration_s)
        if duration <= 0:
            raise refuse("cannot decode video: it has no frames", "decode_failed")
        if duration > limits.max_duration_s:
            raise refuse(
                f"video is too long: {duration:.1f} s (limit {limits.max_duration_s:g} s)",
                "too_long",
            )
        rate = stream.average_rate or stream.base_rate
        fps = float(rate) if rate else None
        return _Opened(container, stream, start_s, duration, width, height, fps)
    except VideoRefused:
        container.close()
        raise
    except (av.FFmpegError, ValueError, OSError, ZeroDivisionError, OverflowError) as exc:
        container.close()
        raise refuse(f"cannot decode video: corrupt ({short(str(exc), 120)})",
                     "decode_failed") from None  # fmt: skip
    except BaseException:
        container.close()
        raise


# --------------------------------------------------------------------------------------------
# Sampling


def uniform_times(duration: float, n: int) -> list[float]:
    """The centres of ``n`` equal segments of ``[0, duration)``."""
    return [duration * (2 * i + 1) / (2 * n) for i in range(n)]


class _Reader:
    """Frames at chosen times, seeking or decoding on, at most ``cap`` frames per time."""

    def __init__(self, opened: _Opened) -> None:
        self.o = opened
        self.decoded = 0
        self._frames: Iterator[Any] | None = None
        self._last: Any = None  # the last frame decoded (its time in self._last_t)
        self._last_t = -1.0
        self._pending: Any = None  # a frame decoded past the previous target

    def _time(self, frame: Any) -> float:
        return (frame.time or 0.0) - self.o.start_s

    def _decode(self) -> Iterator[Any]:
        import av

        try:
            for frame in self.o.container.decode(self.o.stream):
                self.decoded += 1
                yield frame
        except av.FFmpegError as exc:
            raise refuse(f"cannot decode video: corrupt ({short(str(exc), 120)})",
                         "decode_failed") from None  # fmt: skip

    def _seek(self, t: float) -> None:
        stream = self.o.stream
        offset = int((t + self.o.start_s) / stream.time_base)
        self.o.container.seek(offset, stream=stream, backward=True, any_frame=False)
        self._frames = self._decode()
        self._pending = None
        self._last, self._last_t = None, -1.0

    def at(self, t: float, cap: int | None = None) -> tuple[Any, float]:
        """The frame shown at ``t`` (the last one starting at or before it) and its time; after
        ``cap`` (default :data:`SAMPLE_FRAMES`) frames decoded for it, the frame reached."""
        cap = SAMPLE_FRAMES if cap is None else cap
        if self._frames is None or t < self._last_t or t - self._last_t > SEEK_GAP_S:
            self._seek(t)
        eps = 1e-6
        if self._pending is not None:
            frame, ft = self._pending, self._time(self._pending)
            if ft > t + eps and self._last is not None:
                return self._last, self._last_t
            self._pending = None
            self._last, self._last_t = frame, ft
        assert self._frames is not None
        for count, frame in enumerate(self._frames, start=1):
            ft = self._time(frame)
            if ft > t + eps:
                if self._last is None:  # the seek landed after t: the first frame it has
                    self._last, self._last_t = frame, ft
                    return frame, ft
                self._pending = frame
                return self._last, self._last_t
            self._last, self._last_t = frame, ft
            if count >= cap:  # key frames too far apart: the frame reached
                return frame, ft
        if self._last is None:
            raise refuse("cannot decode video: no frame could be decoded", "decode_failed")
        return self._last, self._last_t  # past the last frame: the last one


def _rgb(frame: Any, side: int) -> Image.Image:
    w, h = frame.width, frame.height
    scale = min(1.0, side / max(w, h))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    image = frame.to_image(width=tw, height=th)  # RGB24, scaled by swscale
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    if rotation:
        image = image.rotate(rotation, expand=True)
    return image


def _thumb(frame: Any) -> bytes:
    return frame.to_image(width=32, height=32).tobytes()  # RGB


def _difference(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / (255 * len(a))


def scene_picks(times: list[float], scores: list[float], n: int) -> list[int]:
    """Indices of the candidates to keep: the first, the new scenes (largest change first),
    then the candidates farthest in time from those chosen; sorted."""
    chosen = [0]
    cuts = sorted(
        (i for i in range(1, len(times)) if scores[i] >= SCENE_THRESHOLD),
        key=lambda i: (-scores[i], i),
    )
    chosen += cuts[: n - 1]
    while len(chosen) < min(n, len(times)):
        rest = [i for i in range(len(times)) if i not in chosen]
        best = max(rest, key=lambda i: (min(abs(times[i] - times[c]) for c in chosen), -i))
        chosen.append(best)
    return sorted(chosen)


def _sample(opened: _Opened, n: int, sampling: Sampling, side: int) -> VideoInput:
    reader = _Reader(opened)
    picked: list[tuple[Any, float]] = []
    if sampling == "uniform":
        for t in uniform_times(opened.duration_s, n):
            frame, ft = reader.at(t)
            if picked and picked[-1][1] == ft:
                continue  # a short video has fewer distinct frames than asked for
            picked.append((frame, ft))
    else:
        count = SCENE_CANDIDATES
        if opened.fps:
            count = min(count, max(1, int(opened.duration_s * opened.fps)))
        count = max(count, n)
        candidates: list[tuple[Any, float]] = []
        for j in range(count):
            frame, ft = reader.at(opened.duration_s * j / count, CANDIDATE_FRAMES)
            if candidates and candidates[-1][1] == ft:
                continue
            candidates.append((frame, ft))
        thumbs = [_thumb(f) for f, _ in candidates]
        scores = [0.0] + [_difference(thumbs[i - 1], thumbs[i]) for i in range(1, len(thumbs))]
        times = [ft for _, ft in candidates]
        picked = [candidates[i] for i in scene_picks(times, scores, n)]
    frames = tuple(ImageInput(_rgb(f, side)) for f, _ in picked)
    return VideoInput(
        frames=frames,
        timestamps=tuple(round(max(0.0, ft), 3) for _, ft in picked),
        duration_s=round(opened.duration_s, 3),
        sampling=sampling,
        size=(opened.width, opened.height),
        fps=opened.fps,
    )


def decode_video(
    data: bytes, *, frames: int, sampling: Sampling, limits: VideoLimits
) -> VideoInput:
    """Bytes -> ``frames`` sampled frames with their timestamps, or VideoRefused."""
    import av

    if len(data) > limits.max_bytes:
        raise refuse(
            f"video is too large: {len(data)} bytes (limit {limits.max_bytes} bytes)", "too_large"
        )
    if not 1 <= frames <= limits.max_frames:
        raise refuse(f"frames must be from 1 to {limits.max_frames}", "too_many_frames")
    if sampling not in SAMPLINGS:
        raise refuse(f"unknown sampling {sampling!r} (uniform or scene)", "invalid_sampling")
    opened = open_video(data, limits)
    try:
        return _sample(opened, frames, sampling, limits.frame_side)
    except VideoRefused:
        raise
    except (av.FFmpegError, ValueError, OSError, ZeroDivisionError, OverflowError) as exc:
        raise refuse(f"cannot decode video: {short(str(exc) or type(exc).__name__, 120)}",
                     "decode_failed") from None  # fmt: skip
    finally:
        opened.container.close()


class VideoDecoder:
    """Bytes -> VideoInput in worker threads, at most ``concurrency`` videos at once."""

    def __init__(self, limits: VideoLimits, *, concurrency: int | None = None) -> None:
        self.limits = limits
        self.concurrency = concurrency or max(1, min(2, os.cpu_count() or 1))
        self._slots = LoopSemaphore(self.concurrency)

    async def decode(
        self, data: bytes, *, frames: int, sampling: Sampling, source: str = "upload"
    ) -> VideoInput:
        if len(data) > self.limits.max_bytes:  # before taking a slot
            raise refuse(
                f"{short(source, 60)}: video is too large: {len(data)} bytes "
                f"(limit {self.limits.max_bytes} bytes)",
                "too_large",
            )
        async with self._slots.get():
            video = await asyncio.to_thread(
                decode_video, bytes(data), frames=frames, sampling=sampling, limits=self.limits
            )
        logger.debug("video: %s from %s", video, source)
        return video

