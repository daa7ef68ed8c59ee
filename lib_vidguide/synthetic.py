"""Synthetic frames with known motion, rendered from photographs bundled with scikit-image.

Every layer is a photo (the background) or a horse-silhouette cut-out textured with another
photo (the foreground), carried by an analytic affine map per frame: map ``M_k`` sends a
texture pixel to its position in frame ``k``. Frames are renderings of those maps, so they
have no holes, and the ground-truth flow from frame a to frame b is exact:
``flow_ab(x) = M_b · M_a⁻¹ · x − x`` for the layer on top at x. The convention is the one of
:func:`lib_vidguide.flow.compute_flow`: ``frame_a(x) ≈ frame_b(x + flow_ab(x))``.

A pixel of frame a is *occluded* when its point is covered by a layer above it in frame b or
leaves the canvas; it is *invalid* on the anti-aliased edge of a cut-out, where the colour
mixes two layers and the flow is not defined. Motions are in output pixels, whatever the size.
No network is needed: only photos that ship inside the scikit-image wheel are used.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .flow import _check_hw

SCENES = ("translation", "rotation_zoom", "moving_object")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
NOISE_SIGMA = 1.5
# Alpha strictly between these is an anti-aliased cut-out edge: no single flow there.
_EDGE_ALPHA = (0.02, 0.98)


@functools.lru_cache(maxsize=len(PHOTOS))
def _photo(name: str) -> np.ndarray:
    """RGB float32 photo from scikit-image's bundled data (grey photos are repeated to RGB)."""
    if name not in PHOTOS:
        raise ValueError(f"photo {name!r} is not available offline; choose one of {PHOTOS}")
    from skimage import data as skimage_data

    image = np.asarray(getattr(skimage_data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.float32)
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=1)
def _horse_silhouette() -> np.ndarray:
    """The horse silhouette as float32 (1 on the horse)."""
    from skimage import data as skimage_data

    horse = (~np.asarray(skimage_data.horse(), dtype=bool)).astype(np.float32)
    horse.setflags(write=False)
    return horse


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _scaling(factor: float) -> np.ndarray:
    return np.diag([factor, factor, 1.0])


def _rotation_zoom(angle_deg: float, zoom: float, centre: tuple[float, float]) -> np.ndarray:
    """Rotation by ``angle_deg`` (counter-clockwise on screen) and zoom about ``centre``."""
    angle = math.radians(angle_deg)
    cos, sin = zoom * math.cos(angle), zoom * math.sin(angle)
    # Image y points down, so a visually counter-clockwise turn has -sin in the first row's y term.
    linear = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return _translation(*centre) @ linear @ _translation(-centre[0], -centre[1])


def _cover_crop(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``photo`` to cover (height, width) keeping its aspect ratio, then centre-crop."""
    scale = max(height / photo.shape[0], width / photo.shape[1])
    new_h = max(height, math.ceil(photo.shape[0] * scale))
    new_w = max(width, math.ceil(photo.shape[1] * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(photo, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


@dataclass
class _Layer:
    texture: np.ndarray  # float32 (h, w, 3)
    alpha: np.ndarray | None  # float32 (h, w) in [0, 1]; None for the opaque background
    maps: list[np.ndarray]  # per frame: 3x3, texture pixel -> frame pixel


def _background_layer(photo: str, world_to_frame: list[np.ndarray], size: tuple[int, int]) -> _Layer:
    """An opaque photo layer large enough that every frame samples inside it (no holes)."""
    height, width = size
    corners = np.array([[-1, -1, 1], [width, -1, 1], [-1, height, 1], [width, height, 1]], dtype=np.float64).T
    seen = np.concatenate([(np.linalg.inv(m) @ corners)[:2] for m in world_to_frame], axis=1)
    pad = 4.0  # room for the cubic kernel
    x0, y0 = seen.min(axis=1) - pad
    x1, y1 = seen.max(axis=1) + pad
    texture = _cover_crop(_photo(photo), math.ceil(y1 - y0), math.ceil(x1 - x0))
    return _Layer(texture, None, [m @ _translation(x0, y0) for m in world_to_frame])


def _object_layer(
    photo: str, height_px: float, centre: tuple[float, float], motions: list[np.ndarray]
) -> _Layer:
    """The horse cut-out, ``height_px`` tall, centred at ``centre`` and then moved by ``motions``."""
    silhouette = _horse_silhouette()
    scale = height_px / silhouette.shape[0]
    # Shrink with area averaging once, so that the per-frame warps work near scale 1: sampling a
    # sharp mask or photo at a lower resolution aliases, and aliasing changes from frame to
    # frame, which the affine ground truth cannot describe.
    object_hw = (max(8, round(silhouette.shape[0] * scale)), max(8, round(silhouette.shape[1] * scale)))
    alpha = cv2.resize(silhouette, object_hw[::-1], interpolation=cv2.INTER_AREA)
    margin = 4  # transparent border, so that sampling next to the box stays transparent
    alpha = cv2.copyMakeBorder(alpha, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0.0)
    texture = _cover_crop(_photo(photo), *alpha.shape)
    alpha_centre = ((alpha.shape[1] - 1) / 2.0, (alpha.shape[0] - 1) / 2.0)
    placement = _translation(centre[0] - alpha_centre[0], centre[1] - alpha_centre[1])
    return _Layer(texture, alpha, [motion @ placement for motion in motions])


def _warp_layer(layer: _Layer, frame: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    height, width = size
    matrix = layer.maps[frame][:2]
    colour = cv2.warpAffine(layer.texture, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    alpha = None
    if layer.alpha is not None:
        alpha = cv2.warpAffine(layer.alpha, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return colour, alpha


def _render(layers: list[_Layer], frame: int, size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Composite the layers bottom to top; returns the float RGB frame and each layer's alpha."""
    image = np.zeros((*size, 3), dtype=np.float32)
    alphas: list[np.ndarray | None] = []
    for layer in layers:
        colour, alpha = _warp_layer(layer, frame, size)
        if alpha is None:
            image = colour
        else:
            image = image + alpha[..., None] * (colour - image)
        alphas.append(alpha)
    return image, alphas


def _add_noise(image: np.ndarray, noise_sigma: float, rng: np.random.Generator) -> np.ndarray:
    if noise_sigma > 0:
        image = image + rng.normal(0.0, noise_sigma, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _top_layer(alphas: list[np.ndarray | None], size: tuple[int, int]) -> np.ndarray:
    top = np.zeros(size, dtype=np.int32)
    for index, alpha in enumerate(alphas):
        if alpha is not None:
            top[alpha > 0.5] = index
    return top


def _ground_truth(
    layers: list[_Layer], alphas_a: list[np.ndarray | None], a: int, b: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow a→b on frame a's grid, occlusion of frame a's pixels in b, and validity of frame a."""
    height, width = size
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1)  # (H, W, 3) homogeneous frame-a pixels
    top = _top_layer(alphas_a, size)

    flow = np.zeros((height, width, 2), dtype=np.float64)
    occluded = np.zeros(size, dtype=bool)
    for index, layer in enumerate(layers):
        here = top == index
        a_to_b = layer.maps[b] @ np.linalg.inv(layer.maps[a])
        target = points @ a_to_b.T
        flow[here] = (target[..., :2] - points[..., :2])[here]
        # The point is hidden in frame b if a layer above this one covers its position there.
        for upper in layers[index + 1 :]:
            to_texture = np.linalg.inv(upper.maps[b]) @ a_to_b
            texture_xy = (points @ to_texture.T).astype(np.float32)
            upper_alpha = cv2.remap(
                upper.alpha, texture_xy[..., 0], texture_xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
            occluded |= here & (upper_alpha > 0.5)

    target_x = xs + flow[..., 0]
    target_y = ys + flow[..., 1]
    occluded |= (target_x < 0) | (target_x > width - 1) | (target_y < 0) | (target_y > height - 1)
    valid = np.ones(size, dtype=bool)
    for alpha in alphas_a:
        if alpha is not None:
            valid &= (alpha <= _EDGE_ALPHA[0]) | (alpha >= _EDGE_ALPHA[1])
    return flow.astype(np.float32), occluded, valid


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = _check_hw("size", size)
    if height < 32 or width < 32:
        raise ValueError(f"size {size!r} is too small; use at least (32, 32)")
    return height, width


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------


@dataclass
class SyntheticPair:
    """Two frames with exact flow. Occlusion: no correspondence in the other frame; valid: flow defined."""

    scene: str
    frame1: np.ndarray  # uint8 (H, W, 3)
    frame2: np.ndarray
    flow_forward: np.ndarray  # 1 -> 2 on frame 1's grid, float32 (H, W, 2)
    flow_backward: np.ndarray  # 2 -> 1 on frame 2's grid
    occlusion1: np.ndarray  # bool (H, W): frame-1 pixels not visible in frame 2
    occlusion2: np.ndarray  # bool (H, W): frame-2 pixels not visible in frame 1
    valid1: np.ndarray  # bool (H, W)
    valid2: np.ndarray


def _scene_layers(scene: str, size: tuple[int, int]) -> list[_Layer]:
    height, width = size
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    identity = np.eye(3)
    if scene == "translation":
        return [_background_layer("coffee", [identity, _translation(3.6, -2.2)], size)]
    if scene == "rotation_zoom":
        moved = _translation(2.0, -1.0) @ _rotation_zoom(1.5, 1.025, centre)
        return [_background_layer("astronaut", [identity, moved], size)]
    if scene == "moving_object":
        background = _background_layer("coffee", [identity, _translation(2.0, 1.0)], size)
        object_centre = (0.45 * width, 0.55 * height)
        moved = _translation(18.0, -10.0) @ _rotation_zoom(3.0, 1.0, object_centre)
        horse = _object_layer("astronaut", 0.55 * height, object_centre, [identity, moved])
        return [background, horse]
    raise ValueError(f"scene {scene!r} is not known; choose one of {SCENES}")


def make_pair(scene: str, size: tuple[int, int] = (512, 768), seed: int = 0) -> SyntheticPair:
    """A frame pair of ``scene`` (one of :data:`SCENES`) with exact flows and occlusions.

    - ``"translation"``: coffee, shifted by (3.6, −2.2) px;
    - ``"rotation_zoom"``: astronaut, rotated 1.5° and zoomed ×1.025 about the centre, then (+2, −1);
    - ``"moving_object"``: coffee panning by (2, 1) behind a horse cut-out textured with the
      astronaut that moves by (18, −10) and turns 3° (the layered case: up to ≈28 px of motion
      and thin occlusion bands along the legs, where DIS gives the background the object's
      flow and the FB test misses about a quarter of the occluded pixels).

    ``seed`` drives only the Gaussian noise (σ = 1.5 grey levels) added to both frames.
    """
    size = _check_size(size)
    layers = _scene_layers(scene, size)
    rng = np.random.default_rng(seed)
    image1, alphas1 = _render(layers, 0, size)
    image2, alphas2 = _render(layers, 1, size)
    flow12, occlusion1, valid1 = _ground_truth(layers, alphas1, 0, 1, size)
    flow21, occlusion2, valid2 = _ground_truth(layers, alphas2, 1, 0, size)
    return SyntheticPair(
        scene=scene,
        frame1=_add_noise(image1, NOISE_SIGMA, rng),
        frame2=_add_noise(image2, NOISE_SIGMA, rng),
        flow_forward=flow12,
        flow_backward=flow21,
        occlusion1=occlusion1,
        occlusion2=occlusion2,
        valid1=valid1,
        valid2=valid2,
    )


# ---------------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------------


@dataclass
class SyntheticClip:
    """Frames of a smooth motion with exact flows between consecutive frames.

    ``flows_forward[t]`` is t → t+1 on frame t's grid, ``flows_backward[t]`` is t+1 → t on
    frame t+1's grid; ``occlusions_forward[t]`` / ``occlusions_backward[t]`` mark the pixels of
    frame t / t+1 that have no correspondence in the other frame.
    """

    frames: list[np.ndarray]
    flows_forward: list[np.ndarray]
    flows_backward: list[np.ndarray]
    occlusions_forward: list[np.ndarray]
    occlusions_backward: list[np.ndarray]


def make_clip(
    n_frames: int,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    *,
    background: str = "coffee",
    foreground: str = "astronaut",
    pan_px_per_frame: tuple[float, float] = (1.5, -0.5),
    object_period_frames: float = 48.0,
    noise_sigma: float = NOISE_SIGMA,
) -> SyntheticClip:
    """A clip of a background panning at ``pan_px_per_frame`` behind a horse cut-out on a loop.

    The cut-out swings along a figure-of-eight (amplitude 12 % of the width, so up to ≈4 px per
    frame at 256 px) and rocks by ±5°, with period ``object_period_frames``. The motion depends
    only on ``n_frames``, ``size``, ``pan_px_per_frame`` and ``object_period_frames``, so two
    clips that differ in photos or noise show the same motion (a perfectly consistent restyle).
    """
    if int(n_frames) < 2:
        raise ValueError(f"n_frames must be at least 2, got {n_frames}")
    if noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    if object_period_frames <= 0:
        raise ValueError(f"object_period_frames must be > 0, got {object_period_frames}")
    n_frames = int(n_frames)
    size = _check_size(size)
    height, width = size
    pan_x, pan_y = (float(v) for v in pan_px_per_frame)

    background_maps = [_translation(pan_x * t, pan_y * t) for t in range(n_frames)]
    centre = (0.5 * width, 0.55 * height)
    omega = 2.0 * math.pi / object_period_frames
    amplitude = 0.12 * width
    object_motions = []
    for t in range(n_frames):
        shift = (amplitude * math.sin(omega * t), 0.5 * amplitude * math.sin(2.0 * omega * t))
        turn = _rotation_zoom(5.0 * math.sin(omega * t), 1.0, centre)
        object_motions.append(_translation(*shift) @ turn)
    layers = [
        _background_layer(background, background_maps, size),
        _object_layer(foreground, 0.5 * height, centre, object_motions),
    ]

    rng = np.random.default_rng(seed)
    frames, alphas = [], []
    for t in range(n_frames):
        image, layer_alphas = _render(layers, t, size)
        frames.append(_add_noise(image, noise_sigma, rng))
        alphas.append(layer_alphas)
    clip = SyntheticClip(frames, [], [], [], [])
    for t in range(n_frames - 1):
        forward, occlusion_t, _ = _ground_truth(layers, alphas[t], t, t + 1, size)
        backward, occlusion_next, _ = _ground_truth(layers, alphas[t + 1], t + 1, t, size)
        clip.flows_forward.append(forward)
        clip.flows_backward.append(backward)
        clip.occlusions_forward.append(occlusion_t)
        clip.occlusions_backward.append(occlusion_next)
    return clip
