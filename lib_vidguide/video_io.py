"""Reading and writing video files with PyAV, safely and one frame at a time.

Frames are always RGB ``uint8`` arrays of shape ``(height, width, 3)``.

* :func:`probe` describes a file and fails early, with a message that says what
  to do, on anything that is not a readable video.
* :func:`iter_frames` decodes as it goes, so a long video never sits in RAM.
* :class:`VideoWriter` encodes H.264 mp4 into a temporary file and renames it
  into place only when it was closed cleanly: a crash never leaves a
  half-written file under the requested name.

Every problem with the caller's input raises :class:`VideoInputError`, a
``ValueError``; PyAV's own exceptions do not escape for bad input.

``av`` is imported inside the functions that need it, so importing this module
costs nothing at WebUI start-up.
"""

from __future__ import annotations

import collections
import collections.abc
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

if TYPE_CHECKING:
    import av.container
    import av.video.frame
    import av.video.stream

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "FrameReader",
    "VideoInfo",
    "VideoInputError",
    "VideoWriter",
    "iter_frames",
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


class VideoInputError(ValueError):
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
    if path.suffix.lower() in _MP4_SUFFIXES:
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

    Audio is not written yet.  The container is opened in ``__init__`` but its
    header is written only with the first frame, so a later audio track can be
    added with ``self._container.add_stream_from_template`` before that point
    and muxed in :meth:`close` through :meth:`_mux`.
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
    ) -> None:
        import av

        if path is None or str(path).strip() == "":
            raise VideoInputError("No output path was given for the video.")
        self.path = Path(path).expanduser().absolute()
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
        folder = self.path.parent
        if not folder.is_dir():
            raise VideoInputError(f"Cannot write '{self.path}': the folder '{folder}' does not exist.")
        # Same folder, so os.replace is an atomic rename; same suffix, so FFmpeg picks the same muxer.
        temp_path = folder / f".{self.path.stem}.{secrets.token_hex(4)}.part{self.path.suffix}"
        try:
            # O_EXCL: never reuse someone else's file; 0o666 honours the umask, unlike mkstemp's 0o600.
            os.close(os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as exc:
            raise VideoInputError(f"Cannot write in '{folder}': {exc.strerror or exc}.") from exc
        return temp_path

    def _remove_temp_file(self) -> None:
        try:
            os.unlink(self._temp_path)
        except FileNotFoundError:
            pass

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
            os.replace(self._temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True

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
