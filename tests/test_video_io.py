"""Tests for lib_vidguide.video_io on real, tiny video files made with PyAV.

Reader fixtures are encoded with PyAV directly (not with VideoWriter), so a bug in
the writer cannot hide a bug in the reader or the other way round.
"""

from __future__ import annotations

import gc
import logging
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from lib_vidguide.video_io import (  # noqa: E402
    FrameReader,
    VideoInputError,
    VideoWriter,
    iter_frames,
    probe,
    read_all_frames,
    write_video,
)

WIDTH, HEIGHT, FPS, COUNT = 64, 48, 12, 24


# --------------------------------------------------------------------------- helpers


def gradient_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Smooth moving gradient with a soft-edged moving rectangle."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    blue = 128 + 100 * np.sin((x + 3 * index) / 9.0)
    frame = np.stack([red, green, blue], axis=-1)
    left = (2 * index) % max(width - 16, 1)
    frame[height // 4 : height // 4 + 16, left : left + 16] = (200, 60, 40)
    return frame.clip(0, 255).round().astype(np.uint8)


def index_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A flat frame whose colour encodes its index (up to 320 frames), robust to lossy coding."""
    colour = ((index % 16) * 16 + 8, (index // 16) * 12 + 8, 128)
    return np.full((height, width, 3), colour, dtype=np.uint8)


def decoded_index(frame: np.ndarray) -> int:
    red, green = frame[..., 0].mean(), frame[..., 1].mean()
    return int(round((red - 8) / 16)) + 16 * int(round((green - 8) / 12))


def encode(
    path: Path,
    frames: list[np.ndarray],
    *,
    fps: int | Fraction = FPS,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    input_format: str = "rgb24",
    container_options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
) -> Path:
    """Encode frames with plain PyAV (independent of VideoWriter)."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.options = codec_options or {}
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format=input_format)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small clips shared by the read-only tests."""
    folder = tmp_path_factory.mktemp("clips")
    clips = {
        "gradient": encode(folder / "gradient.mp4", [gradient_frame(i) for i in range(COUNT)]),
        "indexed": encode(folder / "indexed.mp4", [index_frame(i) for i in range(COUNT)]),
        "long": encode(
            folder / "long.mp4",
            [index_frame(i) for i in range(300)],
            codec_options={"preset": "veryfast"},
        ),
        "odd": encode(
            folder / "odd.mkv", [gradient_frame(i, 65, 49) for i in range(4)], codec="ffv1", pix_fmt="yuv420p"
        ),
        "tiny": encode(
            folder / "tiny.mov",
            [np.full((1, 1, 3), 40 * i, np.uint8) for i in range(3)],
            codec="png",
            pix_fmt="rgb24",
        ),
    }
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(COUNT)]
    faststart = {"movflags": "+faststart"}
    clips["noise_faststart"] = encode(folder / "noise_fs.mp4", noise, container_options=faststart)
    clips["noise_moov_last"] = encode(folder / "noise_ml.mp4", noise)
    return clips


def rgba_frames() -> list[np.ndarray]:
    frames = []
    for i in range(3):
        frame = np.zeros((6, 8, 4), np.uint8)
        frame[..., :3] = (200, 100, 50 + i)
        frame[..., 3] = 128
        frame[:, :4, 3] = 255  # left half opaque
        frames.append(frame)
    return frames


# --------------------------------------------------------------------------- probe


def test_probe_reports_the_clip(clips: dict[str, Path]) -> None:
    info = probe(clips["gradient"])
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.fps == Fraction(FPS)
    assert info.frame_count == COUNT and info.frame_count_exact
    assert info.duration_s == pytest.approx(COUNT / FPS, abs=0.05)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert not info.has_alpha and not info.has_audio and info.audio_codec is None
    assert not info.variable_frame_rate and info.rotation == 0
    assert info.path == clips["gradient"].absolute()


def test_probe_estimates_frame_count_when_the_container_has_no_index(clips: dict[str, Path]) -> None:
    info = probe(clips["odd"])  # Matroska stores no frame count
    assert not info.frame_count_exact
    assert info.frame_count == 4
    assert any("estimated" in note for note in info.notes)


def test_probe_flags_variable_frame_rate(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 33 if i % 2 else 100
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert info.variable_frame_rate
    assert any("Variable frame rate" in note for note in info.notes)
    assert len(read_all_frames(path)) == 12


# --------------------------------------------------------------------------- reading


def test_iter_frames_yields_rgb_uint8_in_order(clips: dict[str, Path]) -> None:
    frames = read_all_frames(clips["indexed"])
    assert len(frames) == COUNT
    assert all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 and f.flags.c_contiguous for f in frames)
    assert [decoded_index(f) for f in frames] == list(range(COUNT))


@pytest.mark.parametrize(
    ("start", "stop", "step"),
    [(0, None, 1), (5, None, 1), (3, 15, 4), (0, 1, 1), (20, 100, 3), (0, None, 7), (30, None, 1), (4, 4, 1)],
)
def test_start_stop_step_select_the_right_frames(
    clips: dict[str, Path], start: int, stop: int | None, step: int
) -> None:
    got = [decoded_index(f) for f in iter_frames(clips["indexed"], start=start, stop=stop, step=step)]
    assert got == list(range(COUNT))[start:stop:step]


def test_iter_frames_streams_instead_of_decoding_everything(clips: dict[str, Path]) -> None:
    reader = iter_frames(clips["long"])
    assert isinstance(reader, FrameReader)
    assert reader.frames_decoded == 0  # opening decodes nothing
    first = next(reader)
    assert decoded_index(first) == 0
    assert reader.frames_decoded == 1
    for _ in range(9):
        next(reader)
    assert reader.frames_decoded == 10 and reader.frames_yielded == 10
    reader.close()
    with pytest.raises(StopIteration):
        next(reader)
    reader.close()  # closing twice is harmless


def test_stop_ends_decoding_early(clips: dict[str, Path]) -> None:
    with iter_frames(clips["long"], start=2, stop=6) as reader:
        got = [decoded_index(f) for f in reader]
        assert got == [2, 3, 4, 5]
        assert reader.frames_decoded <= 7
    assert not reader.truncated


def test_long_clip_reads_completely(clips: dict[str, Path]) -> None:
    reader = iter_frames(clips["long"], step=50)
    assert [decoded_index(f) for f in reader] == list(range(0, 300, 50))
    assert reader.frames_decoded == 300 and not reader.truncated


def test_size_resizes_with_a_smooth_filter(clips: dict[str, Path]) -> None:
    small = read_all_frames(clips["gradient"], limit=2)
    resized = list(iter_frames(clips["gradient"], stop=2, size=(32, 24)))
    assert [f.shape for f in resized] == [(24, 32, 3)] * 2
    assert resized[0].dtype == np.uint8
    # A 2x2 box average of the full frame is close to a Lanczos downscale of smooth content.
    boxed = small[0].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert mean_abs_error(resized[0], boxed.round().astype(np.uint8)) < 6
    upscaled = next(iter_frames(clips["gradient"], size=(100, 75)))
    assert upscaled.shape == (75, 100, 3)


def test_odd_size_video_is_read_at_its_size(clips: dict[str, Path]) -> None:
    frames = read_all_frames(clips["odd"])
    assert len(frames) == 4 and frames[0].shape == (49, 65, 3)
    assert mean_abs_error(frames[1], gradient_frame(1, 65, 49)) < 3
    info = probe(clips["odd"])
    assert (info.width, info.height) == (65, 49)


def test_one_pixel_video_is_readable(clips: dict[str, Path]) -> None:
    info = probe(clips["tiny"])
    assert (info.width, info.height) == (1, 1)
    frames = read_all_frames(clips["tiny"])
    assert [f.shape for f in frames] == [(1, 1, 3)] * 3
    assert [int(f[0, 0, 0]) for f in frames] == [0, 40, 80]
    assert next(iter_frames(clips["tiny"], size=(4, 4))).shape == (4, 4, 3)


@pytest.mark.parametrize(("suffix", "codec", "pix_fmt"), [(".mov", "qtrle", "argb"), (".mov", "png", "rgba")])
def test_alpha_video_is_read_as_rgb_over_black(tmp_path: Path, suffix: str, codec: str, pix_fmt: str) -> None:
    path = encode(
        tmp_path / f"alpha{suffix}", rgba_frames(), codec=codec, pix_fmt=pix_fmt, input_format="rgba"
    )
    info = probe(path)
    assert info.has_alpha
    frames = read_all_frames(path)
    assert len(frames) == 3 and frames[0].shape == (6, 8, 3)
    assert frames[0][0, 0].tolist() == [200, 100, 50]  # opaque: unchanged
    assert frames[2][0, 7].tolist() == [100, 50, 26]  # alpha 128: composited over black


def test_gif_with_a_palette_is_read_as_rgb(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 0, 255), (255, 0, 0)]
    frames = [np.full((8, 16, 3), colour, np.uint8) for colour in colours]
    path = encode(tmp_path / "anim.gif", frames, fps=10, codec="gif", pix_fmt="rgb8")
    back = read_all_frames(path)
    assert [f.shape for f in back] == [(8, 16, 3)] * 3
    assert [tuple(int(v) // 64 for v in f[0, 0]) for f in back] == [(3, 0, 0), (0, 0, 3), (3, 0, 0)]


def test_dropped_reader_releases_the_file_at_once(clips: dict[str, Path]) -> None:
    fd_folder = Path("/proc/self/fd")
    if not fd_folder.is_dir():
        pytest.skip("needs /proc to count open files")
    gc.disable()  # the file must be closed by reference counting, not by a later GC pass
    try:
        before = len(list(fd_folder.iterdir()))
        reader = iter_frames(clips["long"])
        next(reader)
        assert len(list(fd_folder.iterdir())) > before
        del reader
        assert len(list(fd_folder.iterdir())) == before
    finally:
        gc.enable()


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = 255  # white marker in the top-left corner
    path = encode(tmp_path / "upright.mp4", [frame] * 3)
    data = path.read_bytes()
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    turned = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)  # ffmpeg's "rotate=90"
    matrix_at = data.index(identity, data.index(b"tkhd"))
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(data[:matrix_at] + turned + data[matrix_at + len(turned) :])

    info = probe(rotated)
    assert info.rotation == 90 and (info.width, info.height) == (48, 64)
    upright = next(iter_frames(rotated))
    assert upright.shape == (64, 48, 3)
    # Turned 90° clockwise, the top-left marker ends up top-right.
    assert upright[:12, -12:].mean() > 200 and upright[:12, :12].mean() < 50


def test_bt709_and_full_range_colours_are_decoded_correctly(tmp_path: Path) -> None:
    """HD/phone videos tag BT.709 or full range; PyAV's default conversion would ignore the tags."""
    rgb = gradient_frame(0).astype(np.float64) / 255
    kr, kb = 0.2126, 0.0722  # BT.709
    luma = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    cb, cr = (rgb[..., 2] - luma) / (2 * (1 - kb)), (rgb[..., 0] - luma) / (2 * (1 - kr))
    for full_range in (False, True):
        if full_range:
            planes = [luma * 255, cb * 255 + 128, cr * 255 + 128]
        else:
            planes = [16 + luma * 219, 128 + cb * 224, 128 + cr * 224]
        yuv = np.stack(planes).round().clip(0, 255).astype(np.uint8)
        path = tmp_path / f"bt709_{full_range}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
            stream.options = {"crf": "0"}
            stream.codec_context.colorspace = 1
            stream.codec_context.color_range = 2 if full_range else 1
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv444p")
            frame.pts = 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        assert mean_abs_error(read_all_frames(path)[0], gradient_frame(0)) < 1.0


def test_truncated_data_yields_the_frames_before_the_cut(
    clips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = clips["noise_faststart"].read_bytes()  # index first, so the first half keeps it
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).frame_count == COUNT  # the index still promises every frame
    with caplog.at_level(logging.WARNING, logger="lib_vidguide.video_io"):
        reader = iter_frames(cut)
        frames = list(reader)
    assert 0 < len(frames) < COUNT
    assert reader.truncated and reader.problems
    assert "truncated" in caplog.text and "cut.mp4" in caplog.text


# --------------------------------------------------------------------------- bad input


def _make_bad_input(kind: str, clips: dict[str, Path], folder: Path) -> Path:
    if kind == "missing":
        return folder / "does-not-exist.mp4"
    if kind == "folder":
        return folder
    if kind == "empty":
        path = folder / "empty.mp4"
        path.touch()
        return path
    if kind == "text":
        path = folder / "notes.mp4"
        path.write_text("this is not a video\n" * 50)
        return path
    if kind in ("wav", "aac"):
        path = folder / ("sound.wav" if kind == "wav" else "sound.m4a")
        codec, sample_format = ("pcm_s16le", "s16") if kind == "wav" else ("aac", "fltp")
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=8000, layout="mono")
            samples = np.zeros((1, 2048), np.int16 if kind == "wav" else np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout="mono")
            frame.sample_rate, frame.pts = 8000, 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return path
    if kind == "cover_art":  # music file whose only picture is the album cover
        path = folder / "song.mp4"
        with av.open(str(path), "w") as container:
            audio = container.add_stream("aac", rate=8000, layout="mono")
            cover = container.add_stream("mjpeg", rate=1)
            cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
            cover.disposition = av.stream.Disposition.attached_pic.value
            picture = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            picture = picture.reformat(format="yuvj420p")
            picture.pts = 0
            container.mux(cover.encode(picture))
            container.mux(cover.encode(None))
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 8000, 0
            container.mux(audio.encode(sound))
            container.mux(audio.encode(None))
        return path
    data = clips["noise_moov_last"].read_bytes()
    if kind == "first_half":  # recording cut off: the index (moov) is written last and missing
        path = folder / "first_half.mp4"
        path.write_bytes(data[: len(data) // 2])
        return path
    if kind == "second_half":  # header missing
        path = folder / "second_half.mp4"
        path.write_bytes(data[len(data) // 2 :])
        return path
    if kind == "unknown_codec":  # a codec tag this FFmpeg has no decoder for
        path = folder / "unknown_codec.mp4"
        path.write_bytes(data.replace(b"avc1", b"zzz9"))
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "not found"),
        ("folder", "folder"),
        ("empty", "empty (0 bytes)"),
        ("text", "not a video"),
        ("wav", "only audio (pcm_s16le)"),
        ("aac", "only audio (aac)"),
        ("cover_art", "only audio (aac)"),
        ("first_half", "'moov' box) is missing"),
        ("second_half", "damaged or incomplete"),
        ("unknown_codec", "not supported"),
    ],
)
def test_bad_input_raises_a_helpful_error(
    clips: dict[str, Path], tmp_path: Path, kind: str, expected: str
) -> None:
    path = _make_bad_input(kind, clips, tmp_path)
    with pytest.raises(VideoInputError) as caught:
        probe(path)
    message = str(caught.value)
    assert expected in message
    assert str(path.absolute()) in message
    assert isinstance(caught.value, ValueError)
    with pytest.raises(VideoInputError):
        iter_frames(path)  # fails at once, not at the first next()


def test_empty_path_raises() -> None:
    with pytest.raises(VideoInputError, match="empty"):
        probe("")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": -1},
        {"step": 0},
        {"stop": -2},
        {"start": 1.5},
        {"size": (0, 10)},
        {"size": (10,)},
        {"size": "big"},
    ],
)
def test_iter_frames_rejects_bad_arguments(clips: dict[str, Path], kwargs: dict) -> None:
    with pytest.raises(VideoInputError):
        iter_frames(clips["indexed"], **kwargs)


# --------------------------------------------------------------------------- writing


def test_round_trip_keeps_count_size_fps_and_colours(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    source = [gradient_frame(i) for i in range(COUNT)]
    with VideoWriter(path, FPS, size=(WIDTH, HEIGHT)) as writer:
        for frame in source:
            writer.write(frame)
    assert leftovers(tmp_path) == ["out.mp4"]

    info = probe(path)
    assert (info.width, info.height, info.fps, info.frame_count) == (WIDTH, HEIGHT, Fraction(FPS), COUNT)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    back = read_all_frames(path)
    assert len(back) == COUNT
    assert max(mean_abs_error(a, b) for a, b in zip(source, back)) < 3


def test_output_is_browser_friendly_mp4(tmp_path: Path) -> None:
    path = tmp_path / "web.mp4"
    write_video(path, [gradient_frame(i) for i in range(4)], FPS)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: playable while downloading
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert context.colorspace == 6  # tagged BT.601, the matrix used for this SD size


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (Fraction(30000, 1001), Fraction(30000, 1001)),
        (29.97, Fraction(30000, 1001)),
        (12.5, Fraction(25, 2)),
        (24, Fraction(24)),
    ],
)
def test_fps_is_preserved(tmp_path: Path, fps: Fraction | float, expected: Fraction) -> None:
    path = tmp_path / "rate.mp4"
    write_video(path, [gradient_frame(i) for i in range(3)], fps)
    info = probe(path)
    assert info.fps == expected
    assert info.frame_count == 3


def test_exception_inside_with_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, FPS) as writer:
            for i in range(5):
                writer.write(gradient_frame(i))
            assert len(leftovers(tmp_path)) == 1  # the hidden temporary file
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_failed_write_does_not_clobber_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    write_video(path, [gradient_frame(i) for i in range(3)], FPS)
    before = path.read_bytes()

    def frames_then_failure():
        yield gradient_frame(0)
        yield gradient_frame(1)
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away"):
        write_video(path, frames_then_failure(), FPS)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["keep.mp4"]


def test_closing_without_frames_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(VideoInputError, match="No frames"):
        with VideoWriter(tmp_path / "empty.mp4", FPS):
            pass
    assert leftovers(tmp_path) == []


def test_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    source = [gradient_frame(i, 65, 49) for i in range(4)]
    with VideoWriter(path, FPS) as writer:
        for frame in source:
            writer.write(frame)
        assert writer.size == (65, 49) and writer.encoded_size == (66, 50)
    back = read_all_frames(path)
    assert back[0].shape == (50, 66, 3)
    assert mean_abs_error(back[2][:49, :65], source[2]) < 3
    # The padding repeats the last column and row.
    assert mean_abs_error(back[2][:49, 65], source[2][:, 64]) < 6


def test_one_pixel_frames_can_be_written(tmp_path: Path) -> None:
    path = tmp_path / "dot.mp4"
    write_video(path, [np.full((1, 1, 3), 90, np.uint8)] * 2, FPS)
    frames = read_all_frames(path)
    assert len(frames) == 2 and frames[0].shape == (2, 2, 3)
    assert abs(int(frames[0][0, 0, 0]) - 90) <= 3


def test_writer_accepts_rgba_and_pil_frames(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.dstack([gradient_frame(0), np.full((HEIGHT, WIDTH), 7, np.uint8)])
    path = tmp_path / "mixed.mp4"
    assert write_video(path, [rgba, Image.fromarray(gradient_frame(1))], FPS) == 2
    back = read_all_frames(path)
    assert mean_abs_error(back[0], gradient_frame(0)) < 3  # alpha dropped, not applied
    assert mean_abs_error(back[1], gradient_frame(1)) < 3


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (np.zeros((HEIGHT, WIDTH, 3), np.float32), "dtype float32"),
        (np.zeros((HEIGHT, WIDTH), np.uint8), "shape"),
        (np.zeros((HEIGHT, WIDTH, 2), np.uint8), "shape"),
        (np.zeros((HEIGHT + 2, WIDTH, 3), np.uint8), "64x50 but the video is 64x48"),
        ([[0, 0, 0]], "expected a numpy uint8 array"),
    ],
)
def test_writer_rejects_bad_frames(tmp_path: Path, frame: object, expected: str) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(VideoInputError, match=expected.replace("(", r"\(")):
        with VideoWriter(path, FPS, size=(WIDTH, HEIGHT)) as writer:
            writer.write(gradient_frame(0))
            writer.write(frame)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("out.mp4", 0), {}, "fps"),
        (("out.mp4", float("nan")), {}, "fps"),
        (("out.mp4", "fast"), {}, "fps"),
        (("out.mp4", FPS), {"size": (0, 4)}, "size"),
        (("out.mp4", FPS), {"crf": -1}, "crf"),
        (("out.mp4", FPS), {"codec": "no-such-codec"}, "not available"),
        (("out.mp4", FPS), {"pix_fmt": "rgb48le"}, "pixel format"),
        (("out.unknownext", FPS), {}, "not a known video container"),
        (("missing-folder/out.mp4", FPS), {}, "does not exist"),
        (("", FPS), {}, "No output path"),
    ],
)
def test_writer_rejects_bad_settings(tmp_path: Path, args: tuple, kwargs: dict, expected: str) -> None:
    target = str(tmp_path / args[0]) if args[0] else ""
    with pytest.raises(VideoInputError, match=expected):
        VideoWriter(target, *args[1:], **kwargs)
    assert leftovers(tmp_path) == []


def test_writing_after_close_fails(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "done.mp4", FPS)
    writer.write(gradient_frame(0))
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(gradient_frame(1))


def test_abandoned_writer_cleans_up(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "abandoned.mp4", FPS)
    writer.write(gradient_frame(0))
    del writer
    assert leftovers(tmp_path) == []


def test_lossless_yuv444_round_trip_is_exact_within_rounding(tmp_path: Path) -> None:
    path = tmp_path / "lossless.mp4"
    write_video(path, [gradient_frame(0)], FPS, crf=0, pix_fmt="yuv444p")
    assert mean_abs_error(read_all_frames(path)[0], gradient_frame(0)) < 0.6


def test_importing_the_module_does_not_import_av() -> None:
    code = "import sys, lib_vidguide.video_io; assert 'av' not in sys.modules, 'av imported eagerly'"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
