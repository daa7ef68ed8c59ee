"""Temporal warp error: the project's one temporal-consistency protocol (USERS.md §D.1, adapted).

    E = 1/(T−1) · Σ_t  Σ_i M_t(i)·‖V_t(i) − W(V_{t+1})(i)‖² / (C · Σ_i M_t(i))

- V_t: output frames, values in [0, 1], C channels;
- W(V_{t+1}): output frame t+1 carried onto frame t's grid by a backward warp with the flow of
  the **source** video, DIS medium (RAFT weights are not available offline);
- M_t: pixels of source frame t that pass the forward-backward test against frame t+1 with the
  Sundaram/UnFlow setting alpha=0.01, beta=0.5 (all pixels if none do).

Dividing by C (a per-channel mean) follows the reference implementation of Lai et al.
(``evaluate_WarpError.py`` in phoenix104104/fast_blind_video_consistency), whose occlusion mask
is read as a 3-channel image, so its normaliser counts every channel. Numbers are reported
×10³ (``per_mille``), as in the papers. Warp error rewards doing nothing; report it next to an
edit-strength metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from lib_vidguide.flow import (
    DEFAULT_FLOW_METHOD,
    FLOW_METHODS,
    FlowPair,
    backward_warp,
    bidirectional_flow,
    fb_occlusion,
)

WARP_ERROR_ALPHA = 0.01
WARP_ERROR_BETA = 0.5


@dataclass
class SourceFlows:
    """Flows of a source video at an evaluation size, reusable across outputs of that video.

    ``to_next[t]`` = flow(source t → source t+1) on frame t's grid; ``visible[t]`` marks the
    pixels of frame t that pass the forward-backward test against frame t+1.
    """

    size: tuple[int, int]
    method: str
    to_next: list[np.ndarray] = field(default_factory=list)
    visible: list[np.ndarray] = field(default_factory=list)


@dataclass
class WarpErrorReport:
    """Warp error per consecutive frame pair, their mean, and the mean ×10³."""

    per_pair: list[float]
    mean: float
    per_mille: float
    visible_fraction: list[float]
    size: tuple[int, int]
    method: str


def _resize_rgb(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    height, width = size
    if frame.shape[:2] == (height, width):
        return frame
    shrinking = height * width < frame.shape[0] * frame.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interpolation)


def _check_source_frame(index: int, frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"source frame {index} must be RGB uint8 (H, W, 3), got shape {getattr(frame, 'shape', None)} "
            f"dtype {getattr(frame, 'dtype', type(frame).__name__)}"
        )


def source_flows(
    source_frames: Iterable[np.ndarray],
    size: tuple[int, int] | None = None,
    method: str = DEFAULT_FLOW_METHOD,
    *,
    alpha: float = WARP_ERROR_ALPHA,
    beta: float = WARP_ERROR_BETA,
) -> SourceFlows:
    """Flows and visibility masks of consecutive source frames, resized first to ``size`` (h, w)."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method {method!r} is not supported; choose one of {FLOW_METHODS}")
    frames = list(source_frames)
    if len(frames) < 2:
        raise ValueError(f"the warp error needs at least 2 source frames, got {len(frames)}")
    for index, frame in enumerate(frames):
        _check_source_frame(index, frame)
    if size is None:
        size = frames[0].shape[:2]
    size = (int(size[0]), int(size[1]))
    flows = SourceFlows(size=size, method=method)
    previous = _resize_rgb(frames[0], size)
    for frame in frames[1:]:
        current = _resize_rgb(frame, size)
        # In the pair's own terms, flow(t → t+1) is the *forward* flow of frame t. For the metric
        # it is the field on frame t's grid that points into frame t+1, i.e. the one that
        # backward-warps frame t+1 onto frame t: W(V_{t+1})(x) = V_{t+1}(x + to_next(x)).
        # Its occlusion test therefore runs on frame t's pixels: fb_occlusion(to_next, to_previous).
        pair = bidirectional_flow(previous, current, method)
        flows.to_next.append(pair.forward)
        flows.visible.append(~fb_occlusion(pair.forward, pair.backward, alpha, beta))
        previous = current
    return flows


def _as_unit_float(index: int, frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim not in (2, 3):
        raise ValueError(f"output frame {index} must be (H, W) or (H, W, C), got shape {frame.shape}")
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    if not np.issubdtype(frame.dtype, np.floating):
        raise ValueError(f"output frame {index} has dtype {frame.dtype}; use uint8 or floats in [0, 1]")
    low, high = float(np.min(frame)), float(np.max(frame))
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise ValueError(
            f"output frame {index} has values in [{low:.3g}, {high:.3g}]; float frames must be in [0, 1] "
            "(divide 0-255 images by 255)"
        )
    return frame.astype(np.float32)


def _pair_error(output_t: np.ndarray, output_next: np.ndarray, to_next: np.ndarray, visible: np.ndarray):
    """One pair's term: mean over visible pixels (and channels) of (V_t - W(V_t+1))^2."""
    channels = 1 if output_t.ndim == 2 else output_t.shape[2]
    squared = np.square(output_t - backward_warp(output_next, to_next))
    if squared.ndim == 3:
        squared = squared.sum(axis=2)
    if visible.any():
        error = float(squared[visible].sum()) / (channels * int(visible.sum()))
    else:
        error = float(squared.sum()) / (channels * squared.size)
    return error, float(visible.mean())


def pair_warp_error(output_t: np.ndarray, output_next: np.ndarray, source_pair: FlowPair) -> tuple[float, float]:
    """The warp error of one consecutive output pair, from the flows of its source pair (t -> t+1).

    The same term as :func:`warp_error`, for callers that already have the source pair's flows
    at the output size (the video engine's prefetcher): returns (error, visible fraction).
    """
    visible = ~fb_occlusion(source_pair.forward, source_pair.backward, WARP_ERROR_ALPHA, WARP_ERROR_BETA)
    return _pair_error(_as_unit_float(0, output_t), _as_unit_float(1, output_next), source_pair.forward, visible)


def warp_error(
    source_frames: Iterable[np.ndarray],
    output_frames: Iterable[np.ndarray],
    method: str = DEFAULT_FLOW_METHOD,
    *,
    flows: SourceFlows | None = None,
) -> WarpErrorReport:
    """Warp error of ``output_frames`` against the motion of ``source_frames`` (module docstring).

    Source frames are RGB uint8 and are resized to the output size before the flow is computed.
    Output frames are uint8 or float in [0, 1], RGB or grey, all of one size. Pass ``flows``
    from :func:`source_flows` (at the output size) to score several outputs of one source.
    """
    sources = list(source_frames)
    outputs = list(output_frames)
    if len(sources) != len(outputs):
        raise ValueError(
            f"source has {len(sources)} frames but output has {len(outputs)}; "
            "score the output against the source frames it was made from (same frame count)"
        )
    if len(outputs) < 2:
        raise ValueError(f"the warp error needs at least 2 frames, got {len(outputs)}")
    unit_outputs = [_as_unit_float(index, frame) for index, frame in enumerate(outputs)]
    size = unit_outputs[0].shape[:2]
    for index, frame in enumerate(unit_outputs):
        if frame.shape != unit_outputs[0].shape:
            raise ValueError(
                f"output frame {index} has shape {frame.shape} but frame 0 has {unit_outputs[0].shape}; "
                "all output frames must have one size"
            )
    if flows is None:
        flows = source_flows(sources, size, method)
    elif flows.size != size or len(flows.to_next) != len(outputs) - 1:
        raise ValueError(
            f"flows cover {len(flows.to_next) + 1} frames at {flows.size}, but the output has "
            f"{len(outputs)} frames at {size}; compute them with source_flows(source_frames, size={size})"
        )

    per_pair, visible_fraction = [], []
    for t in range(len(unit_outputs) - 1):
        error, fraction = _pair_error(unit_outputs[t], unit_outputs[t + 1], flows.to_next[t], flows.visible[t])
        per_pair.append(error)
        visible_fraction.append(fraction)
    mean = float(np.mean(per_pair))
    return WarpErrorReport(
        per_pair=per_pair,
        mean=mean,
        per_mille=mean * 1e3,
        visible_fraction=visible_fraction,
        size=(int(size[0]), int(size[1])),
        method=flows.method,
    )
