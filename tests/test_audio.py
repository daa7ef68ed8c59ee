"""The source's audio in the output: on real files made with PyAV, checked by content, not just presence.

Every source carries a chirp (a tone whose pitch rises steadily), so the position
of any piece of it is known: cross-correlating the output's audio with the chirp
measures which part of the source it is, to the sample.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from lib_vidguide import video_io  # noqa: E402
from lib_vidguide.video_io import (  # noqa: E402
    VideoInputError,
    VideoWriter,
    frame_time_s,
    iter_frames,
    mux_audio,
)

WIDTH, HEIGHT, FPS, COUNT = 32, 32, 12, 24  # 2 s of video
RATE = 48000
F0, SWEEP = 300.0, 300.0  # Hz, Hz per second: 300 Hz at 0 s, 1200 Hz at 3 s


# --------------------------------------------------------------------------- helpers


def chirp(count: int, rate: int = RATE) -> np.ndarray:
    t = np.arange(count) / rate
    return (0.5 * np.sin(2 * np.pi * (F0 * t + SWEEP * t * t / 2))).astype(np.float32)


def constant_tone(count: int, freq: float, rate: int = RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(count) / rate)).astype(np.float32)


def _video_frame(index: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), (index * 10) % 256, np.uint8)


def _audio_frames(stream, signal: np.ndarray, rate: int, start_pts: int):
    """AudioFrames for ``signal`` (mono float32) in the encoder's format, layout and frame size."""
    context = stream.codec_context
    if not context.is_open:  # opened to learn frame_size (the first mux opens every stream)
        context.open()
    fmt, layout = context.format.name, context.layout.name
    channels = len(context.layout.channels)
    size = context.frame_size or 1024
    for pos in range(0, len(signal), size):
        chunk = np.tile(signal[pos : pos + size], (channels, 1))
        if fmt in ("s16", "s16p"):
            chunk = (chunk * 32767).round().astype(np.int16)
        elif fmt in ("s32", "s32p"):
            chunk = (chunk * 2147483647.0).round().astype(np.int32)
        if not fmt.endswith("p"):  # packed: one interleaved plane
            chunk = chunk.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
        frame.sample_rate, frame.time_base, frame.pts = rate, Fraction(1, rate), start_pts + pos
        yield frame


def make_source(
    path: Path,
    *,
    audio: list[dict] | None = None,
    vcodec: str = "libx264",
    frames: int = COUNT,
    fps: int = FPS,
    frame_times_ms: list[int] | None = None,
) -> Path:
    """A small video with 0..n audio tracks; each dict: codec, signal, rate, layout, start_s, default.

    ``frame_times_ms`` gives the video frames irregular timestamps (variable frame rate).
    """
    with av.open(str(path), "w") as container:
        video = container.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if frame_times_ms is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        tracks = []
        for spec in audio or []:
            rate = spec.get("rate", RATE)
            stream = container.add_stream(spec["codec"], rate=rate, layout=spec.get("layout", "mono"))
            if "default" in spec:
                stream.disposition = av.stream.Disposition.default.value if spec["default"] else 0
            tracks.append((stream, spec["signal"], rate, round(spec.get("start_s", 0.0) * rate)))
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_video_frame(i), format="rgb24")
            if frame_times_ms is None:
                frame.pts = i
            else:
                frame.pts, frame.time_base = frame_times_ms[i], Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for stream, signal, rate, start in tracks:
            for frame in _audio_frames(stream, signal, rate, start):
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    return path


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """The first audio track, decoded to mono float32, as a player would (priming removed by FFmpeg)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        parts = [f.to_ndarray()[0] for frame in container.decode(stream) for f in resampler.resample(frame)]
    return np.concatenate(parts), rate


def durations(path: Path) -> dict[str, float]:
    """Video and audio durations as the container's header states them (what players show)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        result = {"video": float(video.duration * video.time_base)}
        if container.streams.audio:
            audio = container.streams.audio[0]
            result["audio"] = float(audio.duration * audio.time_base)
    return result


def chirp_offset(samples: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(lag, correlation): samples[n] ~ reference[n + lag]; correlation is normalised (1 = identical)."""
    size = 1 << int(np.ceil(np.log2(len(samples) + len(reference))))
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(samples, size)), size)
    index = int(np.argmax(corr))
    lag = index if index < size // 2 else index - size
    # Normalise over the overlapping part.
    lo, hi = max(0, -lag), min(len(samples), len(reference) - lag)
    a, b = samples[lo:hi], reference[lo + lag : hi + lag]
    return lag, float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    window = samples * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window, 8 * len(samples)))
    return float(np.argmax(spectrum) * rate / (8 * len(samples)))


def render(
    source: Path,
    output: Path,
    *,
    start: int = 0,
    step: int = 1,
    max_frames: int | None = None,
    fps=None,
    **kw,
) -> VideoWriter:
    """What the engine does: pick frames, write them as they come, with the source's audio."""
    stop = None if max_frames is None else start + max_frames * step
    source_fps = FPS if fps is None else fps
    with VideoWriter(
        output,
        fps=Fraction(source_fps) / step,
        audio_from=source,
        audio_start_s=frame_time_s(source, start),
        **kw,
    ) as writer:
        for frame in iter_frames(source, start=start, stop=stop, step=step):
            writer.write(frame)
    return writer


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


SOURCE_SECONDS = 3.0  # audio a second longer than the 2 s video unless a test says otherwise
CODECS = {
    "aac-in-mp4": ("mp4", "aac", "libx264"),
    "pcm-in-mov": ("mov", "pcm_s16le", "libx264"),
    "opus-in-mkv": ("mkv", "libopus", "libx264"),
    "vorbis-in-webm": ("webm", "libvorbis", "libvpx"),
    "flac-in-mkv": ("mkv", "flac", "libx264"),
    "mp3-in-mp4": ("mp4", "libmp3lame", "libx264"),
}


def source_with(tmp_path: Path, kind: str, seconds: float = 2.0, **audio_spec) -> tuple[Path, np.ndarray]:
    suffix, codec, vcodec = CODECS[kind]
    signal = chirp(round(seconds * RATE))
    spec = {"codec": codec, "signal": signal, **audio_spec}
    return make_source(tmp_path / f"source.{suffix}", audio=[spec], vcodec=vcodec), signal


# --------------------------------------------------------------------------- whole video


def test_aac_source_rendered_whole_is_copied_unchanged(tmp_path: Path) -> None:
    source, signal = source_with(tmp_path, "aac-in-mp4")
    writer = render(source, tmp_path / "out.mp4")
    assert writer.audio.has_audio and writer.audio.method == "copy" and writer.audio.codec == "aac"
    assert writer.audio.notes == ()
    # Copied means the same compressed packets.
    def payloads(path):
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]

    assert payloads(tmp_path / "out.mp4") == payloads(source)
    header = durations(tmp_path / "out.mp4")
    assert header["video"] == pytest.approx(2.0)
    assert abs(header["audio"] - header["video"]) <= 1 / FPS
    samples, rate = decode_audio(tmp_path / "out.mp4")
    lag, corr = chirp_offset(samples, signal)
    assert lag == 0 and corr > 0.99
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", list(CODECS))
def test_output_carries_the_sources_audio(tmp_path: Path, kind: str) -> None:
    source, signal = source_with(tmp_path, kind)
    writer = render(source, tmp_path / "out.mp4")
    audio = writer.audio
    assert audio.has_audio, audio.notes
    assert audio.method == ("copy" if kind == "aac-in-mp4" else "transcode")
    assert audio.codec == "aac"  # what every browser plays from an mp4
    header = durations(tmp_path / "out.mp4")
    assert abs(header["audio"] - header["video"]) <= 1 / FPS, header
    samples, rate = decode_audio(tmp_path / "out.mp4")
    assert rate == RATE
    assert abs(len(samples) / rate - header["video"]) <= 1 / FPS
    lag, corr = chirp_offset(samples, signal)
    assert abs(lag) <= 1, lag  # the source's first sample is the output's first sample
    assert corr > 0.95, corr


def test_audio_longer_than_the_video_is_cut_where_the_video_ends(tmp_path: Path) -> None:
    source, signal = source_with(tmp_path, "aac-in-mp4", seconds=SOURCE_SECONDS)
    writer = render(source, tmp_path / "out.mp4")
    assert writer.audio.method == "transcode"  # copying would keep the extra second
    header = durations(tmp_path / "out.mp4")
    assert abs(header["audio"] - header["video"]) <= 1 / FPS
    samples, _ = decode_audio(tmp_path / "out.mp4")
    assert abs(len(samples) - 2.0 * RATE) <= 1024  # the last AAC packet's padding at most
    lag, corr = chirp_offset(samples, signal)
    assert abs(lag) <= 1 and corr > 0.98


# --------------------------------------------------------------------------- trimmed ranges


@pytest.mark.parametrize(
    "kind, start, step, max_frames",
    [
        ("aac-in-mp4", 6, 1, None),  # from 0.5 s to the end
        ("aac-in-mp4", 3, 2, 8),  # every other frame from 0.25 s, 8 frames: 1.333 s
        ("pcm-in-mov", 7, 3, 4),  # 0.583 s .. 1.583 s
        ("opus-in-mkv", 5, 1, 12),  # 0.417 s .. 1.417 s
        ("vorbis-in-webm", 9, 1, 10),
    ],
)
def test_a_frame_range_gets_the_matching_audio_segment(
    tmp_path: Path, kind: str, start: int, step: int, max_frames: int | None
) -> None:
    source, signal = source_with(tmp_path, kind, seconds=SOURCE_SECONDS)
    writer = render(source, tmp_path / "out.mp4", start=start, step=step, max_frames=max_frames)
    frames = writer.frames_written
    video_s = frames * step / FPS
    assert writer.audio.method == "transcode"
    # Matroska stores milliseconds, so there the start frame is really shown at 0.417 s, not 0.41667.
    assert writer.audio.start_s == pytest.approx(start / FPS, abs=0.0005)
    header = durations(tmp_path / "out.mp4")
    assert header["video"] == pytest.approx(video_s)
    assert abs(header["audio"] - video_s) <= 1 / FPS, header
    samples, rate = decode_audio(tmp_path / "out.mp4")
    lag, corr = chirp_offset(samples, signal)
    expected_lag = round(writer.audio.start_s * RATE)
    assert abs(lag - expected_lag) <= 2, (lag, expected_lag)  # within 0.05 ms
    assert corr > 0.95
    # And by ear, so to speak: the pitch at the start is the source's pitch at the start frame.
    t = start / FPS + 0.05
    assert dominant_frequency(samples[: round(0.1 * RATE)], rate) == pytest.approx(F0 + SWEEP * t, abs=20)


def test_variable_frame_rate_source_times_come_from_timestamps(tmp_path: Path) -> None:
    # 12 frames 40 ms apart, then 12 frames 125 ms apart: frame n is NOT at n / average fps.
    times = [40 * i for i in range(12)] + [40 * 11 + 125 * i for i in range(1, 13)]
    signal = chirp(round(SOURCE_SECONDS * RATE))
    source = make_source(
        tmp_path / "vfr.mp4", audio=[{"codec": "aac", "signal": signal}], frame_times_ms=times
    )
    start = 10
    assert frame_time_s(source, start) == pytest.approx(times[start] / 1000)
    assert abs(frame_time_s(source, start) - start / float(video_io.probe(source).fps)) > 0.2
    writer = render(source, tmp_path / "out.mp4", start=start, max_frames=10, fps=Fraction(8))
    samples, _ = decode_audio(tmp_path / "out.mp4")
    lag, corr = chirp_offset(samples, signal)
    assert abs(lag - round(times[start] / 1000 * RATE)) <= 2 and corr > 0.95
    header = durations(tmp_path / "out.mp4")
    assert abs(header["audio"] - header["video"]) <= 1 / 8


def test_frame_time_of_a_constant_rate_video(tmp_path: Path) -> None:
    source = make_source(tmp_path / "cfr.mp4")  # libx264 with B-frames: packets out of order
    assert [frame_time_s(source, i) for i in (0, 1, 5, 23)] == pytest.approx([0, 1 / 12, 5 / 12, 23 / 12])
    assert frame_time_s(source, 30) == pytest.approx(30 / 12)  # extrapolated past the end
    with pytest.raises(VideoInputError, match="index"):
        frame_time_s(source, -1)


# --------------------------------------------------------------------------- odd sources


def test_source_without_audio_gives_a_silent_video_and_no_error(tmp_path: Path) -> None:
    source = make_source(tmp_path / "silent.mp4")
    writer = render(source, tmp_path / "out.mp4")
    assert not writer.audio.has_audio and writer.audio.method is None
    assert any("no audio track" in note for note in writer.audio.notes)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert not container.streams.audio and container.streams.video[0].frames == COUNT
    assert leftovers(tmp_path) == []


def test_audio_shorter_than_the_video_is_fine(tmp_path: Path) -> None:
    source, signal = source_with(tmp_path, "aac-in-mp4", seconds=1.0)
    writer = render(source, tmp_path / "out.mp4")
    assert writer.audio.has_audio and writer.audio.method == "copy"
    assert writer.audio.duration_s == pytest.approx(1.0)
    assert any("ends before the video" in note for note in writer.audio.notes)
    # Trimmed too (transcoded): starts right, ends where the source's audio ends.
    writer = render(source, tmp_path / "out2.mp4", start=6)
    assert writer.audio.duration_s == pytest.approx(0.5)
    samples, _ = decode_audio(tmp_path / "out2.mp4")
    lag, corr = chirp_offset(samples, signal)
    assert abs(lag - RATE // 2) <= 2 and corr > 0.95


def test_audio_that_starts_late_keeps_its_delay(tmp_path: Path) -> None:
    # PCM, so the source's timing is exact; the audio starts 0.5 s after the first frame.
    source, signal = source_with(tmp_path, "pcm-in-mov", seconds=1.5, start_s=0.5)
    writer = render(source, tmp_path / "out.mp4")
    assert writer.audio.method == "transcode"
    assert any("starts 0.500 s after the first frame" in note for note in writer.audio.notes)
    samples, _ = decode_audio(tmp_path / "out.mp4")
    assert np.abs(samples[: RATE // 2 - 100]).max() < 0.01  # silence first
    lag, corr = chirp_offset(samples, signal)
    assert abs(lag + RATE // 2) <= 2 and corr > 0.95
    header = durations(tmp_path / "out.mp4")
    assert abs(header["audio"] - header["video"]) <= 1 / FPS
    # Starting inside the silence: the gap shrinks accordingly.
    writer = render(source, tmp_path / "out2.mp4", start=3)
    samples, _ = decode_audio(tmp_path / "out2.mp4")
    lag, _ = chirp_offset(samples, signal)
    assert abs(lag + RATE // 4) <= 2


def test_several_audio_tracks_use_the_default_one(tmp_path: Path) -> None:
    n = 2 * RATE
    source = make_source(
        tmp_path / "tracks.mkv",
        audio=[
            {"codec": "aac", "signal": constant_tone(n, 440.0), "default": False},
            {"codec": "aac", "signal": constant_tone(n, 1000.0), "default": True},
        ],
    )
    writer = render(source, tmp_path / "out.mp4")
    assert any("2 audio tracks" in note and "track 2" in note for note in writer.audio.notes)
    samples, rate = decode_audio(tmp_path / "out.mp4")
    assert dominant_frequency(samples[RATE // 2 : RATE], rate) == pytest.approx(1000, abs=5)


def test_stereo_and_odd_sample_rates(tmp_path: Path) -> None:
    # 44.1 kHz stereo stays so; 192 kHz PCM (beyond AAC) is resampled to 48 kHz, with a note.
    for rate, layout in ((44100, "stereo"), (192000, "mono")):
        signal = chirp(round(1.5 * rate), rate)
        source = make_source(
            tmp_path / f"s{rate}.mov",
            audio=[{"codec": "pcm_s16le", "signal": signal, "rate": rate, "layout": layout}],
        )
        writer = render(source, tmp_path / f"out{rate}.mp4", start=2)
        with av.open(str(tmp_path / f"out{rate}.mp4")) as container:
            context = container.streams.audio[0].codec_context
            out_rate, channels = context.sample_rate, len(context.layout.channels)
        assert channels == (2 if layout == "stereo" else 1)
        assert out_rate == (44100 if rate == 44100 else 48000)
        assert (rate == 192000) == any("resampled" in note for note in writer.audio.notes)
        samples, _ = decode_audio(tmp_path / f"out{rate}.mp4")
        lag, corr = chirp_offset(samples, chirp(round(1.5 * out_rate), out_rate))
        assert abs(lag - round(2 / FPS * out_rate)) <= 2 and corr > 0.95


def test_a_changed_frame_rate_is_noted(tmp_path: Path) -> None:
    source, _ = source_with(tmp_path, "aac-in-mp4")
    frames = list(iter_frames(source))
    with VideoWriter(tmp_path / "out.mp4", fps=24, audio_from=source, audio_duration_s=2.0) as writer:
        for frame in frames:
            writer.write(frame)  # 24 frames at 24 fps: 1 s of video for 2 s of source
    assert writer.audio.duration_s == pytest.approx(1.0, abs=1 / 24)
    assert any("drifts out of sync" in note for note in writer.audio.notes)


# --------------------------------------------------------------------------- mux_audio on its own


def test_mux_audio_to_a_new_file_and_in_place(tmp_path: Path) -> None:
    source, signal = source_with(tmp_path, "pcm-in-mov", seconds=SOURCE_SECONDS)
    video_only = tmp_path / "video.mp4"
    with VideoWriter(video_only, fps=FPS) as writer:
        for frame in iter_frames(source, start=12):
            writer.write(frame)
    result = mux_audio(video_only, source, tmp_path / "final.mp4", start_s=1.0)
    assert result.path == tmp_path / "final.mp4" and result.has_audio and video_only.exists()
    assert result.duration_s == pytest.approx(1.0) and result.video_duration_s == pytest.approx(1.0)
    samples, _ = decode_audio(result.path)
    assert abs(chirp_offset(samples, signal)[0] - RATE) <= 2

    result = mux_audio(video_only, source, tmp_path / "final2.mp4", start_s=1.0, delete_video=True)
    assert not video_only.exists() and result.path.exists()

    in_place = result.path
    before = in_place.stat().st_size
    mux_audio(in_place, make_source(tmp_path / "silent.mp4"))  # no audio: left as it is
    assert in_place.stat().st_size == before
    assert leftovers(tmp_path) == []


def test_mux_audio_rejects_bad_arguments(tmp_path: Path) -> None:
    source, _ = source_with(tmp_path, "aac-in-mp4")
    with pytest.raises(VideoInputError, match="audio_start_s"):
        mux_audio(source, source, tmp_path / "out.mp4", start_s=-1)
    with pytest.raises(VideoInputError, match="audio_duration_s"):
        mux_audio(source, source, tmp_path / "out.mp4", duration_s=0)
    with pytest.raises(VideoInputError, match="not found"):
        mux_audio(source, tmp_path / "missing.mp4", tmp_path / "out.mp4")
    with pytest.raises(VideoInputError, match="not found"):
        VideoWriter(tmp_path / "out.mp4", fps=FPS, audio_from=tmp_path / "missing.mp4")
    with pytest.raises(VideoInputError, match="does not exist"):
        mux_audio(source, source, tmp_path / "nowhere" / "out.mp4")
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- atomicity


def test_a_failed_mux_leaves_no_file_and_keeps_an_older_one(tmp_path: Path, monkeypatch) -> None:
    source, _ = source_with(tmp_path, "pcm-in-mov")
    video_only = tmp_path / "video.mp4"
    with VideoWriter(video_only, fps=FPS) as writer:
        for frame in iter_frames(source):
            writer.write(frame)
    final = tmp_path / "final.mp4"

    def broken_mux(output, packets):
        for count, packet in enumerate(packets):
            if count == 10:
                raise OSError(28, "No space left on device")
            output.mux(packet)

    monkeypatch.setattr(video_io, "_mux_all", broken_mux)
    with pytest.raises(OSError, match="No space"):
        mux_audio(video_only, source, final)
    assert not final.exists() and video_only.exists()
    final.write_bytes(b"older result")
    with pytest.raises(OSError):
        mux_audio(video_only, source, final)
    assert final.read_bytes() == b"older result"
    assert leftovers(tmp_path) == []

    # Not a video at all: a clear error, nothing written.
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(VideoInputError, match="Cannot read"):
        mux_audio(text, source, tmp_path / "other.mp4")
    assert not (tmp_path / "other.mp4").exists() and leftovers(tmp_path) == []


def test_writer_interrupted_before_close_leaves_nothing(tmp_path: Path) -> None:
    source, _ = source_with(tmp_path, "aac-in-mp4")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(tmp_path / "out.mp4", fps=FPS, audio_from=source) as writer:
            for i, frame in enumerate(iter_frames(source)):
                writer.write(frame)
                if i == 5:
                    raise KeyboardInterrupt
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_writer_keeps_the_video_when_the_audio_fails(tmp_path: Path, monkeypatch) -> None:
    # An hour of rendering is worth more than its sound: the video is saved, the note says why.
    source, _ = source_with(tmp_path, "pcm-in-mov")

    def broken_mux(output, packets):
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(video_io, "_mux_all", broken_mux)
    writer = render(source, tmp_path / "out.mp4")
    assert not writer.audio.has_audio
    assert any("could not be added" in note for note in writer.audio.notes)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert not container.streams.audio and container.streams.video[0].frames == COUNT
    assert leftovers(tmp_path) == []


def test_a_kill_during_the_audio_step_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    source, _ = source_with(tmp_path, "pcm-in-mov")

    def interrupted_mux(output, packets):
        raise KeyboardInterrupt

    monkeypatch.setattr(video_io, "_mux_all", interrupted_mux)
    with pytest.raises(KeyboardInterrupt):
        render(source, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- no ffmpeg program


def test_no_system_ffmpeg_is_needed(tmp_path: Path, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError(f"a program was started: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    monkeypatch.setattr(os, "posix_spawn", forbidden, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert shutil.which("ffmpeg") is None
    source, signal = source_with(tmp_path, "opus-in-mkv", seconds=SOURCE_SECONDS)
    writer = render(source, tmp_path / "out.mp4", start=4, step=2)
    assert writer.audio.has_audio and writer.audio.method == "transcode"
    samples, _ = decode_audio(tmp_path / "out.mp4")
    assert abs(chirp_offset(samples, signal)[0] - round(writer.audio.start_s * RATE)) <= 2
