"""Tune-A-Video (Wu et al., arXiv 2212.11565) on a stock diffusers ``UNet2DConditionModel``.

The original (showlab/Tune-A-Video, diffusers 0.11) forks the UNet into a pseudo-3D one.
Here the stock SD 1.x UNet is *inflated* in place, without a fork (PIPELINES.md §2.2):

1. **Frames are folded into the batch**: the UNet sees ``(videos·frames, 4, h, w)``; every
   2D convolution is then exactly TAV's per-frame ``InflatedConv3d``.
2. **Sparse-causal self-attention**: :class:`SparseCausalAttnProcessor` on every
   ``attn1``: frame *i*'s queries attend to the keys and values of frame 0 and frame *i−1*.
3. **Temporal attention**: each ``BasicTransformerBlock`` gets ``attn_temp`` (an
   ``Attention`` over frames) and ``norm_temp`` as real submodules, applied by a forward
   hook after the block's attn1 → attn2 → ff (TAV's order). ``attn_temp.to_out`` has its
   weight **and bias** zeroed (TAV zeroes only the weight; its random bias makes the
   inflated model differ from the image model at step 0, PIPELINES.md §2.3).
4. **GroupNorm**: per frame by default, so the inflated UNet equals the image model on a
   still clip. ``video_groupnorm=True`` restores TAV's statistics over all frames (the
   original applies ``nn.GroupNorm`` to 5-D tensors) by a class swap that keeps the
   state-dict keys; it changes outputs from step 0, as TAV does.

Training (``attn1.to_q``, ``attn2.to_q`` and ``attn_temp`` only, TAV's defaults: lr 3e-5,
500 steps, 512², 24 frames at stride 2) goes through the shared loop in
:mod:`.training`. Only the trained tensors are saved, as safetensors with metadata (base
model, frames, size, ...); loading inflates a fresh UNet and takes them strictly.

Editing: DDIM inversion of the video's latents with the empty prompt and no guidance
(TAV's ``ddim_inversion``; ``DDIMInverseScheduler`` pairs exactly with ``DDIMScheduler``),
then DDIM sampling with the edited prompt(s) and classifier-free guidance (12.5, 50
steps). The loop is this module's own (``StableDiffusionPipeline`` cannot be imported with
the WebUI's transformers from diffusers 0.32 on, PIPELINES.md §6).

**Processors and hooks are global state on the UNet**: ``set_attn_processor``,
``enable_xformers_memory_efficient_attention`` or another extension silently replace them.
Every run (training, inversion, sampling) therefore re-applies them first
(:func:`apply_tune_a_video`). ``unet.set_default_attn_processor()`` raises on an inflated UNet
(diffusers refuses unknown processor classes) instead of dropping them.

Command line: ``python -m lib_vidguide tune-a-video train|edit ...`` once wired into
:mod:`lib_vidguide.cli` through :func:`register_cli`, or directly
``python -m lib_vidguide.pipelines.tune_a_video train|edit ...``.

torch, diffusers and transformers are imported inside functions and classes are built
lazily: importing this module costs nothing at WebUI start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from pydantic import Field

from ..settings import StrictModel, field_check
from .cli_support import run_train_command, run_video_command
from .sd_loading import (
    _base_model_note, _counting_step_callback, _decode_latents, _encode_prompts, _output_paths, _place_components,
    _run_device_and_dtype,
)
from .training import TrainingSettings
from .training import VideoTrainResult as TuneAVideoTrainResult  # one result type for both training methods

logger = logging.getLogger("vidguide")

__all__ = [
    "FORMAT_VERSION",
    "METHOD",
    "TRAINABLE_MODULES",
    "WEIGHTS_FILENAME",
    "WEIGHTS_SUBDIR",
    "SparseCausalAttnProcessor",
    "TuneAVideoEditResult",
    "TuneAVideoEditSettings",
    "TuneAVideoInterrupted",
    "TuneAVideoPipeline",
    "TuneAVideoPipelineOutput",
    "TuneAVideoSettings",
    "TuneAVideoTrainResult",
    "TuneAVideoTrainer",
    "TuneAVideoWeightsInfo",
    "VideoClip",
    "apply_tune_a_video",
    "ddim_invert",
    "ddim_sample",
    "edit_tune_a_video",
    "inflate_unet",
    "is_tune_a_video_applied",
    "load_tune_a_video_weights",
    "main",
    "read_weights_info",
    "register_cli",
    "sample_video_frames",
    "save_tune_a_video_weights",
    "set_num_frames",
    "train_tune_a_video",
    "trainable_parameters",
]

METHOD = "tune-a-video"
FORMAT_VERSION = "1"
# Trained artefacts live in <WebUI models>/vidguide-tune-a-video/.
WEIGHTS_SUBDIR = "vidguide-tune-a-video"
WEIGHTS_FILENAME = "tune_a_video.safetensors"
# TAV's trainable_modules: module names ending in these (attn_temp: all of its parameters).
TRAINABLE_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")
# Stable Diffusion's VAE works on 8x8 pixel blocks. The UNet's own downsamplings need no
# larger multiple: diffusers' UNet2DConditionModel forwards odd sizes to its upsamplers.
SIZE_MULTIPLE = 8
MAX_FRAMES = 128
_STATE_ATTRIBUTE = "_vidguide_tune_a_video"

ProgressCallback = Callable[[int, int], None]
_EMPTY_TRAINING_PROMPT = (
    "The training prompt is empty: describe the video (e.g. 'a man is skiing'); edits change this prompt."
)


# --------------------------------------------------------------------------- settings


def _check_multiple_of_8(value: Optional[int], what: str) -> Optional[int]:
    if value is not None and value % SIZE_MULTIPLE:
        lower = max(SIZE_MULTIPLE, value - value % SIZE_MULTIPLE)
        raise ValueError(
            f"{what} {value} is not a multiple of {SIZE_MULTIPLE}: Stable Diffusion's VAE works on 8x8 pixel blocks. "
            f"Use {lower} or {lower + SIZE_MULTIPLE}."
        )
    return value


class TuneAVideoSettings(TrainingSettings):
    """Training on one video. Defaults: Tune-A-Video's configs/man-skiing.yaml (USERS.md §B.5)."""

    frames: int = Field(24, ge=2, le=MAX_FRAMES, description="Frames to train on (TAV: 24; 8 fits 24 GB comfortably).")
    sample_start: int = Field(0, ge=0, description="First source frame (0-based).")
    sample_stride: int = Field(2, ge=1, le=1000, description="Take every n-th source frame (TAV: 2).")
    width: int = Field(512, ge=64, le=2048, description="Training width in pixels (multiple of 8; SD 1.x: 512).")
    height: int = Field(512, ge=64, le=2048, description="Training height in pixels (multiple of 8; SD 1.x: 512).")
    video_groupnorm: bool = Field(
        False,
        description="GroupNorm statistics over all frames, as the original TAV; "
        "off (default) keeps the base model exact per frame.",
    )
    learning_rate: float = Field(3e-5, gt=0.0, le=1.0, description="AdamW learning rate (TAV: 3e-5).")
    max_train_steps: int = Field(500, ge=1, le=100_000, description="Optimizer steps (TAV: 300-500).")

    @field_check("width")
    def _width_multiple(cls, value: int) -> int:  # noqa: N805
        return _check_multiple_of_8(value, "width")

    @field_check("height")
    def _height_multiple(cls, value: int) -> int:  # noqa: N805
        return _check_multiple_of_8(value, "height")


class TuneAVideoEditSettings(StrictModel):
    """Editing a video with trained weights. Defaults: TAV's inference (50 DDIM steps, guidance 12.5, inversion 50)."""

    num_inference_steps: int = Field(50, ge=1, le=1000, description="DDIM sampling steps.")
    guidance_scale: float = Field(12.5, ge=0.0, le=50.0, description="Classifier-free guidance; 1 or less turns it off.")
    inversion_steps: int = Field(
        50, ge=0, le=1000, description="DDIM inversion steps; 0 = start from random noise instead of the inverted video."
    )
    inversion_prompt: str = Field("", description="Prompt of the inversion (TAV: empty).")
    negative_prompt: str = Field("", description="Negative prompt of the guided sampling.")
    seed: int = Field(33, ge=0, le=2**63 - 1, description="Seed of the starting noise when inversion_steps is 0.")
    frames: Optional[int] = Field(None, ge=2, le=MAX_FRAMES, description="Frames to edit; empty = as trained.")
    sample_start: Optional[int] = Field(None, ge=0, description="First source frame; empty = as trained.")
    sample_stride: Optional[int] = Field(None, ge=1, le=1000, description="Every n-th source frame; empty = as trained.")
    width: Optional[int] = Field(None, ge=64, le=2048, description="Width (multiple of 8); empty = as trained.")
    height: Optional[int] = Field(None, ge=64, le=2048, description="Height (multiple of 8); empty = as trained.")
    decode_chunk_size: int = Field(8, ge=1, le=MAX_FRAMES, description="Frames the VAE encodes/decodes at once.")
    half_precision: bool = Field(True, description="GPU only: fp16 weights for editing (CPU runs use float32).")

    @field_check("width")
    def _width_multiple(cls, value: Optional[int]) -> Optional[int]:  # noqa: N805
        return _check_multiple_of_8(value, "width")

    @field_check("height")
    def _height_multiple(cls, value: Optional[int]) -> Optional[int]:  # noqa: N805
        return _check_multiple_of_8(value, "height")


# --------------------------------------------------------------------------- inflation


@dataclass
class _InflationState:
    """Kept on the UNet (``unet._vidguide_tune_a_video``): what the processors and hooks read."""

    num_frames: int = 1
    video_groupnorm: bool = False
    hook_handles: List[Any] = field(default_factory=list)


def _state(unet: Any) -> _InflationState:
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        raise ValueError("This UNet is not inflated for Tune-A-Video; call inflate_unet(unet) first.")
    return state


def set_num_frames(unet: Any, num_frames: int) -> None:
    """How many consecutive batch entries form one video, for the next forward passes."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    _state(unet).num_frames = int(num_frames)


class SparseCausalAttnProcessor:
    """Self-attention where frame *i* attends to frames 0 and *i−1* (TAV's ``SparseCausalAttention``).

    The batch holds ``videos × frames`` entries, frames consecutive; classifier-free
    guidance doubles the videos, which is why the count of videos is ``batch // frames``.
    Frame 0 attends to frame 0 twice: duplicated keys leave softmax attention unchanged,
    so a still clip (or a single frame) gives exactly the image model's self-attention.
    Not an ``nn.Module``: it holds no weights, so state dicts stay the UNet's own.
    """

    def __init__(self, state: _InflationState):
        self.state = state

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if attention_mask is not None:
            raise ValueError("Sparse-causal attention takes no attention mask (Stable Diffusion's self-attention has none).")
        if hidden_states.ndim != 3:
            raise ValueError(f"Sparse-causal attention expects (batch, tokens, channels), got {tuple(hidden_states.shape)}.")
        frames = self.state.num_frames
        batch, tokens, _ = hidden_states.shape
        if batch % frames:
            raise ValueError(
                f"The UNet got a batch of {batch}, not a multiple of the {frames} frames it was told about; "
                "call set_num_frames(unet, frames) with the clip's frame count."
            )
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)

        videos = batch // frames
        first = torch.zeros(frames, dtype=torch.long, device=key.device)
        previous = (torch.arange(frames, device=key.device) - 1).clamp(min=0)

        def sparse(tensor):
            per_frame = tensor.view(videos, frames, tensor.shape[1], tensor.shape[2])
            both = torch.cat([per_frame[:, first], per_frame[:, previous]], dim=2)
            return both.reshape(batch, 2 * tensor.shape[1], tensor.shape[2])

        key, value = sparse(key), sparse(value)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _temporal_hook(state: _InflationState):
    """x + attn_temp(norm_temp(x)) over the frames of each token, after the whole block (TAV's order)."""

    def hook(block: Any, _inputs: Any, output: Any) -> Any:
        frames = state.num_frames
        batch, tokens, channels = output.shape
        videos = batch // frames
        over_frames = output.view(videos, frames, tokens, channels).transpose(1, 2).reshape(videos * tokens, frames, channels)
        over_frames = block.attn_temp(block.norm_temp(over_frames)) + over_frames
        return over_frames.view(videos, tokens, frames, channels).transpose(1, 2).reshape(batch, tokens, channels)

    return hook


_VIDEO_GROUPNORM_CLASS: Optional[type] = None


def _build_video_groupnorm_class() -> type:
    import torch
    import torch.nn.functional as F

    class VideoGroupNorm(torch.nn.GroupNorm):
        """GroupNorm whose statistics span all frames of a video (TAV applies GroupNorm to (b, c, f, h, w))."""

        def forward(self, input):  # noqa: A002 - nn.GroupNorm's own argument name
            state = getattr(self, _STATE_ATTRIBUTE, None)
            frames = state.num_frames if state is not None else 1
            if frames <= 1 or input.ndim != 4:
                return super().forward(input)
            batch, channels, height, width = input.shape
            video = input.view(batch // frames, frames, channels, height, width).transpose(1, 2)
            normed = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
            return normed.transpose(1, 2).reshape(batch, channels, height, width)

    VideoGroupNorm.__module__ = __name__
    VideoGroupNorm.__qualname__ = "VideoGroupNorm"
    return VideoGroupNorm


def __getattr__(name: str) -> Any:
    # PEP 562: the GroupNorm subclass needs torch, which must not load when the WebUI imports this module.
    if name == "VideoGroupNorm":
        global _VIDEO_GROUPNORM_CLASS
        if _VIDEO_GROUPNORM_CLASS is None:
            _VIDEO_GROUPNORM_CLASS = _build_video_groupnorm_class()
        return _VIDEO_GROUPNORM_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _transformer_blocks(unet: Any) -> List[Any]:
    from diffusers.models.attention import BasicTransformerBlock

    return [module for module in unet.modules() if isinstance(module, BasicTransformerBlock)]


def _frame_groupnorms(unet: Any) -> List[Any]:
    """The GroupNorms TAV applies to 5-D tensors: resnets' norm1/norm2 and conv_norm_out (not the transformers' norm)."""
    import torch

    found = []
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.GroupNorm):
            continue
        if name == "conv_norm_out" or (".resnets." in name and name.endswith((".norm1", ".norm2"))):
            found.append(module)
    return found


def _new_temporal_layers(block: Any, generator: Any) -> tuple[Any, Any]:
    """attn_temp and norm_temp for one block: built on the meta device (no global RNG), then initialised from ``generator``."""
    import torch
    from diffusers.models.attention_processor import Attention

    attn1 = block.attn1
    dim = attn1.to_q.in_features
    heads = attn1.heads
    parameter = attn1.to_q.weight
    with torch.device("meta"):
        attn_temp = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False,
                              upcast_attention=attn1.upcast_attention)
        norm_temp = torch.nn.LayerNorm(dim)
    attn_temp.to_empty(device="cpu")
    norm_temp.to_empty(device="cpu")
    with torch.no_grad():
        for linear in (attn_temp.to_q, attn_temp.to_k, attn_temp.to_v):
            bound = 1.0 / math.sqrt(linear.in_features)  # nn.Linear's default (kaiming_uniform with a=sqrt(5))
            linear.weight.uniform_(-bound, bound, generator=generator)
        # Zero output weight and bias: the temporal layer adds exactly nothing at step 0.
        attn_temp.to_out[0].weight.zero_()
        attn_temp.to_out[0].bias.zero_()
        norm_temp.weight.fill_(1.0)
        norm_temp.bias.zero_()
    return attn_temp.to(parameter.device, parameter.dtype), norm_temp.to(parameter.device, parameter.dtype)


def inflate_unet(unet: Any, *, video_groupnorm: bool = False, init_seed: int = 0) -> Any:
    """Turn an SD 1.x ``UNet2DConditionModel`` into Tune-A-Video's video UNet, in place; returns it.

    Adds ``attn_temp``/``norm_temp`` to every transformer block (zero output, so at init
    the model equals the image model on a still clip, and frame 0 of any clip), then
    applies the processors, hooks and GroupNorm mode (:func:`apply_tune_a_video`).
    Calling it again keeps existing temporal layers (and their trained weights) and only
    switches ``video_groupnorm``. ``init_seed`` seeds the temporal layers' q/k/v.
    """
    import torch

    blocks = _transformer_blocks(unet)
    if not blocks:
        raise ValueError("This UNet has no transformer blocks; Tune-A-Video needs a Stable Diffusion UNet.")
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        state = _InflationState()
        # A plain attribute, not a submodule: nn.Module.__setattr__ stores non-module objects as is.
        setattr(unet, _STATE_ATTRIBUTE, state)
    state.video_groupnorm = bool(video_groupnorm)
    generator = torch.Generator(device="cpu").manual_seed(init_seed)
    for block in blocks:
        if not hasattr(block, "attn_temp"):
            attn_temp, norm_temp = _new_temporal_layers(block, generator)
            block.add_module("attn_temp", attn_temp)
            block.add_module("norm_temp", norm_temp)
    apply_tune_a_video(unet)
    return unet


def apply_tune_a_video(unet: Any) -> Any:
    """(Re-)apply the sparse-causal processors, the temporal hooks and the GroupNorm mode; returns the UNet.

    Idempotent and cheap. Called at the start of every training run, inversion and
    sampling, because anything that resets attention processors silently removes them.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    state = _state(unet)
    for handle in state.hook_handles:
        handle.remove()
    state.hook_handles = []
    for block in _transformer_blocks(unet):
        if not hasattr(block, "attn_temp"):
            raise ValueError("This UNet lost its temporal layers; inflate a fresh UNet and load the weights again.")
        block.attn1.set_processor(SparseCausalAttnProcessor(state))
        block.attn_temp.set_processor(AttnProcessor2_0())
        state.hook_handles.append(block.register_forward_hook(_temporal_hook(state)))
    _apply_groupnorm_mode(unet, state)
    return unet


def _apply_groupnorm_mode(unet: Any, state: _InflationState) -> None:
    import torch

    video_class = __getattr__("VideoGroupNorm")
    for module in _frame_groupnorms(unet):
        if state.video_groupnorm:
            module.__class__ = video_class
            # The frame count is read at forward time from the same state the processors use.
            object.__setattr__(module, _STATE_ATTRIBUTE, state)
        elif type(module) is video_class:
            module.__class__ = torch.nn.GroupNorm


def is_tune_a_video_applied(unet: Any) -> bool:
    """True when every processor, hook and GroupNorm is as Tune-A-Video needs it."""
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        return False
    for block in _transformer_blocks(unet):
        if not hasattr(block, "attn_temp") or not isinstance(block.attn1.processor, SparseCausalAttnProcessor):
            return False
        if block.attn1.processor.state is not state:
            return False
    blocks = _transformer_blocks(unet)
    if len(state.hook_handles) != len(blocks):
        return False
    if not all(handle.id in block._forward_hooks for block, handle in zip(blocks, state.hook_handles)):
        return False
    video_class = _VIDEO_GROUPNORM_CLASS
    swapped = [video_class is not None and type(m) is video_class for m in _frame_groupnorms(unet)]
    return all(swapped) if state.video_groupnorm else not any(swapped)


def _is_trainable(name: str) -> bool:
    module = name.rsplit(".", 1)[0]
    return module.endswith(TRAINABLE_MODULES[:2]) or ".attn_temp." in f".{module}."


def trainable_parameters(unet: Any) -> Dict[str, Any]:
    """TAV's trainable tensors, in ``named_parameters`` order: ``attn1.to_q``, ``attn2.to_q``, all of ``attn_temp``."""
    _state(unet)
    return {name: param for name, param in unet.named_parameters() if _is_trainable(name)}


# --------------------------------------------------------------------------- saving and loading


@dataclass
class TuneAVideoWeightsInfo:
    """The metadata of a trained weights file."""

    path: Path
    base_model: str
    base_model_fingerprint: str
    frames: int
    width: int
    height: int
    sample_start: int
    sample_stride: int
    video_groupnorm: bool
    prompt: str
    train_steps: int
    fps: Optional[float]
    tensors: int

    @classmethod
    def from_metadata(cls, path: Path, metadata: Dict[str, str], tensors: int) -> "TuneAVideoWeightsInfo":
        if metadata.get("vidguide_method") != METHOD:
            raise ValueError(
                f"'{path}' is not a Tune-A-Video weights file (method: {metadata.get('vidguide_method') or 'none'}); "
                f"train one with 'tune-a-video train' (files go to models/{WEIGHTS_SUBDIR})."
            )
        if metadata.get("vidguide_format") != FORMAT_VERSION:
            raise ValueError(
                f"'{path}' has format {metadata.get('vidguide_format')}; this version reads format {FORMAT_VERSION}."
            )
        fps = metadata.get("fps")
        return cls(
            path=path, base_model=metadata.get("base_model", ""),
            base_model_fingerprint=metadata.get("base_model_fingerprint", ""),
            frames=int(metadata["frames"]), width=int(metadata["width"]), height=int(metadata["height"]),
            sample_start=int(metadata.get("sample_start", 0)), sample_stride=int(metadata.get("sample_stride", 1)),
            video_groupnorm=metadata.get("video_groupnorm") == "true", prompt=metadata.get("prompt", ""),
            train_steps=int(metadata.get("train_steps", 0)), fps=float(fps) if fps else None, tensors=tensors,
        )


def save_tune_a_video_weights(unet: Any, path: str | Path, *, base_model: str, base_model_fingerprint: str, frames: int,
                              width: int, height: int, sample_start: int = 0, sample_stride: int = 1, prompt: str = "",
                              train_steps: int = 0, fps: Optional[float] = None) -> Path:
    """Only the trained tensors (float32) with their metadata; the file appears complete or not at all."""
    import torch
    from safetensors.torch import save

    from ..atomic import write_bytes_atomic

    state = _state(unet)
    tensors = {
        name: param.detach().to("cpu", torch.float32).contiguous() for name, param in trainable_parameters(unet).items()
    }
    metadata = {
        "format": "pt",
        "vidguide_method": METHOD,
        "vidguide_format": FORMAT_VERSION,
        "base_model": str(base_model),
        "base_model_fingerprint": str(base_model_fingerprint),
        "frames": str(int(frames)),
        "width": str(int(width)),
        "height": str(int(height)),
        "sample_start": str(int(sample_start)),
        "sample_stride": str(int(sample_stride)),
        "video_groupnorm": "true" if state.video_groupnorm else "false",
        "prompt": prompt,
        "train_steps": str(int(train_steps)),
        "trainable_modules": json.dumps(list(TRAINABLE_MODULES)),
        "fps": "" if fps is None else f"{float(fps):.6g}",
    }
    return write_bytes_atomic(path, save(tensors, metadata=metadata))


def read_weights_info(path: str | Path) -> TuneAVideoWeightsInfo:
    """The metadata of a weights file, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"The Tune-A-Video weights file '{path}' was not found (trained files go to models/{WEIGHTS_SUBDIR})."
        )
    try:
        with safe_open(str(path), framework="pt") as opened:
            metadata = opened.metadata() or {}
            count = len(list(opened.keys()))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"Cannot read '{path}' as safetensors ({' '.join(str(error).split())}).") from error
    return TuneAVideoWeightsInfo.from_metadata(path, metadata, count)


def load_tune_a_video_weights(unet: Any, path: str | Path) -> TuneAVideoWeightsInfo:
    """Inflate ``unet`` (GroupNorm mode from the file) and load the trained tensors strictly; returns the metadata."""
    import torch
    from safetensors.torch import load_file

    info = read_weights_info(path)
    inflate_unet(unet, video_groupnorm=info.video_groupnorm)
    expected = trainable_parameters(unet)
    tensors = load_file(str(info.path), device="cpu")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"'{info.path}' does not fit this base model: {len(missing)} tensors missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}). Was it trained on another architecture?"
        )
    wrong = [name for name, tensor in tensors.items() if tuple(tensor.shape) != tuple(expected[name].shape)]
    if wrong:
        raise ValueError(f"'{info.path}' has tensors of other shapes than this base model (e.g. {wrong[:2]}).")
    with torch.no_grad():
        for name, tensor in tensors.items():
            expected[name].copy_(tensor.to(expected[name].device, expected[name].dtype))
    return info


# --------------------------------------------------------------------------- DDIM inversion and sampling


def ddim_invert(latents: Any, predict: Callable[[Any, Any], Any], *, scheduler_config: Dict[str, Any],
                num_inference_steps: int, callback: Optional[Callable[[int, Any, Any], None]] = None) -> Any:
    """Run DDIM backwards from clean ``latents`` to noise: TAV's ``ddim_inversion``.

    ``predict(latents, t)`` returns the model output in the scheduler's ``prediction_type``.
    ``DDIMInverseScheduler`` evaluates the model at the *target* timestep (1, 21, ..., 981
    for 50 steps), exactly as TAV's ``next_step`` does, so :func:`ddim_sample` with the same
    config and step count walks the same timesteps back.
    """
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for index, timestep in enumerate(scheduler.timesteps):
        output = predict(latents, timestep)
        latents = scheduler.step(output, timestep, latents).prev_sample
        if callback is not None:
            callback(index, timestep, latents)
    return latents


StepEndCallback = Callable[[int, Any, Dict[str, Any]], Optional[Dict[str, Any]]]


def ddim_sample(latents: Any, predict: Callable[[Any, Any], Any], *, scheduler_config: Dict[str, Any],
                num_inference_steps: int, callback_on_step_end: Optional[StepEndCallback] = None) -> Any:
    """Deterministic DDIM (eta 0) from ``latents``; ``callback_on_step_end(i, t, {"latents": ...})`` may replace them."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for index, timestep in enumerate(scheduler.timesteps):
        output = predict(scheduler.scale_model_input(latents, timestep), timestep)
        latents = scheduler.step(output, timestep, latents, eta=0.0).prev_sample
        if callback_on_step_end is not None:
            replaced = callback_on_step_end(index, timestep, {"latents": latents}) or {}
            latents = replaced.pop("latents", latents)
    return latents


# --------------------------------------------------------------------------- video frames


@dataclass
class VideoClip:
    """The frames a run uses: RGB uint8 ``(frames, height, width, 3)``."""

    frames: np.ndarray
    fps: Optional[float]
    source_indices: List[int]
    notes: List[str] = field(default_factory=list)


def _resize_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC), dtype=np.uint8)


def _checked_frames(frames: Any) -> List[np.ndarray]:
    if frames is None:
        raise ValueError("No video was given: choose a video file (or pass its frames).")
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    checked = []
    for index, frame in enumerate(frames):
        array = np.asarray(frame)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"Frame {index} is {array.dtype} {array.shape}; expected RGB uint8 (height, width, 3).")
        checked.append(array)
    if not checked:
        raise ValueError("The video has no frames.")
    sizes = {frame.shape for frame in checked}
    if len(sizes) > 1:
        raise ValueError(f"The frames have different sizes {sorted(sizes)}; every frame must have the same size.")
    return checked


def sample_video_frames(video: Any, *, frames: int, start: int, stride: int, width: int, height: int,
                        fps: Optional[float] = None) -> VideoClip:
    """``frames`` frames from ``start`` every ``stride``-th, resized to ``width``×``height`` (TAV's sampling).

    ``video`` is a file path (decoded frame by frame; only the needed frames are kept) or a
    sequence of RGB uint8 frames.
    """
    _check_multiple_of_8(width, "width")
    _check_multiple_of_8(height, "height")
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}.")
    wanted = [start + k * stride for k in range(frames)]
    notes: List[str] = []
    if isinstance(video, (str, Path)):
        from ..video_io import iter_frames, probe

        info = probe(video)
        fps = float(info.fps) if fps is None else fps
        picked = []
        with iter_frames(video, start=start, stop=wanted[-1] + 1, step=stride) as reader:
            for frame in reader:
                picked.append(frame)
        available = info.frame_count
        source_size = (info.width, info.height)
    else:
        all_frames = _checked_frames(video)
        picked = [all_frames[i] for i in wanted if i < len(all_frames)]
        available = len(all_frames)
        source_size = (all_frames[0].shape[1], all_frames[0].shape[0])
    if len(picked) < frames:
        usable = max(0, (available - start + stride - 1) // stride) if available > start else 0
        raise ValueError(
            f"The video has {available} frames; from frame {start}, every {stride}. frame gives only "
            f"{min(usable, len(picked))}, "
            f"fewer than the {frames} asked for. Lower frames, sample_stride or sample_start."
        )
    picked = _checked_frames(picked)
    if source_size != (width, height):
        source_aspect, aspect = source_size[0] / source_size[1], width / height
        if abs(source_aspect / aspect - 1.0) > 0.02:
            notes.append(f"The {source_size[0]}x{source_size[1]} frames are stretched to {width}x{height} (another shape).")
    resized = np.stack([_resize_frame(frame, width, height) for frame in picked])
    clip_fps = fps / stride if fps else None
    return VideoClip(frames=resized, fps=clip_fps, source_indices=wanted, notes=notes)


def _video_digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- shared model helpers


def _frames_to_tensor(frames: np.ndarray, device: Any, dtype: Any) -> Any:
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return (pixels.to(device=device, dtype=dtype) / 127.5) - 1.0


def _encode_latent_distribution(vae: Any, frames: np.ndarray, chunk: int) -> tuple[Any, Any]:
    """Mean and standard deviation of the VAE posterior of every frame, in chunks (unscaled)."""
    import torch

    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    with torch.no_grad():
        for begin in range(0, len(frames), chunk):
            distribution = vae.encode(_frames_to_tensor(frames[begin:begin + chunk], device, dtype)).latent_dist
            means.append(distribution.mean.float())
            stds.append(distribution.std.float())
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------- training


class TuneAVideoTrainer:
    """Tune-A-Video as a :class:`~.training.TrainingTask`: one video, one prompt, TAV's ε-loss.

    The prompt embedding and the VAE posterior of every frame are computed once (both
    models are frozen); every step draws a latent sample, the noise and one timestep for
    the whole clip from the run's generator, as TAV does per step.
    """

    method = METHOD

    def __init__(self, components: Any, frames: np.ndarray, prompt: str, settings: TuneAVideoSettings, *,
                 fps: Optional[float] = None):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(_EMPTY_TRAINING_PROMPT)
        self.components = components
        self.frames = np.ascontiguousarray(frames)
        self.prompt = prompt
        self.settings = settings
        self.fps = fps
        self.noise_scheduler = components.noise_scheduler()
        self._prompt_embeddings = None
        self._latent_mean = None
        self._latent_std = None
        inflate_unet(components.unet, video_groupnorm=settings.video_groupnorm)

    @property
    def model(self) -> Any:
        return self.components.unet

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def before_run(self, device: Any) -> None:
        import torch

        apply_tune_a_video(self.components.unet)
        set_num_frames(self.components.unet, self.num_frames)
        self.components.unet.to(device)
        if self._prompt_embeddings is None:
            vae, text_encoder = self.components.vae, self.components.text_encoder
            vae.to(device)
            text_encoder.to(device)
            embeddings, _ = _encode_prompts(self.components.tokenizer, text_encoder, [self.prompt])
            self._prompt_embeddings = embeddings.float()
            mean, std = _encode_latent_distribution(vae, self.frames, chunk=8)
            self._latent_mean, self._latent_std = mean.cpu(), std.cpu()
            # Both are frozen and done: give their memory to the UNet's training.
            vae.to("cpu")
            text_encoder.to("cpu")
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        self._prompt_embeddings = self._prompt_embeddings.to(device)

    def trainable_parameters(self) -> Dict[str, Any]:
        return trainable_parameters(self.components.unet)

    def dataset_size(self) -> int:
        return 1

    def _noisy_batch(self, generator: Any, device: Any, timestep: Optional[int] = None):
        import torch

        scaling = float(self.components.vae.config.scaling_factor)
        shape = self._latent_mean.shape
        sample = self._latent_mean + self._latent_std * torch.randn(shape, generator=generator)
        latents = (sample * scaling).to(device)
        noise = torch.randn(shape, generator=generator).to(device)
        if timestep is None:
            timestep = int(torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=generator))
        # One timestep for the whole clip: TAV's batch is one video.
        timesteps = torch.full((shape[0],), timestep, dtype=torch.long, device=device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return noisy, timesteps, target

    def training_loss(self, model: Any, item: int, generator: Any) -> Any:
        import torch.nn.functional as F

        device = self._prompt_embeddings.device
        set_num_frames(self.components.unet, self.num_frames)
        noisy, timesteps, target = self._noisy_batch(generator, device)
        context = self._prompt_embeddings.expand(self.num_frames, -1, -1)
        prediction = model(noisy, timesteps, encoder_hidden_states=context).sample
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    def eval_loss(self, num_timesteps: int = 6, seed: int = 1234) -> float:
        """The ε-loss at ``num_timesteps`` evenly spread timesteps with fixed noise: comparable across training."""
        import torch
        import torch.nn.functional as F

        unet = self.components.unet
        device = unet.device
        if self._prompt_embeddings is None:
            self.before_run(device)
        apply_tune_a_video(unet)
        set_num_frames(unet, self.num_frames)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        total = self.noise_scheduler.config.num_train_timesteps
        losses = []
        was_training = unet.training
        unet.eval()
        with torch.no_grad():
            for timestep in np.linspace(total * 0.05, total * 0.95, num_timesteps).round().astype(int):
                noisy, timesteps, target = self._noisy_batch(generator, device, int(timestep))
                context = self._prompt_embeddings.to(device).expand(self.num_frames, -1, -1)
                prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample
                losses.append(F.mse_loss(prediction.float(), target.float()).item())
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
            "video_groupnorm": self.settings.video_groupnorm,
        }

    def save_result(self, output_dir: Path, steps_done: int) -> Path:
        return save_tune_a_video_weights(
            self.components.unet, Path(output_dir) / WEIGHTS_FILENAME, base_model=self.components.name,
            base_model_fingerprint=self.components.fingerprint, frames=self.num_frames, width=int(self.frames.shape[2]),
            height=int(self.frames.shape[1]), sample_start=self.settings.sample_start,
            sample_stride=self.settings.sample_stride, prompt=self.prompt, train_steps=steps_done, fps=self.fps,
        )

    def after_run(self) -> None:
        self.components.unet.eval()


def train_tune_a_video(
    video: Any,
    prompt: str,
    settings: Optional[TuneAVideoSettings] = None,
    *,
    model: Optional[str | Path] = None,
    output_dir: str | Path,
    components: Any = None,
    models_dir: Optional[str | Path] = None,
    tokenizer: Any = None,
    device: Any = None,
    resume: Union[str, Path, None] = None,
    progress: Optional[Callable[[Any], None]] = None,
    should_interrupt: Optional[Callable[[], bool]] = None,
    stop_after_step: Optional[int] = None,
) -> TuneAVideoTrainResult:
    """Fine-tune an SD 1.x model on one video and its prompt; the weights go to ``output_dir/tune_a_video.safetensors``.

    Args:
        video: a video file, or RGB uint8 frames; ``settings`` picks frames and size from it.
        prompt: what the video shows (TAV: "a man is skiing"); edits later change it.
        model: the base model (a diffusers folder, a single-file SD 1.x checkpoint, or a
            name under ``models_dir/Stable-diffusion``). Or pass loaded ``components``.
        output_dir: the weights and ``checkpoints/`` go here.
        resume: ``"latest"`` continues the newest checkpoint in ``output_dir``.
        progress: called with a :class:`~.training.TrainingProgress` after every step.
        should_interrupt: checked after every step; a checkpoint is saved before stopping.
    """
    from .sd_loading import load_sd_components
    from .training import train_on_video

    settings = settings or TuneAVideoSettings()
    return train_on_video(
        video, prompt, settings, empty_prompt_message=_EMPTY_TRAINING_PROMPT,
        load_components=lambda: load_sd_components(model, models_dir=models_dir, tokenizer=tokenizer),
        make_trainer=lambda loaded, clip: TuneAVideoTrainer(loaded, clip.frames, prompt, settings, fps=clip.fps),
        components=components, output_dir=output_dir, device=device, resume=resume, progress=progress,
        should_interrupt=should_interrupt, stop_after_step=stop_after_step,
    )


# --------------------------------------------------------------------------- the editing pipeline


class TuneAVideoInterrupted(Exception):
    """The user interrupted an edit; nothing was written."""


@dataclass
class TuneAVideoPipelineOutput:
    """``videos[k]`` is prompt k's result: RGB uint8 ``(frames, height, width, 3)``, or latents (``output_type="latent"``)."""

    videos: List[Any]
    inverted_latents: Any
    notes: List[str] = field(default_factory=list)


class TuneAVideoPipeline:
    """Invert a video with DDIM, then sample edited prompts from the inverted latents.

    ``components`` is an :class:`~.sd_loading.SDComponents`; the UNet is inflated (an
    untrained inflated UNet is TAV's zero-shot baseline) and :meth:`load_weights` loads
    trained tensors.
    """

    _callback_tensor_inputs = ["latents"]

    def __init__(self, components: Any, *, device: Any = None, dtype: Any = None):
        self.components = components
        if getattr(components.unet, _STATE_ATTRIBUTE, None) is None:
            inflate_unet(components.unet)
        self.device, self.dtype = _place_components(components, device, dtype)
        self.weights_info: Optional[TuneAVideoWeightsInfo] = None

    @property
    def unet(self) -> Any:
        return self.components.unet

    @property
    def scheduler_config(self) -> Dict[str, Any]:
        return self.components.scheduler_config

    def load_weights(self, path: str | Path) -> TuneAVideoWeightsInfo:
        self.weights_info = load_tune_a_video_weights(self.unet, path)
        self.unet.to(self.device, self.dtype)
        return self.weights_info

    # 1. Input checks

    def check_inputs(self, video: Any, prompt: Any, *, num_inference_steps: int, inversion_steps: int,
                     guidance_scale: float, decode_chunk_size: int, latents: Any = None, generator: Any = None,
                     callback_on_step_end_tensor_inputs: Optional[Sequence[str]] = None) -> tuple[np.ndarray, List[str]]:
        """Validate one call; return the frames and the prompts as a list. Raises ``ValueError`` that says what to do."""
        frames = np.stack(_checked_frames(video))
        count, height, width = frames.shape[:3]
        if count < 2:
            raise ValueError(f"Tune-A-Video edits a clip: give at least 2 frames (got {count}).")
        if count > MAX_FRAMES:
            raise ValueError(f"{count} frames are more than {MAX_FRAMES}; edit the video in parts.")
        for size, what in ((width, "width"), (height, "height")):
            if size % SIZE_MULTIPLE:
                _check_multiple_of_8(size, f"The frames' {what}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts:
            raise ValueError("No edited prompt was given: give at least one prompt, e.g. the training prompt with one change.")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise ValueError(f"Prompt {index} is a {type(text).__name__}; prompts must be strings.")
            if not text.strip():
                raise ValueError(
                    "An edited prompt is empty. Give the edit as a full prompt (e.g. 'a spider man is skiing'); "
                    "the training prompt reproduces the source video. "
                    "(The inversion prompt may be empty; that is TAV's default.)"
                )
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if inversion_steps < 0:
            raise ValueError(f"inversion_steps must be 0 (no inversion) or more, got {inversion_steps}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must not be negative, got {guidance_scale}.")
        if decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be at least 1, got {decode_chunk_size}.")
        if latents is None and inversion_steps == 0 and generator is None:
            raise ValueError(
                "inversion_steps is 0, so sampling starts from random noise: pass a torch.Generator "
                "(e.g. torch.Generator().manual_seed(33)); the global random state is never used."
            )
        if latents is not None and tuple(latents.shape[:1]) != (count,):
            raise ValueError(f"latents hold {latents.shape[0]} frames but the video has {count}.")
        names = list(callback_on_step_end_tensor_inputs or [])
        unknown = [name for name in names if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}, which this pipeline does not provide; "
                f"choose from {self._callback_tensor_inputs}."
            )
        return frames, prompts

    # 2. Encoders

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[Any, List[str]]:
        embeddings, notes = _encode_prompts(self.components.tokenizer, self.components.text_encoder, prompts)
        return embeddings.to(self.dtype), notes

    def encode_video(self, frames: np.ndarray, decode_chunk_size: int = 8) -> Any:
        """Scaled latents ``(frames, 4, h, w)`` of the posterior means (deterministic, for inversion)."""
        mean, _ = _encode_latent_distribution(self.components.vae, frames, decode_chunk_size)
        return (mean * float(self.components.vae.config.scaling_factor)).to(self.dtype)

    def decode_latents(self, latents: Any, decode_chunk_size: int = 8) -> np.ndarray:
        return _decode_latents(self.components.vae, latents, decode_chunk_size)

    # 3. Inversion

    def invert(self, latents: Any, *, prompt: str = "", num_inference_steps: int = 50,
               callback: Optional[Callable[[int, Any, Any], None]] = None) -> Any:
        """DDIM-invert clean latents with ``prompt`` (TAV: empty) and no guidance."""
        import torch

        apply_tune_a_video(self.unet)
        frames = latents.shape[0]
        embeddings, _ = self.encode_prompt([prompt])
        context = embeddings.expand(frames, -1, -1)

        def predict(sample, timestep):
            set_num_frames(self.unet, frames)
            return self.unet(sample, timestep, encoder_hidden_states=context).sample

        with torch.no_grad():
            return ddim_invert(latents, predict, scheduler_config=self.scheduler_config,
                               num_inference_steps=num_inference_steps, callback=callback)

    # 4. The call

    def __call__(
        self,
        video: Any,
        prompt: Union[str, Sequence[str]],
        *,
        negative_prompt: str = "",
        num_inference_steps: int = 50,
        guidance_scale: float = 12.5,
        inversion_steps: int = 50,
        inversion_prompt: str = "",
        latents: Any = None,
        generator: Any = None,
        decode_chunk_size: int = 8,
        output_type: str = "np",
        callback_on_step_end: Optional[Callable[[Any, int, Any, Dict[str, Any]], Optional[Dict[str, Any]]]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> TuneAVideoPipelineOutput:
        """Edit ``video`` with each prompt.

        Args:
            video: RGB uint8 frames ``(frames, height, width, 3)`` at the size to edit
                (multiples of 8; as trained is best).
            prompt: the edited prompt, or a list of them: one video each, all from the
                same inverted latents.
            negative_prompt: the unconditional prompt of classifier-free guidance.
            num_inference_steps: DDIM sampling steps (TAV: 50).
            guidance_scale: classifier-free guidance (TAV: 12.5); 1 or less samples the
                prompt alone.
            inversion_steps: DDIM inversion steps (TAV: 50); 0 starts from random noise
                drawn from ``generator`` instead.
            inversion_prompt: the prompt of the inversion (TAV: empty, no guidance).
            latents: inverted latents from an earlier call (``output.inverted_latents``):
                skips the inversion.
            generator: a ``torch.Generator`` for the starting noise when not inverting.
            decode_chunk_size: frames the VAE encodes and decodes at once.
            output_type: ``"np"`` (uint8 frames) or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, timestep, tensors)`` after each sampling
                step, with the tensors named in ``callback_on_step_end_tensor_inputs``
                (``["latents"]``); a returned ``{"latents": ...}`` replaces them.

        Returns:
            :class:`TuneAVideoPipelineOutput`.
        """
        import torch

        # 1. Check inputs.
        frames, prompts = self.check_inputs(
            video, prompt, num_inference_steps=num_inference_steps, inversion_steps=inversion_steps,
            guidance_scale=guidance_scale, decode_chunk_size=decode_chunk_size, latents=latents, generator=generator,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}.")
        notes: List[str] = []
        count = frames.shape[0]
        if self.weights_info is not None and self.weights_info.frames != count:
            notes.append(f"The weights were trained on {self.weights_info.frames} frames; editing {count}.")
        if inversion_steps and inversion_steps != num_inference_steps:
            notes.append(
                f"{inversion_steps} inversion steps but {num_inference_steps} sampling steps: equal counts reconstruct best."
            )

        # 2. Processors and hooks may have been reset since the last run: re-apply them.
        apply_tune_a_video(self.unet)
        set_num_frames(self.unet, count)

        # 3. Starting latents: the inverted video (TAV), or noise.
        if latents is None:
            if inversion_steps:
                latents = self.invert(self.encode_video(frames, decode_chunk_size), prompt=inversion_prompt,
                                      num_inference_steps=inversion_steps)
            else:
                height, width = frames.shape[1] // 8, frames.shape[2] // 8
                channels = self.unet.config.in_channels
                latents = torch.randn((count, channels, height, width), generator=generator).to(self.device, self.dtype)
        inverted = latents.to(self.device, self.dtype)

        # 4. Sample each edited prompt from the same start.
        use_guidance = guidance_scale > 1.0
        negative, negative_notes = self.encode_prompt([negative_prompt])
        notes.extend(negative_notes)
        videos = []
        for text in prompts:
            positive, prompt_notes = self.encode_prompt([text])
            notes.extend(prompt_notes)
            if use_guidance:
                context = torch.cat([negative.expand(count, -1, -1), positive.expand(count, -1, -1)])
            else:
                context = positive.expand(count, -1, -1)

            def predict(sample, timestep, context=context):
                model_input = torch.cat([sample, sample]) if use_guidance else sample
                set_num_frames(self.unet, count)
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
                sampled = ddim_sample(inverted.clone(), predict, scheduler_config=self.scheduler_config,
                                      num_inference_steps=num_inference_steps, callback_on_step_end=on_step_end)
            # 5. Decode.
            videos.append(sampled if output_type == "latent" else self.decode_latents(sampled, decode_chunk_size))
        return TuneAVideoPipelineOutput(videos=videos, inverted_latents=inverted, notes=notes)


@dataclass
class TuneAVideoEditResult:
    videos: List[np.ndarray]
    prompts: List[str]
    output_paths: List[Path]
    fps: float
    weights: TuneAVideoWeightsInfo
    notes: List[str]
    seconds: Dict[str, float]


def edit_tune_a_video(
    video: Any,
    prompts: Union[str, Sequence[str]],
    weights: str | Path,
    settings: Optional[TuneAVideoEditSettings] = None,
    *,
    model: Optional[str | Path] = None,
    components: Any = None,
    models_dir: Optional[str | Path] = None,
    tokenizer: Any = None,
    device: Any = None,
    output_path: Optional[str | Path] = None,
    fps: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    should_interrupt: Optional[Callable[[], bool]] = None,
) -> TuneAVideoEditResult:
    """Edit a video with trained Tune-A-Video weights: invert it, then sample each prompt.

    Frames, size and sampling default to the weights' metadata (as trained). With
    ``output_path`` (``.mp4``) each edited video is written there (``name-1.mp4``, ... for
    several prompts). ``progress(step, steps)`` counts sampling steps over all prompts;
    ``should_interrupt()`` is checked after each, and a true answer raises
    :class:`TuneAVideoInterrupted` before anything is written.
    """
    import torch

    from .sd_loading import load_sd_components

    settings = settings or TuneAVideoEditSettings()
    started = time.perf_counter()
    # 1. Check inputs: the weights' metadata decides the defaults.
    info = read_weights_info(weights)
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    paths = _output_paths(output_path, max(1, len(prompt_list)))
    clip = sample_video_frames(
        video, frames=settings.frames or info.frames,
        start=settings.sample_start if settings.sample_start is not None else info.sample_start,
        stride=settings.sample_stride or info.sample_stride, width=settings.width or info.width,
        height=settings.height or info.height, fps=fps,
    )
    notes = list(clip.notes)

    # 2. Load the base model and the weights.
    if components is None:
        components = load_sd_components(model, models_dir=models_dir, tokenizer=tokenizer)
    notes.extend(components.notes)
    notes.extend(filter(None, [_base_model_note(info, components, "These weights")]))
    device, dtype = _run_device_and_dtype(device, settings.half_precision)
    pipeline = TuneAVideoPipeline(components, device=device, dtype=dtype)
    pipeline.load_weights(info.path)
    on_step_end = _counting_step_callback(settings.num_inference_steps * len(prompt_list), progress,
                                          should_interrupt, TuneAVideoInterrupted)

    # 3. Invert and sample.
    output = pipeline(
        clip.frames, prompt_list, negative_prompt=settings.negative_prompt,
        num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
        inversion_steps=settings.inversion_steps, inversion_prompt=settings.inversion_prompt,
        generator=torch.Generator(device="cpu").manual_seed(settings.seed),
        decode_chunk_size=settings.decode_chunk_size, callback_on_step_end=on_step_end,
    )
    notes.extend(output.notes)

    # 4. Write the videos (each file appears complete or not at all).
    out_fps = clip.fps or info.fps or 8.0
    if paths:
        from ..video_io import write_video

        for path, frames in zip(paths, output.videos):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, frames, Fraction(out_fps).limit_denominator(1001))
    return TuneAVideoEditResult(
        videos=output.videos, prompts=prompt_list, output_paths=paths, fps=float(out_fps), weights=info, notes=notes,
        seconds={"total_s": time.perf_counter() - started},
    )


# --------------------------------------------------------------------------- command line

CLI_COMMAND = "tune-a-video"
_TRAIN_OPTIONS_SKIP = ()
_EDIT_OPTIONS_SKIP = ()


def _add_subcommands(commands: Any) -> None:
    from ..cli import add_model_options

    train = commands.add_parser(
        "train", help="fine-tune a Stable Diffusion 1.x model on one video and its prompt",
        description="Train Tune-A-Video on VIDEO described by --prompt; writes OUT/tune_a_video.safetensors and "
        "resumable checkpoints in OUT/checkpoints (continue with --resume latest). Several GPUs: "
        "accelerate launch -m lib_vidguide tune-a-video train ...",
    )
    train.add_argument("video", help="the source video file")
    train.add_argument("--model", required=True, help="SD 1.x base model: a .safetensors checkpoint, a diffusers folder, "
                       "or a name under MODELS_DIR/Stable-diffusion")
    train.add_argument("--prompt", required=True, help="what the video shows, e.g. 'a man is skiing'")
    train.add_argument("--out", required=True, help="output folder (weights and checkpoints)")
    train.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="continue from the newest checkpoint in OUT (or the given checkpoint folder)")
    _add_common_options(train)
    add_model_options(train, TuneAVideoSettings, skip=_TRAIN_OPTIONS_SKIP)
    train.set_defaults(handler=run_train_cli)

    edit = commands.add_parser(
        "edit", help="edit a video with trained Tune-A-Video weights",
        description="DDIM-invert VIDEO, then sample --prompt with the trained weights; writes OUTPUT.mp4.",
    )
    edit.add_argument("video", help="the source video file (normally the one trained on)")
    edit.add_argument("output", help="the edited video (.mp4); several prompts give OUTPUT-1.mp4, OUTPUT-2.mp4, ...")
    edit.add_argument("--model", required=True, help="the SD 1.x base model the weights were trained on")
    edit.add_argument("--weights", required=True, help="the trained tune_a_video.safetensors")
    edit.add_argument("--prompt", required=True, action="append", help="the edited prompt (repeat for several videos)")
    edit.add_argument("--frames-dir", default=None, help="also write each video's frames as PNGs here")
    _add_common_options(edit)
    add_model_options(edit, TuneAVideoEditSettings, skip=_EDIT_OPTIONS_SKIP)
    edit.set_defaults(handler=run_edit_cli)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", default=None,
                        help="the WebUI's models folder (--model may name a file in its Stable-diffusion/)")
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder for single-file checkpoints "
                        f"(default: the cached {'openai/clip-vit-large-patch14'})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune-a-video train|edit`` to an argparse sub-command set; dispatch with ``args.handler(args)``."""
    parser = subparsers.add_parser(
        CLI_COMMAND, help="Tune-A-Video: fine-tune SD 1.x on a video, then edit it with new prompts"
    )
    commands = parser.add_subparsers(dest="tune_a_video_command", required=True)
    _add_subcommands(commands)
    return parser


def run_train_cli(args: argparse.Namespace) -> int:
    """``tune-a-video train``: 0 when done, 2 with one ``error:`` line for bad input, 130 when interrupted."""
    return run_train_command(args, TuneAVideoSettings, train_tune_a_video, tokenizer=args.tokenizer)


def run_edit_cli(args: argparse.Namespace) -> int:
    """``tune-a-video edit``: 0 when done, 2 with one ``error:`` line for bad input."""
    return run_video_command(args, TuneAVideoEditSettings, lambda settings, progress: edit_tune_a_video(
        args.video, args.prompt, args.weights, settings, model=args.model, models_dir=args.models_dir,
        tokenizer=args.tokenizer, device=args.device, output_path=args.output, progress=progress,
    ))
