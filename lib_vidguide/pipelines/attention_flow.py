"""AttentionFlow: zero-shot text-driven video editing with Motion Map Injection (seed 003, issue 6).

The seed (currycurry915/AttentionFlow, Motion_Map_Injection, M2A; USERS.md §B.4) is
Video-P2P on diffusers 0.11: DDIM inversion (+ null-text optimisation) of the source clip,
prompt-to-prompt attention control between the source prompt and the edited prompt, and the
**Motion Map Injection** (MMI) module inside the controller's cross-attention hook. Here it is
rebuilt on a stock SD 1.x ``UNet2DConditionModel`` with attention processors (no UNet fork):

1. **Frames are folded into the batch** (as :mod:`.tune_a_video` does). During editing the
   batch holds ``[uncond | cond] × [source, edit 1, ...] × frames``; every branch starts from
   the same inverted latents, and the source branch reconstructs the source video.
2. **Cross-frame self-attention** in every ``attn1`` (:class:`CrossFrameAttnProcessor`):
   each frame's queries attend to the keys and values of ``"all"`` frames (vid2vid-zero's
   dense spatio-temporal attention, the default: this editor is zero-shot) or of frames 0
   and *i−1* (``"sparse_causal"``, Tune-A-Video's). With one frame both are plain
   self-attention.
3. **Prompt-to-prompt control** (Hertz et al.; Video-P2P), on the conditional half only, as
   P2P does:

   * *self-attention*: during the first ``self_replace_steps`` of the steps, the edited
     branches' attn1 probabilities are the source's in every layer below the full latent
     resolution (P2P: maps of at most 32² tokens at 512²). ``softmax(Q_src K_srcᵀ) V_edit``
     is computed by SDPA with the source's queries and keys and the branch's own values:
     the probabilities (up to 8·4096 keys per query at 512², 8 frames) are never
     materialised.
   * *cross-attention*: **word swap** (same number of words; each target token takes the map
     of the source token(s) it replaces, P2P's ``AttentionReplace``), **refinement** (tokens
     aligned between the prompts take the source's maps, new tokens keep their own, P2P's
     ``AttentionRefine``) during the first ``cross_replace_steps``; swapped words may get
     their own fraction (``swap_word_replace_steps``; 0 = they keep their own maps).
     **Re-weighting** (``"word:2, other:0.5"``) scales the named tokens' columns of the
     edited branches and renormalises every row to 1 (P2P's equaliser does not renormalise
     and acts only during the controlled steps; here it acts at every step).
4. **Motion Map Injection** (:func:`inject_motion_map`), in the cross-attention of every
   conditional branch, before the control (the seed's order):

   * the *motion map* of frame *i* is the optical-flow magnitude of the source clip
     (:mod:`lib_vidguide.flow`; frame i → i+1, the last frame's backward flow, as the seed's
     0→1, 1→2, 2→3, 3→2), resized to the layer's grid by area averaging and divided by its
     maximum;
   * the *similarity* of each prompt token's map (averaged over the heads) with the motion
     map is OpenCV's ``TM_CCOEFF_NORMED`` for a template as large as the image, i.e. the
     Pearson correlation, mapped to [0, 1] by (r + 1)/2 (the seed's score);
   * the motion map is *injected* into the tokens of the named ``motion_words`` or, if none
     are named, of the ``motion_top_k`` words whose maps match best:
     ``a_t += strength · score_t · decay(step) · M`` (the seed: ``x = 0.2`` in AttentionFlow,
     0.09 in the MMI repo; ``decay = 1/step`` and nothing at step 0, or ``"constant"``);
   * *renormalisation* ``"token_mass"`` (default) rescales each injected column so that the
     token keeps its total attention over the frame's pixels: its map moves toward the
     motion without gaining or losing weight, and **every other token's map is untouched,
     bit for bit**. Rows then sum to 1 on average over each frame (exactly, since column
     masses are kept) but not pixel by pixel: renormalising rows would rescale every other
     token. ``"none"`` is the seed's behaviour (mass is added).

   Attention probabilities are computed explicitly **only in ``attn2``**, only for the
   conditional half, and only at steps where the control, the injection or re-weighting
   acts (PIPELINES.md §4: O(h·w·77) per head); everything else runs through SDPA. With
   ``injection_strength = 0`` no flow is computed and nothing is injected, so the result is
   bit-identical to the plain prompt-to-prompt edit.

Inversion: DDIM inversion with the source prompt and no guidance (Video-P2P), through
:func:`.tune_a_video.ddim_invert`; optional null-text optimisation (Mokady et al.; P2P's
loop: Adam, lr 1e-2·(1 − i/100) at 50 steps, early stop at 1e-5 + 2e-5·i) so that the
source branch reconstructs the clip under classifier-free guidance. The sampling loop is
:func:`.tune_a_video.ddim_sample`. Optional Tune-A-Video weights (the seed's stage 1) are
loaded through :func:`.tune_a_video.load_tune_a_video_weights`; their temporal layers stay
active and this module's processors replace the sparse-causal ones.

**Processors are global state on the UNet** (PIPELINES.md §7.4): every inversion and every
edit re-applies them first (:func:`apply_attention_flow`).

Not done here: P2P's local blending (``blend_words``), vid2vid-zero's spatial
regularisation and its per-block mix of dense and sparse-causal attention.

Command line: ``python -m lib_vidguide attention-flow VIDEO OUTPUT --model ... --source-prompt
... --prompt ...`` once :func:`register_cli` is wired into :mod:`lib_vidguide.cli`.

torch, diffusers, transformers and OpenCV are imported inside functions: importing this module
costs nothing at WebUI start-up.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from pydantic import Field

from ..settings import FlowMethod, StrictModel, field_check
from . import tune_a_video as tav
from .cli_support import run_video_command
from .sd_loading import (
    _base_model_note, _decode_latents, _encode_prompts, _output_paths, _place_components, _run_device_and_dtype,
)

logger = logging.getLogger("vidguide")

__all__ = [
    "CROSS_FRAME_MODES",
    "EDIT_MODES",
    "METHOD",
    "AttentionFlowControl",
    "AttentionFlowInterrupted",
    "AttentionFlowInversion",
    "AttentionFlowPipeline",
    "AttentionFlowPipelineOutput",
    "AttentionFlowResult",
    "AttentionFlowSettings",
    "AttentionRecord",
    "CrossAttnControlProcessor",
    "CrossFrameAttnProcessor",
    "PromptTokens",
    "apply_attention_flow",
    "build_control",
    "edit_attention_flow",
    "inject_motion_map",
    "invert_latents",
    "is_attention_flow_applied",
    "main",
    "motion_maps_from_video",
    "motion_similarity",
    "null_text_optimization",
    "parse_reweight",
    "prompt_tokens",
    "refinement_mapper",
    "register_cli",
    "run_cli",
    "set_num_frames",
    "word_swap_mapper",
]

METHOD = "attention-flow"
CROSS_FRAME_MODES = ("all", "sparse_causal")
EDIT_MODES = ("auto", "word_swap", "refine", "none")
INJECTION_DECAYS = ("inverse_step", "constant")
RENORMALIZATIONS = ("token_mass", "none")
MAX_FRAMES = tav.MAX_FRAMES
_STATE_ATTRIBUTE = "_vidguide_attention_flow"
# P2P's null-text early stop: the inner loop ends once the loss is below 1e-5 + 2e-5 * step.
_NULL_TEXT_EPSILON = 1e-5
_WORD_PUNCTUATION = ".,;:!?\"'()[]{}"

ProgressCallback = Callable[[int, int], None]
AttentionRecorder = Callable[["AttentionRecord"], None]


# --------------------------------------------------------------------------- settings


def parse_reweight(text: Union[str, Dict[str, float], None]) -> Dict[str, float]:
    """``"moving:2, red:0.5"`` → ``{"moving": 2.0, "red": 0.5}`` (P2P's equaliser words and values)."""
    if text is None:
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" not in part:
                raise ValueError(
                    f"Re-weighting entry {part!r} has no weight: write 'word:weight', e.g. 'moving:2, red:0.5'."
                )
            word, _, value = part.rpartition(":")
            try:
                pairs.append((word, float(value)))
            except ValueError:
                raise ValueError(f"Re-weighting entry {part!r}: {value!r} is not a number (e.g. 'moving:2').") from None
    weights = {}
    for word, value in pairs:
        key = _normal_word(word)
        if not key or " " in key:
            raise ValueError(f"Re-weighting names {word!r}; name one word per entry, e.g. 'moving:2'.")
        if not 0.0 <= float(value) <= 10.0:
            raise ValueError(f"Re-weighting '{word}:{value}': weights go from 0 (remove the word) to 10.")
        weights[key] = float(value)
    return weights


def _split_words(text: str) -> List[str]:
    return [_normal_word(word) for word in str(text or "").split(",") if _normal_word(word)]


class AttentionFlowSettings(StrictModel):
    """One AttentionFlow edit. Defaults: the seed's (USERS.md §B.4): 50 DDIM steps, guidance 7.5,
    cross 0.2, self 0.5, injection 0.2; 512², 8 frames (vid2vid-zero; AttentionFlow used 4)."""

    num_inference_steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the inversion and of the edit.")
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0, description="Classifier-free guidance; 1 or less turns it off.")
    negative_prompt: str = Field("", description="Unconditional prompt (replaced by null-text embeddings when optimised).")
    null_text_inner_steps: int = Field(
        0, ge=0, le=100,
        description="Null-text optimisation: Adam steps per DDIM step (Video-P2P: 10; vid2vid-zero: 1); "
        "0 = off (the seed's fast mode).",
    )
    null_text_learning_rate: float = Field(1e-2, gt=0.0, le=1.0, description="Adam learning rate of null-text optimisation.")
    cross_frame_attention: Literal["all", "sparse_causal"] = Field(
        "all", description="Self-attention keys: all frames (vid2vid-zero) or frames 0 and i-1 (Tune-A-Video)."
    )
    edit_mode: Literal["auto", "word_swap", "refine", "none"] = Field(
        "auto",
        description="Prompt-to-prompt control: word_swap (same number of words), refine (words added or removed), "
        "none; auto picks by the word counts.",
    )
    cross_replace_steps: float = Field(0.2, ge=0.0, le=1.0, description="Fraction of steps with the source's cross-attention maps.")
    self_replace_steps: float = Field(0.5, ge=0.0, le=1.0, description="Fraction of steps with the source's self-attention.")
    swap_word_replace_steps: Optional[float] = Field(
        None, ge=0.0, le=1.0,
        description="Word swap: fraction of steps swapped words take the replaced word's map; empty = cross_replace_steps, "
        "0 = swapped words keep their own maps.",
    )
    reweight: str = Field("", description="Re-weight words of the edited prompt, e.g. 'moving:2, red:0.5' (rows renormalised).")
    injection_strength: float = Field(
        0.2, ge=0.0, le=10.0, description="Motion map injection strength x (AttentionFlow: 0.2; MMI repo: 0.09); 0 = off."
    )
    injection_decay: Literal["inverse_step", "constant"] = Field(
        "inverse_step", description="inverse_step: x/step and nothing at step 0 (the seed); constant: x at every step."
    )
    motion_words: str = Field(
        "", description="Words that carry the motion, comma-separated (e.g. 'moving'); empty = the best-matching words."
    )
    motion_top_k: int = Field(1, ge=1, le=16, description="Without motion_words: inject into this many best-matching words.")
    renormalize: Literal["token_mass", "none"] = Field(
        "token_mass",
        description="token_mass: injected tokens keep their total attention, other tokens are untouched; none: add (the seed).",
    )
    flow_method: FlowMethod = Field("dis_medium", description="Optical flow of the motion maps.")
    frames: int = Field(8, ge=2, le=MAX_FRAMES, description="Frames to edit (AttentionFlow: 4; vid2vid-zero: 8).")
    sample_start: int = Field(0, ge=0, description="First source frame (0-based).")
    sample_stride: int = Field(1, ge=1, le=1000, description="Take every n-th source frame.")
    width: int = Field(512, ge=64, le=2048, description="Width in pixels (multiple of 8; SD 1.x: 512).")
    height: int = Field(512, ge=64, le=2048, description="Height in pixels (multiple of 8; SD 1.x: 512).")
    decode_chunk_size: int = Field(8, ge=1, le=MAX_FRAMES, description="Frames the VAE encodes/decodes at once.")
    half_precision: bool = Field(True, description="GPU only: fp16 weights (CPU runs use float32).")

    @field_check("width")
    def _width_multiple(cls, value: int) -> int:  # noqa: N805
        return tav._check_multiple_of_8(value, "width")

    @field_check("height")
    def _height_multiple(cls, value: int) -> int:  # noqa: N805
        return tav._check_multiple_of_8(value, "height")

    @field_check("reweight")
    def _reweight_parses(cls, value: str) -> str:  # noqa: N805
        parse_reweight(value)
        return value

    def reweight_map(self) -> Dict[str, float]:
        return parse_reweight(self.reweight)

    def motion_word_list(self) -> List[str]:
        return _split_words(self.motion_words)


# --------------------------------------------------------------------------- prompts and token alignment


def _normal_word(word: str) -> str:
    return str(word).strip().strip(_WORD_PUNCTUATION).lower()


@dataclass
class PromptTokens:
    """A prompt's CLIP token ids (77, padded) and which positions each whitespace-separated word holds."""

    prompt: str
    ids: List[int]
    words: List[str]
    spans: List[Tuple[int, int]]
    end: int  # position of the end-of-text token: word tokens are 1 .. end-1
    truncated: bool = False

    def positions(self, word: str) -> List[int]:
        """Token positions of every occurrence of ``word`` (normalised: case and punctuation ignored)."""
        key = _normal_word(word)
        return [p for w, (a, b) in zip(self.words, self.spans) if _normal_word(w) == key for p in range(a, b)]

    def word_positions(self) -> List[Tuple[str, List[int]]]:
        return [(w, list(range(a, b))) for w, (a, b) in zip(self.words, self.spans) if b > a]


def prompt_tokens(tokenizer: Any, prompt: str) -> PromptTokens:
    """Tokenise ``prompt`` and locate its words (P2P's ``get_word_inds``, by tokenising word by word).

    CLIP's BPE never merges across whitespace, so the concatenated word tokenisations equal the
    prompt's; that is checked rather than assumed.
    """
    max_length = int(tokenizer.model_max_length)
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
    words = str(prompt).split()
    spans: List[Tuple[int, int]] = []
    position = 1
    pieces: List[int] = []
    for word in words:
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        start = min(position, max_length - 1)
        position = min(position + len(word_ids), max_length - 1)
        spans.append((start, position))
        pieces.extend(word_ids)
    full = tokenizer(prompt, add_special_tokens=False).input_ids
    if pieces != full:
        raise ValueError(
            f"Cannot locate the words of {prompt!r} among its tokens (the tokenizer splits them differently word by word); "
            "simplify the punctuation."
        )
    truncated = len(full) > max_length - 2
    return PromptTokens(prompt=prompt, ids=list(ids), words=words, spans=spans, end=min(1 + len(full), max_length - 1),
                        truncated=truncated)


def _tail_source_position(target_position: int, source: PromptTokens, target: PromptTokens, max_length: int) -> int:
    # End-of-text and padding positions pair up in order after the last word (P2P does the same).
    return min(source.end + (target_position - target.end), max_length - 1)


def word_swap_mapper(source: PromptTokens, target: PromptTokens, max_length: int = 77) -> Tuple[np.ndarray, List[int]]:
    """P2P's replacement mapper ``M[source_token, target_token]`` and the target positions of the swapped words.

    The edited map of target token n is Σ_w source_map[w]·M[w, n]. Unchanged words map one to
    one; a swapped word whose token count differs spreads the sum of the source word's maps over
    its tokens. Every source token's row of ``M`` sums to 1, so the edited rows still sum to 1.
    """
    if len(source.words) != len(target.words):
        raise ValueError(
            f"Word swap needs prompts with the same number of words: {len(source.words)} in {source.prompt!r}, "
            f"{len(target.words)} in {target.prompt!r}. Use edit_mode 'refine' for added or removed words."
        )
    mapper = np.zeros((max_length, max_length), dtype=np.float32)
    mapper[0, 0] = 1.0
    swapped: List[int] = []
    for source_word, target_word, (s0, s1), (t0, t1) in zip(source.words, target.words, source.spans, target.spans):
        if t1 <= t0 or s1 <= s0:
            continue
        same = _normal_word(source_word) == _normal_word(target_word)
        if not same:
            swapped.extend(range(t0, t1))
        if s1 - s0 == t1 - t0:
            for offset in range(t1 - t0):
                mapper[s0 + offset, t0 + offset] = 1.0
        else:
            mapper[s0:s1, t0:t1] = 1.0 / (t1 - t0)
    for position in range(target.end, max_length):
        source_position = source.end + (position - target.end)
        if source_position < max_length:
            mapper[source_position, position] = 1.0
    # A longer target pushes the source's last padding tokens out: fold them into the last position, so that
    # every source token's attention lands somewhere and each pixel's row still sums to 1.
    for source_position in range(source.end + (max_length - target.end), max_length):
        mapper[source_position, max_length - 1] += 1.0
    return mapper, swapped


def refinement_mapper(source: PromptTokens, target: PromptTokens, max_length: int = 77) -> Tuple[np.ndarray, np.ndarray]:
    """P2P's refinement: for every target token the aligned source position and 1, or 0 for a new token.

    The alignment is the longest matching blocks of the word-token id sequences (difflib;
    P2P uses a Needleman–Wunsch alignment of the same sequences).
    """
    indices = np.arange(max_length, dtype=np.int64)
    alphas = np.zeros(max_length, dtype=np.float32)
    indices[0], alphas[0] = 0, 1.0
    source_words = source.ids[1:source.end]
    target_words = target.ids[1:target.end]
    matcher = difflib.SequenceMatcher(None, source_words, target_words, autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            indices[1 + block.b + offset] = 1 + block.a + offset
            alphas[1 + block.b + offset] = 1.0
    for position in range(target.end, max_length):
        indices[position] = _tail_source_position(position, source, target, max_length)
        alphas[position] = 1.0
    return indices, alphas


def _resolve_edit_mode(mode: str, source: PromptTokens, target: PromptTokens) -> str:
    if mode != "auto":
        return mode
    if [_normal_word(w) for w in source.words] == [_normal_word(w) for w in target.words]:
        return "none"
    return "word_swap" if len(source.words) == len(target.words) else "refine"


# --------------------------------------------------------------------------- the per-run control


@dataclass
class _BranchControl:
    """What one edited branch does: the P2P mapping and, per step, which tokens take the source's maps."""

    mode: str  # "word_swap", "refine" or "none"
    alphas: Any  # (steps, 77) float: 1 = the source's map at this step
    active: List[bool] = field(default_factory=list)  # per step: any token controlled (kept on the host: no device sync)
    swap_mapper: Any = None  # (77, 77) for word swap
    refine_indices: Any = None  # (77,) long for refinement
    reweight: Any = None  # (77,) float or None


@dataclass
class _MotionControl:
    """Motion map injection of one run: the maps, which tokens can get them, and how strongly."""

    maps: Any  # (frames, H, W) float on the device, each frame's max = 1
    strength: float
    decay: str
    renormalize: str
    named_words: List[str]  # normalised; empty = choose the best-matching words
    candidates: List[List[Tuple[str, List[int]]]]  # per branch: all words (auto selection)
    top_k: int
    _resized: Dict[Tuple[int, int], Any] = field(default_factory=dict)

    def factor(self, step: int) -> float:
        if self.strength == 0.0:
            return 0.0
        if self.decay == "constant":
            return self.strength
        # The seed: x / cur_step, and nothing at step 0 (its `if cur_step > 0`).
        return self.strength / step if step > 0 else 0.0

    def at(self, height: int, width: int) -> Any:
        """The maps on an (height, width) grid, flattened to (frames, height·width), each frame's max 1 (the seed's norm)."""
        import torch
        import torch.nn.functional as F

        key = (height, width)
        if key not in self._resized:
            resized = F.interpolate(self.maps[:, None].float(), size=key, mode="area")[:, 0]
            peak = resized.flatten(1).amax(1).clamp_min(1e-12)
            resized = torch.where(peak[:, None, None] > 1e-12, resized / peak[:, None, None], torch.zeros_like(resized))
            self._resized[key] = resized.flatten(1)
        return self._resized[key]


@dataclass
class AttentionFlowControl:
    """Everything the processors need during one edit; :func:`build_control` makes it.

    Batch layout: ``[uncond | cond] × branches × frames`` (branch 0 is the source). Only the
    conditional half is controlled, as in P2P.
    """

    branches: int
    guidance: bool
    num_steps: int
    self_replace_until: int
    edited: List[_BranchControl]
    motion: Optional[_MotionControl] = None
    recorder: Optional[AttentionRecorder] = None
    step: int = 0
    latent_hw: Tuple[int, int] = (64, 64)
    chosen_counts: Dict[str, int] = field(default_factory=dict)

    def cross_active(self, step: int) -> bool:
        return any(branch.active[min(step, self.num_steps - 1)] for branch in self.edited)

    def reweight_active(self) -> bool:
        return any(branch.reweight is not None for branch in self.edited)

    def explicit_cross(self, step: int) -> bool:
        """attn2 needs its probabilities: the control, the injection or re-weighting acts, or a recorder listens."""
        injecting = self.motion is not None and self.motion.factor(step) > 0.0
        return injecting or self.cross_active(step) or self.reweight_active() or self.recorder is not None


@dataclass
class AttentionRecord:
    """One attn2 call's conditional probabilities, for inspection (tests, visualisation).

    Tensors are (branches, frames, heads, tokens, 77) float32 copies: ``raw`` as computed,
    ``injected`` after motion map injection, ``final`` after the prompt-to-prompt control and
    re-weighting. ``chosen[b]`` lists the words injected in branch b; ``scores[b]`` the
    similarity in [0, 1] of every candidate word, per frame.
    """

    layer: str
    step: int
    height: int
    width: int
    raw: Any
    injected: Any
    final: Any
    chosen: List[List[str]]
    scores: List[Dict[str, List[float]]]


def build_control(source: PromptTokens, targets: Sequence[PromptTokens], *, num_steps: int, guidance: bool,
                  edit_mode: str = "auto", cross_replace_steps: float = 0.2, self_replace_steps: float = 0.5,
                  swap_word_replace_steps: Optional[float] = None, reweight: Optional[Dict[str, float]] = None,
                  motion_maps: Any = None, injection_strength: float = 0.0, injection_decay: str = "inverse_step",
                  motion_words: Sequence[str] = (), motion_top_k: int = 1, renormalize: str = "token_mass",
                  latent_hw: Tuple[int, int] = (64, 64), recorder: Optional[AttentionRecorder] = None,
                  device: Any = None) -> AttentionFlowControl:
    """The control of one edit of ``source`` into each of ``targets`` (P2P's ``make_controller`` plus MMI)."""
    import torch

    max_length = len(source.ids)
    cross_until = int(cross_replace_steps * num_steps)
    swap_until = cross_until if swap_word_replace_steps is None else int(swap_word_replace_steps * num_steps)
    steps = torch.arange(num_steps)[:, None]
    edited = []
    reweight = reweight or {}
    for target in targets:
        mode = _resolve_edit_mode(edit_mode, source, target)
        alphas = torch.zeros(num_steps, max_length)
        branch = _BranchControl(mode=mode, alphas=alphas)
        if mode == "word_swap":
            mapper, swapped = word_swap_mapper(source, target, max_length)
            until = torch.full((max_length,), cross_until)
            until[swapped] = swap_until
            branch.alphas = (steps < until[None, :]).float()
            branch.swap_mapper = torch.from_numpy(mapper)
        elif mode == "refine":
            indices, token_alphas = refinement_mapper(source, target, max_length)
            branch.alphas = (steps < cross_until).float() * torch.from_numpy(token_alphas)[None, :]
            branch.refine_indices = torch.from_numpy(indices)
        elif mode != "none":
            raise ValueError(f"edit_mode must be one of {EDIT_MODES}, got {mode!r}.")
        if reweight:
            weights = torch.ones(max_length)
            found = False
            for word, value in reweight.items():
                positions = target.positions(word)
                if positions:
                    weights[positions] = value
                    found = True
            if found:
                branch.reweight = weights
        branch.active = [branch.mode != "none" and bool(row.any()) for row in branch.alphas]
        if device is not None:
            for name in ("alphas", "swap_mapper", "refine_indices", "reweight"):
                value = getattr(branch, name)
                if value is not None:
                    setattr(branch, name, value.to(device))
        edited.append(branch)

    motion = None
    if motion_maps is not None and injection_strength > 0.0:
        prompts = [source, *targets]
        maps = torch.as_tensor(np.asarray(motion_maps, dtype=np.float32))
        motion = _MotionControl(
            maps=maps.to(device) if device is not None else maps, strength=float(injection_strength), decay=injection_decay,
            renormalize=renormalize,
            named_words=[_normal_word(word) for word in motion_words if _normal_word(word)],
            candidates=[tokens.word_positions() for tokens in prompts], top_k=int(motion_top_k),
        )
    return AttentionFlowControl(
        branches=1 + len(targets), guidance=guidance, num_steps=num_steps,
        self_replace_until=int(self_replace_steps * num_steps), edited=edited, motion=motion, recorder=recorder,
        latent_hw=tuple(latent_hw),
    )


# --------------------------------------------------------------------------- motion maps and injection


def motion_maps_from_video(frames: np.ndarray, method: str = "dis_medium") -> np.ndarray:
    """Optical-flow magnitude per frame, (frames, H, W) float32, each frame divided by its maximum.

    Frame i < F−1 uses the flow i → i+1 on its own grid; the last frame uses the backward flow
    F−1 → F−2 (the seed: 0→1, 1→2, 2→3 and 3→2). A still frame gives a map of zeros.
    """
    from ..flow import bidirectional_flow

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"Motion maps need at least 2 RGB uint8 frames (frames, H, W, 3), got {frames.dtype} {frames.shape}.")
    magnitudes = []
    last_backward = None
    for index in range(frames.shape[0] - 1):
        pair = bidirectional_flow(frames[index], frames[index + 1], method)
        magnitudes.append(np.linalg.norm(pair.forward, axis=-1))
        last_backward = pair.backward
    magnitudes.append(np.linalg.norm(last_backward, axis=-1))
    maps = np.stack(magnitudes).astype(np.float32)
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    return np.where(peaks[:, None, None] > 1e-6, maps / np.maximum(peaks, 1e-6)[:, None, None], 0.0).astype(np.float32)


def motion_similarity(maps: Any, motion: Any) -> Any:
    """Pearson correlation of each map with the motion map, per frame: OpenCV's ``TM_CCOEFF_NORMED`` for a
    template the size of the image. ``maps`` (frames, pixels, k), ``motion`` (frames, pixels) → (frames, k)
    in [−1, 1]; 0 where either side is flat (no correlation can be measured)."""
    import torch

    centred_maps = maps.float() - maps.float().mean(dim=1, keepdim=True)
    centred_motion = (motion.float() - motion.float().mean(dim=1, keepdim=True))[:, :, None]
    numerator = (centred_maps * centred_motion).sum(dim=1)
    denominator = (centred_maps.square().sum(dim=1) * centred_motion.square().sum(dim=1)).sqrt()
    return torch.where(denominator > 1e-12, numerator / denominator.clamp_min(1e-12), torch.zeros_like(numerator))


def inject_motion_map(probs: Any, motion: Any, positions: Sequence[int], weights: Any, factor: float,
                      renormalize: str = "token_mass") -> Any:
    """Add ``factor · weights · motion`` to the columns ``positions`` of ``probs``, in place; returns ``probs``.

    ``probs`` (frames, heads, pixels, tokens); ``motion`` (frames, pixels); ``weights``
    (frames, len(positions)), the similarity scores. ``"token_mass"`` rescales each changed
    column (per frame and head) to its former sum over the pixels, so the token keeps its share
    of attention and no other column changes; ``"none"`` only adds.
    """
    if factor == 0.0 or not len(positions):
        return probs
    index = list(positions)
    columns = probs[..., index]
    added = columns + factor * weights[:, None, None, :].to(columns.dtype) * motion[:, None, :, None].to(columns.dtype)
    if renormalize == "token_mass":
        before = columns.sum(dim=2, keepdim=True)
        after = added.sum(dim=2, keepdim=True)
        added = added * (before / after.clamp_min(1e-12))
    elif renormalize != "none":
        raise ValueError(f"renormalize must be one of {RENORMALIZATIONS}, got {renormalize!r}.")
    probs[..., index] = added
    return probs


def _choose_words(motion: _MotionControl, scores: Any,
                  candidates: List[Tuple[str, List[int]]]) -> List[Tuple[str, List[int], int]]:
    """The words injected in one branch: the named ones it contains, or the ``top_k`` best by mean score over frames."""
    if motion.named_words:
        return [(word, positions, number) for number, (word, positions) in enumerate(candidates)
                if _normal_word(word) in motion.named_words]
    order = scores.mean(dim=0).argsort(descending=True).tolist()
    return [(candidates[n][0], candidates[n][1], n) for n in order[:motion.top_k]]


def _inject_branch(control: AttentionFlowControl, branch: int, probs: Any, height: int, width: int,
                   record: Optional[Tuple[List[List[str]], List[Dict[str, List[float]]]]]) -> None:
    """Motion map injection into one conditional branch's probabilities (frames, heads, pixels, 77), in place."""
    import torch

    motion = control.motion
    candidates = motion.candidates[branch]
    if not candidates:
        return
    motion_map = motion.at(height, width)
    if motion_map.shape[0] != probs.shape[0]:
        raise ValueError(f"{motion_map.shape[0]} motion maps for {probs.shape[0]} frames.")
    head_mean = probs.float().mean(dim=1)  # (frames, pixels, 77): the seed averages the 8 heads
    word_maps = torch.stack([head_mean[:, :, positions].mean(dim=2) for _, positions in candidates], dim=2)
    token_scores = (motion_similarity(word_maps, motion_map) + 1.0) / 2.0  # (frames, words) in [0, 1]
    chosen = _choose_words(motion, token_scores, candidates)
    positions, weights = [], []
    for word, word_positions, number in chosen:
        positions.extend(word_positions)
        weights.extend([token_scores[:, number]] * len(word_positions))
        control.chosen_counts[word] = control.chosen_counts.get(word, 0) + 1
    if positions:
        inject_motion_map(probs, motion_map.to(probs.dtype), positions, torch.stack(weights, dim=1),
                          motion.factor(control.step), motion.renormalize)
    if record is not None:
        record[0][branch] = [word for word, _, _ in chosen]
        names = [word for word, _ in candidates]
        # Repeated words ("a ... a") are told apart by their order: "a", "a#2".
        keys = [word if names[:n].count(word) == 0 else f"{word}#{names[:n].count(word) + 1}" for n, word in enumerate(names)]
        record[1][branch] = {key: token_scores[:, n].tolist() for n, key in enumerate(keys)}


def _control_branch(branch: _BranchControl, step: int, source: Any, edited: Any) -> Any:
    """P2P's cross-attention edit of one branch: α·mapped(source) + (1 − α)·edited, then re-weighting."""
    import torch

    result = edited
    step = min(step, branch.alphas.shape[0] - 1)
    if branch.active[step]:
        alphas = branch.alphas[step].to(edited.dtype)
        if branch.mode == "word_swap":
            mapped = torch.einsum("fhpw,wn->fhpn", source, branch.swap_mapper.to(source.dtype))
        else:
            mapped = source[..., branch.refine_indices]
        result = mapped * alphas + edited * (1.0 - alphas)
    if branch.reweight is not None:
        result = result * branch.reweight.to(result.dtype)
        result = result / result.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return result


# --------------------------------------------------------------------------- attention processors


@dataclass
class _AttentionFlowState:
    """Kept on the UNet (``unet._vidguide_attention_flow``): what the processors read."""

    num_frames: int = 1
    cross_frame: str = "all"
    control: Optional[AttentionFlowControl] = None


def _state(unet: Any) -> _AttentionFlowState:
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        state = _AttentionFlowState()
        # A plain attribute, not a submodule: nn.Module.__setattr__ keeps non-module objects as they are.
        setattr(unet, _STATE_ATTRIBUTE, state)
    return state


def set_num_frames(unet: Any, num_frames: int) -> None:
    """How many consecutive batch entries form one video (also for Tune-A-Video's temporal layers, if any)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    _state(unet).num_frames = int(num_frames)
    if getattr(unet, tav._STATE_ATTRIBUTE, None) is not None:
        tav.set_num_frames(unet, num_frames)


def _heads(tensor: Any, heads: int) -> Any:
    batch, length, channels = tensor.shape
    return tensor.view(batch, length, heads, channels // heads).transpose(1, 2)


def _merge_heads(tensor: Any) -> Any:
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _check_batch(batch: int, frames: int) -> int:
    if batch % frames:
        raise ValueError(
            f"The UNet got a batch of {batch}, not a multiple of the {frames} frames it was told about; "
            "call set_num_frames(unet, frames) with the clip's frame count."
        )
    return batch // frames


class CrossFrameAttnProcessor:
    """attn1: each frame attends to the tokens of all frames, or of frames 0 and i−1; P2P's self-attention control.

    ``"all"``: keys/values are the F frames' tokens concatenated (vid2vid-zero), computed as one
    attention over each video's frames·tokens queries (no copies of the keys). ``"sparse_causal"``:
    frames 0 and i−1 (Tune-A-Video's ``SparseCausalAttention``; frame 0 sees itself twice, which
    leaves softmax attention unchanged). While the control asks for it, the edited branches of
    the conditional half use the source's queries and keys with their own values, which is
    exactly P2P's replacement of their attention probabilities, through SDPA.
    Not an ``nn.Module``: it holds no weights.
    """

    def __init__(self, state: _AttentionFlowState, name: str = ""):
        self.state = state
        self.name = name

    @staticmethod
    def _sparse_causal_context(tensor: Any, videos: int, frames: int) -> Any:
        """Keys or values of frames 0 and i−1 for every frame i: (batch, 2·tokens, channels)."""
        import torch

        batch, tokens, channels = tensor.shape
        per_frame = tensor.view(videos, frames, tokens, channels)
        first = torch.zeros(frames, dtype=torch.long, device=tensor.device)
        previous = (torch.arange(frames, device=tensor.device) - 1).clamp(min=0)
        both = torch.cat([per_frame[:, first], per_frame[:, previous]], dim=2)
        return both.reshape(batch, 2 * tokens, channels)

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch.nn.functional as F

        if attention_mask is not None:
            raise ValueError("Cross-frame attention takes no attention mask (Stable Diffusion's self-attention has none).")
        if hidden_states.ndim != 3:
            raise ValueError(f"Cross-frame attention expects (batch, tokens, channels), got {tuple(hidden_states.shape)}.")
        if self.state.cross_frame not in CROSS_FRAME_MODES:
            raise ValueError(f"cross_frame_attention must be one of {CROSS_FRAME_MODES}, got {self.state.cross_frame!r}.")
        frames = self.state.num_frames
        batch, tokens, channels = hidden_states.shape
        videos = _check_batch(batch, frames)
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)

        control = self.state.control
        latent_tokens = control.latent_hw[0] * control.latent_hw[1] if control is not None else 0
        # P2P replaces self-attention below the full latent resolution only (maps of <= 32² tokens at 512²).
        if control is not None and control.step < control.self_replace_until and control.branches > 1 and tokens < latent_tokens:
            halves = 2 if control.guidance else 1
            query = _replace_edited_with_source(query, halves, control.branches)
            key = _replace_edited_with_source(key, halves, control.branches)

        if frames > 1 and self.state.cross_frame == "all":
            # Every frame of a video attends to the same keys (all its frames' tokens): one attention over the
            # video's frames·tokens queries, instead of F copies of the keys and values.
            query, key, value = (t.reshape(videos, frames * tokens, t.shape[-1]) for t in (query, key, value))
        elif frames > 1:
            key = self._sparse_causal_context(key, videos, frames)
            value = self._sparse_causal_context(value, videos, frames)
        query, key, value = _heads(query, attn.heads), _heads(key, attn.heads), _heads(value, attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = _merge_heads(out).to(query.dtype).reshape(batch, tokens, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _replace_edited_with_source(tensor: Any, halves: int, branches: int) -> Any:
    """A copy where the conditional half's edited branches hold the source branch's values."""
    batch = tensor.shape[0]
    shaped = tensor.view(halves, branches, batch // (halves * branches), *tensor.shape[1:])
    replaced = shaped.clone()
    replaced[-1, 1:] = shaped[-1, :1]
    return replaced.view(tensor.shape)


def _layer_grid(tokens: int, latent_hw: Tuple[int, int]) -> Tuple[int, int]:
    """The (height, width) of a layer with ``tokens`` pixels: the latent grid divided by 2 per level (rounding up)."""
    height, width = latent_hw
    for _ in range(8):
        if height * width == tokens:
            return height, width
        height, width = (height + 1) // 2, (width + 1) // 2
    raise ValueError(f"A cross-attention layer has {tokens} pixels, which fits no level of a {latent_hw} latent grid.")


class CrossAttnControlProcessor:
    """attn2: SDPA, or, when the run needs them, explicit probabilities for motion injection and P2P control.

    The unconditional half always goes through SDPA; the conditional half's probabilities are
    ``softmax(QKᵀ·scale)`` in float32, injected (every branch), controlled and re-weighted
    (edited branches), then multiplied with the values.
    """

    def __init__(self, state: _AttentionFlowState, name: str = ""):
        self.state = state
        self.name = name

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if hidden_states.ndim != 3:
            raise ValueError(f"Cross-attention expects (batch, tokens, channels), got {tuple(hidden_states.shape)}.")
        residual = hidden_states
        batch, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = _heads(attn.to_k(encoder_hidden_states), attn.heads)
        value = _heads(attn.to_v(encoder_hidden_states), attn.heads)
        query = _heads(query, attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        control = self.state.control
        if control is None or attention_mask is not None or not control.explicit_cross(control.step):
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        else:
            frames = self.state.num_frames
            _check_batch(batch, frames)
            conditional = control.branches * frames
            if batch != conditional * (2 if control.guidance else 1):
                raise ValueError(
                    f"The UNet got a batch of {batch}; this edit expects {control.branches} branches x {frames} frames"
                    f"{' x 2 (guidance)' if control.guidance else ''}."
                )
            parts = []
            if control.guidance:
                parts.append(F.scaled_dot_product_attention(query[:conditional], key[:conditional], value[:conditional],
                                                            dropout_p=0.0, is_causal=False))
            parts.append(self._controlled(attn, control, query[-conditional:], key[-conditional:], value[-conditional:],
                                          frames, tokens))
            out = torch.cat(parts) if len(parts) > 1 else parts[0]
        out = _merge_heads(out).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _controlled(self, attn: Any, control: AttentionFlowControl, query: Any, key: Any, value: Any, frames: int,
                    tokens: int) -> Any:
        import torch

        branches = control.branches
        heads = query.shape[1]
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
        probs = scores.softmax(dim=-1).view(branches, frames, heads, tokens, -1)
        recorder = control.recorder
        raw = probs.clone() if recorder is not None else None
        height, width = _layer_grid(tokens, control.latent_hw)
        chosen: Optional[Tuple[List[List[str]], List[Dict[str, List[float]]]]] = None
        if recorder is not None:
            chosen = ([[] for _ in range(branches)], [{} for _ in range(branches)])
        if control.motion is not None and control.motion.factor(control.step) > 0.0:
            for branch in range(branches):
                _inject_branch(control, branch, probs[branch], height, width, chosen)
        injected = probs.clone() if recorder is not None else None
        source = probs[0]
        edited = [probs[0]] + [
            _control_branch(branch, control.step, source, probs[number + 1]) for number, branch in enumerate(control.edited)
        ]
        final = torch.stack(edited)
        if recorder is not None:
            recorder(AttentionRecord(
                layer=self.name, step=control.step, height=height, width=width, raw=raw, injected=injected,
                final=final.clone(), chosen=chosen[0], scores=chosen[1],
            ))
        final = final.view(branches * frames, heads, tokens, -1)
        return torch.matmul(final.to(value.dtype), value)


def apply_attention_flow(unet: Any, *, cross_frame_attention: Optional[str] = None) -> Any:
    """(Re-)apply the attn1/attn2 processors of every transformer block; returns the UNet. Idempotent and cheap.

    If the UNet carries Tune-A-Video weights, their temporal hooks and GroupNorm mode are
    re-applied first; this module's processors then replace the sparse-causal ones.
    """
    state = _state(unet)
    if cross_frame_attention is not None:
        if cross_frame_attention not in CROSS_FRAME_MODES:
            raise ValueError(f"cross_frame_attention must be one of {CROSS_FRAME_MODES}, got {cross_frame_attention!r}.")
        state.cross_frame = cross_frame_attention
    if getattr(unet, tav._STATE_ATTRIBUTE, None) is not None:
        tav.apply_tune_a_video(unet)
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [(name, module) for name, module in unet.named_modules() if isinstance(module, BasicTransformerBlock)]
    if not blocks:
        raise ValueError("This UNet has no transformer blocks; AttentionFlow needs a Stable Diffusion UNet.")
    for name, block in blocks:
        block.attn1.set_processor(CrossFrameAttnProcessor(state, f"{name}.attn1"))
        block.attn2.set_processor(CrossAttnControlProcessor(state, f"{name}.attn2"))
    return unet


def is_attention_flow_applied(unet: Any) -> bool:
    """True when every transformer block's attn1 and attn2 run this module's processors on the UNet's state."""
    state = getattr(unet, _STATE_ATTRIBUTE, None)
    if state is None:
        return False
    blocks = tav._transformer_blocks(unet)
    return bool(blocks) and all(
        isinstance(block.attn1.processor, CrossFrameAttnProcessor) and block.attn1.processor.state is state
        and isinstance(block.attn2.processor, CrossAttnControlProcessor) and block.attn2.processor.state is state
        for block in blocks
    )


# --------------------------------------------------------------------------- inversion


def invert_latents(latents: Any, predict: Callable[[Any, Any], Any], *, scheduler_config: Dict[str, Any],
                   num_inference_steps: int, callback: Optional[Callable[[int, Any, Any], None]] = None) -> List[Any]:
    """DDIM inversion (:func:`.tune_a_video.ddim_invert`) keeping every latent: ``[z_0, z_1, ..., z_T]``.

    Null-text optimisation needs the whole trajectory; the last entry starts the edit.
    """
    trajectory = [latents]

    def keep(index: int, timestep: Any, current: Any) -> None:
        trajectory.append(current)
        if callback is not None:
            callback(index, timestep, current)

    tav.ddim_invert(latents, predict, scheduler_config=scheduler_config, num_inference_steps=num_inference_steps,
                    callback=keep)
    return trajectory


def null_text_optimization(trajectory: Sequence[Any], predict: Callable[[Any, Any, Any], Any], *, condition: Any,
                           unconditional: Any, scheduler_config: Dict[str, Any], guidance_scale: float,
                           inner_steps: int = 10, learning_rate: float = 1e-2,
                           progress: Optional[Callable[[int, int], None]] = None) -> List[Any]:
    """Null-text inversion (Mokady et al., P2P's ``null_optimization``): one unconditional embedding per sampling step.

    At sampling step i the embedding is optimised (Adam, ``inner_steps`` at most) so that the
    guided DDIM step from the current latent lands on the inversion's latent of the next step;
    the current latent then follows the guided step with the optimised embedding.
    ``predict(latents, t, context)`` returns ε. ``learning_rate·(1 − i/(2·steps))`` is P2P's
    ``1e-2·(1 − i/100)`` at 50 steps.
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    steps = len(trajectory) - 1
    scheduler.set_timesteps(steps, device=trajectory[-1].device)
    latent = trajectory[-1]
    embedding = unconditional.detach().clone()
    optimised = []
    for index, timestep in enumerate(scheduler.timesteps):
        embedding = embedding.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=learning_rate * (1.0 - index / (2.0 * steps)))
        target = trajectory[steps - index - 1]
        with torch.no_grad():
            conditional_eps = predict(latent, timestep, condition)
        for _ in range(inner_steps):
            with torch.enable_grad():
                unconditional_eps = predict(latent, timestep, embedding)
                eps = unconditional_eps + guidance_scale * (conditional_eps - unconditional_eps)
                previous = scheduler.step(eps, timestep, latent, eta=0.0).prev_sample
                loss = F.mse_loss(previous.float(), target.float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            if loss.item() < _NULL_TEXT_EPSILON + index * 2e-5:
                break
        embedding = embedding.detach()
        optimised.append(embedding)
        with torch.no_grad():
            unconditional_eps = predict(latent, timestep, embedding)
            eps = unconditional_eps + guidance_scale * (conditional_eps - unconditional_eps)
            latent = scheduler.step(eps, timestep, latent, eta=0.0).prev_sample
        if progress is not None:
            progress(index + 1, steps)
    return optimised


# --------------------------------------------------------------------------- the pipeline


class AttentionFlowInterrupted(Exception):
    """The user interrupted an edit; nothing was written."""


@dataclass
class AttentionFlowInversion:
    """A reusable inversion of one clip: the inverted latents and, with null-text optimisation, one
    unconditional embedding per sampling step. Editing several prompts from it skips the inversion."""

    latents: Any
    source_prompt: str
    num_inference_steps: int
    guidance_scale: float
    video_digest: str
    null_text_embeddings: Optional[List[Any]] = None


@dataclass
class AttentionFlowPipelineOutput:
    """``videos[k]``: the edit with prompt k, RGB uint8 (frames, height, width, 3) or latents; ``source_video``
    the source branch's reconstruction; ``motion_words`` how often each word got the motion map."""

    videos: List[Any]
    source_video: Any
    inversion: AttentionFlowInversion
    motion_maps: Optional[np.ndarray]
    motion_words: Dict[str, int]
    notes: List[str] = field(default_factory=list)


class AttentionFlowPipeline:
    """Invert a clip with DDIM, then edit it with prompt-to-prompt control and motion map injection.

    ``components`` is an :class:`~.sd_loading.SDComponents`. :meth:`load_weights` optionally
    loads Tune-A-Video weights (the seed's stage 1); without them the edit is zero-shot.
    """

    _callback_tensor_inputs = ["latents"]

    def __init__(self, components: Any, *, device: Any = None, dtype: Any = None):
        self.components = components
        self.device, self.dtype = _place_components(components, device, dtype)
        self.weights_info: Optional[tav.TuneAVideoWeightsInfo] = None

    @property
    def unet(self) -> Any:
        return self.components.unet

    @property
    def scheduler_config(self) -> Dict[str, Any]:
        return self.components.scheduler_config

    def load_weights(self, path: str | Path) -> tav.TuneAVideoWeightsInfo:
        """Tune-A-Video weights (``tune_a_video.safetensors``) on top of the base model."""
        self.weights_info = tav.load_tune_a_video_weights(self.unet, path)
        self.unet.to(self.device, self.dtype)
        return self.weights_info

    # 1. Input checks

    def check_inputs(self, video: Any, source_prompt: Any, prompt: Any, settings: AttentionFlowSettings, *,
                     motion_maps: Any = None, inversion: Optional[AttentionFlowInversion] = None,
                     callback_on_step_end_tensor_inputs: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, List[str]]:
        """Validate one call; return the frames and the edited prompts. Raises ``ValueError`` that says what to do."""
        frames = np.stack(tav._checked_frames(video))
        count, height, width = frames.shape[:3]
        if count < 2:
            raise ValueError(f"AttentionFlow edits a clip with motion: give at least 2 frames (got {count}).")
        if count > MAX_FRAMES:
            raise ValueError(f"{count} frames are more than {MAX_FRAMES}; edit the video in parts.")
        for size, what in ((width, "width"), (height, "height")):
            if size % tav.SIZE_MULTIPLE:
                tav._check_multiple_of_8(size, f"The frames' {what}")
        if not isinstance(source_prompt, str) or not source_prompt.strip():
            raise ValueError(
                "The source prompt is empty: describe the video as it is (e.g. 'a car is moving on the road'); "
                "the edited prompt changes some of its words."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts:
            raise ValueError("No edited prompt was given: give the source prompt with the words to change, "
                             "e.g. 'a jeep is moving on the desert'.")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise ValueError(f"Edited prompt {index} is a {type(text).__name__}; prompts must be strings.")
            if not text.strip():
                raise ValueError("An edited prompt is empty. Give the edit as a full prompt, e.g. the source prompt "
                                 "with one word swapped ('a car ...' -> 'a jeep ...').")
            source_words, words = source_prompt.split(), text.split()
            if settings.edit_mode == "word_swap" and len(words) != len(source_words):
                raise ValueError(
                    f"Word swap needs the same number of words: the source prompt has {len(source_words)}, "
                    f"{text!r} has {len(words)}. Use edit_mode 'refine' (or 'auto') for added or removed words."
                )
        named = settings.motion_word_list()
        if named and settings.injection_strength > 0:
            everything = {_normal_word(w) for text in [source_prompt, *prompts] for w in text.split()}
            missing = [word for word in named if word not in everything]
            if len(missing) == len(named):
                raise ValueError(
                    f"The motion words {named} appear in neither the source prompt nor the edited prompts; name words "
                    f"of the prompts (e.g. the verb: {source_prompt.split()[-1]!r}?) or leave motion_words empty to pick "
                    "the best-matching words."
                )
        weights = settings.reweight_map()
        if weights:
            everything = {_normal_word(w) for text in prompts for w in text.split()}
            missing = [word for word in weights if word not in everything]
            if missing:
                raise ValueError(f"Re-weighted words {missing} are not in the edited prompt(s); re-weight words they contain.")
        if motion_maps is not None:
            maps = np.asarray(motion_maps)
            if maps.ndim != 3 or maps.shape[0] != count:
                raise ValueError(f"motion_maps must be (frames, height, width) with {count} frames, got {maps.shape}.")
            if not np.isfinite(maps).all() or maps.min() < 0:
                raise ValueError("motion_maps must be finite and non-negative (flow magnitudes).")
        if inversion is not None:
            if inversion.latents.shape[0] != count or inversion.latents.shape[-2:] != (height // 8, width // 8):
                raise ValueError(
                    f"The inversion holds {tuple(inversion.latents.shape)} latents; this clip needs ({count}, 4, "
                    f"{height // 8}, {width // 8}). Invert this clip (pass inversion=None)."
                )
            if inversion.num_inference_steps != settings.num_inference_steps:
                raise ValueError(f"The inversion has {inversion.num_inference_steps} steps; num_inference_steps is "
                                 f"{settings.num_inference_steps}. Use the same count, or invert again.")
            if inversion.source_prompt != source_prompt:
                raise ValueError(f"The inversion was made with the source prompt {inversion.source_prompt!r}, "
                                 f"not {source_prompt!r}; invert again.")
            if inversion.null_text_embeddings is not None and inversion.guidance_scale != settings.guidance_scale:
                raise ValueError(f"The null-text embeddings were optimised for guidance {inversion.guidance_scale}, "
                                 f"not {settings.guidance_scale}; invert again.")
        names = list(callback_on_step_end_tensor_inputs or [])
        unknown = [name for name in names if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs has {unknown}, which this pipeline does not provide; "
                             f"choose from {self._callback_tensor_inputs}.")
        return frames, prompts

    # 2. Encoders

    def encode_prompt(self, prompts: Sequence[str]) -> Tuple[Any, List[str]]:
        embeddings, notes = _encode_prompts(self.components.tokenizer, self.components.text_encoder, prompts)
        return embeddings.to(self.dtype), notes

    def encode_video(self, frames: np.ndarray, decode_chunk_size: int = 8) -> Any:
        """Scaled latents (frames, 4, h, w) of the posterior means (deterministic, for inversion)."""
        mean, _ = tav._encode_latent_distribution(self.components.vae, frames, decode_chunk_size)
        return (mean * float(self.components.vae.config.scaling_factor)).to(self.dtype)

    def decode_latents(self, latents: Any, decode_chunk_size: int = 8) -> np.ndarray:
        return _decode_latents(self.components.vae, latents, decode_chunk_size)

    # 3. Inversion

    def invert(self, frames: np.ndarray, source_prompt: str, settings: AttentionFlowSettings, *,
               progress: Optional[Callable[[int, int], None]] = None) -> AttentionFlowInversion:
        """DDIM-invert the clip with the source prompt and no guidance (Video-P2P); optional null-text optimisation."""
        import torch

        apply_attention_flow(self.unet, cross_frame_attention=settings.cross_frame_attention)
        state = _state(self.unet)
        state.control = None
        count = frames.shape[0]
        set_num_frames(self.unet, count)
        condition, _ = self.encode_prompt([source_prompt])
        latents = self.encode_video(frames, settings.decode_chunk_size)
        steps = settings.num_inference_steps
        null_steps = steps if settings.null_text_inner_steps else 0

        def predict(sample: Any, timestep: Any, context: Any = condition) -> Any:
            set_num_frames(self.unet, count)
            return self.unet(sample, timestep, encoder_hidden_states=context.expand(count, -1, -1)).sample

        def inverted(index: int, _timestep: Any, _latents: Any) -> None:
            if progress is not None:
                progress(index + 1, steps + null_steps)

        with torch.no_grad():
            trajectory = invert_latents(latents, predict, scheduler_config=self.scheduler_config, num_inference_steps=steps,
                                        callback=inverted)
        embeddings = None
        if settings.null_text_inner_steps:
            unconditional, _ = self.encode_prompt([settings.negative_prompt])

            def optimised(index: int, _total: int) -> None:
                if progress is not None:
                    progress(steps + index, steps + null_steps)

            embeddings = null_text_optimization(
                trajectory, predict, condition=condition, unconditional=unconditional,
                scheduler_config=self.scheduler_config, guidance_scale=settings.guidance_scale,
                inner_steps=settings.null_text_inner_steps, learning_rate=settings.null_text_learning_rate,
                progress=optimised,
            )
        return AttentionFlowInversion(
            latents=trajectory[-1], source_prompt=source_prompt, num_inference_steps=steps,
            guidance_scale=settings.guidance_scale, video_digest=tav._video_digest(frames), null_text_embeddings=embeddings,
        )

    # 4. The call

    def __call__(
        self,
        video: Any,
        source_prompt: str,
        prompt: Union[str, Sequence[str]],
        settings: Optional[AttentionFlowSettings] = None,
        *,
        motion_maps: Any = None,
        inversion: Optional[AttentionFlowInversion] = None,
        output_type: str = "np",
        callback_on_step_end: Optional[Callable[[Any, int, Any, Dict[str, Any]], Optional[Dict[str, Any]]]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        attention_recorder: Optional[AttentionRecorder] = None,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> AttentionFlowPipelineOutput:
        """Edit ``video`` from ``source_prompt`` into each of ``prompt``.

        Args:
            video: RGB uint8 frames (frames, height, width, 3), multiples of 8, at least 2 frames.
            source_prompt: what the video shows ("a car is moving on the road"); the inversion's prompt.
            prompt: the edited prompt(s) ("a jeep is moving on the desert"); one video each, edited together.
            settings: every knob (:class:`AttentionFlowSettings`); frames/size fields are not used here.
            motion_maps: (frames, H, W) non-negative motion maps instead of the clip's optical flow.
            inversion: an earlier call's ``output.inversion`` for this clip: skips the inversion.
            output_type: ``"np"`` (uint8 frames) or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...})`` after each sampling step; the
                latents stack every branch (source first); a returned ``{"latents": ...}`` replaces them.
            attention_recorder: called with an :class:`AttentionRecord` for every attn2 call (slow; for tests).
            progress: ``progress(step, steps)`` over inversion, null-text and sampling steps.

        Returns:
            :class:`AttentionFlowPipelineOutput`.
        """
        import torch

        settings = settings or AttentionFlowSettings()
        # 1. Check inputs.
        frames, prompts = self.check_inputs(video, source_prompt, prompt, settings, motion_maps=motion_maps,
                                            inversion=inversion,
                                            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}.")
        notes: List[str] = []
        count = frames.shape[0]
        steps = settings.num_inference_steps
        null_steps = steps if (inversion is None and settings.null_text_inner_steps) else 0
        total = (0 if inversion is not None else steps) + null_steps + steps
        if self.weights_info is not None and self.weights_info.frames != count:
            notes.append(f"The Tune-A-Video weights were trained on {self.weights_info.frames} frames; editing {count}.")
        if inversion is not None and inversion.video_digest != tav._video_digest(frames):
            notes.append("The inversion was made from other frames than these; the source branch will not match them.")

        # 2. Processors may have been reset since the last run: re-apply them.
        apply_attention_flow(self.unet, cross_frame_attention=settings.cross_frame_attention)
        state = _state(self.unet)
        state.control = None
        set_num_frames(self.unet, count)

        # 3. The inversion (Video-P2P: source prompt, no guidance; optional null-text).
        if inversion is None:
            inversion = self.invert(frames, source_prompt, settings,
                                    progress=None if progress is None else (lambda step, _steps: progress(step, total)))

        # 4. Tokens, motion maps and the control.
        tokenizer = self.components.tokenizer
        source_tokens = prompt_tokens(tokenizer, source_prompt)
        target_tokens = [prompt_tokens(tokenizer, text) for text in prompts]
        for tokens in [source_tokens, *target_tokens]:
            if tokens.truncated:
                notes.append(f"The prompt {tokens.prompt[:40]!r}... is longer than {tokenizer.model_max_length} tokens "
                             "and was cut.")
        maps = None
        if settings.injection_strength > 0.0:
            maps = (np.asarray(motion_maps, dtype=np.float32) if motion_maps is not None
                    else motion_maps_from_video(frames, settings.flow_method))
            if not maps.any():
                notes.append("The clip shows no motion (all optical flow is zero): nothing was injected.")
        latent_hw = (frames.shape[1] // 8, frames.shape[2] // 8)
        use_guidance = settings.guidance_scale > 1.0
        control = build_control(
            source_tokens, target_tokens, num_steps=steps, guidance=use_guidance, edit_mode=settings.edit_mode,
            cross_replace_steps=settings.cross_replace_steps, self_replace_steps=settings.self_replace_steps,
            swap_word_replace_steps=settings.swap_word_replace_steps, reweight=settings.reweight_map(),
            motion_maps=maps, injection_strength=settings.injection_strength, injection_decay=settings.injection_decay,
            motion_words=settings.motion_word_list(), motion_top_k=settings.motion_top_k,
            renormalize=settings.renormalize, latent_hw=latent_hw, recorder=attention_recorder, device=self.device,
        )
        for number, branch in enumerate(control.edited):
            notes.append(f"Edit {number + 1}: prompt-to-prompt {branch.mode.replace('_', ' ')}.")

        # 5. Sample every branch from the inverted latents, under the control.
        branches = control.branches
        embeddings, prompt_notes = self.encode_prompt([source_prompt, *prompts])
        notes.extend(prompt_notes)
        condition = embeddings.repeat_interleave(count, dim=0)
        negative, _ = self.encode_prompt([settings.negative_prompt])
        start = inversion.latents.to(self.device, self.dtype).repeat(branches, 1, 1, 1)
        done = {"steps": total - steps}

        def predict(sample: Any, timestep: Any) -> Any:
            set_num_frames(self.unet, count)
            if use_guidance:
                null = negative
                if inversion.null_text_embeddings is not None:
                    null = inversion.null_text_embeddings[min(control.step, len(inversion.null_text_embeddings) - 1)]
                context = torch.cat([null.to(self.dtype).expand(branches * count, -1, -1), condition])
                output = self.unet(torch.cat([sample, sample]), timestep, encoder_hidden_states=context).sample
                unconditional, conditional = output.chunk(2)
                return unconditional + settings.guidance_scale * (conditional - unconditional)
            return self.unet(sample, timestep, encoder_hidden_states=condition).sample

        def on_step_end(index: int, timestep: Any, tensors: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            control.step = index + 1
            done["steps"] += 1
            if progress is not None:
                progress(done["steps"], total)
            if callback_on_step_end is None:
                return None
            offered = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
            return callback_on_step_end(self, index, timestep, offered)

        state.control = control
        try:
            with torch.no_grad():
                sampled = tav.ddim_sample(start, predict, scheduler_config=self.scheduler_config, num_inference_steps=steps,
                                          callback_on_step_end=on_step_end)
        finally:
            # The control belongs to this call: later UNet calls (other pipelines) must run plain attention.
            state.control = None
        if control.motion is not None and control.chosen_counts:
            ranked = sorted(control.chosen_counts.items(), key=lambda item: -item[1])
            notes.append("Motion map injected into: " + ", ".join(f"'{word}' ({n} layer calls)" for word, n in ranked[:4]))

        # 6. Decode.
        per_branch = sampled.view(branches, count, *sampled.shape[1:])
        if output_type == "latent":
            outputs = [per_branch[b] for b in range(branches)]
        else:
            outputs = [self.decode_latents(per_branch[b], settings.decode_chunk_size) for b in range(branches)]
        return AttentionFlowPipelineOutput(
            videos=outputs[1:], source_video=outputs[0], inversion=inversion, motion_maps=maps,
            motion_words=dict(control.chosen_counts), notes=notes,
        )


# --------------------------------------------------------------------------- the whole edit, from a file


@dataclass
class AttentionFlowResult:
    videos: List[np.ndarray]
    prompts: List[str]
    output_paths: List[Path]
    fps: float
    motion_words: Dict[str, int]
    notes: List[str]
    seconds: Dict[str, float]


def edit_attention_flow(
    video: Any,
    source_prompt: str,
    prompts: Union[str, Sequence[str]],
    settings: Optional[AttentionFlowSettings] = None,
    *,
    model: Optional[str | Path] = None,
    weights: Optional[str | Path] = None,
    components: Any = None,
    models_dir: Optional[str | Path] = None,
    tokenizer: Any = None,
    device: Any = None,
    output_path: Optional[str | Path] = None,
    fps: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    should_interrupt: Optional[Callable[[], bool]] = None,
) -> AttentionFlowResult:
    """Edit a video file (or frames) with AttentionFlow; with ``output_path`` (``.mp4``) write each edit there.

    ``settings`` picks the frames (``frames``, ``sample_start``, ``sample_stride``) and size.
    ``weights``: optional Tune-A-Video weights (the seed tunes first; zero-shot without).
    ``progress(step, steps)`` counts inversion, null-text and sampling steps; ``should_interrupt()``
    is checked after each sampling step, and a true answer raises :class:`AttentionFlowInterrupted`
    before anything is written. Several prompts give ``name-1.mp4``, ``name-2.mp4``, ...
    """
    import torch

    from .sd_loading import load_sd_components

    settings = settings or AttentionFlowSettings()
    started = time.perf_counter()
    # 1. Check inputs before anything heavy is loaded.
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    paths = _output_paths(output_path, max(1, len(prompt_list)))
    clip = tav.sample_video_frames(video, frames=settings.frames, start=settings.sample_start, stride=settings.sample_stride,
                                   width=settings.width, height=settings.height, fps=fps)
    notes = list(clip.notes)
    probe = AttentionFlowPipeline.__new__(AttentionFlowPipeline)  # check_inputs needs no model
    probe.check_inputs(clip.frames, source_prompt, prompt_list, settings)

    # 2. Load the base model (and optional weights).
    if components is None:
        components = load_sd_components(model, models_dir=models_dir, tokenizer=tokenizer)
    notes.extend(components.notes)
    device, dtype = _run_device_and_dtype(device, settings.half_precision)
    pipeline = AttentionFlowPipeline(components, device=device, dtype=dtype)
    if weights:
        notes.extend(filter(None, [_base_model_note(pipeline.load_weights(weights), components, "The weights")]))
    seconds: Dict[str, float] = {}

    def on_step_end(_pipe: Any, index: int, _timestep: Any, _tensors: Dict[str, Any]) -> None:
        if should_interrupt is not None and should_interrupt():
            raise AttentionFlowInterrupted(f"Interrupted after editing step {index + 1}; nothing was written.")
        return None

    # 3. Invert and edit.
    loaded = time.perf_counter()
    seconds["load_s"] = loaded - started
    output = pipeline(clip.frames, source_prompt, prompt_list, settings, callback_on_step_end=on_step_end, progress=progress)
    seconds["edit_s"] = time.perf_counter() - loaded
    notes.extend(output.notes)

    # 4. Write the videos (each file appears complete or not at all).
    out_fps = clip.fps or 8.0
    if paths:
        from ..video_io import write_video

        for path, frames in zip(paths, output.videos):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, frames, Fraction(out_fps).limit_denominator(1001))
    seconds["total_s"] = time.perf_counter() - started
    return AttentionFlowResult(videos=output.videos, prompts=prompt_list, output_paths=paths, fps=float(out_fps),
                               motion_words=output.motion_words, notes=notes, seconds=seconds)


# --------------------------------------------------------------------------- command line

CLI_COMMAND = "attention-flow"
_CLI_OPTIONS_SKIP = ()


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``attention-flow VIDEO OUTPUT ...`` to an argparse sub-command set; dispatch with ``args.handler(args)``."""
    from ..cli import add_model_options

    parser = subparsers.add_parser(
        CLI_COMMAND, help="AttentionFlow: zero-shot video editing with prompt-to-prompt control and motion map injection",
        description="DDIM-invert VIDEO with --source-prompt, then edit it into --prompt with prompt-to-prompt attention "
        "control and the motion map (optical-flow magnitude) injected into the motion words' cross-attention; "
        "writes OUTPUT.mp4.",
    )
    parser.add_argument("video", help="the source video file")
    parser.add_argument("output", help="the edited video (.mp4); several prompts give OUTPUT-1.mp4, OUTPUT-2.mp4, ...")
    parser.add_argument("--model", required=True, help="SD 1.x base model: a .safetensors checkpoint, a diffusers folder, "
                        "or a name under MODELS_DIR/Stable-diffusion")
    parser.add_argument("--source-prompt", required=True, help="what the video shows, e.g. 'a car is moving on the road'")
    parser.add_argument("--prompt", required=True, action="append",
                        help="the edited prompt, e.g. 'a jeep is moving on the desert' (repeat for several videos)")
    parser.add_argument("--weights", default=None, help="optional Tune-A-Video weights trained on this video "
                        "(the seed's stage 1); zero-shot without")
    parser.add_argument("--frames-dir", default=None, help="also write each video's frames as PNGs here")
    parser.add_argument("--models-dir", default=None,
                        help="the WebUI's models folder (--model may name a file in its Stable-diffusion/)")
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder for single-file checkpoints "
                        "(default: the cached openai/clip-vit-large-patch14)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_model_options(parser, AttentionFlowSettings, skip=_CLI_OPTIONS_SKIP)
    parser.set_defaults(handler=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """``attention-flow``: 0 when done, 2 with one ``error:`` line for bad input."""
    return run_video_command(args, AttentionFlowSettings, lambda settings, progress: edit_attention_flow(
        args.video, args.source_prompt, args.prompt, settings, model=args.model, weights=args.weights,
        models_dir=args.models_dir, tokenizer=args.tokenizer, device=args.device, output_path=args.output,
        progress=progress,
    ), extra=lambda result: {"motion_words": result.motion_words})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lib_vidguide.pipelines.attention_flow VIDEO OUTPUT ...``: the same command before it is wired."""
    parser = argparse.ArgumentParser(prog="python -m lib_vidguide.pipelines.attention_flow", add_help=False)
    commands = parser.add_subparsers(dest="command", required=True)
    register_cli(commands)
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args([CLI_COMMAND, *arguments])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
