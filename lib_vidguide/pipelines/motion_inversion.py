"""Motion Inversion (Wang et al., arXiv 2403.20193) on a stock diffusers ``UNet3DConditionModel``.

The original (EnVision-Research/MotionInversion, also published as wileewang/MotionInversion,
diffusers 0.26) vendors its own UNet3D and monkeypatches ``BasicTransformerBlock.forward``
and ``Attention.forward``. Here the stock text-to-video UNet (ZeroScope / ModelScope layout)
is left alone; everything goes through attention processors (PIPELINES.md §3.2):

* **Motion query-key embedding** ``qk`` (1 × frames × C, zero-initialised), one per temporal
  transformer block, shared by the block's attn1 and attn2 (both are self-attention over
  frames in the UNet3D's ``TransformerTemporalModel``): added to the normed hidden states
  that feed ``to_q`` and ``to_k`` only.
* **Motion value embedding** ``v`` (h·w × frames × C, zero-initialised), one per attention:
  added to the *un-embedded* normed hidden states that feed ``to_v``, one vector per latent
  cell and frame, broadcast over the batch (classifier-free guidance doubles it).
* Both live in :class:`MotionInversionAttnProcessor` (an ``nn.Module``), so they appear in
  ``named_parameters()`` as ``…attn1.processor.qk`` / ``…attn1.processor.v``; the spatial
  size each layer runs at is read by a forward pre-hook on its ``TransformerTemporalModel``
  and checked against the trained size.
* **Layers**: the temporal blocks of the down and up blocks at the lowest-resolution level
  (``motion_layers="lowest"``: ZeroScope's 1280-wide blocks at 1/32 scale, the original's
  ``combinations: [[down, 1280], [up, 1280]]``); ``"lowest_two"`` adds the next level
  (1280 and 640, the wileewang config), ``"all"`` every level. The mid block and
  ``transformer_in`` are never embedded, as in the original.

Losses (the seed's choices): ``base`` (ε-MSE), ``debiased_temporal`` (the default: ε-MSE plus
the MSE of α·pred − β·pred[anchor] against the same for the target, β=1, α=√2, a random
anchor frame) and ``debiased_hybrid`` (MotionDirector-style: additionally spatial LoRAs on
the spatial attentions learn the appearance from single frames, skipped with probability
0.2, and are thrown away after training). Inference debiasing: ``frame_difference`` (the
original's ``vSpatial_frameSubtraction`` for object/hybrid motion: v[:, 1:] − v[:, :−1], frame
0 kept), ``drop_value`` (``removeMFromV`` for camera motion) or ``none``; the query-key
embedding is always used unchanged (it is already spatially shared).

Deviations from the original, each for a stated reason:

* The embeddings hold only the trained frame count (the original allocates 32 slots and
  trains the first F); other frame counts at generation interpolate them linearly along time
  (``align_corners=False``). The original's ``trained_length`` interpolation slices the 32
  slots to the *target* length first, so for targets ≤ 32 it never interpolates and adds
  untrained zeros instead; this implements what it evidently meant.
* Hybrid loss: the spatial LoRAs sit on the spatial attentions' q/k/v/out projections
  (diffusers' usual LoRA targets; the original also adapts feed-forward and proj_in/out),
  without LoRA dropout (dropout would draw from the global RNG); the single-frame spatial
  pass runs without the motion embeddings, so the embeddings learn from the temporal loss
  only, the LoRAs from the spatial loss only (the original updates the LoRAs from the spatial
  loss alone too; its embeddings also got a frame-0 value gradient from the spatial pass).
* The motion value embedding is tied to the training resolution (one vector per latent
  cell): generating at another size raises a ``ValueError`` that says so. The original does
  the same implicitly (a shape error).
* No offset noise and no flipped frames (the original has both switched off by default).
* diffusers 0.31's ``UNet3DConditionModel`` has no gradient checkpointing
  (``_supports_gradient_checkpointing = False``); it is off by default here and refused when
  asked for. Only the layers from the first embedded one onwards keep activations for the
  backward pass, since nothing before them needs a gradient.

Generation is this module's own DDIM loop (``TextToVideoSDPipeline`` is deprecated in
diffusers and frozen after 0.33.1, PIPELINES.md §5): the original's inference (30 DDIM steps,
guidance 12) with its ``BlendInit`` starting noise, √p·inverted + √(1−p)·noise with
``noise_prior`` p = 0.5, where "inverted" is the 50-step DDIM inversion of the training clip
with the plain model and the empty prompt, computed at the end of training and stored with
the embeddings (when the generated frame count or size differs from the trained one, the
start is plain noise and a note says so).

**Processors and hooks are global state on the UNet**: ``set_attn_processor``,
``enable_xformers_memory_efficient_attention`` or another extension silently replace them.
Every run (training, inversion, generation) re-applies them first
(:func:`apply_motion_inversion`); ``unet.set_default_attn_processor()`` raises on an
embedded UNet (diffusers refuses unknown processor classes) instead of dropping them.

Size at ZeroScope's 576×320 (PIPELINES.md §3.4): the value embeddings of the 5 embedded
blocks hold 2 × 180 × frames × 1280 × 5 parameters: 55 M (221 MB as float32) at 24 frames;
the query-key embeddings 0.15 M.

Command line: ``python -m lib_vidguide motion-inversion train|generate ...`` once wired into
:mod:`lib_vidguide.cli` through :func:`register_cli`, or directly
``python -m lib_vidguide.pipelines.motion_inversion train|generate ...``.

torch, diffusers and transformers are imported inside functions and the processor classes
are built lazily: importing this module costs nothing at WebUI start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Union

import numpy as np
from pydantic import Field

from ..settings import StrictModel, field_check
from .cli_support import run_train_command, run_video_command
from .sd_loading import (
    _base_model_note, _counting_step_callback, _ddim_config_from, _decode_latents, _encode_prompts, _output_paths,
    _place_components, _run_device_and_dtype,
)
from .training import TrainingSettings
from .training import VideoTrainResult as MotionInversionTrainResult  # one result type for both training methods
from .tune_a_video import _check_multiple_of_8

logger = logging.getLogger("vidguide")

__all__ = [
    "DEBIAS_MODES",
    "FORMAT_VERSION",
    "LOSS_TYPES",
    "METHOD",
    "MODELS_SUBDIR",
    "MOTION_LAYERS",
    "WEIGHTS_FILENAME",
    "WEIGHTS_SUBDIR",
    "MotionInversionAttnProcessor",
    "MotionInversionGenerateResult",
    "MotionInversionGenerateSettings",
    "MotionInversionInterrupted",
    "MotionInversionPipeline",
    "MotionInversionPipelineOutput",
    "MotionInversionSettings",
    "MotionInversionTrainResult",
    "MotionInversionTrainer",
    "MotionInversionWeightsInfo",
    "SpatialLoRAAttnProcessor",
    "apply_motion_inversion",
    "build_tiny_t2v_components",
    "generate_motion_inversion",
    "inject_motion_embeddings",
    "is_motion_inversion_applied",
    "load_motion_embeddings",
    "load_t2v_components",
    "main",
    "motion_parameters",
    "read_weights_info",
    "register_cli",
    "remove_motion_inversion",
    "resolve_t2v_model",
    "save_motion_embeddings",
    "save_tiny_t2v_model",
    "set_motion_mode",
    "train_motion_inversion",
]

METHOD = "motion-inversion"
FORMAT_VERSION = "1"
# Trained artefacts live in <WebUI models>/vidguide-motion-inversion/.
WEIGHTS_SUBDIR = "vidguide-motion-inversion"
WEIGHTS_FILENAME = "motion_inversion.safetensors"
# Text-to-video base models (diffusers folders) are looked up by name in <WebUI models>/text2video/.
MODELS_SUBDIR = "text2video"
SIZE_MULTIPLE = 8
MAX_FRAMES = 64
# DebiasedTemporalLoss: alpha * pred - beta * pred[anchor], with alpha = sqrt(beta^2 + 1) so the
# debiased term has the variance of the plain one for independent frames.
DEBIAS_BETA = 1.0
DEBIAS_ALPHA = math.sqrt(DEBIAS_BETA**2 + 1.0)
INVERTED_LATENTS_KEY = "blend_init.inverted_latents"
_STATE_ATTRIBUTE = "_vidguide_motion_inversion"

LossType = Literal["base", "debiased_temporal", "debiased_hybrid"]
MotionLayers = Literal["lowest", "lowest_two", "all"]
Debias = Literal["frame_difference", "drop_value", "none"]
LOSS_TYPES: tuple[str, ...] = ("base", "debiased_temporal", "debiased_hybrid")
MOTION_LAYERS: tuple[str, ...] = ("lowest", "lowest_two", "all")
DEBIAS_MODES: tuple[str, ...] = ("frame_difference", "drop_value", "none")
# Processor modes: train = embeddings as trained; diff = frame differencing of v; drop = no v;
# off = no embeddings at all (the base model, bit for bit).
_MODES = ("train", "diff", "drop", "off")
_DEBIAS_TO_MODE = {"frame_difference": "diff", "drop_value": "drop", "none": "train"}

ProgressCallback = Callable[[int, int], None]
_EMPTY_TRAINING_PROMPT = (
    "The training prompt is empty: describe the video (e.g. 'a car turns around in a city street')."
)


# --------------------------------------------------------------------------- settings


class MotionInversionSettings(TrainingSettings):
    """Training on one video. Defaults: wileewang/MotionInversion's config (USERS.md §B.3), 400 steps (EnVision)."""

    frames: int = Field(24, ge=2, le=MAX_FRAMES, description="Frames to train on (original: 24).")
    sample_start: int = Field(0, ge=0, description="First source frame (0-based).")
    sample_stride: int = Field(1, ge=1, le=1000, description="Take every n-th source frame (original: 1).")
    width: int = Field(576, ge=64, le=2048, description="Training width in pixels (multiple of 8; ZeroScope: 576).")
    height: int = Field(320, ge=64, le=2048, description="Training height in pixels (multiple of 8; ZeroScope: 320).")
    loss: LossType = Field(
        "debiased_temporal",
        description="base: plain noise MSE (cross-category edits); debiased_temporal: plus an appearance-debiased "
        "term (objects that deform); debiased_hybrid: plus spatial LoRAs that absorb appearance (camera motion).",
    )
    motion_layers: MotionLayers = Field(
        "lowest",
        description="Temporal blocks that get embeddings: lowest = the lowest-resolution level (ZeroScope's 1280-wide "
        "blocks, ~55 M parameters at 576x320x24); lowest_two adds the next level; all = every level.",
    )
    learning_rate: float = Field(0.05, gt=0.0, le=1.0, description="AdamW learning rate of the embeddings (original: 0.05).")
    max_train_steps: int = Field(400, ge=1, le=100_000, description="Optimizer steps (original: 200-400).")
    max_grad_norm: float = Field(0.0, ge=0.0, description="Clip the gradient norm to this; 0 = no clipping (original).")
    gradient_checkpointing: bool = Field(
        False, description="Not supported by diffusers' UNet3DConditionModel (0.31); must stay off."
    )
    checkpointing_steps: int = Field(
        100, ge=0, description="Save a resumable checkpoint every N steps; 0 = only when interrupted."
    )
    spatial_lora_rank: int = Field(32, ge=1, le=256, description="debiased_hybrid: rank of the spatial LoRAs (original: 32).")
    spatial_learning_rate: float = Field(
        5e-4, gt=0.0, le=1.0, description="debiased_hybrid: learning rate of the spatial LoRAs (original: 5e-4)."
    )
    spatial_skip_probability: float = Field(
        0.2, ge=0.0, le=1.0, description="debiased_hybrid: chance per step to train without the spatial LoRAs (original: 0.2)."
    )
    inversion_steps: int = Field(
        50, ge=0, le=1000,
        description="DDIM inversion steps of the clip, stored for the noise prior at generation (original: 50); "
        "0 = store none (generation starts from noise).",
    )

    @field_check("width")
    def _width_multiple(cls, value: int) -> int:  # noqa: N805
        return _check_multiple_of_8(value, "width")

    @field_check("height")
    def _height_multiple(cls, value: int) -> int:  # noqa: N805
        return _check_multiple_of_8(value, "height")


class MotionInversionGenerateSettings(StrictModel):
    """Generating with trained embeddings. Defaults: the original's inference (30 DDIM steps, guidance 12, noise prior 0.5)."""

    num_inference_steps: int = Field(30, ge=1, le=1000, description="DDIM sampling steps (original: 30).")
    guidance_scale: float = Field(12.0, ge=0.0, le=50.0, description="Classifier-free guidance (original: 12); 1 or less: off.")
    negative_prompt: str = Field("", description="Negative prompt of the guided sampling.")
    debias: Debias = Field(
        "frame_difference",
        description="frame_difference: object or hybrid motion (original default); drop_value: camera motion "
        "(better prompt adherence); none: the embeddings as trained.",
    )
    noise_prior: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of the training clip's inverted noise in the starting latents (BlendInit; original: 0.5); "
        "0 = plain noise.",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the starting noise.")
    frames: Optional[int] = Field(None, ge=1, le=4 * MAX_FRAMES, description="Frames to generate; empty = as trained.")
    width: Optional[int] = Field(None, ge=64, le=2048, description="Width; empty = as trained (the only size that works).")
    height: Optional[int] = Field(None, ge=64, le=2048, description="Height; empty = as trained (the only size that works).")
    decode_chunk_size: int = Field(8, ge=1, le=4 * MAX_FRAMES, description="Frames the VAE decodes at once.")
    half_precision: bool = Field(True, description="GPU only: fp16 weights for generation (CPU runs use float32).")

    @field_check("width")
    def _width_multiple(cls, value: Optional[int]) -> Optional[int]:  # noqa: N805
        return _check_multiple_of_8(value, "width")

    @field_check("height")
    def _height_multiple(cls, value: Optional[int]) -> Optional[int]:  # noqa: N805
        return _check_multiple_of_8(value, "height")


# --------------------------------------------------------------------------- the embeddings


@dataclass
class _LayerGeometry:
    """The latent size one ``TransformerTemporalModel`` runs at, written by its forward pre-hook on every call."""

    height: int = 0
    width: int = 0


@dataclass
class _MotionState:
    """Kept on the UNet (``unet._vidguide_motion_inversion``): the processors, hooks and mode every run re-applies."""

    frames: int
    latent_height: int
    latent_width: int
    layers: str
    pixel_size: Optional[tuple] = None  # (width, height), for messages
    mode: str = "train"
    # attention name ("down_blocks.1.temp_attentions.0.transformer_blocks.0.attn1") -> processor
    processors: Dict[str, Any] = field(default_factory=dict)
    # TransformerTemporalModel name -> (its geometry, the latent size its embeddings were trained at)
    geometries: Dict[str, _LayerGeometry] = field(default_factory=dict)
    trained_sizes: Dict[str, tuple] = field(default_factory=dict)
    hook_handles: List[Any] = field(default_factory=list)
    # debiased_hybrid training only: spatial attention name -> LoRA processor, and what they replaced
    lora: Dict[str, Any] = field(default_factory=dict)
    lora_replaced: Dict[str, Any] = field(default_factory=dict)
    lora_scale: float = 1.0
    lora_detached: bool = False


def _state(unet: Any) -> _MotionState:
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        raise ValueError(
            "This UNet has no motion embeddings; call inject_motion_embeddings(unet, ...) or load_motion_embeddings(unet, path)."
        )
    return state


def _over_frames(embedding: Any, frames: int) -> Any:
    """``embedding`` (n, trained frames, C) at ``frames`` frames: itself, or linearly interpolated along time."""
    import torch.nn.functional as F

    if embedding.shape[1] == frames:
        return embedding
    # F.interpolate wants (n, C, time); align_corners=False as the original's trained_length interpolation.
    return F.interpolate(embedding.transpose(1, 2), size=(frames,), mode="linear", align_corners=False).transpose(1, 2)


def _sdpa_attention(attn: Any, query: Any, key: Any, value: Any, batch: int, attention_mask: Any = None) -> Any:
    """The tail of diffusers' ``AttnProcessor2_0`` (same ops, same order): heads, SDPA, output projection."""
    import torch.nn.functional as F

    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


_PROCESSOR_CLASSES: Dict[str, type] = {}


def _build_processor_classes() -> Dict[str, type]:
    import torch
    import torch.nn.functional as F

    class MotionInversionAttnProcessor(torch.nn.Module):
        """Temporal self-attention with motion query-key and value embeddings (see the module docstring).

        ``hidden_states`` arrive as (videos·h·w, frames, C), batch-major, from the
        ``TransformerTemporalModel``; ``qk`` is shared with the block's other attention.
        In mode ``off`` (and with zero embeddings) the computation is exactly diffusers'
        ``AttnProcessor2_0``.
        """

        def __init__(self, name: str, qk: Any, v: Any, geometry: _LayerGeometry, trained_size: tuple,
                     state: _MotionState):
            super().__init__()
            self.qk = qk
            self.v = v
            # Plain attributes (not submodules): the state is shared, the geometry is written by a hook.
            self.name = name
            self.geometry = geometry
            self.trained_size = trained_size
            self.state = state

        def _videos(self, batch: int) -> int:
            height, width = self.geometry.height, self.geometry.width
            if height == 0:
                raise ValueError(
                    f"{self.name}: the motion-embedding hooks are not installed; call apply_motion_inversion(unet) "
                    "before running the UNet."
                )
            if (height, width) != self.trained_size:
                trained = self.state.pixel_size
                where = f" ({trained[0]}x{trained[1]} pixels)" if trained else ""
                raise ValueError(
                    f"These motion embeddings were trained at a {self.state.latent_width}x{self.state.latent_height} "
                    f"latent{where}; the motion value embedding holds one vector per latent cell, so it is tied to that "
                    f"resolution (layer {self.name} expects {self.trained_size[1]}x{self.trained_size[0]} cells, got "
                    f"{width}x{height}). Generate at the trained size{where}; other sizes would need a spatial "
                    "interpolation of the value embeddings, which Motion Inversion does not define."
                )
            cells = height * width
            if batch % cells:
                raise ValueError(f"{self.name}: a batch of {batch} is not a multiple of the {cells} latent cells.")
            return batch // cells

        def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                     temb: Any = None, *args: Any, **kwargs: Any) -> Any:
            if encoder_hidden_states is not None or attention_mask is not None:
                raise ValueError(
                    f"{self.name}: motion embeddings apply to temporal self-attention, which takes no "
                    "encoder_hidden_states and no mask."
                )
            if hidden_states.ndim != 3:
                raise ValueError(f"{self.name}: expected (batch, frames, channels), got {tuple(hidden_states.shape)}.")
            mode = self.state.mode
            batch, frames, channels = hidden_states.shape
            residual = hidden_states
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            if mode == "off":
                qk_input = value_input = hidden_states
            else:
                videos = self._videos(batch)
                qk = _over_frames(self.qk, frames).to(hidden_states.dtype)
                qk_input = hidden_states + qk
                if mode == "drop":
                    value_input = hidden_states
                else:
                    v = _over_frames(self.v, frames)
                    if mode == "diff":
                        # The original's vSpatial_frameSubtraction: frame 0 kept, later frames differenced.
                        v = torch.cat([v[:, :1], v[:, 1:] - v[:, :-1]], dim=1)
                    cells = v.shape[0]
                    value_input = (
                        hidden_states.reshape(videos, cells, frames, channels) + v.to(hidden_states.dtype)
                    ).reshape(batch, frames, channels)
            query = attn.to_q(qk_input)
            key = attn.to_k(qk_input)
            value = attn.to_v(value_input)
            out = _sdpa_attention(attn, query, key, value, batch)
            if attn.residual_connection:
                out = out + residual
            return out / attn.rescale_output_factor

    class SpatialLoRAAttnProcessor(torch.nn.Module):
        """``AttnProcessor2_0`` plus low-rank updates of to_q/to_k/to_v/to_out (debiased_hybrid training only).

        Initialised as cloneofsimo's LoRA (down ~ N(0, 1/rank), up = 0), so it starts as the
        base attention. ``state.lora_scale`` scales it (0 on the steps that skip it);
        ``state.lora_detached`` makes the temporal pass use it without training it.
        """

        def __init__(self, attn: Any, rank: int, generator: Any, state: _MotionState):
            super().__init__()
            self.state = state
            shapes = {
                "q": (attn.to_q.in_features, attn.to_q.out_features),
                "k": (attn.to_k.in_features, attn.to_k.out_features),
                "v": (attn.to_v.in_features, attn.to_v.out_features),
                "out": (attn.to_out[0].in_features, attn.to_out[0].out_features),
            }
            for key, (features_in, features_out) in shapes.items():
                down = torch.empty(rank, features_in).normal_(0.0, 1.0 / rank, generator=generator)
                setattr(self, f"{key}_down", torch.nn.Parameter(down))
                setattr(self, f"{key}_up", torch.nn.Parameter(torch.zeros(features_out, rank)))

        def _delta(self, key: str, inputs: Any) -> Any:
            down, up = getattr(self, f"{key}_down"), getattr(self, f"{key}_up")
            if self.state.lora_detached:
                down, up = down.detach(), up.detach()
            return F.linear(F.linear(inputs, down.to(inputs.dtype)), up.to(inputs.dtype)) * self.state.lora_scale

        def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                     temb: Any = None, *args: Any, **kwargs: Any) -> Any:
            if hidden_states.ndim != 3:
                raise ValueError(f"Spatial LoRA expects (batch, tokens, channels), got {tuple(hidden_states.shape)}.")
            use = self.state.lora_scale != 0.0
            residual = hidden_states
            batch, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
                attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
            if attn.group_norm is not None:
                hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if encoder_hidden_states is not None and attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
            if use:
                query = query + self._delta("q", hidden_states)
                key = key + self._delta("k", context)
                value = value + self._delta("v", context)
            inner_dim = key.shape[-1]
            head_dim = inner_dim // attn.heads
            q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
            projected = attn.to_out[0](out)
            if use:
                projected = projected + self._delta("out", out)
            out = attn.to_out[1](projected)
            if attn.residual_connection:
                out = out + residual
            return out / attn.rescale_output_factor

    classes = {"MotionInversionAttnProcessor": MotionInversionAttnProcessor,
               "SpatialLoRAAttnProcessor": SpatialLoRAAttnProcessor}
    for name, cls in classes.items():
        cls.__module__ = __name__
        cls.__qualname__ = name
    return classes


def __getattr__(name: str) -> Any:
    # PEP 562: the processors subclass torch.nn.Module, and torch must not load when the WebUI imports this module.
    if name in ("MotionInversionAttnProcessor", "SpatialLoRAAttnProcessor"):
        if not _PROCESSOR_CLASSES:
            _PROCESSOR_CLASSES.update(_build_processor_classes())
        return _PROCESSOR_CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _level_size(size: int, level: int) -> int:
    """The size after ``level`` of the UNet's stride-2, padding-1 downsamplings: ceil(size / 2) each."""
    for _ in range(level):
        size = (size + 1) // 2
    return size


def _temporal_models(unet: Any, layers: str) -> List[tuple]:
    """(name, TransformerTemporalModel, level) of the down/up blocks chosen by ``layers``; level 0 = full latent size."""
    if layers not in MOTION_LAYERS:
        raise ValueError(f"motion_layers must be one of {list(MOTION_LAYERS)}, got {layers!r}.")
    found = []
    levels = len(getattr(unet, "down_blocks", []))
    for kind, blocks in (("down_blocks", getattr(unet, "down_blocks", [])), ("up_blocks", getattr(unet, "up_blocks", []))):
        for index, block in enumerate(blocks):
            # Up block j runs at the resolution of down block (levels - 1 - j).
            level = index if kind == "down_blocks" else levels - 1 - index
            for position, model in enumerate(getattr(block, "temp_attentions", None) or []):
                found.append((f"{kind}.{index}.temp_attentions.{position}", model, level))
    if not found:
        raise ValueError(
            "This UNet has no temporal attention in its down/up blocks; Motion Inversion needs a text-to-video "
            "UNet3DConditionModel (ZeroScope / ModelScope)."
        )
    available = sorted({level for _, _, level in found}, reverse=True)
    chosen = {"lowest": available[:1], "lowest_two": available[:2], "all": available}[layers]
    return [entry for entry in found if entry[2] in chosen]


def inject_motion_embeddings(unet: Any, *, frames: int, latent_height: int, latent_width: int, layers: str = "lowest",
                             pixel_size: Optional[tuple] = None) -> Any:
    """Give ``unet``'s chosen temporal blocks zero-initialised motion embeddings for ``frames`` frames; returns it.

    ``latent_height``/``latent_width`` is the training latent size (pixels / 8): each embedded
    layer's value embedding gets one vector per cell of that layer's resolution.
    ``pixel_size`` = (width, height) only improves error messages. Any earlier embeddings are
    removed first. The processors and hooks are applied (:func:`apply_motion_inversion`).
    """
    import torch

    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}.")
    if latent_height < 1 or latent_width < 1:
        raise ValueError(f"The latent size must be positive, got {latent_width}x{latent_height}.")
    processor_class = __getattr__("MotionInversionAttnProcessor")
    if getattr(unet, _STATE_ATTRIBUTE, None) is not None:
        remove_motion_inversion(unet)
    state = _MotionState(frames=int(frames), latent_height=int(latent_height), latent_width=int(latent_width),
                         layers=layers, pixel_size=tuple(pixel_size) if pixel_size else None)
    device = next(unet.parameters()).device
    for model_name, model, level in _temporal_models(unet, layers):
        trained_size = (_level_size(latent_height, level), _level_size(latent_width, level))
        geometry = _LayerGeometry()
        state.geometries[model_name] = geometry
        state.trained_sizes[model_name] = trained_size
        cells = trained_size[0] * trained_size[1]
        for block_index, block in enumerate(model.transformer_blocks):
            block_name = f"{model_name}.transformer_blocks.{block_index}"
            channels = block.attn1.to_q.in_features
            # Float32 whatever the UNet's dtype: these are the trained tensors (cast at use).
            qk = torch.nn.Parameter(torch.zeros(1, frames, channels, device=device))
            for attention_name in ("attn1", "attn2"):
                attn = getattr(block, attention_name, None)
                if attn is None:
                    continue
                if attn.is_cross_attention:
                    raise ValueError(
                        f"{block_name}.{attention_name} is cross-attention; Motion Inversion expects the UNet3D's temporal "
                        "blocks, whose two attentions are both self-attention over frames."
                    )
                v = torch.nn.Parameter(torch.zeros(cells, frames, attn.to_v.in_features, device=device))
                name = f"{block_name}.{attention_name}"
                state.processors[name] = processor_class(name, qk, v, geometry, trained_size, state)
    # A plain attribute, not a submodule: nn.Module.__setattr__ stores non-module objects as is.
    setattr(unet, _STATE_ATTRIBUTE, state)
    apply_motion_inversion(unet)
    return unet


def _geometry_hook(geometry: _LayerGeometry):
    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        geometry.height, geometry.width = int(hidden_states.shape[-2]), int(hidden_states.shape[-1])
        return None

    return hook


def apply_motion_inversion(unet: Any) -> Any:
    """(Re-)install the motion processors, their geometry hooks and (hybrid training) the spatial LoRAs; returns the UNet.

    Idempotent and cheap. Called at the start of every training run, inversion and
    generation, because anything that resets attention processors silently removes them.
    """
    state = _state(unet)
    modules = dict(unet.named_modules())
    for handle in state.hook_handles:
        handle.remove()
    state.hook_handles = []
    for model_name, geometry in state.geometries.items():
        state.hook_handles.append(
            modules[model_name].register_forward_pre_hook(_geometry_hook(geometry), with_kwargs=True)
        )
    for name, processor in state.processors.items():
        attn = modules[name]
        # A processor dropped by set_attn_processor is no longer moved with the UNet: bring it back to its device.
        processor.to(attn.to_q.weight.device)
        attn.set_processor(processor)
    for name, processor in state.lora.items():
        attn = modules[name]
        processor.to(attn.to_q.weight.device)
        attn.set_processor(processor)
    return unet


def is_motion_inversion_applied(unet: Any) -> bool:
    """True when every motion processor, geometry hook and spatial LoRA is installed."""
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        return False
    modules = dict(unet.named_modules())
    if any(modules[name].processor is not processor for name, processor in state.processors.items()):
        return False
    if any(modules[name].processor is not processor for name, processor in state.lora.items()):
        return False
    if len(state.hook_handles) != len(state.geometries):
        return False
    return all(handle.id in modules[name]._forward_pre_hooks
               for name, handle in zip(state.geometries, state.hook_handles))


def set_motion_mode(unet: Any, mode: str) -> None:
    """``train`` (as trained), ``diff`` (frame differencing of v), ``drop`` (no v) or ``off`` (the base model)."""
    if mode not in _MODES:
        raise ValueError(f"The motion mode must be one of {list(_MODES)}, got {mode!r}.")
    _state(unet).mode = mode


def motion_parameters(unet: Any) -> Dict[str, Any]:
    """The embeddings, named as in ``unet.named_parameters()`` when installed (the shared qk under attn1)."""
    state = _state(unet)
    found: Dict[str, Any] = {}
    seen = set()
    for name, processor in state.processors.items():
        if id(processor.qk) not in seen:
            seen.add(id(processor.qk))
            found[f"{name}.processor.qk"] = processor.qk
        found[f"{name}.processor.v"] = processor.v
    return found


def _lora_parameters(unet: Any) -> Dict[str, Any]:
    state = _state(unet)
    return {f"{name}.processor.{key}": param for name, processor in state.lora.items()
            for key, param in processor.named_parameters()}


def _add_spatial_loras(unet: Any, rank: int, seed: int) -> None:
    """Spatial LoRAs on both attentions of every spatial transformer block (debiased_hybrid).

    The spatial transformers are the ``Transformer2DModel`` s (``*.attentions.*``); the temporal
    ``TransformerTemporalModel`` s are another class and keep their motion processors.
    """
    import torch
    from diffusers import Transformer2DModel

    state = _state(unet)
    lora_class = __getattr__("SpatialLoRAAttnProcessor")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for name, module in unet.named_modules():
        if not isinstance(module, Transformer2DModel):
            continue
        for index, block in enumerate(module.transformer_blocks):
            for attention_name in ("attn1", "attn2"):
                attn = getattr(block, attention_name, None)
                if attn is None:
                    continue
                full = f"{name}.transformer_blocks.{index}.{attention_name}"
                state.lora_replaced[full] = attn.processor
                state.lora[full] = lora_class(attn, rank, generator, state).to(attn.to_q.weight.device)
    if not state.lora:
        raise ValueError("This UNet has no spatial transformers for the hybrid loss's LoRAs; use loss=debiased_temporal.")
    apply_motion_inversion(unet)


def _remove_spatial_loras(unet: Any) -> None:
    state = _state(unet)
    modules = dict(unet.named_modules())
    for name, previous in state.lora_replaced.items():
        modules[name].set_processor(previous)
    state.lora.clear()
    state.lora_replaced.clear()


def remove_motion_inversion(unet: Any) -> Any:
    """Back to the base model: diffusers' default processors on the embedded attentions, hooks removed, state dropped."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        return unet
    _remove_spatial_loras(unet)
    modules = dict(unet.named_modules())
    for handle in state.hook_handles:
        handle.remove()
    for name in state.processors:
        modules[name].set_processor(AttnProcessor2_0())
    delattr(unet, _STATE_ATTRIBUTE)
    return unet


# --------------------------------------------------------------------------- saving and loading


@dataclass
class MotionInversionWeightsInfo:
    """The metadata of a trained embeddings file."""

    path: Path
    base_model: str
    base_model_fingerprint: str
    frames: int
    width: int
    height: int
    latent_width: int
    latent_height: int
    motion_layers: str
    loss: str
    prompt: str
    train_steps: int
    fps: Optional[float]
    sample_start: int
    sample_stride: int
    inversion_steps: int
    has_inverted_latents: bool
    tensors: int
    parameters: int

    @classmethod
    def from_metadata(cls, path: Path, metadata: Dict[str, str], keys: List[str], parameters: int) -> "MotionInversionWeightsInfo":
        if metadata.get("vidguide_method") != METHOD:
            raise ValueError(
                f"'{path}' is not a Motion Inversion embeddings file (method: {metadata.get('vidguide_method') or 'none'}); "
                f"train one with 'motion-inversion train' (files go to models/{WEIGHTS_SUBDIR})."
            )
        if metadata.get("vidguide_format") != FORMAT_VERSION:
            raise ValueError(f"'{path}' has format {metadata.get('vidguide_format')}; this version reads format {FORMAT_VERSION}.")
        fps = metadata.get("fps")
        return cls(
            path=path, base_model=metadata.get("base_model", ""),
            base_model_fingerprint=metadata.get("base_model_fingerprint", ""), frames=int(metadata["frames"]),
            width=int(metadata["width"]), height=int(metadata["height"]), latent_width=int(metadata["latent_width"]),
            latent_height=int(metadata["latent_height"]), motion_layers=metadata.get("motion_layers", "lowest"),
            loss=metadata.get("loss", ""), prompt=metadata.get("prompt", ""),
            train_steps=int(metadata.get("train_steps", 0)), fps=float(fps) if fps else None,
            sample_start=int(metadata.get("sample_start", 0)), sample_stride=int(metadata.get("sample_stride", 1)),
            inversion_steps=int(metadata.get("inversion_steps", 0)), has_inverted_latents=INVERTED_LATENTS_KEY in keys,
            tensors=len([key for key in keys if key != INVERTED_LATENTS_KEY]), parameters=parameters,
        )


def save_motion_embeddings(unet: Any, path: str | Path, *, base_model: str, base_model_fingerprint: str, width: int,
                           height: int, prompt: str = "", loss: str = "", train_steps: int = 0,
                           fps: Optional[float] = None, sample_start: int = 0, sample_stride: int = 1,
                           inversion_steps: int = 0, inverted_latents: Any = None) -> Path:
    """Only the embeddings (float32, the trained frame count) and metadata; the file appears complete or not at all.

    ``inverted_latents`` (1, 4, frames, h, w): the clip's DDIM inversion, kept for the noise prior.
    """
    import torch
    from safetensors.torch import save

    from ..atomic import write_bytes_atomic

    state = _state(unet)
    tensors = {name: param.detach().to("cpu", torch.float32).contiguous() for name, param in motion_parameters(unet).items()}
    if inverted_latents is not None:
        tensors[INVERTED_LATENTS_KEY] = inverted_latents.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": "pt",
        "vidguide_method": METHOD,
        "vidguide_format": FORMAT_VERSION,
        "base_model": str(base_model),
        "base_model_fingerprint": str(base_model_fingerprint),
        "frames": str(state.frames),
        "width": str(int(width)),
        "height": str(int(height)),
        "latent_width": str(state.latent_width),
        "latent_height": str(state.latent_height),
        "motion_layers": state.layers,
        "loss": loss,
        "prompt": prompt,
        "train_steps": str(int(train_steps)),
        "fps": "" if fps is None else f"{float(fps):.6g}",
        "sample_start": str(int(sample_start)),
        "sample_stride": str(int(sample_stride)),
        "inversion_steps": str(int(inversion_steps)),
    }
    return write_bytes_atomic(path, save(tensors, metadata=metadata))


def read_weights_info(path: str | Path) -> MotionInversionWeightsInfo:
    """The metadata of an embeddings file, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"The Motion Inversion embeddings file '{path}' was not found (trained files go to models/{WEIGHTS_SUBDIR})."
        )
    try:
        with safe_open(str(path), framework="pt") as opened:
            metadata = opened.metadata() or {}
            keys = list(opened.keys())
            parameters = sum(int(np.prod(opened.get_slice(key).get_shape())) for key in keys if key != INVERTED_LATENTS_KEY)
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"Cannot read '{path}' as safetensors ({' '.join(str(error).split())}).") from error
    return MotionInversionWeightsInfo.from_metadata(path, metadata, keys, parameters)


def load_motion_embeddings(unet: Any, path: str | Path) -> tuple[MotionInversionWeightsInfo, Any]:
    """Inject embeddings shaped as in the file and load them strictly; returns the metadata and the inverted latents (or None)."""
    import torch
    from safetensors.torch import load_file

    info = read_weights_info(path)
    inject_motion_embeddings(unet, frames=info.frames, latent_height=info.latent_height, latent_width=info.latent_width,
                             layers=info.motion_layers, pixel_size=(info.width, info.height))
    expected = motion_parameters(unet)
    tensors = load_file(str(info.path), device="cpu")
    inverted = tensors.pop(INVERTED_LATENTS_KEY, None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        remove_motion_inversion(unet)
        raise ValueError(
            f"'{info.path}' does not fit this base model: {len(missing)} tensors missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}). Was it trained on another architecture?"
        )
    wrong = [name for name, tensor in tensors.items() if tuple(tensor.shape) != tuple(expected[name].shape)]
    if wrong:
        remove_motion_inversion(unet)
        raise ValueError(f"'{info.path}' has tensors of other shapes than this base model expects (e.g. {wrong[:2]}).")
    with torch.no_grad():
        for name, tensor in tensors.items():
            expected[name].copy_(tensor.to(expected[name].device, expected[name].dtype))
    return info, inverted


# --------------------------------------------------------------------------- base models


def _models_hint(models_dir: Optional[str | Path] = None) -> str:
    where = Path(models_dir) / MODELS_SUBDIR if models_dir is not None else Path("models") / MODELS_SUBDIR
    return (
        "Motion Inversion needs a text-to-video model in diffusers format (a folder with model_index.json, unet/ holding "
        "a UNet3DConditionModel, vae/, text_encoder/, tokenizer/ and scheduler/), e.g. cerspense/zeroscope_v2_576w: "
        f"put the folder in {where} and give its name, give its path, or give a Hugging Face id that is already in the "
        "local cache (huggingface-cli download cerspense/zeroscope_v2_576w)."
    )


def resolve_t2v_model(model: Optional[str | Path], models_dir: Optional[str | Path] = None) -> tuple[Path, str]:
    """The folder of a diffusers text-to-video model and the name to record: a path, a name under
    ``models_dir/text2video``, or a Hugging Face id already in the local cache (nothing is downloaded)."""
    text = str(model or "").strip()
    if not text:
        raise ValueError(f"No base model was given. {_models_hint(models_dir)}")
    candidates = [Path(text).expanduser()]
    if models_dir is not None:
        candidates.append(Path(models_dir) / MODELS_SUBDIR / text)
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / "model_index.json").is_file():
                raise ValueError(f"'{candidate}' is a folder without model_index.json. {_models_hint(models_dir)}")
            return candidate, candidate.name
        if candidate.is_file():
            raise ValueError(
                f"'{candidate}' is a file; Motion Inversion loads text-to-video models from diffusers folders, not single "
                f"checkpoints. {_models_hint(models_dir)}"
            )
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(text, local_files_only=True))
        except Exception:  # noqa: BLE001 - every hub failure means the same here: not in the cache
            pass
        else:
            if (folder / "model_index.json").is_file():
                return folder, text
    raise ValueError(f"The base model '{text}' was not found (nothing is downloaded). {_models_hint(models_dir)}")


def load_t2v_components(model: Optional[str | Path], *, models_dir: Optional[str | Path] = None,
                        torch_dtype: Any = None) -> Any:
    """A diffusers text-to-video model (UNet3DConditionModel, AutoencoderKL, CLIP) as ``SDComponents``, offline."""
    from diffusers import UNet3DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from .sd_loading import SDComponents, _load_folder_parts

    diffusers_logging.disable_progress_bar()
    folder, name = resolve_t2v_model(model, models_dir)
    missing = [part for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / part).is_dir()]
    if missing:
        raise ValueError(f"The diffusers folder '{folder}' lacks {', '.join(missing)}/. {_models_hint(models_dir)}")
    try:
        unet_class = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read '{folder / 'unet' / 'config.json'}': {error}") from error
    if unet_class != "UNet3DConditionModel":
        raise ValueError(
            f"'{folder}' has a {unet_class}, not a UNet3DConditionModel: it is not a ZeroScope/ModelScope-style "
            f"text-to-video model. {_models_hint(models_dir)}"
        )
    unet, vae, text_encoder, tokenizer, scheduler_config = _load_folder_parts(folder, UNet3DConditionModel)
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise ValueError(
            f"'{folder}': the text encoder is {text_encoder.config.hidden_size} wide but the UNet expects "
            f"{unet.config.cross_attention_dim}."
        )
    components = SDComponents(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
                              scheduler_config=_ddim_config_from(scheduler_config), source=name, kind="diffusers")
    for module in (components.unet, components.vae, components.text_encoder):
        module.eval().requires_grad_(False)
        if torch_dtype is not None:
            module.to(torch_dtype)
    return components


def _vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# --------------------------------------------------------------------------- tiny model (tests, demo)


def build_tiny_t2v_components(seed: int = 0) -> Any:
    """A tiny random-weight text-to-video model as ``SDComponents``: UNet3D 32/64 channels, tiny_models' VAE and CLIP.

    Real classes, tiny configs, ``torch.manual_seed`` before each component (diffusers' test
    style). The scheduler is DDIM with ZeroScope's noise schedule (SD's scaled-linear betas).
    """
    import torch
    from diffusers import DDIMScheduler, UNet3DConditionModel

    from ..tiny_models import TINY_TEXT_DIM, build_tiny_components
    from .sd_loading import SDComponents

    parts = build_tiny_components(seed)  # tokenizer, text encoder, VAE (8x down) from the SD tiny model
    torch.manual_seed(seed + 10)
    unet = UNet3DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    unet.eval().requires_grad_(False)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
    return SDComponents(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], unet=unet, vae=parts["vae"],
                        scheduler_config=_ddim_config_from(dict(scheduler.config)), source="tiny-t2v", kind="diffusers")


def save_tiny_t2v_model(directory: str | Path, seed: int = 0) -> Path:
    """Save the tiny text-to-video model as a diffusers folder (the layout of cerspense/zeroscope_v2_576w)."""
    from diffusers import DDIMScheduler

    directory = Path(directory)
    components = build_tiny_t2v_components(seed)
    directory.mkdir(parents=True, exist_ok=True)
    components.unet.save_pretrained(directory / "unet", safe_serialization=True)
    components.vae.save_pretrained(directory / "vae", safe_serialization=True)
    components.text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
    components.tokenizer.save_pretrained(directory / "tokenizer")
    DDIMScheduler.from_config(components.scheduler_config).save_pretrained(directory / "scheduler")
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "_diffusers_version": "0.31.0",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    (directory / "VIDGUIDE_RANDOM_WEIGHTS.txt").write_text(
        "This model has random weights. It exercises every code path but draws no meaningful videos.\n", encoding="utf-8"
    )
    return directory


# --------------------------------------------------------------------------- shared model helpers


def _encode_video(vae: Any, frames: np.ndarray, chunk: int, generator: Any) -> Any:
    """Scaled latents (1, 4, frames, h, w): one sample of each frame's VAE posterior (the original caches one sample)."""
    import torch

    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    with torch.no_grad():
        for begin in range(0, len(frames), chunk):
            pixels = torch.from_numpy(np.ascontiguousarray(frames[begin:begin + chunk])).permute(0, 3, 1, 2)
            pixels = pixels.to(device=device, dtype=dtype) / 127.5 - 1.0
            distribution = vae.encode(pixels).latent_dist
            means.append(distribution.mean.float().cpu())
            stds.append(distribution.std.float().cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    return (sample * float(vae.config.scaling_factor)).permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def _decode_video(vae: Any, latents: Any, chunk: int) -> np.ndarray:
    """RGB uint8 (frames, H, W, 3) of one video's latents (4, frames, h, w)."""
    return _decode_latents(vae, latents.permute(1, 0, 2, 3), chunk)


def _video_digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()[:16]


def _invert(unet: Any, latents: Any, context: Any, scheduler_config: Dict[str, Any], steps: int) -> Any:
    """DDIM inversion with the plain model (mode off), no guidance: the original's ``inverse_video``."""
    import torch

    from .tune_a_video import ddim_invert

    state = getattr(unet, _STATE_ATTRIBUTE, None)
    previous = state.mode if state is not None else None
    if state is not None:
        apply_motion_inversion(unet)
        state.mode = "off"
    try:
        with torch.no_grad():
            return ddim_invert(latents, lambda sample, t: unet(sample, t, encoder_hidden_states=context).sample,
                               scheduler_config=scheduler_config, num_inference_steps=steps)
    finally:
        if state is not None:
            state.mode = previous


# --------------------------------------------------------------------------- training


class MotionInversionTrainer:
    """Motion Inversion as a :class:`~.training.TrainingTask`: one video, one prompt, the chosen loss.

    The prompt embedding and one VAE latent sample of the clip are computed once (both
    models are frozen, as the original caches latents); every step draws the noise, one
    timestep for the clip and the loss's anchor frames from the run's generator.
    """

    method = METHOD

    def __init__(self, components: Any, frames: np.ndarray, prompt: str, settings: MotionInversionSettings, *,
                 fps: Optional[float] = None):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(_EMPTY_TRAINING_PROMPT)
        unet = components.unet
        if settings.gradient_checkpointing and not getattr(unet, "_supports_gradient_checkpointing", False):
            raise ValueError(
                f"gradient_checkpointing is on, but diffusers' {type(unet).__name__} (this diffusers version) does not "
                "support it; turn it off (the default). Only layers after the first embedded one keep activations."
            )
        self.components = components
        self.frames = np.ascontiguousarray(frames)
        if self.frames.ndim != 4 or self.frames.shape[0] < 2:
            raise ValueError(f"Motion Inversion trains on a clip of at least 2 frames; got shape {self.frames.shape}.")
        self.prompt = prompt
        self.settings = settings
        self.fps = fps
        self.noise_scheduler = components.noise_scheduler()
        self._prompt_embeddings = None
        self._latents = None
        scale = _vae_scale_factor(components.vae)
        height, width = int(self.frames.shape[1]), int(self.frames.shape[2])
        inject_motion_embeddings(unet, frames=self.num_frames, latent_height=height // scale, latent_width=width // scale,
                                 layers=settings.motion_layers, pixel_size=(width, height))
        if settings.loss == "debiased_hybrid":
            _add_spatial_loras(unet, settings.spatial_lora_rank, seed=settings.seed)

    @property
    def model(self) -> Any:
        return self.components.unet

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def before_run(self, device: Any) -> None:
        import torch

        unet = self.components.unet
        apply_motion_inversion(unet)
        set_motion_mode(unet, "train")
        unet.to(device)
        if self._prompt_embeddings is None:
            vae, text_encoder = self.components.vae, self.components.text_encoder
            vae.to(device)
            text_encoder.to(device)
            embeddings, _ = _encode_prompts(self.components.tokenizer, text_encoder, [self.prompt])
            self._prompt_embeddings = embeddings.float()
            # Its own seed: the cached latent sample is the same in a resumed run.
            generator = torch.Generator(device="cpu").manual_seed(self.settings.seed + 7)
            self._latents = _encode_video(vae, self.frames, 8, generator)
            # Both are frozen and done: give their memory to the UNet's training.
            vae.to("cpu")
            text_encoder.to("cpu")
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        self._prompt_embeddings = self._prompt_embeddings.to(device)

    def trainable_parameters(self) -> Dict[str, Any]:
        found = dict(motion_parameters(self.components.unet))
        found.update(_lora_parameters(self.components.unet))
        return found

    def learning_rate_scales(self) -> Dict[str, float]:
        """The spatial LoRAs train at spatial_learning_rate (hybrid); the embeddings at learning_rate."""
        scale = self.settings.spatial_learning_rate / self.settings.learning_rate
        return {name: scale for name in _lora_parameters(self.components.unet)}

    def dataset_size(self) -> int:
        return 1

    def _noisy_batch(self, generator: Any, device: Any, timestep: Optional[int] = None):
        import torch

        latents = self._latents.to(device)
        noise = torch.randn(self._latents.shape, generator=generator).to(device)
        if timestep is None:
            timestep = int(torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=generator))
        # One timestep for the clip: the original's batch is one video.
        timesteps = torch.full((1,), timestep, dtype=torch.long, device=device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return noisy, timesteps, target

    def training_loss(self, model: Any, item: int, generator: Any) -> Any:
        import torch
        import torch.nn.functional as F

        unet = self.components.unet
        state = _state(unet)
        device = self._prompt_embeddings.device
        noisy, timesteps, target = self._noisy_batch(generator, device)
        context = self._prompt_embeddings
        spatial_loss = None
        try:
            if self.settings.loss == "debiased_hybrid":
                use_lora = float(torch.rand((), generator=generator)) >= self.settings.spatial_skip_probability
                frame = int(torch.randint(0, self.num_frames, (1,), generator=generator))
                state.lora_scale = 1.0 if use_lora else 0.0
                if use_lora:
                    # One frame, appearance only: the LoRAs learn it, the motion embeddings stay out of this pass.
                    state.mode, state.lora_detached = "off", False
                    single = model(noisy[:, :, frame:frame + 1], timesteps, encoder_hidden_states=context).sample
                    spatial_loss = F.mse_loss(single.float(), target[:, :, frame:frame + 1].float(), reduction="mean")
                # The temporal pass sees the LoRAs but does not train them (the original steps them before this backward).
                state.mode, state.lora_detached = "train", True
            prediction = model(noisy, timesteps, encoder_hidden_states=context).sample
        finally:
            state.mode, state.lora_detached = "train", False
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        if self.settings.loss in ("debiased_temporal", "debiased_hybrid"):
            anchor = int(torch.randint(0, self.num_frames, (1,), generator=generator))
            prediction_debiased = DEBIAS_ALPHA * prediction.float() - DEBIAS_BETA * prediction[:, :, anchor:anchor + 1].float()
            target_debiased = DEBIAS_ALPHA * target.float() - DEBIAS_BETA * target[:, :, anchor:anchor + 1].float()
            loss = loss + F.mse_loss(prediction_debiased, target_debiased, reduction="mean")
        if spatial_loss is not None:
            # Its gradient reaches the LoRAs; the reported value stays the temporal loss, as the original logs it.
            loss = loss + (spatial_loss - spatial_loss.detach())
        return loss

    def eval_loss(self, num_timesteps: int = 5, seed: int = 1234) -> float:
        """The plain noise MSE at ``num_timesteps`` evenly spread timesteps with fixed noise (LoRAs off)."""
        import torch
        import torch.nn.functional as F

        unet = self.components.unet
        if self._prompt_embeddings is None:
            self.before_run(unet.device)
        apply_motion_inversion(unet)
        state = _state(unet)
        state.mode, state.lora_scale = "train", 0.0
        device = unet.device
        generator = torch.Generator(device="cpu").manual_seed(seed)
        total = self.noise_scheduler.config.num_train_timesteps
        losses = []
        was_training = unet.training
        unet.eval()
        try:
            with torch.no_grad():
                for timestep in np.linspace(total * 0.05, total * 0.95, num_timesteps).round().astype(int):
                    noisy, timesteps, target = self._noisy_batch(generator, device, int(timestep))
                    context = self._prompt_embeddings.to(device)
                    prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample
                    losses.append(F.mse_loss(prediction.float(), target.float()).item())
        finally:
            state.lora_scale = 1.0
            unet.train(was_training)
        return float(np.mean(losses))

    def fingerprint(self) -> Dict[str, Any]:
        return {
            "base_model": self.components.fingerprint,
            "frames": self.num_frames,
            "width": int(self.frames.shape[2]),
            "height": int(self.frames.shape[1]),
            "video": _video_digest(self.frames),
            "prompt": hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:16],
            "loss": self.settings.loss,
            "motion_layers": self.settings.motion_layers,
            "spatial_lora_rank": self.settings.spatial_lora_rank if self.settings.loss == "debiased_hybrid" else None,
        }

    def inverted_latents(self, device: Any = None) -> Any:
        """The clip's DDIM inversion with the plain model and the empty prompt (the original's cached inversion noise)."""
        import torch

        from .training import resolve_mixed_precision

        unet = self.components.unet
        device = torch.device(device) if device is not None else unet.device
        empty, _ = _encode_prompts(self.components.tokenizer, self.components.text_encoder, [""])
        precision, _ = resolve_mixed_precision(self.settings.mixed_precision, device)
        autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        # The same precision as training on a GPU (an fp32 inversion of ZeroScope at 24 frames is slow); float32 on the CPU.
        autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with autocast:
            inverted = _invert(unet, self._latents.to(device), empty.to(device).float(), self.components.scheduler_config,
                               self.settings.inversion_steps)
        return inverted.float().cpu()

    def save_result(self, output_dir: Path, steps_done: int) -> Path:
        inverted = self.inverted_latents() if self.settings.inversion_steps else None
        return save_motion_embeddings(
            self.components.unet, Path(output_dir) / WEIGHTS_FILENAME, base_model=self.components.name,
            base_model_fingerprint=self.components.fingerprint, width=int(self.frames.shape[2]),
            height=int(self.frames.shape[1]), prompt=self.prompt, loss=self.settings.loss, train_steps=steps_done,
            fps=self.fps, sample_start=self.settings.sample_start, sample_stride=self.settings.sample_stride,
            inversion_steps=self.settings.inversion_steps, inverted_latents=inverted,
        )

    def after_run(self) -> None:
        # The spatial LoRAs are training scaffolding: inference uses the motion embeddings alone.
        unet = self.components.unet
        if getattr(unet, _STATE_ATTRIBUTE, None) is not None:
            _remove_spatial_loras(unet)
        unet.eval()


def train_motion_inversion(
    video: Any,
    prompt: str,
    settings: Optional[MotionInversionSettings] = None,
    *,
    model: Optional[str | Path] = None,
    output_dir: str | Path,
    components: Any = None,
    models_dir: Optional[str | Path] = None,
    device: Any = None,
    resume: Union[str, Path, None] = None,
    progress: Optional[Callable[[Any], None]] = None,
    should_interrupt: Optional[Callable[[], bool]] = None,
    stop_after_step: Optional[int] = None,
) -> MotionInversionTrainResult:
    """Learn motion embeddings from one video and its prompt; they go to ``output_dir/motion_inversion.safetensors``.

    Args:
        video: a video file, or RGB uint8 frames; ``settings`` picks frames and size from it.
        prompt: what the video shows (original: "A car turnaround in a city street").
        model: the text-to-video base model (a diffusers folder, a name under
            ``models_dir/text2video``, or a cached Hugging Face id). Or pass loaded ``components``.
        output_dir: the embeddings and ``checkpoints/`` go here.
        resume: ``"latest"`` continues the newest checkpoint in ``output_dir``.
        progress: called with a :class:`~.training.TrainingProgress` after every step.
        should_interrupt: checked after every step; a checkpoint is saved before stopping.
    """
    from .training import train_on_video

    settings = settings or MotionInversionSettings()
    return train_on_video(
        video, prompt, settings, empty_prompt_message=_EMPTY_TRAINING_PROMPT,
        load_components=lambda: load_t2v_components(model, models_dir=models_dir),
        make_trainer=lambda loaded, clip: MotionInversionTrainer(loaded, clip.frames, prompt, settings, fps=clip.fps),
        components=components, output_dir=output_dir, device=device, resume=resume, progress=progress,
        should_interrupt=should_interrupt, stop_after_step=stop_after_step,
    )


# --------------------------------------------------------------------------- generation


class MotionInversionInterrupted(Exception):
    """The user interrupted a generation; nothing was written."""


@dataclass
class MotionInversionPipelineOutput:
    """``videos[k]`` is prompt k's result: RGB uint8 ``(frames, height, width, 3)``, or latents (``output_type="latent"``)."""

    videos: List[Any]
    start_latents: Any
    notes: List[str] = field(default_factory=list)


class MotionInversionPipeline:
    """Text-to-video sampling (own DDIM loop) with motion embeddings, for new prompts.

    ``components`` is an ``SDComponents`` holding a ``UNet3DConditionModel``; without
    :meth:`load_weights` it samples the plain base model.
    """

    _callback_tensor_inputs = ["latents"]

    def __init__(self, components: Any, *, device: Any = None, dtype: Any = None):
        self.components = components
        self.device, self.dtype = _place_components(components, device, dtype)
        self.weights_info: Optional[MotionInversionWeightsInfo] = None
        self.inverted_latents = None

    @property
    def unet(self) -> Any:
        return self.components.unet

    @property
    def vae_scale_factor(self) -> int:
        return _vae_scale_factor(self.components.vae)

    def load_weights(self, path: str | Path) -> MotionInversionWeightsInfo:
        self.weights_info, self.inverted_latents = load_motion_embeddings(self.unet, path)
        self.unet.to(self.device, self.dtype)
        return self.weights_info

    # 1. Input checks

    def check_inputs(self, prompt: Any, *, num_frames: int, height: int, width: int, num_inference_steps: int,
                     guidance_scale: float, noise_prior: float, debias: str, decode_chunk_size: int,
                     latents: Any = None, generator: Any = None,
                     callback_on_step_end_tensor_inputs: Optional[Sequence[str]] = None) -> List[str]:
        """Validate one call; return the prompts as a list. Raises ``ValueError`` that says what to do."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts:
            raise ValueError("No prompt was given: give at least one prompt, e.g. 'a skateboard slides along a city lane'.")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise ValueError(f"Prompt {index} is a {type(text).__name__}; prompts must be strings.")
            if not text.strip():
                raise ValueError("A prompt is empty: describe the new subject that should make the trained motion.")
        if not 1 <= num_frames <= 4 * MAX_FRAMES:
            raise ValueError(f"num_frames must be between 1 and {4 * MAX_FRAMES}, got {num_frames}.")
        _check_multiple_of_8(width, "width")
        _check_multiple_of_8(height, "height")
        info = self.weights_info
        if info is not None and (width, height) != (info.width, info.height):
            raise ValueError(
                f"These motion embeddings were trained at {info.width}x{info.height}; the motion value embedding holds "
                f"one vector per latent cell, so it is tied to that resolution. Generate at {info.width}x{info.height} "
                f"(asked: {width}x{height}); other sizes would need a spatial interpolation of the value embeddings, "
                "which Motion Inversion does not define."
            )
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must not be negative, got {guidance_scale}.")
        if not 0.0 <= noise_prior <= 1.0:
            raise ValueError(f"noise_prior must be between 0 (plain noise) and 1, got {noise_prior}.")
        if debias not in DEBIAS_MODES:
            raise ValueError(f"debias must be one of {list(DEBIAS_MODES)}, got {debias!r}.")
        if decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be at least 1, got {decode_chunk_size}.")
        if latents is None and generator is None:
            raise ValueError(
                "Pass a torch.Generator (e.g. torch.Generator().manual_seed(0)) for the starting noise; "
                "the global random state is never used."
            )
        if latents is not None:
            expected = (1, self.unet.config.in_channels, num_frames, height // self.vae_scale_factor,
                        width // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents have shape {tuple(latents.shape)}; this call needs {expected}.")
        names = list(callback_on_step_end_tensor_inputs or [])
        unknown = [name for name in names if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}, which this pipeline does not provide; "
                f"choose from {self._callback_tensor_inputs}."
            )
        return prompts

    # 2. Encoders

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[Any, List[str]]:
        embeddings, notes = _encode_prompts(self.components.tokenizer, self.components.text_encoder, prompts)
        return embeddings.to(self.dtype), notes

    def decode_latents(self, latents: Any, decode_chunk_size: int = 8) -> np.ndarray:
        """RGB uint8 (frames, H, W, 3) of latents (1, 4, frames, h, w)."""
        return _decode_video(self.components.vae, latents[0], decode_chunk_size)

    # 3. Starting latents

    def prepare_latents(self, num_frames: int, height: int, width: int, generator: Any,
                        noise_prior: float) -> tuple[Any, List[str]]:
        """Noise from ``generator``, blended with the stored inversion when it fits (the original's BlendInit)."""
        import torch

        shape = (1, self.unet.config.in_channels, num_frames, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        noise = torch.randn(shape, generator=generator)
        notes: List[str] = []
        if noise_prior > 0:
            inverted = self.inverted_latents
            if inverted is None:
                notes.append("These embeddings hold no inverted clip (inversion_steps was 0): starting from plain noise.")
            elif tuple(inverted.shape) != shape:
                notes.append(
                    f"The stored inverted clip has {inverted.shape[2]} frames; generating {num_frames}: the noise prior "
                    "needs the trained frame count, so this starts from plain noise."
                )
            else:
                noise = math.sqrt(noise_prior) * inverted.float() + math.sqrt(1.0 - noise_prior) * noise
        return noise.to(self.device, self.dtype), notes

    # 4. The call

    def __call__(
        self,
        prompt: Union[str, Sequence[str]],
        *,
        negative_prompt: str = "",
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 12.0,
        noise_prior: float = 0.5,
        debias: str = "frame_difference",
        generator: Any = None,
        latents: Any = None,
        decode_chunk_size: int = 8,
        output_type: str = "np",
        callback_on_step_end: Optional[Callable[[Any, int, Any, Dict[str, Any]], Optional[Dict[str, Any]]]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> MotionInversionPipelineOutput:
        """Generate one video per prompt with the loaded motion.

        Args:
            prompt: the new prompt, or a list of them: one video each, all from the same
                starting latents.
            negative_prompt: the unconditional prompt of classifier-free guidance.
            num_frames: frames to generate (default: as trained, else 24); other counts
                interpolate the embeddings along time.
            height, width: the size (default and only choice with embeddings: as trained).
            num_inference_steps: DDIM steps (original: 30).
            guidance_scale: classifier-free guidance (original: 12); 1 or less: off.
            noise_prior: share of the stored inverted clip in the start (BlendInit, 0.5).
            debias: ``frame_difference`` (object/hybrid motion), ``drop_value`` (camera
                motion) or ``none``.
            generator: a ``torch.Generator`` for the starting noise.
            latents: starting latents (1, 4, frames, h, w) instead of drawn ones.
            decode_chunk_size: frames the VAE decodes at once.
            output_type: ``"np"`` (uint8 frames) or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, timestep, tensors)`` after each step, with
                the tensors named in ``callback_on_step_end_tensor_inputs`` (``["latents"]``);
                a returned ``{"latents": ...}`` replaces them.

        Returns:
            :class:`MotionInversionPipelineOutput`.
        """
        import torch

        from .tune_a_video import ddim_sample

        info = self.weights_info
        num_frames = num_frames or (info.frames if info else 24)
        height = height or (info.height if info else 320)
        width = width or (info.width if info else 576)
        # 1. Check inputs.
        prompts = self.check_inputs(
            prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, noise_prior=noise_prior, debias=debias, decode_chunk_size=decode_chunk_size,
            latents=latents, generator=generator, callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}.")
        notes: List[str] = []
        if info is not None and info.frames != num_frames:
            notes.append(f"The embeddings were trained on {info.frames} frames; interpolated to {num_frames}.")

        # 2. Processors and hooks may have been reset since the last run: re-apply them.
        if getattr(self.unet, _STATE_ATTRIBUTE, None) is not None:
            apply_motion_inversion(self.unet)
            set_motion_mode(self.unet, _DEBIAS_TO_MODE[debias])

        # 3. Starting latents.
        if latents is None:
            latents, start_notes = self.prepare_latents(num_frames, height, width, generator, noise_prior)
            notes.extend(start_notes)
        start = latents.to(self.device, self.dtype)

        # 4. Sample each prompt from the same start.
        use_guidance = guidance_scale > 1.0
        negative, negative_notes = self.encode_prompt([negative_prompt])
        notes.extend(negative_notes)
        videos = []
        for text in prompts:
            positive, prompt_notes = self.encode_prompt([text])
            notes.extend(prompt_notes)
            context = torch.cat([negative, positive]) if use_guidance else positive

            def predict(sample, timestep, context=context):
                model_input = torch.cat([sample, sample]) if use_guidance else sample
                output = self.unet(model_input, timestep, encoder_hidden_states=context).sample
                if use_guidance:
                    unconditional, conditional = output.chunk(2)
                    output = unconditional + guidance_scale * (conditional - unconditional)
                return output

            def on_step_end(index, timestep, tensors):
                if callback_on_step_end is None:
                    return None
                offered = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                return callback_on_step_end(self, index, timestep, offered)

            with torch.no_grad():
                sampled = ddim_sample(start.clone(), predict, scheduler_config=self.components.scheduler_config,
                                      num_inference_steps=num_inference_steps, callback_on_step_end=on_step_end)
            # 5. Decode.
            videos.append(sampled if output_type == "latent" else self.decode_latents(sampled, decode_chunk_size))
        return MotionInversionPipelineOutput(videos=videos, start_latents=start, notes=notes)


@dataclass
class MotionInversionGenerateResult:
    videos: List[np.ndarray]
    prompts: List[str]
    output_paths: List[Path]
    fps: float
    weights: MotionInversionWeightsInfo
    notes: List[str]
    seconds: Dict[str, float]


def generate_motion_inversion(
    prompts: Union[str, Sequence[str]],
    weights: str | Path,
    settings: Optional[MotionInversionGenerateSettings] = None,
    *,
    model: Optional[str | Path] = None,
    components: Any = None,
    models_dir: Optional[str | Path] = None,
    device: Any = None,
    output_path: Optional[str | Path] = None,
    fps: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    should_interrupt: Optional[Callable[[], bool]] = None,
) -> MotionInversionGenerateResult:
    """Generate videos of new prompts with trained motion embeddings.

    Frames and size default to the weights' metadata. With ``output_path`` (``.mp4``) each
    video is written there (``name-1.mp4``, ... for several prompts). ``progress(step, steps)``
    counts sampling steps over all prompts; ``should_interrupt()`` is checked after each, and a
    true answer raises :class:`MotionInversionInterrupted` before anything is written.
    """
    import torch

    settings = settings or MotionInversionGenerateSettings()
    started = time.perf_counter()
    # 1. Check inputs: the weights' metadata decides the defaults.
    info = read_weights_info(weights)
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    paths = _output_paths(output_path, max(1, len(prompt_list)))
    width, height = settings.width or info.width, settings.height or info.height
    if (width, height) != (info.width, info.height):
        raise ValueError(
            f"These motion embeddings were trained at {info.width}x{info.height}; the motion value embedding is tied to "
            f"that resolution, so generate at {info.width}x{info.height} (asked: {width}x{height})."
        )

    # 2. Load the base model and the embeddings.
    if components is None:
        components = load_t2v_components(model, models_dir=models_dir)
    notes = list(components.notes)
    notes.extend(filter(None, [_base_model_note(info, components, "These embeddings")]))
    device, dtype = _run_device_and_dtype(device, settings.half_precision)
    pipeline = MotionInversionPipeline(components, device=device, dtype=dtype)
    pipeline.load_weights(info.path)
    on_step_end = _counting_step_callback(settings.num_inference_steps * len(prompt_list), progress,
                                          should_interrupt, MotionInversionInterrupted)

    # 3. Sample.
    output = pipeline(
        prompt_list, negative_prompt=settings.negative_prompt, num_frames=settings.frames or info.frames,
        height=height, width=width, num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale, noise_prior=settings.noise_prior, debias=settings.debias,
        generator=torch.Generator(device="cpu").manual_seed(settings.seed),
        decode_chunk_size=settings.decode_chunk_size, callback_on_step_end=on_step_end,
    )
    notes.extend(output.notes)

    # 4. Write the videos (each file appears complete or not at all).
    out_fps = fps or info.fps or 8.0
    if paths:
        from ..video_io import write_video

        for path, frames in zip(paths, output.videos):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, frames, Fraction(out_fps).limit_denominator(1001))
    return MotionInversionGenerateResult(
        videos=output.videos, prompts=prompt_list, output_paths=paths, fps=float(out_fps), weights=info, notes=notes,
        seconds={"total_s": time.perf_counter() - started},
    )


# --------------------------------------------------------------------------- command line

CLI_COMMAND = "motion-inversion"


def _add_subcommands(commands: Any) -> None:
    from ..cli import add_model_options

    train = commands.add_parser(
        "train", help="learn motion embeddings from one video on a text-to-video model",
        description="Train Motion Inversion on VIDEO described by --prompt; writes OUT/motion_inversion.safetensors and "
        "resumable checkpoints in OUT/checkpoints (continue with --resume latest). Several GPUs: "
        "accelerate launch -m lib_vidguide motion-inversion train ...",
    )
    train.add_argument("video", help="the source video file")
    train.add_argument("--model", required=True, help="text-to-video base model: a diffusers folder (e.g. ZeroScope), "
                       f"a name under MODELS_DIR/{MODELS_SUBDIR}, or a Hugging Face id already cached")
    train.add_argument("--prompt", required=True, help="what the video shows, e.g. 'a car turns around in a city street'")
    train.add_argument("--out", required=True, help="output folder (embeddings and checkpoints)")
    train.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="continue from the newest checkpoint in OUT (or the given checkpoint folder)")
    _add_common_options(train)
    add_model_options(train, MotionInversionSettings)
    train.set_defaults(handler=run_train_cli)

    generate = commands.add_parser(
        "generate", help="generate videos of new prompts with trained motion embeddings",
        description="Sample --prompt with the trained motion; writes OUTPUT.mp4 (OUTPUT-1.mp4, ... for several prompts).",
    )
    generate.add_argument("output", help="the generated video (.mp4)")
    generate.add_argument("--model", required=True, help="the text-to-video base model the embeddings were trained on")
    generate.add_argument("--weights", required=True, help="the trained motion_inversion.safetensors")
    generate.add_argument("--prompt", required=True, action="append", help="the new prompt (repeat for several videos)")
    generate.add_argument("--fps", type=float, default=None, help="frame rate of the output (default: the trained clip's)")
    generate.add_argument("--frames-dir", default=None, help="also write each video's frames as PNGs here")
    _add_common_options(generate)
    add_model_options(generate, MotionInversionGenerateSettings)
    generate.set_defaults(handler=run_generate_cli)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", default=None,
                        help=f"the WebUI's models folder (--model may name a folder in its {MODELS_SUBDIR}/)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``motion-inversion train|generate`` to an argparse sub-command set; dispatch with ``args.handler(args)``."""
    parser = subparsers.add_parser(
        CLI_COMMAND, help="Motion Inversion: learn a video's motion on a text-to-video model, then generate new subjects"
    )
    commands = parser.add_subparsers(dest="motion_inversion_command", required=True)
    _add_subcommands(commands)
    return parser


def run_train_cli(args: argparse.Namespace) -> int:
    """``motion-inversion train``: 0 when done, 2 with one ``error:`` line for bad input, 130 when interrupted."""
    return run_train_command(args, MotionInversionSettings, train_motion_inversion)


def run_generate_cli(args: argparse.Namespace) -> int:
    """``motion-inversion generate``: 0 when done, 2 with one ``error:`` line for bad input."""
    return run_video_command(args, MotionInversionGenerateSettings, lambda settings, progress: generate_motion_inversion(
        args.prompt, args.weights, settings, model=args.model, models_dir=args.models_dir, device=args.device,
        output_path=args.output, fps=args.fps, progress=progress,
    ))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lib_vidguide.pipelines.motion_inversion train|generate ...``."""
    parser = argparse.ArgumentParser(prog="python -m lib_vidguide.pipelines.motion_inversion",
                                     description="Motion Inversion without the WebUI")
    commands = parser.add_subparsers(dest="motion_inversion_command", required=True)
    _add_subcommands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
