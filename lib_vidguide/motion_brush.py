"""SVD motion brush: the painted part of a still image moves, the rest stays still.

Two independent pieces, both host-free:

* :class:`MotionBrushEulerScheduler`, a subclass of diffusers' ``EulerDiscreteScheduler``.
  After the model's x0 prediction it gives frames 2..N frame 1's x0 wherever the
  mask says "static". It does not copy diffusers' ``step()``: an Euler step is affine
  in x0 (prev = sample + (sample - x0)/σ̂ · dt), so after ``super().step()`` the
  previous sample is corrected analytically,

      prev' = prev - (x0' - x0) · dt / σ̂

  which holds for every ``prediction_type`` and with churn, because the churn noise
  enters ``sample`` and not the correction (../shared/docs/PIPELINES.md §1.2).

* Mask helpers in pixel space: :func:`mask_to_array` turns whatever a UI or a caller
  hands over into a float H×W mask in [0, 1]; :func:`feathered_static_mask` and
  :func:`composite_static` paste frame 1 back into the static region after decoding.
  That composite is needed because SVD's temporal VAE decoder mixes frames and all
  spatial positions, so equal latents do not decode to equal pixels (PIPELINES.md §1.4).

Mask semantics everywhere: 1 = may move, 0 = stays still; "static" means mask <= 0.5.

torch and diffusers are imported only when the scheduler class is first used
(``MotionBrushEulerScheduler`` is built on first attribute access), so importing this
module costs nothing at WebUI start-up.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = [
    "MASK_THRESHOLD",
    "MotionBrushEulerScheduler",
    "composite_static",
    "feathered_static_mask",
    "mask_is_painted",
    "mask_to_array",
]

# At or below this a pixel (or a latent cell, after bilinear resizing) is static.
MASK_THRESHOLD = 0.5

# A mask whose aspect ratio differs from the image's by more than this was painted on another picture.
_ASPECT_TOLERANCE = 0.02


# --------------------------------------------------------------------------- pixel-space masks


def _as_float_mask(array: np.ndarray, what: str) -> np.ndarray:
    """A 2-D numeric array to float32 in [0, 1], with errors that say what was wrong."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"The {what} has integer values from {low} to {high}; expected 0..1 or 0..255 "
                "(255 or 1 = may move, 0 = stays still)."
            )
        return array.astype(np.float32) / (255.0 if high > 1 else 1.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"The {what} has dtype {array.dtype}; expected numbers (bool, uint8 or floats in 0..1).")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(
            f"The {what} contains {bad} NaN or infinite value(s). Send a mask of finite numbers in 0..1 "
            "(1 = may move, 0 = stays still)."
        )
    low, high = float(values.min()), float(values.max())
    if low < -1e-6 or high > 1.0 + 1e-6:
        raise ValueError(
            f"The {what} has float values from {low:g} to {high:g}; floats must lie in 0..1 "
            "(use uint8 for 0..255 masks)."
        )
    return np.clip(values, 0.0, 1.0)


def _channels_to_mask(values: np.ndarray, what: str) -> np.ndarray:
    """H×W×C floats in [0, 1] to H×W: the alpha channel of a painted layer, else the brightness."""
    channels = values.shape[2]
    if channels == 1:
        return values[..., 0]
    if channels in (2, 4):
        alpha = values[..., -1]
        # A brush layer is transparent where nothing was painted. A mask saved as an opaque
        # black-and-white picture has constant alpha: then its brightness is the mask.
        if alpha.min() != alpha.max():
            return alpha
        return values[..., :-1].mean(axis=2)
    if channels == 3:
        return values.mean(axis=2)
    raise ValueError(f"The {what} has {channels} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA, alpha = painted).")


def mask_to_array(mask: Any, size: Optional[tuple[int, int]] = None, *, what: str = "motion mask") -> Optional[np.ndarray]:
    """Normalise a user's mask to a float32 H×W array in [0, 1] (1 = may move), or None.

    Accepted: ``None`` (no mask), a PIL image ("RGBA"/"LA"/"PA": the alpha of a painted
    layer, or the brightness when the alpha is constant, i.e. an opaque black-and-white
    picture; any other mode: its brightness), a numpy array (bool, uint8 0..255, ints
    0..1, floats 0..1; H×W, H×W×1, H×W×3 or H×W×4 like images), or a torch tensor.

    ``size`` is ``(width, height)``: the mask is resized bilinearly to it. A mask whose
    aspect ratio differs from ``size`` by more than 2 % was painted on another picture
    and is refused rather than stretched.
    """
    if mask is None:
        return None
    from PIL import Image

    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA", "PA"):
            array = np.asarray(mask.convert("RGBA"))
        elif mask.mode == "I;16":
            array = np.asarray(mask, dtype=np.float32) / 65535.0
        elif mask.mode in ("I", "F"):
            array = np.asarray(mask)
        else:
            array = np.asarray(mask.convert("L"))
    elif hasattr(mask, "detach"):
        array = mask.detach().float().cpu().numpy()
    else:
        array = np.asarray(mask)
    if array.dtype == object:
        raise ValueError(f"The {what} is a {type(mask).__name__}; expected an image, a numpy array or None.")
    if array.ndim > 3:
        array = np.squeeze(array)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ValueError(
            f"The {what} has shape {tuple(array.shape)}; expected a non-empty (height, width) mask "
            "or an image (height, width, channels)."
        )
    values = _as_float_mask(array, what)
    if values.ndim == 3:
        values = _channels_to_mask(values, what)
    if size is not None:
        values = _resize_mask(values, size, what)
    return np.ascontiguousarray(values, dtype=np.float32)


def _resize_mask(values: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    from PIL import Image

    width, height = int(size[0]), int(size[1])
    mask_height, mask_width = values.shape
    if (mask_width, mask_height) == (width, height):
        return values
    mask_aspect, image_aspect = mask_width / mask_height, width / height
    if abs(mask_aspect / image_aspect - 1.0) > _ASPECT_TOLERANCE:
        raise ValueError(
            f"The {what} is {mask_width}x{mask_height} but the image is {width}x{height} (a different shape): "
            "paint the mask on this image, or resize it to the image's size."
        )
    resized = np.asarray(Image.fromarray(values, mode="F").resize((width, height), Image.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def mask_is_painted(mask: Optional[np.ndarray]) -> bool:
    """True when at least one pixel may move (is above the 0.5 threshold)."""
    return mask is not None and bool((np.asarray(mask) > MASK_THRESHOLD).any())


def feathered_static_mask(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """Weight of frame 1 in the pixel composite: 1 = exactly frame 1, 0 = the decoded frame.

    Every pixel the user left unpainted (mask <= 0.5) gets weight 1, so the promise
    "outside the paint stays still" holds exactly. The feather lies *inside* the painted
    region: the weight falls from 1 to 0 over ``feather_px`` pixels (Euclidean distance
    to the nearest static pixel, smoothstep-shaped) so the seam is soft. Strokes thinner
    than twice the feather never reach full motion; lower ``feather_px`` for fine detail.
    ``feather_px = 0`` gives a hard edge.
    """
    values = mask_to_array(mask)
    if values is None:
        raise ValueError("feathered_static_mask needs a mask; with no mask nothing is composited.")
    if not np.isfinite(feather_px) or feather_px < 0:
        raise ValueError(f"feather_px must be a finite number >= 0, got {feather_px!r}.")
    moving = values > MASK_THRESHOLD
    if feather_px == 0 or not moving.any() or moving.all():
        return (~moving).astype(np.float32)
    import cv2

    # Distance of each moving pixel to the nearest static one (static pixels are the zeros).
    distance = cv2.distanceTransform(moving.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ramp = np.clip(distance / float(feather_px), 0.0, 1.0)
    motion_weight = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible kink at either end
    static = 1.0 - motion_weight
    static[~moving] = 1.0  # exactly 1, not 1 - tiny
    return static.astype(np.float32)


def composite_static(
    frames: Sequence[np.ndarray] | np.ndarray,
    first_frame: np.ndarray,
    mask: np.ndarray,
    feather_px: float,
) -> np.ndarray:
    """Paste ``first_frame`` into every frame where the feathered static weight applies.

    ``frames`` is (N, H, W, C) (or a list of H×W×C), uint8 or float; ``first_frame`` is
    H×W×C of the same kind; ``mask`` is the motion mask (1 = may move) at H×W. Where the
    static weight is exactly 1 the output pixel *is* ``first_frame``'s (copied, not
    blended); inside the feather it is blended and rounded back to the input dtype.
    Returns a new array of the frames' dtype.
    """
    stack = np.stack([np.asarray(frame) for frame in frames]) if not isinstance(frames, np.ndarray) else frames
    if stack.ndim != 4:
        raise ValueError(f"frames must be (count, height, width, channels); got shape {stack.shape}.")
    first = np.asarray(first_frame)
    if first.shape != stack.shape[1:]:
        raise ValueError(f"first_frame has shape {first.shape}; the frames are {stack.shape[1:]}.")
    static = feathered_static_mask(mask, feather_px)
    if static.shape != stack.shape[1:3]:
        raise ValueError(f"The mask is {static.shape[1]}x{static.shape[0]}; the frames are {stack.shape[2]}x{stack.shape[1]}.")
    weight = static[None, :, :, None]
    blended = weight * first[None].astype(np.float32) + (1.0 - weight) * stack.astype(np.float32)
    if stack.dtype == np.uint8:
        blended = np.clip(np.rint(blended), 0, 255)
    blended = blended.astype(stack.dtype)
    # Copy, do not trust float blending, where the weight is exactly 1: the pixels must be identical.
    return np.where(weight == 1.0, first[None], blended).astype(stack.dtype)


# --------------------------------------------------------------------------- the scheduler

_SCHEDULER_CLASS: Any = None


def _build_scheduler_class() -> type:
    import functools

    import torch
    import torch.nn.functional as F
    from diffusers import EulerDiscreteScheduler
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

    class MotionBrushEulerScheduler(EulerDiscreteScheduler):
        """``EulerDiscreteScheduler`` that keeps frames 2..N equal to frame 1 outside a mask.

        Use it in place of SVD's scheduler::

            scheduler = MotionBrushEulerScheduler.from_config(pipe.scheduler.config)
            scheduler.motion_mask = mask            # H×W, 1 = may move; any size
            scheduler.max_steps_to_replace = None   # None = every step; K = the first K; 0 = off
            pipe.scheduler = scheduler

        ``motion_mask`` and ``max_steps_to_replace`` are plain attributes, not config: they
        survive ``set_timesteps`` (so one scheduler serves many runs) but not ``from_config``.
        With ``motion_mask = None`` the step is diffusers' own, bit for bit.

        Latents must be 5-D ``(batch, frames, channels, height, width)``, as
        ``StableVideoDiffusionPipeline`` passes them. SVD combines classifier-free guidance
        before calling ``step``, so the batch is the real batch; a CFG-doubled batch would be
        brushed the same way, each element on its own frame axis.

        ``brushed_steps`` lists the (0-based, counted from ``set_timesteps``) steps whose x0
        was replaced in the current run.
        """

        # Class-level defaults, so instances built by from_config/from_pretrained have them too.
        _motion_mask = None
        _max_steps_to_replace = None
        _static_cache = None
        _brush_step_count = 0
        _brushed_steps: tuple = ()
        # On the last step (σ_next = 0) the Euler step lands on x0', so the static region of
        # frames 2..N equals frame 1's prev exactly in arithmetic. Copying it there removes the
        # rounding of the analytic correction (~1e-9 in fp32, more in fp16). False leaves the
        # pure analytic correction (used by the tests to measure it).
        snap_final_step = True

        # ---------------------------------------------------------------- brush settings

        @property
        def motion_mask(self):
            """H×W float tensor (1 = may move), or None: the brush is off."""
            return self._motion_mask

        @motion_mask.setter
        def motion_mask(self, mask) -> None:
            if mask is None:
                self._motion_mask = None
                self._static_cache = None
                return
            if not isinstance(mask, torch.Tensor):
                mask = torch.from_numpy(np.ascontiguousarray(mask_to_array(mask)))
            mask = mask.detach().to("cpu", torch.float32)
            while mask.ndim > 2 and mask.shape[0] == 1:
                mask = mask[0]
            if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
                raise ValueError(
                    f"motion_mask must be a 2-D (height, width) tensor, got shape {tuple(mask.shape)}."
                )
            if not torch.isfinite(mask).all():
                raise ValueError("motion_mask contains NaN or infinite values; send finite numbers in 0..1.")
            self._check_final_sigmas_type()
            self._motion_mask = mask
            self._static_cache = None

        @property
        def max_steps_to_replace(self) -> Optional[int]:
            """None = replace x0 on every step; K = on the first K steps of a run; 0 = never."""
            return self._max_steps_to_replace

        @max_steps_to_replace.setter
        def max_steps_to_replace(self, value: Optional[int]) -> None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(
                    f"max_steps_to_replace must be None (every step) or a whole number >= 0, got {value!r}."
                )
            self._max_steps_to_replace = value

        def _check_final_sigmas_type(self) -> None:
            final = getattr(self.config, "final_sigmas_type", "zero")
            if final != "zero":
                raise ValueError(
                    f"The motion brush needs final_sigmas_type='zero' (SVD's setting), but this scheduler has "
                    f"{final!r}: with a non-zero last sigma the final step stops short of x0, so the static "
                    "region keeps a remainder of each frame's own noise and does not end up still. Build the "
                    "scheduler with from_config(config, final_sigmas_type='zero')."
                )

        # ---------------------------------------------------------------- diffusers hooks

        # wraps: diffusers' retrieve_timesteps inspects this signature for `timesteps`/`sigmas`.
        @functools.wraps(EulerDiscreteScheduler.set_timesteps)
        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            # A new run: "the first K steps" count from here. The mask stays.
            self._brush_step_count = 0
            self._brushed_steps = ()

        @property
        def brushed_steps(self) -> list:
            """Steps (0-based, counted from set_timesteps) whose x0 was replaced in this run."""
            return list(self._brushed_steps)

        def static_region(self, latents: torch.Tensor) -> torch.Tensor:
            """Bool (1, 1, 1, h, w): True where the bilinearly resized mask is <= 0.5."""
            height, width = latents.shape[-2:]
            key = (height, width, latents.device)
            if self._static_cache is None or self._static_cache[0] != key:
                resized = F.interpolate(
                    self._motion_mask[None, None], size=(height, width), mode="bilinear", align_corners=False
                )[0, 0]
                static = (resized <= MASK_THRESHOLD).to(latents.device)
                self._static_cache = (key, static[None, None, None])
            return self._static_cache[1]

        def brush_x0(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
            """x0 with frames 2..N taking frame 1's x0 in the static region (a new tensor)."""
            if pred_original_sample.ndim != 5:
                raise ValueError(
                    "The motion brush needs video latents shaped (batch, frames, channels, height, width), "
                    f"as StableVideoDiffusionPipeline passes them; got shape {tuple(pred_original_sample.shape)}."
                )
            static = self.static_region(pred_original_sample)
            brushed = pred_original_sample.clone()
            brushed[:, 1:] = torch.where(static, pred_original_sample[:, :1], pred_original_sample[:, 1:])
            return brushed

        def _brushes_this_step(self) -> bool:
            if self._motion_mask is None:
                return False
            limit = self._max_steps_to_replace
            return limit is None or self._brush_step_count < limit

        def step(
            self,
            model_output: torch.Tensor,
            timestep,
            sample: torch.Tensor,
            s_churn: float = 0.0,
            s_tmin: float = 0.0,
            s_tmax: float = float("inf"),
            s_noise: float = 1.0,
            generator: Optional[torch.Generator] = None,
            return_dict: bool = True,
        ):
            brushing = self._brushes_this_step() and sample.ndim >= 2 and sample.shape[1] > 1
            run_step = self._brush_step_count
            self._brush_step_count += 1
            if not brushing:
                return super().step(
                    model_output, timestep, sample, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                    s_noise=s_noise, generator=generator, return_dict=return_dict,
                )
            self._check_final_sigmas_type()
            if sample.ndim != 5:
                self.brush_x0(sample)  # raises the explanation
            # σ̂ and dt exactly as super().step() derives them (read before it advances the index).
            if self.step_index is None and not isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
                self._init_step_index(timestep)
            index = self.step_index
            sigma = self.sigmas[index] if index is not None else None
            output = super().step(
                model_output, timestep, sample, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                s_noise=s_noise, generator=generator, return_dict=True,
            )
            gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
            sigma_hat = sigma * (gamma + 1)
            sigma_next = self.sigmas[index + 1]
            dt = sigma_next - sigma_hat

            x0 = output.pred_original_sample
            static = self.static_region(x0)
            later_brushed = torch.where(static, x0[:, :1], x0[:, 1:])
            x0_brushed = torch.cat([x0[:, :1], later_brushed], dim=1)
            # x0' - x0 is exactly zero in frame 1 and in the moving region, so prev stays bit-identical there.
            change = (later_brushed - x0[:, 1:]).to(torch.float32)
            prev = output.prev_sample
            # prev' = prev - (x0' - x0)·dt/σ̂, in float32 like diffusers' own step.
            ratio = float(dt / sigma_hat)
            corrected = prev.to(torch.float32, copy=True)
            corrected[:, 1:].sub_(change, alpha=ratio)
            if self.snap_final_step and float(sigma_next) == 0.0:
                corrected[:, 1:] = torch.where(static, corrected[:, :1], corrected[:, 1:])
            prev_brushed = corrected.to(prev.dtype)
            self._brushed_steps = (*self._brushed_steps, run_step)
            if not return_dict:
                return prev_brushed, x0_brushed
            return EulerDiscreteSchedulerOutput(prev_sample=prev_brushed, pred_original_sample=x0_brushed)

    MotionBrushEulerScheduler.__module__ = __name__
    MotionBrushEulerScheduler.__qualname__ = "MotionBrushEulerScheduler"
    return MotionBrushEulerScheduler


def __getattr__(name: str) -> Any:
    # PEP 562: the subclass needs diffusers, which must not load when the WebUI imports this module.
    if name == "MotionBrushEulerScheduler":
        global _SCHEDULER_CLASS
        if _SCHEDULER_CLASS is None:
            _SCHEDULER_CLASS = _build_scheduler_class()
        return _SCHEDULER_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
