"""models.video: real videos made with PyAV, real decoding. Which frames are sampled (read back
from the square's colour), in which order, at which timestamps; the limits, checked from the
container before decoding; corrupt, huge and non-video bytes refused as VideoRefused (a 4xx)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from models import video as video_mod
from models.errors import MediaError
from models.video import (
    VideoDecoder,
    VideoLimits,
    VideoRefused,
    decode_video,
    scene_picks,
    uniform_times,
)
from tests.fakes.videos import colour_of, make_video

LIMITS = VideoLimits()


def colours(data: bytes, n: int, sampling: str = "uniform", **limits: object):
    v = decode_video(data, frames=n, sampling=sampling, limits=VideoLimits(**limits))  # type: ignore[arg-type]
    return [colour_of(f.image) for f in v.frames], list(v.timestamps), v


@pytest.fixture(scope="module")
def clip() -> bytes:
    """4.0 s at 10 fps: red square in frames 0-24, blue from frame 25 (2.5 s)."""
    return make_video(frames=40, fps=10, change_at=25)


def test_uniform_takes_the_segment_centres_in_order(clip: bytes) -> None:
    seen, times, v = colours(clip, 4)
    assert times == [0.5, 1.5, 2.5, 3.5]
    assert seen == ["red", "red", "blue", "blue"]
    assert v.duration_s == 4.0 and v.size == (64, 48) and v.fps == 10 and v.sampling == "uniform"
    seen, times, _ = colours(clip, 8)
    assert times == [0.2, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2, 3.7]
    assert seen == ["red"] * 5 + ["blue"] * 3  # 2.2 s is frame 22 (red), 2.7 s frame 27 (blue)


def test_the_frame_shown_at_a_time_is_taken_not_the_next_one() -> None:
    """Colour changes at frame 13 (1.3 s); with 2 frames the centres are 1.0 s and 3.0 s; with
    3 they are 0.667 s (frame 6), 2.0 s (frame 20) and 3.333 s (frame 33, shown at 3.3 s)."""
    data = make_video(frames=40, fps=10, change_at=13)
    seen, times, _ = colours(data, 3)
    assert times == [0.6, 2.0, 3.3] and seen == ["red", "blue", "blue"]


def test_scene_sampling_finds_the_change(clip: bytes) -> None:
    seen, times, v = colours(clip, 2, "scene")
    assert times == [0.0, 2.5] and seen == ["red", "blue"]
    assert v.sampling == "scene"
    seen, times, _ = colours(clip, 4, "scene")
    assert times[:1] == [0.0] and 2.5 in times and times == sorted(times)
    assert seen[times.index(2.5)] == "blue" and seen[times.index(2.5) - 1] == "red"


def test_scene_sampling_without_a_change_spreads_its_frames() -> None:
    still = make_video(frames=40, fps=10, change_at=99)
    seen, times, _ = colours(still, 3, "scene")
    assert seen == ["red"] * 3
    assert times[0] == 0.0 and times[-1] >= 3.5 and 1.5 <= times[1] <= 2.5


def test_scene_picks_prefers_the_largest_changes() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    scores = [0.0, 0.5, 0.0, 0.9, 0.01]
    assert scene_picks(times, scores, 2) == [0, 3]
    assert scene_picks(times, scores, 3) == [0, 1, 3]
    assert scene_picks(times, [0.0] * 5, 3) == [0, 2, 4]


def test_uniform_times() -> None:
    assert uniform_times(4.0, 1) == [2.0]
    assert uniform_times(4.0, 4) == [0.5, 1.5, 2.5, 3.5]


def test_a_short_video_gives_each_frame_once() -> None:
    data = make_video(frames=3, fps=10, change_at=2)
    seen, times, _ = colours(data, 8)
    assert times == [0.0, 0.1, 0.2] and seen == ["red", "red", "blue"]


@pytest.mark.parametrize(
    ("container", "codec"), [("webm", "libvpx-vp9"), ("avi", "mpeg4"), ("matroska", "libx264")]
)
def test_other_containers(container: str, codec: str) -> None:
    data = make_video(container=container, codec=codec)
    seen, times, _ = colours(data, 4)
    assert seen == ["red", "red", "blue", "blue"]
    assert [round(t, 1) for t in times] == [0.5, 1.5, 2.5, 3.5]


def test_frames_are_downscaled_keeping_aspect() -> None:
    data = make_video(frames=10, size=(320, 240))
    _, _, v = colours(data, 2, frame_side=64)
    assert [f.size for f in v.frames] == [(64, 48), (64, 48)]
    assert v.size == (320, 240)


def test_a_long_video_is_sampled_by_seeking_not_decoded_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 s at 10 fps, a key frame every 10 frames: 4 samples decode ~40 of the 600 frames."""
    data = make_video(frames=600, fps=10, change_at=450, keyframe_interval=10, size=(32, 24))
    readers: list[video_mod._Reader] = []
    real_init = video_mod._Reader.__init__

    def init(self: video_mod._Reader, opened: object) -> None:
        real_init(self, opened)  # type: ignore[arg-type]
        readers.append(self)

    monkeypatch.setattr(video_mod._Reader, "__init__", init)
    seen, times, _ = colours(data, 4)
    assert times == [7.5, 22.5, 37.5, 52.5] and seen == ["red", "red", "red", "blue"]
    assert len(readers) == 1 and readers[0].decoded <= 4 * 12, readers[0].decoded


def test_sparse_key_frames_bound_the_work_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """One key frame for 40 frames: each sample decodes at most SAMPLE_FRAMES; the frame reached
    is taken and its own timestamp reported (never a refusal, never the whole video per sample)."""
    data = make_video(frames=40, fps=10, change_at=25, keyframe_interval=1000)
    monkeypatch.setattr(video_mod, "SAMPLE_FRAMES", 8)
    monkeypatch.setattr(video_mod, "SEEK_GAP_S", 0.0)  # seek for every sample
    seen, times, _ = colours(data, 4)
    assert times == [0.5, 0.7]  # samples 2-4 all reach frame 7: one frame, shown once
    assert seen == ["red"] * 2
    # uncapped (the default cap is larger than the video), the exact frames
    monkeypatch.undo()
    seen, times, _ = colours(data, 4)
    assert times == [0.5, 1.5, 2.5, 3.5] and seen == ["red", "red", "blue", "blue"]


# ------------------------------------------------------------------------------------- limits


def refusal(data: bytes, n: int = 4, sampling: str = "uniform", **limits: object) -> VideoRefused:
    with pytest.raises(VideoRefused) as info:
        colours(data, n, sampling, **limits)
    assert isinstance(info.value, MediaError) and info.value.code == "invalid_video"
    return info.value


def test_byte_limit(clip: bytes) -> None:
    err = refusal(clip, max_bytes=1024)
    assert err.reason == "too_large" and f"{len(clip)} bytes" in err.message


def test_duration_limit_is_read_from_the_container(
    monkeypatch: pytest.MonkeyPatch, clip: bytes
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a frame before checking the duration")

    monkeypatch.setattr(video_mod, "_sample", no_decoding)
    err = refusal(clip, max_duration_s=3.0)
    assert err.reason == "too_long" and "4.0 s (limit 3 s)" in err.message


def test_resolution_limit_is_read_from_the_container(
    monkeypatch: pytest.MonkeyPatch, clip: bytes
) -> None:
    monkeypatch.setattr(video_mod, "_sample", lambda *a: pytest.fail("decoded"))
    err = refusal(clip, max_pixels=64 * 48 - 1)
    assert err.reason == "too_many_pixels" and "64x48" in err.message


def test_frame_count_limit(clip: bytes) -> None:
    assert refusal(clip, 5, max_frames=4).reason == "too_many_frames"
    assert refusal(clip, 0).reason == "too_many_frames"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", "not_a_video", "empty"),
        (b"hello, this is text and not a video at all", "not_a_video", "not a supported video"),
        (png(), "not_a_video", "PNG image"),
        (b"GIF89a" + b"\0" * 32, "not_a_video", "GIF image"),
        (b"\x00\x00\x00\x18ftypisom" + b"\0" * 64, "decode_failed", "cannot decode video"),
    ],
)
def test_non_videos_are_refused(data: bytes, reason: str, words: str) -> None:
    err = refusal(data)
    assert err.reason == reason and words in err.message, err.message


def test_a_truncated_video_is_refused(clip: bytes) -> None:
    err = refusal(clip[: len(clip) // 2])
    assert err.reason == "decode_failed"


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_a_corrupted_video_is_refused_or_decoded_never_crashes(container: str, codec: str) -> None:
    clip = make_video(container=container, codec=codec)
    rng = np.random.default_rng(2)
    for k in range(40):
        data = bytearray(clip)
        for i in rng.integers(12, len(data), int(rng.integers(1, 60))):
            data[i] = int(rng.integers(0, 256))
        if k % 7 == 0:
            data = data[: int(rng.integers(12, len(data)))]
        for sampling in ("uniform", "scene"):
            try:
                decode_video(bytes(data), frames=4, sampling=sampling, limits=LIMITS)
            except VideoRefused:
                pass  # a clear 4xx; anything else (a crash, another exception) fails the test


def test_a_file_without_a_video_stream_is_refused() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    err = refusal(buf.getvalue())
    assert err.reason == "not_a_video" and "no video stream" in err.message


async def test_the_decoder_runs_in_a_thread_and_checks_bytes_first(clip: bytes) -> None:
    decoder = VideoDecoder(VideoLimits(max_bytes=len(clip)))
    v = await decoder.decode(clip, frames=2, sampling="uniform")
    assert v.timestamps == (1.0, 3.0)
    small = VideoDecoder(VideoLimits(max_bytes=1024))
    with pytest.raises(VideoRefused, match="too large"):
        await small.decode(clip, frames=2, sampling="uniform", source="clip.mp4")
