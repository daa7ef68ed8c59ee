"""Optical flow, warping, occlusion and guidance weights for flow-guided img2img.

Conventions (the same as OpenCV's): a flow ``f`` from frame ``a`` to frame ``b`` is stored on
frame ``a``'s pixel grid as an (H, W, 2) float32 array of (dx, dy), with
``a(x) ≈ b(x + f(x))``. For a previous frame ``prev`` and the current frame ``cur``:

- ``forward = flow(prev → cur)`` lives on the previous frame's grid;
- ``backward = flow(cur → prev)`` lives on the current frame's grid, so the previous frame is
  carried onto the current grid by ``out(x) = prev(x + backward(x))`` (:func:`backward_warp`).

The measurements behind the defaults (DIS medium, backward warp, forward-backward occlusion
test with alpha=0.05, beta=1.0) are in docs/FLOW.md.

Threads: nothing in this module calls ``cv2.setNumThreads``; that setting is process-global
and belongs to the application. The parallelism used here is two Python threads (OpenCV
releases the GIL inside ``calc``), one per flow direction, each with its own DIS object.
FLOW.md measured that with ``cv2.setNumThreads(1)``; callers that want exactly that
configuration set it once at start-up.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

FLOW_METHODS = ("dis_medium", "dis_fast", "farneback")
DEFAULT_FLOW_METHOD = "dis_medium"
WEIGHT_MODES = ("consistency", "motion", "uniform")
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}

_DIS_PRESETS = {"dis_medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, "dis_fast": cv2.DISOPTICAL_FLOW_PRESET_FAST}
# dtypes cv2.remap handles natively; float16 (torch latents) goes through float32.
_REMAP_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


# ---------------------------------------------------------------------------------------------
# Flow estimation
# ---------------------------------------------------------------------------------------------

# A DIS object keeps per-image buffers between calls and is not thread-safe, so each thread
# keeps its own: reusing it saves ~10 ms of allocation per call at 512x768, and fresh
# allocations in two threads at once serialise on the page-fault lock, which cancelled the
# two-thread speed-up in a measurement made for this module.
_thread_state = threading.local()


def _dis_for_this_thread(method: str, shape: tuple[int, ...]) -> Any:
    # Keyed by image size too: OpenCV's DIS lowers its own finest scale the first time it sees
    # a small image and keeps it, so one instance reused across sizes gives history-dependent
    # flows (measured: 2.4 px on a 128x160 pair after one 32x32 call). Per size it is stable.
    instances = getattr(_thread_state, "dis", None)
    if instances is None:
        instances = _thread_state.dis = {}
    key = (method, tuple(shape))
    if key not in instances:
        if len(instances) >= 4:
            instances.pop(next(iter(instances)))
        instances[key] = cv2.DISOpticalFlow_create(_DIS_PRESETS[method])
    return instances[key]


def _check_method(method: str) -> None:
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method {method!r} is not supported; choose one of {FLOW_METHODS}")


def compute_flow(src_gray: np.ndarray, dst_gray: np.ndarray, method: str = DEFAULT_FLOW_METHOD) -> np.ndarray:
    """Dense flow from ``src_gray`` to ``dst_gray``: (H, W, 2) float32 with src(x) ≈ dst(x + flow(x)).

    Both inputs are 2-D uint8 grey images of the same shape (see :func:`rgb_to_gray`).
    """
    _check_method(method)
    for name, image in (("src_gray", src_gray), ("dst_gray", dst_gray)):
        if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(
                f"{name} must be a 2-D uint8 grey image, got shape {shape} dtype {dtype}; "
                "convert RGB frames with rgb_to_gray()"
            )
    if src_gray.shape != dst_gray.shape:
        raise ValueError(
            f"src_gray {src_gray.shape} and dst_gray {dst_gray.shape} differ in size; resize one to the other"
        )
    src_gray = np.ascontiguousarray(src_gray)
    dst_gray = np.ascontiguousarray(dst_gray)
    if method == "farneback":
        # The seed's parameters (zyddnys/sd_animation_optical_flow, ofgen.py): kept as a legacy option.
        flow = cv2.calcOpticalFlowFarneback(src_gray, dst_gray, None, 0.5, 5, 15, 3, 5, 1.2, 0)
    else:
        flow = _dis_for_this_thread(method, src_gray.shape).calc(src_gray, dst_gray, None)
    return np.asarray(flow, dtype=np.float32)


def rgb_to_gray(frame_rgb: np.ndarray) -> np.ndarray:
    """Grey uint8 image of an RGB uint8 frame (the input :func:`compute_flow` expects)."""
    _check_rgb_frame("frame_rgb", frame_rgb)
    return cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY)


def _check_rgb_frame(name: str, frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        dtype = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(
            f"{name} must be an RGB uint8 array of shape (H, W, 3), got shape {shape} dtype {dtype}; "
            "convert it with np.asarray(pil_image.convert('RGB'))"
        )


@dataclass
class FlowPair:
    """Flows between a previous and a current frame.

    ``forward`` = flow(prev → cur) on the previous frame's grid; ``backward`` = flow(cur → prev)
    on the current frame's grid (the one used for warping).
    """

    forward: np.ndarray
    backward: np.ndarray


_helper_pool: ThreadPoolExecutor | None = None
_helper_pool_lock = threading.Lock()


def _helper_thread() -> ThreadPoolExecutor:
    # One long-lived helper thread, so that its DIS object (and buffers) are reused across frames.
    global _helper_pool
    with _helper_pool_lock:
        if _helper_pool is None:
            _helper_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidguide-flow")
        return _helper_pool


def bidirectional_flow(
    prev_rgb: np.ndarray, cur_rgb: np.ndarray, method: str = DEFAULT_FLOW_METHOD, parallel: bool = True
) -> FlowPair:
    """Forward (prev → cur) and backward (cur → prev) flow of two RGB uint8 frames.

    With ``parallel`` the forward direction runs on a helper thread while the calling thread
    computes the backward one (≈2× faster for DIS medium on 2 cores, FLOW.md §5.3). The global
    ``cv2.setNumThreads`` value is left untouched.
    """
    _check_method(method)
    _check_rgb_frame("prev_rgb", prev_rgb)
    _check_rgb_frame("cur_rgb", cur_rgb)
    if prev_rgb.shape != cur_rgb.shape:
        raise ValueError(
            f"prev_rgb {prev_rgb.shape} and cur_rgb {cur_rgb.shape} differ in size; "
            "resize the frames to one size before computing flow"
        )
    prev_gray = rgb_to_gray(prev_rgb)
    cur_gray = rgb_to_gray(cur_rgb)
    if not parallel:
        return FlowPair(compute_flow(prev_gray, cur_gray, method), compute_flow(cur_gray, prev_gray, method))
    forward_job = _helper_thread().submit(compute_flow, prev_gray, cur_gray, method)
    backward = compute_flow(cur_gray, prev_gray, method)
    return FlowPair(forward_job.result(), backward)


# ---------------------------------------------------------------------------------------------
# Warping
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32), indexing="xy"
    )
    grid_x.setflags(write=False)
    grid_y.setflags(write=False)
    return grid_x, grid_y


def _check_flow(name: str, flow: np.ndarray, hw: tuple[int, int] | None = None) -> None:
    if not isinstance(flow, np.ndarray) or flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(
            f"{name} must be an (H, W, 2) array of (dx, dy), got shape {getattr(flow, 'shape', None)}"
        )
    if hw is not None and flow.shape[:2] != tuple(hw):
        raise ValueError(
            f"{name} is {flow.shape[:2]} but the image is {tuple(hw)}; "
            "resize the flow with resize_flow() to the image size"
        )


def _remap(
    image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation: str, border: int
) -> np.ndarray:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not supported; choose one of {tuple(INTERPOLATIONS)}")
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    original_dtype = image.dtype
    work = image
    if original_dtype == np.float16:
        work = image.astype(np.float32)
    elif not any(original_dtype == allowed for allowed in _REMAP_DTYPES):
        raise ValueError(
            f"image dtype {original_dtype} is not supported; use uint8, uint16, int16, float16, float32 or float64"
        )
    work = np.ascontiguousarray(work)
    warped = cv2.remap(work, map_x, map_y, INTERPOLATIONS[interpolation], borderMode=border)
    # cv2 drops a trailing channel axis of size 1.
    return warped.reshape(image.shape).astype(original_dtype, copy=False)


def backward_warp(image: np.ndarray, backward_flow: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Carry ``image`` onto the grid of ``backward_flow``: out(x) = image(x + B(x)), border replicated.

    ``image`` is (H, W) or (H, W, C) of any channel count (RGB, RGBA, 4-channel latents laid out
    H, W, C); dtype and shape are preserved.
    """
    image = np.asarray(image)
    _check_flow("backward_flow", backward_flow, image.shape[:2] if image.ndim >= 2 else None)
    grid_x, grid_y = _pixel_grid(*backward_flow.shape[:2])
    map_x = grid_x + backward_flow[..., 0].astype(np.float32, copy=False)
    map_y = grid_y + backward_flow[..., 1].astype(np.float32, copy=False)
    return _remap(image, map_x, map_y, interpolation, cv2.BORDER_REPLICATE)


def seed_warp(image: np.ndarray, forward_flow: np.ndarray, interpolation: str = "cubic") -> np.ndarray:
    """The seed's warp, out(x) = image(x − F(x)) with F = flow(prev → cur); legacy comparison only.

    It reads the forward flow at the *output* pixel instead of at its source, which is only
    right for constant flow (0.47 px map error with perfect flow, ghosting at object edges;
    FLOW.md §8.2). Cubic interpolation and a black border as in the seed's ``warp_frame``.
    """
    image = np.asarray(image)
    _check_flow("forward_flow", forward_flow, image.shape[:2] if image.ndim >= 2 else None)
    grid_x, grid_y = _pixel_grid(*forward_flow.shape[:2])
    map_x = grid_x - forward_flow[..., 0].astype(np.float32, copy=False)
    map_y = grid_y - forward_flow[..., 1].astype(np.float32, copy=False)
    return _remap(image, map_x, map_y, interpolation, cv2.BORDER_CONSTANT)


# ---------------------------------------------------------------------------------------------
# Occlusion and guidance weights
# ---------------------------------------------------------------------------------------------


def _squared_norm(vectors: np.ndarray) -> np.ndarray:
    # Component-wise: numpy's reduction over a length-2 last axis is ~5x slower.
    return vectors[..., 0] * vectors[..., 0] + vectors[..., 1] * vectors[..., 1]


def _forward_backward_terms(flow_ab: np.ndarray, flow_ba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared FB residual, squared magnitudes sum and out-of-frame mask on frame a's grid."""
    _check_flow("flow_ab", flow_ab)
    _check_flow("flow_ba", flow_ba, flow_ab.shape[:2])
    height, width = flow_ab.shape[:2]
    flow_ab = np.asarray(flow_ab, dtype=np.float32)
    grid_x, grid_y = _pixel_grid(height, width)
    target_x = grid_x + flow_ab[..., 0]
    target_y = grid_y + flow_ab[..., 1]
    flow_ba = np.ascontiguousarray(flow_ba, dtype=np.float32)
    ba_at_target = cv2.remap(flow_ba, target_x, target_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    residual_sq = _squared_norm(flow_ab + ba_at_target)
    magnitude_sq = _squared_norm(flow_ab) + _squared_norm(ba_at_target)
    out_of_frame = (target_x < 0) | (target_x > width - 1) | (target_y < 0) | (target_y > height - 1)
    return residual_sq, magnitude_sq, out_of_frame


def fb_occlusion(flow_ab: np.ndarray, flow_ba: np.ndarray, alpha: float = 0.05, beta: float = 1.0) -> np.ndarray:
    """Occlusion of frame a's pixels by the forward-backward test, bool (H, W).

    Occluded where |f_ab(x) + f_ba(x + f_ab(x))|² > alpha·(|f_ab|² + |f_ba(x + f_ab)|²) + beta
    or where x + f_ab(x) leaves the frame. For the current frame's pixels call
    ``fb_occlusion(pair.backward, pair.forward)``. alpha=0.01, beta=0.5 is the Sundaram/UnFlow
    setting; 0.05/1.0 scored better with DIS (FLOW.md §4.5).
    """
    residual_sq, magnitude_sq, out_of_frame = _forward_backward_terms(flow_ab, flow_ba)
    return (residual_sq > alpha * magnitude_sq + beta) | out_of_frame


def weight_map(
    pair: FlowPair,
    mode: str = "consistency",
    *,
    alpha: float = 0.05,
    beta: float = 1.0,
    falloff: float = 1.0,
    feather_px: float = 4.0,
    threshold_px: float = 1.5,
    moving_factor: float = 1.0 / 6.0,
) -> np.ndarray:
    """Per-pixel guidance weight in [0, 1] on the current frame's grid, float32 (H, W).

    - ``"consistency"``: with the FB residual of the current pixels normalised by the occlusion
      tolerance, r = |B + F(x+B)|² / (alpha·(|B|² + |F(x+B)|²) + beta) (r > 1 ⇔ occluded),
      the weight is exp(−falloff·r): 1 for a perfectly consistent flow, e^−1 at the occlusion
      threshold, then 0 for occluded or out-of-frame pixels. It is multiplied by
      min(1, d/feather_px), d the distance to the nearest occluded pixel, so that the
      occlusion boundary (where the flow is least reliable) fades in over ``feather_px``.
      The defaults (falloff 1, feather 4 px, half a latent cell) gave a mean weight of 0.92 on
      non-occluded and 0.19 on occluded pixels of the moving-object test scene (tests/test_flow.py).
    - ``"motion"``: the seed's rule on |B|: 1 where |B| ≤ ``threshold_px``, else ``moving_factor``
      (1/6, so that the seed's 0.6 schedule value times it gives the seed's 0.1).
    - ``"uniform"``: all ones.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"weight mode {mode!r} is not supported; choose one of {WEIGHT_MODES}")
    _check_flow("pair.backward", pair.backward)
    height, width = pair.backward.shape[:2]
    if mode == "uniform":
        return np.ones((height, width), dtype=np.float32)
    if mode == "motion":
        if not 0.0 <= moving_factor <= 1.0:
            raise ValueError(f"moving_factor {moving_factor} must lie in [0, 1]")
        magnitude = np.sqrt(_squared_norm(pair.backward.astype(np.float32, copy=False)))
        return np.where(magnitude > threshold_px, np.float32(moving_factor), np.float32(1.0)).astype(np.float32)

    if alpha < 0 or beta <= 0 or falloff < 0 or feather_px < 0:
        raise ValueError(
            f"alpha={alpha}, beta={beta}, falloff={falloff}, feather_px={feather_px}: "
            "alpha, falloff and feather_px must be >= 0 and beta > 0"
        )
    residual_sq, magnitude_sq, out_of_frame = _forward_backward_terms(pair.backward, pair.forward)
    ratio = residual_sq / (alpha * magnitude_sq + beta)
    occluded = (ratio > 1.0) | out_of_frame
    weight = np.exp(-falloff * ratio).astype(np.float32)
    weight[occluded] = 0.0
    if feather_px > 0 and occluded.any():
        # Mask 5 measures one pixel as exactly 1.0 (mask 3 says 0.955).
        distance = cv2.distanceTransform((~occluded).astype(np.uint8), cv2.DIST_L2, 5)
        weight *= np.minimum(distance / np.float32(feather_px), np.float32(1.0))
    return weight


# ---------------------------------------------------------------------------------------------
# Latent resolution
# ---------------------------------------------------------------------------------------------


def _check_hw(name: str, hw: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair of ints, got {hw!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {hw!r}")
    return height, width


def resize_to_latent(weight: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """Area-average a (H, W) weight map to the latent size (h, w), float32."""
    height, width = _check_hw("latent_hw", latent_hw)
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D (H, W) map, got shape {weight.shape}")
    return cv2.resize(weight, (width, height), interpolation=cv2.INTER_AREA)


def resize_flow(flow: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a flow field to (h, w) and rescale its vectors to the new pixel units.

    Area averaging when shrinking (e.g. to the 1/8 latent), bilinear when enlarging.
    """
    _check_flow("flow", flow)
    height, width = _check_hw("hw", hw)
    old_height, old_width = flow.shape[:2]
    shrinking = height * width < old_height * old_width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(flow, dtype=np.float32), (width, height), interpolation=interpolation)
    resized[..., 0] *= width / old_width
    resized[..., 1] *= height / old_height
    return resized


# ---------------------------------------------------------------------------------------------
# Computing flows one frame ahead
# ---------------------------------------------------------------------------------------------


@dataclass
class FrameFlow:
    """Everything the guidance needs from the source video for one frame (index ≥ 1).

    ``anchor``: the same from the anchor frame (the run's first source frame) to this one,
    when the prefetcher was asked for it (drift control guides toward the first output too).
    """

    pair: FlowPair
    weight: np.ndarray
    anchor: "FrameFlow | None" = None


_END = object()
_WEIGHT_OPTION_NAMES = frozenset(
    ("alpha", "beta", "falloff", "feather_px", "threshold_px", "moving_factor")
)


@dataclass
class _WorkerFailure:
    error: BaseException


class FlowPrefetcher:
    """Compute flows and weight maps of frame n+1 on a background thread while the caller works on n.

    Iterating yields ``(index, frame_rgb, frame_flow)``; ``frame_flow`` is ``None`` for the
    first frame. At most ``max_ahead`` frames are read and processed beyond the one the caller
    holds, so memory stays bounded on long videos. An exception raised in the worker (by the
    frame source or the flow code) is raised again in the caller. Use as a context manager or
    call :meth:`close`.

    The single worker computes the two directions one after the other (``parallel=False``):
    FLOW.md §6 found that one frame of look-ahead already hides the flow cost behind the GPU.
    """

    _SLOT_POLL_S = 0.05

    def __init__(
        self,
        frames: Iterable[np.ndarray],
        method: str = DEFAULT_FLOW_METHOD,
        weight_mode: str = "consistency",
        *,
        max_ahead: int = 2,
        parallel: bool = False,
        weight_options: Mapping[str, Any] | None = None,
        anchor: np.ndarray | str | None = None,
    ) -> None:
        """``anchor``: None, "first" (the stream's first frame) or an RGB frame; with one, every
        FrameFlow also carries the flows and weights from the anchor to that frame."""
        _check_method(method)
        if isinstance(anchor, str) and anchor != "first":
            raise ValueError(f"anchor must be None, 'first' or an RGB frame, got {anchor!r}")
        self._anchor = anchor
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode {weight_mode!r} is not supported; choose one of {WEIGHT_MODES}")
        if int(max_ahead) < 1:
            raise ValueError(f"max_ahead must be >= 1, got {max_ahead}")
        self._weight_options = dict(weight_options or {})
        unknown = set(self._weight_options) - _WEIGHT_OPTION_NAMES
        if unknown:
            raise ValueError(
                f"weight_options {sorted(unknown)} are not weight_map() options; use some of {sorted(_WEIGHT_OPTION_NAMES)}"
            )
        self.method = method
        self.weight_mode = weight_mode
        self.max_ahead = int(max_ahead)
        self._parallel = parallel
        self._source = iter(frames)
        self._results: queue.Queue[Any] = queue.Queue()
        self._slots = threading.Semaphore(self.max_ahead)
        self._stop = threading.Event()
        self._finished = False
        self._produced = 0
        self._thread = threading.Thread(target=self._work, name="vidguide-flow-prefetch", daemon=True)
        self._thread.start()

    @property
    def produced(self) -> int:
        """How many frames the worker has finished so far (delivered or waiting)."""
        return self._produced

    @property
    def alive(self) -> bool:
        """Whether the worker thread is still running."""
        return self._thread.is_alive()

    def _next_slot(self) -> bool:
        while not self._stop.is_set():
            if self._slots.acquire(timeout=self._SLOT_POLL_S):
                return True
        return False

    def _work(self) -> None:
        previous: np.ndarray | None = None
        index = 0
        try:
            while self._next_slot():
                try:
                    frame = next(self._source)
                except StopIteration:
                    self._results.put(_END)
                    return
                _check_rgb_frame(f"frame {index}", frame)
                if isinstance(self._anchor, str):
                    self._anchor = frame
                frame_flow = None
                if previous is not None:
                    frame_flow = self._frame_flow(previous, frame)
                    if self._anchor is not None:
                        frame_flow.anchor = self._frame_flow(self._anchor, frame)
                self._results.put((index, frame, frame_flow))
                self._produced += 1
                previous = frame
                index += 1
        except BaseException as error:  # noqa: BLE001 - handed to the caller, who re-raises it
            self._results.put(_WorkerFailure(error))
        finally:
            close_source = getattr(self._source, "close", None)
            if close_source is not None:
                try:
                    close_source()
                except Exception:  # noqa: BLE001 - a source that fails to close must not hide the result
                    pass

    def _frame_flow(self, earlier: np.ndarray, frame: np.ndarray) -> FrameFlow:
        pair = bidirectional_flow(earlier, frame, self.method, parallel=self._parallel)
        return FrameFlow(pair, weight_map(pair, self.weight_mode, **self._weight_options))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, FrameFlow | None]]:
        return self

    def __next__(self) -> tuple[int, np.ndarray, FrameFlow | None]:
        if self._finished:
            raise StopIteration
        item = self._results.get()
        self._slots.release()
        if item is _END:
            self._finished = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _WorkerFailure):
            self._finished = True
            self._thread.join()
            raise item.error
        return item

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the worker; it finishes the frame in progress first (waits up to ``timeout_s``)."""
        self._finished = True
        self._stop.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> FlowPrefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
