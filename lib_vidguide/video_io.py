"""Reading and writing video files with PyAV, safely and one frame at a time.

Frames are always RGB ``uint8`` arrays of shape ``(height, width, 3)``.

* :func:`probe` describes a file and fails early, with a message that says what
  to do, on anything that is not a readable video.
* :func:`iter_frames` decodes as it goes, so a long video never sits in RAM.
* :class:`VideoWriter` encodes H.264 mp4 into a temporary file and renames it
  into place only when it was closed cleanly: a crash never leaves a
  half-written file under the requested name.
* Audio: ``VideoWriter(..., audio_from=SOURCE, audio_start_s=...)`` or
  :func:`mux_audio` put the source's matching audio segment into the output
  (copied when it can be, else cut to the sample and encoded to AAC), with
  PyAV alone; :func:`frame_time_s` gives a start frame's time from the
  container's timestamps.

Every problem with the caller's input raises :class:`VideoInputError`, a
``ValueError``; PyAV's own exceptions do not escape for bad input.

``av`` is imported inside the functions that need it, so importing this module
costs nothing at WebUI start-up.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import heapq
import logging
import math
import os
import secrets
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Union

import numpy as np

from .errors import UserInputError

if TYPE_CHECKING:
    import av.container
    import av.video.frame
    import av.video.stream

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "AudioMuxResult",
    "FrameReader",
    "VideoInfo",
    "VideoInputError",
    "VideoWriter",
    "frame_time_s",
    "iter_frames",
    "mux_audio",
    "probe",
    "read_all_frames",
    "write_video",
]

REENCODE_HINT = (
    "Re-encode it to H.264 mp4, for example: "
    "ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p -c:a aac OUTPUT.mp4"
)

# A decoder that has swallowed this many packets without producing a picture is
# not going to produce one; without a cap a damaged file is read to its end.
_MAX_PACKETS_BEFORE_FIRST_FRAME = 500

# Containers whose index records the exact number of video frames.
_EXACT_INDEX_FORMATS = ("mov", "mp4", "avi")

# mp4-family suffixes: written with +faststart, and checked for a missing moov box.
_MP4_SUFFIXES = {".mp4", ".m4v", ".mov", ".3gp", ".3g2", ".m4a"}

# AVColorSpace (the frame's tag) -> SWS_CS_* (swscale's coefficient table).
_SWSCALE_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_SWS_ITU709, _SWS_ITU601 = 1, 5
_RANGE_MPEG, _RANGE_JPEG = 1, 2
# swscale flags (PyAV passes ints through as-is). Measured on smooth test content, these halve
# the chroma error of a yuv420p round trip against PyAV's default bilinear (2.9 -> 1.4 levels):
# area-averaged chroma when encoding, interpolated full-resolution chroma when decoding.
_SWS_ENCODE_FLAGS = 0x20  # SWS_AREA
_SWS_DECODE_FLAGS = 0x2 | 0x2000 | 0x40000  # SWS_BILINEAR | SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND
_TRC_PQ, _TRC_HLG = 16, 18


class VideoInputError(UserInputError):
    """A video file, frame or parameter that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found out about a video file.

    ``width`` and ``height`` are those of the frames :func:`iter_frames` yields,
    i.e. after applying rotation metadata; ``rotation`` is how far the stored
    frames are turned clockwise to be upright (0, 90, 180 or 270, like the
    ``rotate`` tag ffprobe shows).  ``frame_count`` is exact when
    ``frame_count_exact`` is true (read from the container's index), otherwise
    estimated from duration × fps.  ``notes`` lists anything the caller may want
    to tell the user (estimated counts, variable frame rate, rotation, HDR …).
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    frame_count_exact: bool
    duration_s: float
    codec: str
    pix_fmt: str
    has_alpha: bool
    has_audio: bool
    audio_codec: str | None
    variable_frame_rate: bool
    rotation: int
    container_format: str
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- input


def _checked_input_path(path: PathLike | None) -> Path:
    """Absolute path of an existing, non-empty regular file, or VideoInputError."""
    if path is None or str(path).strip() == "":
        raise VideoInputError("No video file was given (the path is empty). Choose or upload a video first.")
    resolved = Path(path).expanduser().absolute()
    if not resolved.exists():
        raise VideoInputError(
            f"Video file not found: '{resolved}'. Check the path and that the file still exists."
        )
    if resolved.is_dir():
        raise VideoInputError(
            f"'{resolved}' is a folder, not a video file. Give the path of the video itself."
        )
    # FIFOs and devices would make FFmpeg block forever waiting for data.
    if not resolved.is_file():
        raise VideoInputError(f"'{resolved}' is not a regular file (a pipe or device?). Give a video file.")
    try:
        size = resolved.stat().st_size
        with open(resolved, "rb"):
            pass
    except OSError as exc:
        raise VideoInputError(f"Cannot read video file '{resolved}': {exc.strerror or exc}.") from exc
    if size == 0:
        raise VideoInputError(
            f"Video file '{resolved}' is empty (0 bytes). The copy, upload or recording probably failed; "
            "provide the file again."
        )
    return resolved


def _mp4_top_level_boxes(path: Path, limit: int = 64) -> list[bytes]:
    """Types of the top-level ISO-BMFF boxes, read from their headers only (a few small reads)."""
    box_types: list[bytes] = []
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            offset = 0
            while offset + 8 <= file_size and len(box_types) < limit:
                fh.seek(offset)
                size, box_type = struct.unpack(">I4s", fh.read(8))
                if size == 1:
                    size = struct.unpack(">Q", fh.read(8))[0]
                elif size == 0:
                    size = file_size - offset
                if size < 8 or not box_type.isascii():
                    break
                box_types.append(box_type)
                offset += size
    except (OSError, struct.error):
        pass  # best effort: only used to word an error message
    return box_types


def _unreadable_error(path: Path, exc: BaseException) -> VideoInputError:
    """Turn FFmpeg's refusal to open a file into a message a user can act on."""
    # By content, not by name: uploads and inline videos are stored under names of our own.
    boxes = _mp4_top_level_boxes(path)
    if boxes[:1] == [b"ftyp"] and b"moov" not in boxes:
        return VideoInputError(
            f"'{path}' is an incomplete mp4: its index (the 'moov' box) is missing, which happens when a "
            "recording, export or download was interrupted. Export or download it again; a repair tool "
            "such as 'untrunc' can sometimes recover it."
        )
    reason = getattr(exc, "strerror", None) or exc
    return VideoInputError(
        f"Cannot read '{path}' as a video ({reason}). It is not a video file, or it is damaged or "
        "incomplete. "
        f"Check that it plays in a video player. {REENCODE_HINT}"
    )


def _pick_video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    import av

    # Cover art in music files shows up as a one-picture "video" stream.
    attached_pic = av.stream.Disposition.attached_pic
    video_streams = [s for s in container.streams.video if not (s.disposition & attached_pic)]
    if not video_streams:
        audio = container.streams.audio
        if audio:
            codec = audio[0].codec_context.name if audio[0].codec_context is not None else "unknown codec"
            raise VideoInputError(
                f"'{path}' contains only audio ({codec}), no video. Choose a video file instead."
            )
        raise VideoInputError(f"'{path}' contains no video stream. Choose a video file instead.")
    stream = video_streams[0]
    # PyAV has no decoder object for codecs this FFmpeg build does not know; decoding such a
    # stream crashes the interpreter, so this check must happen before any decode call.
    if stream.codec_context is None:
        raise VideoInputError(
            f"The video codec of '{path}' is not supported by this FFmpeg/PyAV build. {REENCODE_HINT}"
        )
    return stream


def _open_input(
    path: PathLike | None,
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream, Path]:
    """Open a video file for decoding: (container, video stream, absolute path)."""
    import av

    resolved = _checked_input_path(path)
    try:
        # Cameras write metadata in all sorts of encodings; never fail on it.
        container = av.open(str(resolved), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise _unreadable_error(resolved, exc) from exc
    try:
        stream = _pick_video_stream(container, resolved)
    except BaseException:
        container.close()
        raise
    # Frame threading is left off on purpose: on a damaged packet it drops the frames still in
    # flight, and decoding is never the bottleneck next to diffusion.
    return container, stream, resolved


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> av.video.frame.VideoFrame:
    import av

    last_error: BaseException | None = None
    packets = container.demux(stream)
    for _ in range(_MAX_PACKETS_BEFORE_FIRST_FRAME):
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            last_error = exc
            packet = None  # flush: the decoder may still hold a picture
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError as exc:
            last_error = exc
            frames = []
        if frames:
            return frames[0]
        if packet is None or packet.size == 0:
            break
    reason = f" (last error: {last_error})" if last_error else ""
    raise VideoInputError(
        f"No frame of '{path}' could be decoded{reason}. The file is damaged, incomplete, or uses a "
        f"{stream.codec_context.name} variant this decoder cannot read. {REENCODE_HINT}"
    )


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _is_variable_frame_rate(stream: av.video.stream.VideoStream) -> bool:
    """Cheap heuristic (as in ffprobe): the average rate differs from the nominal rate by over 1 %."""
    average, nominal = stream.average_rate, stream.guessed_rate
    if not average or not nominal:
        return False
    return abs(float(average) - float(nominal)) > 0.01 * float(nominal)


def _rotation_quarter_turns(frame: av.video.frame.VideoFrame) -> int:
    """Counter-clockwise quarter turns that display the frame upright (from its display matrix)."""
    try:
        angle = frame.rotation
    except Exception:  # no or malformed display matrix
        return 0
    return round(angle / 90) % 4 if angle else 0


def probe(path: PathLike) -> VideoInfo:
    """Describe a video file; raise :class:`VideoInputError` if it cannot be read as a video.

    The first frame is decoded, so a file that opens but cannot be decoded (an
    unsupported codec variant, damage at the start) fails here rather than in
    the middle of a job.  Damage further into the file is only seen while
    reading: check :attr:`FrameReader.truncated`.
    """
    import av

    container, stream, resolved = _open_input(path)
    try:
        first = _first_frame(container, stream, resolved)
        codec_context = stream.codec_context
        notes: list[str] = []

        fps = _frame_rate(stream)
        if fps is None:
            fps = Fraction(25)
            notes.append("The frame rate is not recorded in the file; assuming 25 fps.")
        variable_frame_rate = _is_variable_frame_rate(stream)
        if variable_frame_rate:
            notes.append(
                f"Variable frame rate (average {float(fps):.3f} fps, "
                f"nominal {float(stream.guessed_rate):.3f} fps). Frames are read one by one, so a result written at the average rate may drift from "
                "the original audio."
            )

        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = 0.0

        frame_count_exact = stream.frames > 0
        if frame_count_exact:
            frame_count = stream.frames
        else:
            frame_count = max(1, round(duration_s * fps))
            notes.append(f"Frame count estimated from the duration: about {frame_count}.")
        if duration_s <= 0:
            duration_s = float(frame_count / fps)

        quarter_turns = _rotation_quarter_turns(first)
        width, height = first.width, first.height
        if quarter_turns % 2:
            width, height = height, width
        rotation = (-90 * quarter_turns) % 360
        if rotation:
            notes.append(
                f"Rotation metadata: frames are turned {rotation}° clockwise and returned upright, "
                f"{width}x{height}."
            )

        has_alpha = _has_alpha_channel(first.format)
        if has_alpha:
            notes.append("The video has an alpha channel; frames are composited over black.")
        if codec_context.color_trc in (_TRC_PQ, _TRC_HLG):
            notes.append("HDR video: colours are converted without tone mapping and will look washed out.")
        aspect = stream.sample_aspect_ratio
        if aspect is not None and aspect not in (0, 1):
            notes.append(
                f"Non-square pixels (sample aspect ratio {aspect}): frames are returned at their stored size "
                "and look stretched; pass size=... to correct the shape."
            )

        audio = container.streams.audio
        audio_codec = None
        if audio:
            audio_codec = audio[0].codec_context.name if audio[0].codec_context is not None else "unknown"

        return VideoInfo(
            path=resolved,
            width=width,
            height=height,
            fps=fps,
            frame_count=frame_count,
            frame_count_exact=frame_count_exact,
            duration_s=duration_s,
            codec=codec_context.name,
            pix_fmt=first.format.name,
            has_alpha=has_alpha,
            has_audio=bool(audio),
            audio_codec=audio_codec,
            variable_frame_rate=variable_frame_rate,
            rotation=rotation,
            container_format=container.format.name,
            notes=tuple(notes),
        )
    finally:
        container.close()


# --------------------------------------------------------------------------- frames


def _yuv_conversion_args(frame: av.video.frame.VideoFrame) -> dict[str, int]:
    """swscale arguments that honour the frame's colour matrix and range (and interpolate chroma).

    PyAV only applies colour details when source and destination differ; by
    default it would decode every video with BT.601 limited range, which shifts
    the colours of BT.709 (HD) and full-range (phone) videos.  For RGB output the
    destination matrix is unused, so any other matrix forces the right one.
    """
    fmt = frame.format
    if fmt.is_rgb or fmt.has_palette:
        return {}
    matrix = _SWSCALE_MATRIX.get(frame.colorspace)
    if matrix is None:
        # Untagged video: guess like players do (mpv's rule), HD is BT.709.
        matrix = _SWS_ITU709 if frame.width >= 1280 or frame.height > 576 else _SWS_ITU601
    full_range = frame.color_range == _RANGE_JPEG or fmt.name.startswith("yuvj")
    return {
        "interpolation": _SWS_DECODE_FLAGS,
        "src_colorspace": matrix,
        "dst_colorspace": _SWS_ITU601 if matrix != _SWS_ITU601 else _SWS_ITU709,
        "src_color_range": _RANGE_JPEG if full_range else _RANGE_MPEG,
        "dst_color_range": _RANGE_JPEG,
    }


def _has_alpha_channel(fmt: Any) -> bool:
    return any(component.is_alpha for component in fmt.components)


def _composite_over_black(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def _frame_to_rgb(frame: av.video.frame.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """Upright RGB uint8 (H, W, 3): colour-correct, alpha composited over black, optionally resized."""
    # Palette entries can be transparent (GIF), so palette frames are composited too.
    has_alpha = _has_alpha_channel(frame.format) or frame.format.has_palette
    conversion = _yuv_conversion_args(frame)
    if has_alpha:
        rgb = _composite_over_black(frame.to_ndarray(format="rgba", **conversion))
    else:
        rgb = frame.to_ndarray(format="rgb24", **conversion)
    quarter_turns = _rotation_quarter_turns(frame)
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)
    if size is not None and (rgb.shape[1], rgb.shape[0]) != size:
        from PIL import Image

        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(rgb)


def _checked_size(size: Any, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        width, height = (int(v) for v in size)
        valid = width >= 1 and height >= 1 and tuple(size) == (width, height)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise VideoInputError(
            f"{what} must be (width, height) with two positive whole numbers, got {size!r}."
        )
    return width, height


def _checked_index(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise VideoInputError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


class FrameReader(collections.abc.Iterator):
    """Iterator over the frames of a video, decoded one at a time (see :func:`iter_frames`).

    Attributes worth checking after (or during) iteration:

    * ``truncated``: the file ended early or had damaged packets; the frames
      yielded are still valid, but there are fewer (or some were skipped).
      ``problems`` says what went wrong; a warning is also logged.
    * ``frames_decoded``: frames decoded so far, including skipped ones.
    * ``frames_yielded``: frames returned so far.

    The file stays open until the iterator is exhausted, :meth:`close` is
    called, the ``with`` block ends, or the reader is dropped.
    """

    # Written as an explicit state machine rather than a generator: a generator method would
    # hold a reference cycle to the reader, keeping the file open until the cyclic GC runs.

    def __init__(
        self,
        path: PathLike,
        *,
        start: int = 0,
        stop: int | None = None,
        step: int = 1,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.start = _checked_index(start, "start", 0)
        self.stop = None if stop is None else _checked_index(stop, "stop", 0)
        self.step = _checked_index(step, "step", 1)
        self.size = _checked_size(size, "size")
        self.truncated = False
        self.problems: list[str] = []
        self.frames_decoded = 0
        self.frames_yielded = 0
        self._container: Any = None
        self._container, self._stream, self.path = _open_input(path)
        self._packets: Iterator[Any] | None = self._container.demux(self._stream)
        self._pending: collections.deque[Any] = collections.deque()

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> np.ndarray:
        while self._container is not None:
            frame = self._next_decoded_frame()
            if frame is None:
                self._finish(read_to_end=True)
                break
            index = self.frames_decoded
            self.frames_decoded += 1
            if self.stop is not None and index >= self.stop:
                self._finish(read_to_end=False)
                break
            if index >= self.start and (index - self.start) % self.step == 0:
                self.frames_yielded += 1
                return _frame_to_rgb(frame, self.size)
        raise StopIteration

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop reading and release the file; safe to call more than once."""
        container, self._container = getattr(self, "_container", None), None
        self._packets = None
        if container is not None:
            container.close()

    def _note_problem(self, message: str) -> None:
        self.truncated = True
        self.problems.append(message)

    def _next_decoded_frame(self) -> Any:
        """The next decoded frame, or None at the end of the stream."""
        import av

        while not self._pending:
            if self._packets is None:
                return None
            try:
                packet = next(self._packets)
            except StopIteration:
                packet = None
            except av.error.FFmpegError as exc:
                self._note_problem(f"reading stopped at a damaged or missing part of the file ({exc})")
                packet = None
            # PyAV ends the demux with an empty packet that flushes the decoder; flushing a second
            # time raises, so the stream is finished after either one.
            if packet is None or packet.size == 0:
                self._packets = None
            try:
                self._pending.extend(self._stream.decode(packet))
            except av.error.FFmpegError as exc:
                # Skip the bad packet and go on: the next keyframe usually decodes fine.
                self._note_problem(f"a damaged packet was skipped near frame {self.frames_decoded} ({exc})")
        return self._pending.popleft()

    def _finish(self, *, read_to_end: bool) -> None:
        if read_to_end:
            expected = self._stream.frames
            exact_index = any(name in _EXACT_INDEX_FORMATS for name in self._container.format.name.split(","))
            if exact_index and 0 < self.frames_decoded < expected:
                self._note_problem(
                    f"only {self.frames_decoded} of the {expected} frames in the file's index could be read"
                )
            if self.truncated:
                logger.warning(
                    "Video '%s' looks truncated or damaged: %s. Read %d frames.",
                    self.path,
                    "; ".join(self.problems[:3]) + (" ..." if len(self.problems) > 3 else ""),
                    self.frames_decoded,
                )
        self.close()


def iter_frames(
    path: PathLike,
    *,
    start: int = 0,
    stop: int | None = None,
    step: int = 1,
    size: tuple[int, int] | None = None,
) -> FrameReader:
    """Yield RGB uint8 frames ``(H, W, 3)`` of a video in presentation order, decoding as it goes.

    ``start``/``stop``/``step`` select frame indices like ``range``; frames before
    ``start`` are decoded but not converted (no seeking, so indices are exact
    even for variable-frame-rate files).  Rotation metadata is applied, so
    frames are upright.  Alpha is composited over black (transparent pixels
    become black).  ``size=(width, height)`` resizes with Lanczos; any size,
    including 1×1 and odd sizes, passes through unchanged otherwise.

    The file is opened and checked at once, so a bad file raises
    :class:`VideoInputError` here and not at the first ``next()``.  The returned
    :class:`FrameReader` reports damage found while reading in ``truncated``.
    """
    return FrameReader(path, start=start, stop=stop, step=step, size=size)


def read_all_frames(path: PathLike, limit: int | None = None) -> list[np.ndarray]:
    """All frames (or the first ``limit``) in a list: for tests and short clips only.

    A one-minute 1080p clip is already ~9 GB of RGB; use :func:`iter_frames` for
    anything a user supplies.
    """
    with iter_frames(path, stop=limit) as frames:
        return list(frames)


# --------------------------------------------------------------------------- output


def _checked_fps(fps: Any) -> Fraction:
    """A positive frame rate as a Fraction; floats near NTSC rates become n*1000/1001."""
    if isinstance(fps, bool):
        fps = None
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise VideoInputError(f"fps must be a positive number, got {fps!r}.")
    if isinstance(fps, (Fraction, int, np.integer)):
        return Fraction(fps)
    ntsc_base = round(value * 1.001)
    if abs(value - round(value)) > 1e-3 and abs(value - ntsc_base * 1000 / 1001) < 1e-3:
        return Fraction(ntsc_base * 1000, 1001)
    return Fraction(value).limit_denominator(1001)


def _subsampling(pix_fmt: str) -> tuple[int, int]:
    """Horizontal and vertical chroma subsampling factors of a pixel format (2, 2 for yuv420p)."""
    import av

    fmt = av.VideoFormat(pix_fmt)
    return round(64 / fmt.chroma_width(64)), round(64 / fmt.chroma_height(64))


class VideoWriter:
    """Encode RGB frames to a video file, atomically.

    ``VideoWriter(path, fps, size=(width, height), crf=18, codec="libx264", pix_fmt="yuv420p")``

    Frames go to a hidden temporary file next to ``path``; a clean :meth:`close`
    (or leaving the ``with`` block normally) renames it onto ``path`` with
    ``os.replace``.  An exception inside the ``with`` block, :meth:`abort`, or a
    writer that is garbage-collected unclosed removes the temporary file and
    leaves ``path`` untouched, including any older file there.  Closing a
    writer that received no frames raises instead of saving an empty video.

    Frames are ``uint8`` arrays ``(height, width, 3)`` (a 4th alpha channel is
    dropped) or PIL images, all of ``size`` (taken from the first frame when
    ``size`` is None).  ``fps`` may be a Fraction, int or float (29.97 becomes
    30000/1001).

    Odd sizes: chroma-subsampled formats such as yuv420p need even dimensions,
    so an odd frame is padded by repeating its last column/row; the file is
    then one pixel wider/taller (``encoded_size``).  mp4/mov files get
    ``+faststart`` so browsers can play them while downloading, and a BT.601
    (SD) or BT.709 (HD) colour tag matching the conversion used.

    Audio: with ``audio_from=SOURCE`` the finished video is remuxed in
    :meth:`close` with SOURCE's audio from ``audio_start_s`` (seconds after
    SOURCE's first video frame; :func:`frame_time_s` gives it for a start
    frame), cut to the video's duration (and to ``audio_duration_s`` when
    given), see :func:`mux_audio`.  The result, with notes for the user, is in
    :attr:`audio`.  A source without audio is not an error.  If adding the
    audio fails, the finished video is still saved, without audio, and
    :attr:`audio` says why: an hour of rendering is never lost to its sound.
    """

    def __init__(
        self,
        path: PathLike,
        fps: Fraction | float | int,
        size: tuple[int, int] | None = None,
        crf: int | float = 18,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        *,
        codec_options: Mapping[str, str] | None = None,
        audio_from: PathLike | None = None,
        audio_start_s: float = 0.0,
        audio_duration_s: float | None = None,
    ) -> None:
        import av

        if path is None or str(path).strip() == "":
            raise VideoInputError("No output path was given for the video.")
        self.path = Path(path).expanduser().absolute()
        # Checked now, not in close(): a wrong audio path should fail before the render, not after it.
        self._audio_from = None if audio_from is None else _checked_input_path(audio_from)
        self._audio_start_s, self._audio_duration_s = _checked_audio_segment(audio_start_s, audio_duration_s)
        self.audio: AudioMuxResult | None = None
        self.fps = _checked_fps(fps)
        self.size = _checked_size(size, "size")
        if isinstance(crf, bool) or not isinstance(crf, (int, float)) or not 0 <= crf <= 63:
            raise VideoInputError(
                f"crf must be a number from 0 (best) to 51 (worst; 63 for some encoders), got {crf!r}. "
                "18 looks visually lossless with libx264."
            )
        try:
            encoder = av.codec.Codec(codec, "w")
        except (av.codec.codec.UnknownCodecError, ValueError) as exc:
            raise VideoInputError(
                f"The video encoder {codec!r} is not available in this FFmpeg/PyAV build; use 'libx264'."
            ) from exc
        supported = [fmt.name for fmt in (encoder.video_formats or [])]
        if supported and pix_fmt not in supported:
            raise VideoInputError(
                f"The encoder {codec!r} cannot write pixel format {pix_fmt!r}; choose one of {supported}."
            )
        self.codec = codec
        self.pix_fmt = pix_fmt
        self._codec_options = {str(k): str(v) for k, v in (codec_options or {}).items()}
        if codec in ("libx264", "libx265"):
            self._codec_options.setdefault("crf", f"{crf:g}")
        self._subsampling = _subsampling(pix_fmt)
        self._is_yuv = not (av.VideoFormat(pix_fmt).is_rgb or av.VideoFormat(pix_fmt).has_palette)
        self.frames_written = 0
        self._stream: Any = None
        self._closed = False
        self._temp_path = self._create_temp_file()
        container_options = {"movflags": "+faststart"} if self.path.suffix.lower() in _MP4_SUFFIXES else {}
        try:
            self._container = av.open(str(self._temp_path), mode="w", options=container_options)
        except (av.error.FFmpegError, ValueError) as exc:
            self._remove_temp_file()
            raise VideoInputError(
                f"Cannot write a video named '{self.path}': the extension {self.path.suffix!r} is not "
                "a known video container. Use .mp4."
            ) from exc

    @property
    def encoded_size(self) -> tuple[int, int] | None:
        """Size stored in the file: ``size`` rounded up to what ``pix_fmt`` allows."""
        if self.size is None:
            return None
        step_x, step_y = self._subsampling
        width, height = self.size
        return width + (-width) % step_x, height + (-height) % step_y

    def _create_temp_file(self) -> Path:
        return _temp_file_beside(self.path)

    def _remove_temp_file(self) -> None:
        _remove_quietly(self._temp_path)

    def _add_video_stream(self) -> None:
        width, height = self.encoded_size  # type: ignore[misc]
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = self.pix_fmt
        stream.options = dict(self._codec_options)
        if self._is_yuv:
            # Tag the matrix the frames are converted with, so players decode the same colours.
            hd = width >= 1280 or height > 576
            tag = 1 if hd else 6  # AVCOL_*_BT709 / AVCOL_*_SMPTE170M
            context = stream.codec_context
            context.colorspace = context.color_primaries = context.color_trc = tag
            context.color_range = _RANGE_MPEG
            self._yuv_matrix = _SWS_ITU709 if hd else _SWS_ITU601
        self._stream = stream

    def _as_rgb(self, frame: Any) -> np.ndarray:
        """Validate one input frame and return it as contiguous RGB uint8 (H, W, 3)."""
        if not isinstance(frame, np.ndarray):
            from PIL import Image

            if isinstance(frame, Image.Image):
                frame = np.asarray(frame.convert("RGB"))
            else:
                raise VideoInputError(
                    f"Frame {self.frames_written} is a {type(frame).__name__}; expected a numpy uint8 array "
                    "(height, width, 3) or a PIL image."
                )
        if frame.dtype != np.uint8:
            raise VideoInputError(
                f"Frame {self.frames_written} has dtype {frame.dtype}; expected uint8 (0-255). "
                "Convert floats in [0, 1] with (frame * 255).round().clip(0, 255).astype(np.uint8)."
            )
        if frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise VideoInputError(
                f"Frame {self.frames_written} has shape {frame.shape}; expected (height, width, 3) RGB "
                "or (height, width, 4) RGBA."
            )
        frame_size = (frame.shape[1], frame.shape[0])
        if self.size is None:
            self.size = _checked_size(frame_size, "frame size")
        if frame_size != self.size:
            raise VideoInputError(
                f"Frame {self.frames_written} is {frame_size[0]}x{frame_size[1]} but the video is "
                f"{self.size[0]}x{self.size[1]}; resize every frame to the same size."
            )
        return np.ascontiguousarray(frame[..., :3])

    def write(self, frame: np.ndarray | Any) -> None:
        """Encode one frame (RGB/RGBA uint8 array or PIL image of the writer's size)."""
        import av

        if self._closed:
            raise ValueError(f"The writer for '{self.path}' is already closed.")
        rgb = self._as_rgb(frame)
        if self._stream is None:
            self._add_video_stream()
        width, height = self.encoded_size  # type: ignore[misc]
        pad_y, pad_x = height - rgb.shape[0], width - rgb.shape[1]
        if pad_x or pad_y:
            rgb = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if self._is_yuv:
            video_frame = video_frame.reformat(
                format=self.pix_fmt,
                src_colorspace=self._yuv_matrix,
                dst_colorspace=self._yuv_matrix,
                src_color_range=_RANGE_JPEG,
                dst_color_range=_RANGE_MPEG,
                interpolation=_SWS_ENCODE_FLAGS,
            )
        video_frame.pts = self.frames_written
        self._mux(self._stream.encode(video_frame))
        self.frames_written += 1

    def _mux(self, packets: Iterable[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self) -> None:
        """Finish the file and move it to ``path``; on any failure nothing is left behind."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise VideoInputError(f"No frames were written to '{self.path}'; nothing was saved.")
            self._mux(self._stream.encode(None))
            self._container.close()
            if self._audio_from is not None:
                self._add_audio()
            os.replace(self._temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def _add_audio(self) -> None:
        """Replace the finished video-only temporary file by one with the source's audio."""
        video_duration_s = self.frames_written / self.fps
        muxed_path = _temp_file_beside(self.path)
        try:
            self.audio = _mux_into(
                self._temp_path,
                self._audio_from,
                muxed_path,
                start_s=self._audio_start_s,
                duration_s=self._audio_duration_s,
                video_duration_s=float(video_duration_s),
                frame_s=float(1 / self.fps),
            )
            if self.audio.has_audio:
                os.replace(muxed_path, self._temp_path)
        except Exception as exc:  # noqa: BLE001 - the video itself is fine; keep it (see the class doc)
            logger.warning("Could not add the audio of '%s' to '%s'; saving the video without it.",
                           self._audio_from, self.path, exc_info=True)
            self.audio = AudioMuxResult(
                path=self.path, has_audio=False, method=None, codec=None, source_codec=None,
                start_s=self._audio_start_s, duration_s=0.0, video_duration_s=float(video_duration_s),
                notes=(f"The audio of '{self._audio_from}' could not be added ({exc}); the video was saved "
                       "without sound. Add it afterwards with video_io.mux_audio or a video editor.",),
            )
        finally:
            _remove_quietly(muxed_path)
        self.audio = dataclasses.replace(self.audio, path=self.path)

    def abort(self) -> None:
        """Discard everything written so far; ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # the file is being thrown away; a failing trailer does not matter
            pass
        self._remove_temp_file()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and hasattr(self, "_container"):
            try:
                self.abort()
            except Exception:
                pass


def write_video(
    path: PathLike,
    frames: Iterable[np.ndarray | Any],
    fps: Fraction | float | int,
    **writer_options: Any,
) -> int:
    """Write frames (any iterable, consumed one at a time) to ``path``; returns the frame count.

    Takes the same keyword options as :class:`VideoWriter`; the file appears
    only if every frame was written.
    """
    with VideoWriter(path, fps, **writer_options) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


# --------------------------------------------------------------------------- audio
#
# The engine streams rendered frames into a VideoWriter; the source's audio is added afterwards by
# remuxing the finished video-only file (its packets are copied, never re-encoded) together with the
# matching audio segment into a second temporary file, which is then renamed onto the final name.
#
# Copy or transcode: the audio is stream-copied only when the whole audio track belongs in the
# output unchanged: its codec plays in a browser from that container, it starts with the first
# rendered frame, and it ends no later than half a frame after the video. Every other case (a start
# frame, every-Nth frames with a shorter result, audio longer than the video, an offset audio start,
# PCM/MP3/Opus/Vorbis/ALAC/FLAC in an mp4) is decoded and re-encoded with a sample-accurate cut: packet
# copies cannot cut inside a packet (1024 samples of AAC, 21-23 ms, more than a frame at 60 fps) and
# a stream copied from the middle loses the decoder pre-roll, which clicks.

# Audio codecs copied unchanged, per output container: those browsers play there (the WebUI shows
# the result in a <video> element); everything else is transcoded to the container's encoder. MP3 in
# mp4 is transcoded too: its encoder delay is not in the mp4 header, so a copied track measured 16 ms
# longer than its source, a whole frame at 60 fps.
_AUDIO_POLICY_MP4 = (frozenset({"aac"}), "aac")
_AUDIO_POLICIES: dict[str, tuple[frozenset[str], str]] = {
    ".webm": (frozenset({"opus", "vorbis"}), "libopus"),
    ".mkv": (frozenset({"aac", "mp3", "opus", "vorbis", "flac"}), "aac"),
}
_AUDIO_BIT_RATE_PER_CHANNEL = {"aac": 96_000, "libopus": 64_000}

# Audio timestamps further than this from the running sample count are a real gap (or overlap) in
# the stream; closer ones are rounding (Matroska stores milliseconds) and are ignored, which keeps
# the samples contiguous instead of clicking at every frame.
_AUDIO_RESYNC_S = 0.010
# Decoding starts this long before the cut: AAC/MP3/Opus need a packet or two of pre-roll to
# reproduce the first samples exactly.
_AUDIO_PREROLL_S = 0.5
# Packets read past the wanted frame before the presentation order of the first frames is certain
# (B-frame reordering is never deeper than 16 frames in H.264/HEVC).
_MAX_REORDER = 32
# Starts closer than this count as "the same instant": container timestamp rounding, far below a frame.
_SAME_INSTANT_S = 0.0005


@dataclass(frozen=True)
class AudioMuxResult:
    """What :func:`mux_audio` (or ``VideoWriter(audio_from=...)``) did with the source's audio.

    ``method`` is ``"copy"`` (packets copied unchanged), ``"transcode"`` (decoded,
    cut sample-accurately and re-encoded as ``codec``) or None when no audio was
    written.  ``start_s`` is where the segment starts, in seconds after the
    source's first video frame; ``duration_s`` is the duration of the output's
    audio track and ``video_duration_s`` that of its video.  ``notes`` says
    anything the user should know (no audio, several tracks, an offset start,
    drift after a frame-rate change ...).
    """

    path: Path
    has_audio: bool
    method: str | None
    codec: str | None
    source_codec: str | None
    start_s: float
    duration_s: float
    video_duration_s: float
    notes: tuple[str, ...] = ()


def _checked_audio_segment(start_s: Any, duration_s: Any) -> tuple[float, float | None]:
    def number(value: Any) -> float:
        if isinstance(value, bool):
            return math.nan
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    start = number(start_s)
    if not math.isfinite(start) or start < 0:
        raise VideoInputError(
            f"audio_start_s must be a number of seconds >= 0, got {start_s!r}. "
            "Use frame_time_s(source, start_frame) for the time of a start frame."
        )
    if duration_s is None:
        return start, None
    duration = number(duration_s)
    if not math.isfinite(duration) or duration <= 0:
        raise VideoInputError(
            f"audio_duration_s must be a positive number of seconds or None, got {duration_s!r}."
        )
    return start, duration


def _temp_file_beside(path: Path) -> Path:
    """Create an empty hidden temporary file next to ``path`` (same suffix) and return its path."""
    folder = path.parent
    if not folder.is_dir():
        raise VideoInputError(f"Cannot write '{path}': the folder '{folder}' does not exist.")
    # Same folder, so os.replace is an atomic rename; same suffix, so FFmpeg picks the same muxer.
    temp_path = folder / f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}"
    try:
        # O_EXCL: never reuse someone else's file; 0o666 honours the umask, unlike mkstemp's 0o600.
        os.close(os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise VideoInputError(f"Cannot write in '{folder}': {exc.strerror or exc}.") from exc
    return temp_path


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _video_presentation_times(container: Any, stream: Any, count: int) -> list[float]:
    """Presentation times (s, container timeline) of the first ``count`` frames, from packet timestamps.

    Only packets are read, nothing is decoded.  Packets the demuxer marks as
    discarded (before an mp4 edit list's start) are not frames the reader yields.
    """
    import av

    stamps: list[int] = []
    wanted = count + _MAX_REORDER
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or getattr(packet, "is_discard", False):
                continue
            stamps.append(stamp)
            if len(stamps) >= wanted:
                break
    except av.error.FFmpegError:
        pass  # a damaged file: the times read so far are still right
    stamps.sort()
    return [float(stamp * stream.time_base) for stamp in stamps[:count]]


def frame_time_s(path: PathLike, index: int) -> float:
    """When frame ``index`` (0-based, as :func:`iter_frames` counts) is shown, in seconds after frame 0.

    Read from the container's timestamps, so it is right for variable frame
    rate videos too, where ``index / fps`` drifts.  Pass it as the audio start
    (``VideoWriter(audio_from=..., audio_start_s=...)`` or :func:`mux_audio`)
    when a render starts at a later frame.  Cost: the packets up to that frame
    are read (not decoded), a fraction of the time decoding them takes.  Past
    the last frame, the time is extrapolated at the average frame rate.
    """
    index = _checked_index(index, "index", 0)
    container, stream, _ = _open_input(path)
    try:
        times = _video_presentation_times(container, stream, index + 1)
        fps = _frame_rate(stream) or Fraction(25)
    finally:
        container.close()
    if not times:  # no timestamps at all (raw streams): the nominal rate is all there is
        return float(index / fps)
    if index < len(times):
        return times[index] - times[0]
    return times[-1] - times[0] + float((index - len(times) + 1) / fps)


def _audio_policy(path: Path) -> tuple[frozenset[str], str]:
    suffix = path.suffix.lower()
    if suffix in _MP4_SUFFIXES:
        return _AUDIO_POLICY_MP4
    return _AUDIO_POLICIES.get(suffix, (frozenset({"aac"}), "aac"))


def _describe_audio_stream(stream: Any) -> str:
    codec = stream.codec_context.name if stream.codec_context is not None else "unknown codec"
    language = (stream.metadata or {}).get("language")
    return f"{codec}, {language}" if language and language != "und" else codec


def _pick_audio_stream(container: Any) -> tuple[Any, list[str]]:
    """The audio stream to use (the default one, else the first) and notes about the choice."""
    import av

    streams = list(container.streams.audio)
    if not streams:
        return None, []
    defaults = [s for s in streams if s.disposition & av.stream.Disposition.default]
    chosen = (defaults or streams)[0]
    notes = []
    if len(streams) > 1:
        kind = "default" if defaults else "first"
        notes.append(
            f"The source has {len(streams)} audio tracks; the {kind} one (track {streams.index(chosen) + 1}: "
            f"{_describe_audio_stream(chosen)}) is used and the others are left out."
        )
    return chosen, notes


def _video_origin_s(path: Path) -> float:
    """Container time of the source's first video frame: the instant the audio segment is measured from.

    0 for a pure audio file.  Read in its own pass so the audio demuxer starts
    at the beginning of the file.
    """
    import av

    with av.open(str(path), mode="r", metadata_errors="replace") as container:
        attached_pic = av.stream.Disposition.attached_pic
        videos = [s for s in container.streams.video if not (s.disposition & attached_pic)]
        if not videos:
            return 0.0
        times = _video_presentation_times(container, videos[0], 1)
        if times:
            return times[0]
        stream = videos[0]
        return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _audio_extent_s(stream: Any) -> tuple[float | None, float | None]:
    """(start, end) of an audio stream on the container timeline when its header says so."""
    if stream.start_time is None or stream.time_base is None:
        return None, None
    start = float(stream.start_time * stream.time_base)
    if not stream.duration:
        return start, None
    return start, start + float(stream.duration * stream.time_base)


class _SampleChunker:
    """Collect float32 planar samples and hand them out in encoder frames of ``frame_size``."""

    def __init__(self, channels: int, frame_size: int) -> None:
        self.channels = channels
        self.frame_size = frame_size
        self._parts: list[np.ndarray] = []
        self._buffered = 0

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        self._parts.append(samples)
        self._buffered += samples.shape[1]
        if self._buffered < self.frame_size:
            return
        joined = np.concatenate(self._parts, axis=1)
        usable = joined.shape[1] - joined.shape[1] % self.frame_size
        for offset in range(0, usable, self.frame_size):
            yield joined[:, offset : offset + self.frame_size]
        rest = joined[:, usable:]
        self._parts, self._buffered = [rest], rest.shape[1]

    def push_silence(self, count: int) -> Iterator[np.ndarray]:
        # In frame-sized pieces: a late audio start can mean minutes of silence.
        while count > 0:
            piece = min(count, self.frame_size)
            yield from self.push(np.zeros((self.channels, piece), dtype=np.float32))
            count -= piece

    def flush(self) -> Iterator[np.ndarray]:
        if self._buffered:
            yield np.concatenate(self._parts, axis=1)
        self._parts, self._buffered = [], 0


class _AudioTranscoder:
    """Decode an audio stream, cut [start, start + length) sample-accurately, re-encode it."""

    def __init__(self, source: Any, in_stream: Any, output: Any, encoder_name: str) -> None:
        import av

        self.source, self.in_stream = source, in_stream
        self.notes: list[str] = []
        encoder = av.codec.Codec(encoder_name, "w")
        context = in_stream.codec_context
        # len(channels): AudioLayout.nb_channels only exists from PyAV 13.
        channels = len(context.layout.channels) if context.layout is not None else 2
        self.layout = "mono" if channels == 1 else "stereo"
        if channels > 2:
            self.notes.append(f"The {channels}-channel audio was mixed down to stereo.")
        rate = context.sample_rate or 48000
        rates = encoder.audio_rates
        if rates and rate not in rates:
            new_rate = 48000 if 48000 in rates else max(rates)
            self.notes.append(f"The audio was resampled from {rate} Hz to {new_rate} Hz for {encoder_name}.")
            rate = new_rate
        self.rate = rate
        formats = [f.name for f in encoder.audio_formats or []]
        self.format = "fltp" if not formats or "fltp" in formats else "flt"
        if self.format not in formats and formats:
            raise VideoInputError(f"The audio encoder {encoder_name} takes none of fltp/flt ({formats}).")
        self.stream = output.add_stream(encoder_name, rate=rate, layout=self.layout)
        self.stream.codec_context.format = self.format
        self.stream.codec_context.bit_rate = _AUDIO_BIT_RATE_PER_CHANNEL.get(encoder_name, 96_000) * (
            1 if self.layout == "mono" else 2
        )
        # Opened now (not at the first frame) to learn the encoder's frame size.
        self.stream.codec_context.open()
        self.codec = self.stream.codec_context.name
        self.samples_written = 0
        self.leading_silence = 0

    def packets(self, start_s: float, length_s: float) -> Iterator[Any]:
        """Encoded packets of the segment; ``samples_written`` counts the samples in them."""
        import av

        rate = self.rate
        window_start = round(start_s * rate)
        window_end = window_start + round(length_s * rate)
        resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=rate)
        frame_size = self.stream.codec_context.frame_size or 1024
        chunker = _SampleChunker(1 if self.layout == "mono" else 2, frame_size)
        next_abs = window_start  # absolute sample index the next output sample belongs to
        position: int | None = None  # absolute sample index of the next decoded sample
        skipped_packets = 0

        if start_s - _AUDIO_PREROLL_S > 0:
            try:
                self.source.seek(
                    int((start_s - _AUDIO_PREROLL_S) / self.in_stream.time_base),
                    stream=self.in_stream,
                    backward=True,
                )
            except av.error.FFmpegError:
                pass  # not seekable: decode from the start, which is only slower

        def place(samples: np.ndarray) -> Iterator[np.ndarray]:
            """Put decoded samples at ``position``: silence before them, overlap and excess cut."""
            nonlocal next_abs, position
            count = samples.shape[1]
            begin, end = position, position + count
            position = end
            if begin > next_abs:  # a gap, or the audio starting after the first frame
                silence = min(begin, window_end) - next_abs
                if next_abs == window_start:
                    self.leading_silence = silence
                yield from chunker.push_silence(silence)
                next_abs += silence
            low, high = max(begin, next_abs), min(end, window_end)
            if high > low:
                yield from chunker.push(np.ascontiguousarray(samples[:, low - begin : high - begin]))
                next_abs = high

        def encode(pieces: Iterator[np.ndarray]) -> Iterator[Any]:
            for piece in pieces:
                if self.format == "flt":  # interleaved
                    piece = piece.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece, dtype=np.float32),
                                                   format=self.format, layout=self.layout)
                frame.sample_rate = rate
                frame.time_base = Fraction(1, rate)
                frame.pts = self.samples_written
                self.samples_written += frame.samples
                yield from self.stream.encode(frame)

        try:
            for packet in self.source.demux(self.in_stream):
                if next_abs >= window_end:
                    break
                try:
                    decoded = self.in_stream.decode(packet)
                except av.error.FFmpegError:
                    skipped_packets += 1  # a damaged packet: its samples become a gap of silence
                    continue
                for frame in decoded:
                    stamp = frame.time
                    if stamp is not None:
                        stamped = round(stamp * rate)
                        if position is None or abs(stamped - position) > _AUDIO_RESYNC_S * rate:
                            position = stamped
                    elif position is None:
                        position = 0
                    for converted in resampler.resample(frame):
                        yield from encode(place(converted.to_ndarray()))
        except av.error.FFmpegError:
            self.notes.append("The audio stream ends early (damaged or truncated file); the rest is silent.")
        if next_abs < window_end and position is not None:
            for converted in resampler.resample(None):
                yield from encode(place(converted.to_ndarray()))
        yield from encode(chunker.flush())
        yield from self.stream.encode(None)
        if skipped_packets:
            self.notes.append(f"{skipped_packets} damaged audio packets were replaced by silence.")


def _interleaved(*packet_streams: Iterable[Any]) -> Iterator[Any]:
    """Merge per-stream packet sequences in decoding-time order, as a player reads them.

    FFmpeg's muxer would interleave on its own, but only by buffering one stream
    until the other catches up: the whole video if the audio came last.
    """
    return heapq.merge(*packet_streams, key=lambda packet: packet.dts * packet.time_base)


def _copied_packets(source: Any, in_stream: Any, out_stream: Any, shift: int = 0) -> Iterator[Any]:
    for packet in source.demux(in_stream):
        if packet.dts is None:  # the demuxer's end-of-stream marker
            continue
        if shift:
            packet.dts -= shift
            if packet.pts is not None:
                packet.pts -= shift
        packet.stream = out_stream
        yield packet


def _mux_into(
    video_path: Path,
    audio_source: Path,
    dest: Path,
    *,
    start_s: float,
    duration_s: float | None,
    video_duration_s: float | None = None,
    frame_s: float | None = None,
) -> AudioMuxResult:
    """Write ``video_path``'s video and ``audio_source``'s audio segment into the existing file ``dest``.

    Nothing is written when the source has no usable audio (``has_audio`` is
    then False and ``notes`` says why); the caller owns ``dest`` either way.
    """
    import av

    video_in, video_stream, _ = _open_input(video_path)
    try:
        if video_duration_s is None:
            if video_stream.duration is not None:
                video_duration_s = float(video_stream.duration * video_stream.time_base)
            else:
                video_duration_s = (video_in.duration or 0) / av.time_base
        if frame_s is None:
            frame_s = float(1 / (_frame_rate(video_stream) or Fraction(25)))

        def no_audio(*notes: str, source_codec: str | None = None) -> AudioMuxResult:
            return AudioMuxResult(
                dest, False, None, None, source_codec, start_s, 0.0, video_duration_s, tuple(notes)
            )

        try:
            source = av.open(str(audio_source), mode="r", metadata_errors="replace")
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise _unreadable_error(audio_source, exc) from exc
        with source:
            audio_stream, notes = _pick_audio_stream(source)
            if audio_stream is None:
                return no_audio(f"'{audio_source.name}' has no audio track; the video is silent.")
            if audio_stream.codec_context is None:
                return no_audio(
                    *notes,
                    f"The audio codec of '{audio_source.name}' is not supported by this FFmpeg/PyAV build; "
                    "the video is silent. Convert the audio to AAC and add it with a video editor.",
                )
            # The codec's own name ("mp3"), not its decoder's ("mp3float").
            source_codec = audio_stream.codec_context.codec.canonical_name

            origin_s = _video_origin_s(audio_source)
            window_start_s = origin_s + start_s
            length_s = video_duration_s
            if duration_s is not None:
                if abs(duration_s - video_duration_s) > frame_s:
                    notes.append(
                        f"The video lasts {video_duration_s:.3f} s but covers {duration_s:.3f} s of the "
                        "source "
                        "(a changed frame rate): the audio plays at normal speed from the first frame and "
                        "drifts out of sync."
                    )
                length_s = min(duration_s, video_duration_s)
            audio_start, audio_end = _audio_extent_s(audio_stream)
            if audio_end is not None and audio_end <= window_start_s:
                return no_audio(
                    *notes,
                    f"The audio ends at {audio_end - origin_s:.3f} s, before the rendered part starts "
                    f"({start_s:.3f} s); the video is silent.",
                    source_codec=source_codec,
                )
            if audio_start is not None and audio_start >= window_start_s + length_s:
                return no_audio(
                    *notes,
                    f"The audio starts at {audio_start - origin_s:.3f} s, after the rendered part ends "
                    f"({start_s + length_s:.3f} s); the video is silent.",
                    source_codec=source_codec,
                )

            copyable, encoder_name = _audio_policy(dest)
            copy = (
                source_codec in copyable
                and audio_start is not None
                and audio_end is not None
                and abs(audio_start - window_start_s) <= _SAME_INSTANT_S
                and audio_end - window_start_s <= length_s + frame_s / 2
            )

            output = av.open(str(dest), mode="w", options=_container_options(dest))
            with output:
                video_out = _add_stream_like(output, video_stream)
                video_packets = _copied_packets(video_in, video_stream, video_out)
                if copy:
                    audio_out = _add_stream_like(output, audio_stream)
                    shift = round(window_start_s / audio_stream.time_base)
                    audio_packets = _copied_packets(source, audio_stream, audio_out, shift)
                    _mux_all(output, _interleaved(video_packets, audio_packets))
                    audio_duration_s = audio_end - audio_start
                    codec, method = source_codec, "copy"
                else:
                    transcoder = _AudioTranscoder(source, audio_stream, output, encoder_name)
                    # Where the header knows the audio's end, stop there: decoders also return the
                    # encoder's padding after it (up to a packet of near-silence).
                    wanted_s = length_s if audio_end is None else min(length_s, audio_end - window_start_s)
                    audio_packets = transcoder.packets(window_start_s, wanted_s)
                    _mux_all(output, _interleaved(video_packets, audio_packets))
                    notes.extend(transcoder.notes)
                    audio_duration_s = transcoder.samples_written / transcoder.rate
                    codec, method = transcoder.codec, "transcode"
                    if transcoder.leading_silence:
                        delay_s = transcoder.leading_silence / transcoder.rate
                        notes.append(
                            f"The audio starts {delay_s:.3f} s after the first frame; that gap is silent, "
                            "as in the source."
                        )
            if audio_duration_s < length_s - frame_s:
                notes.append(
                    f"The audio ({audio_duration_s:.3f} s) ends before the video ({video_duration_s:.3f} s); "
                    "the rest of the video is silent."
                )
            return AudioMuxResult(dest, True, method, codec, source_codec, start_s, audio_duration_s,
                                  video_duration_s, tuple(notes))
    finally:
        video_in.close()


def _add_stream_like(output: Any, template: Any) -> Any:
    """An output stream with ``template``'s codec parameters, for copying its packets."""
    add_from_template = getattr(output, "add_stream_from_template", None)
    if add_from_template is not None:
        return add_from_template(template)
    return output.add_stream(template=template)  # PyAV < 14


def _container_options(path: Path) -> dict[str, str]:
    # +faststart: the index goes first, so browsers play the file while it downloads.
    return {"movflags": "+faststart"} if path.suffix.lower() in _MP4_SUFFIXES else {}


def _mux_all(output: Any, packets: Iterable[Any]) -> None:
    for packet in packets:
        output.mux(packet)


def mux_audio(
    video_path: PathLike,
    audio_source: PathLike,
    output_path: PathLike | None = None,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    delete_video: bool = False,
) -> AudioMuxResult:
    """Write ``video_path``'s video with ``audio_source``'s audio to ``output_path``, atomically.

    The audio segment starts ``start_s`` seconds after ``audio_source``'s first
    video frame (:func:`frame_time_s` converts a start frame, exactly for
    variable frame rates) and is cut where the video ends, or after
    ``duration_s`` if that is shorter.  So the output's audio lasts as long as
    its video (within a frame), or less if the source's audio is shorter.
    Audio that starts after the first frame keeps its delay as silence.

    The audio is copied unchanged when the whole track fits (see the section
    comment above: same start, no longer than the video, a codec browsers play
    in that container); otherwise it is cut sample-accurately and encoded to
    AAC (Opus for .webm).  The video packets are always copied, never
    re-encoded.  Of several audio tracks the default one is used.

    ``output_path`` None rewrites ``video_path`` in place.  The result appears
    under ``output_path`` only when complete (temporary file + rename); on any
    error nothing is left there and an older file of that name is kept.  With
    ``delete_video`` the video-only input is removed after success.  A source
    without audio is not an error: the output is the video alone and the
    result's ``notes`` say so.  No ffmpeg program is needed, only PyAV.
    """
    video = _checked_input_path(video_path)
    source = _checked_input_path(audio_source)
    output = video if output_path is None else Path(output_path).expanduser().absolute()
    start, duration = _checked_audio_segment(start_s, duration_s)
    temp_path = _temp_file_beside(output)
    try:
        result = _mux_into(video, source, temp_path, start_s=start, duration_s=duration)
        if result.has_audio:
            os.replace(temp_path, output)
        elif output != video:
            import shutil

            shutil.copyfile(video, temp_path)
            os.replace(temp_path, output)
    except BaseException:
        _remove_quietly(temp_path)
        raise
    _remove_quietly(temp_path)
    if delete_video and output != video:
        _remove_quietly(video)
    return dataclasses.replace(result, path=output)
