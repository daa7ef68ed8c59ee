"""Stable Diffusion 1.x base models for the fine-tuning editors, offline.

Two sources are accepted:

* a **diffusers folder** (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``), loaded component by component with
  ``local_files_only=True``;
* a **single-file checkpoint** in the original LDM key layout, like the WebUI's
  ``models/Stable-diffusion/*.safetensors`` (``.ckpt`` is read with
  ``torch.load(weights_only=True)``, which refuses pickled code).

diffusers' own ``from_single_file`` fetches component configs from the Hugging Face hub,
which the WebUI may not reach. Here the SD 1.x configuration ships in code
(:data:`SD1_LDM_CONFIG`, the ``v1-inference.yaml`` values), the sizes that weights reveal
(channels, levels, blocks per level, context width, text-encoder depth and width) are read
from the tensors' shapes, and the state dict is converted by diffusers 0.31's own
converters in ``diffusers/loaders/single_file_utils.py`` (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``). What weights cannot
reveal stays SD 1.x's: 8 attention heads in the UNet, 32 groups in every GroupNorm, CLIP-L's
64-wide attention heads and ``quick_gelu``.

A single file holds no tokenizer. The WebUI downloads ``openai/clip-vit-large-patch14``'s
tokenizer into the Hugging Face cache at its first start; that cached copy is used unless a
tokenizer folder is given.

torch, diffusers, transformers and safetensors are imported inside functions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

logger = logging.getLogger("vidguide")

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CLIP_TOKENIZER_HUB_ID",
    "MODELS_SUBDIR",
    "SD1_CLIP_TEXT_CONFIG",
    "SD1_LDM_CONFIG",
    "SD1_SCHEDULER_CONFIG",
    "SDComponents",
    "available_base_models",
    "base_model_fingerprint",
    "load_diffusers_folder",
    "load_sd_components",
    "load_single_file",
    "models_hint",
    "read_checkpoint_state_dict",
    "resolve_base_model",
    "sd1_configs_from_ldm",
]

# The WebUI keeps its checkpoints in <models>/Stable-diffusion.
MODELS_SUBDIR = "Stable-diffusion"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
CLIP_TOKENIZER_HUB_ID = "openai/clip-vit-large-patch14"

# CompVis/stable-diffusion configs/stable-diffusion/v1-inference.yaml, the parts diffusers'
# config creators read. Shape-revealed values are replaced per checkpoint.
SD1_LDM_CONFIG: Dict[str, Any] = {
    "model": {
        "params": {
            "scale_factor": 0.18215,
            "unet_config": {
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "use_linear_in_transformer": False,
                    "legacy": False,
                }
            },
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                }
            },
        }
    }
}

# openai/clip-vit-large-patch14, text tower (SD 1.x's text encoder).
SD1_CLIP_TEXT_CONFIG: Dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
CLIP_HEAD_DIM = 64

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, as a DDIM config.
SD1_SCHEDULER_CONFIG: Dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_CLIP_PREFIX = "cond_stage_model.transformer."


@dataclass
class SDComponents:
    """An SD 1.x model's parts, in float32 on the CPU unless loaded otherwise.

    ``scheduler_config`` is a DDIM-compatible config (training noise, sampling and
    inversion all derive from it); ``fingerprint`` identifies the UNet weights so trained
    artefacts can say which base they were trained on.
    """

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: Dict[str, Any]
    source: str
    kind: str  # "diffusers" or "single_file"
    notes: List[str] = field(default_factory=list)
    _fingerprint: Optional[str] = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = base_model_fingerprint(self.unet)
        return self._fingerprint

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.kind == "single_file" else Path(self.source).name

    def noise_scheduler(self):
        """The training-time forward process (DDPM) of this model."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def ddim_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def inverse_scheduler(self):
        from diffusers import DDIMInverseScheduler

        return DDIMInverseScheduler.from_config(self.scheduler_config)


# --------------------------------------------------------------------------- finding models


def models_hint(models_dir: Optional[str | Path] = None) -> str:
    where = Path(models_dir) / MODELS_SUBDIR if models_dir is not None else Path("models") / MODELS_SUBDIR
    return (
        f"Put a Stable Diffusion 1.x checkpoint (a single .safetensors file, as the WebUI uses) in {where} and give "
        "its name or path, or give the path of a diffusers folder (with model_index.json, unet/, vae/, text_encoder/, "
        "tokenizer/ and scheduler/)."
    )


def available_base_models(models_dir: Optional[str | Path]) -> List[str]:
    """Names under ``models_dir/Stable-diffusion``: single-file checkpoints and diffusers folders."""
    if models_dir is None:
        return []
    root = Path(models_dir) / MODELS_SUBDIR
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.rglob("*")):
        if entry.is_file() and entry.suffix.lower() in CHECKPOINT_SUFFIXES:
            found.append(entry.relative_to(root).as_posix())
        elif entry.is_dir() and (entry / "model_index.json").is_file():
            found.append(entry.relative_to(root).as_posix())
    return found


def resolve_base_model(model: Optional[str | Path], models_dir: Optional[str | Path] = None) -> Path:
    """A single-file checkpoint or a diffusers folder, by path or by name under ``models_dir/Stable-diffusion``.

    Nothing is downloaded: hub ids are not accepted, since the training and editing
    runs must work offline.
    """
    text = str(model or "").strip()
    if not text:
        found = available_base_models(models_dir)
        listed = f" Found: {', '.join(found)}." if found else ""
        raise ValueError(f"No base model was given. {models_hint(models_dir)}{listed}")
    candidates = [Path(text).expanduser()]
    if models_dir is not None:
        root = Path(models_dir) / MODELS_SUBDIR
        candidates.append(root / text)
        candidates.extend(root / (text + suffix) for suffix in CHECKPOINT_SUFFIXES)
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / "model_index.json").is_file():
                raise ValueError(
                    f"'{candidate}' is a folder without model_index.json, so not a diffusers model. {models_hint(models_dir)}"
                )
            return candidate
        if candidate.is_file():
            if candidate.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise ValueError(
                    f"'{candidate}' is not a checkpoint ({candidate.suffix or 'no suffix'}); expected .safetensors or .ckpt. "
                    f"{models_hint(models_dir)}"
                )
            return candidate
    raise ValueError(f"The base model '{text}' was not found. {models_hint(models_dir)}")


def load_sd_components(
    model: Optional[str | Path],
    *,
    models_dir: Optional[str | Path] = None,
    tokenizer: Any = None,
    torch_dtype: Any = None,
) -> SDComponents:
    """Load an SD 1.x model from a diffusers folder or a single-file checkpoint (see :func:`resolve_base_model`).

    ``tokenizer`` (single files only): a ``CLIPTokenizer`` or a folder holding one; by
    default the WebUI's cached ``openai/clip-vit-large-patch14``.
    """
    path = resolve_base_model(model, models_dir)
    if path.is_dir():
        return load_diffusers_folder(path, torch_dtype=torch_dtype)
    return load_single_file(path, tokenizer=tokenizer, torch_dtype=torch_dtype)


# --------------------------------------------------------------------------- diffusers folders


def _load_folder_parts(folder: Path, unet_class: Any) -> tuple[Any, Any, Any, Any, Dict[str, Any]]:
    """UNet (``unet_class``), VAE, CLIP text encoder, tokenizer (``from_pretrained(local_files_only=True)``) and
    the scheduler's config of a diffusers folder; a ValueError names the folder when one cannot be loaded."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = unet_class.from_pretrained(folder, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"Could not load the diffusers model in '{folder}': {' '.join(str(error).split())}") from error
    return unet, vae, text_encoder, tokenizer, scheduler_config


def load_diffusers_folder(folder: str | Path, *, torch_dtype: Any = None) -> SDComponents:
    """Each component with ``from_pretrained(local_files_only=True)``; the safety checker is never loaded."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    folder = Path(folder)
    missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / name).is_dir()]
    if missing:
        raise ValueError(
            f"The diffusers folder '{folder}' lacks {', '.join(missing)}/; Tune-A-Video needs a complete "
            f"Stable Diffusion 1.x pipeline folder. {models_hint()}"
        )
    unet, vae, text_encoder, tokenizer, scheduler_config = _load_folder_parts(folder, UNet2DConditionModel)
    notes = []
    cross_dim = unet.config.cross_attention_dim
    if isinstance(cross_dim, (list, tuple)) or unet.config.get("addition_embed_type") is not None:
        raise ValueError(f"'{folder}' is not a Stable Diffusion 1.x model (SDXL-style UNet); Tune-A-Video needs SD 1.x.")
    if text_encoder.config.hidden_size != cross_dim:
        raise ValueError(
            f"'{folder}': the text encoder is {text_encoder.config.hidden_size} wide but the UNet expects {cross_dim}."
        )
    if unet.config.in_channels != 4:
        raise ValueError(
            f"'{folder}' has a UNet with {unet.config.in_channels} input channels (an inpainting or depth model?); "
            "Tune-A-Video needs a plain text-to-image SD 1.x model."
        )
    config = _ddim_config_from(scheduler_config)
    components = SDComponents(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler_config=config,
        source=str(folder), kind="diffusers", notes=notes,
    )
    return _finish(components, torch_dtype)


def _ddim_config_from(scheduler_config: Dict[str, Any]) -> Dict[str, Any]:
    """The noise-schedule keys of a folder's scheduler (any class), with SD 1.x's DDIM settings around them."""
    config = dict(SD1_SCHEDULER_CONFIG)
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "prediction_type", "steps_offset", "timestep_spacing", "set_alpha_to_one"):
        if scheduler_config.get(key) is not None:
            config[key] = scheduler_config[key]
    # Latents are not confined to [-1, 1]; clipping x0 would distort inversion.
    config["clip_sample"] = False
    if config.get("timestep_spacing") not in ("leading", "trailing"):
        config["timestep_spacing"] = "leading"
    return config


def _finish(components: SDComponents, torch_dtype: Any) -> SDComponents:
    for module in (components.unet, components.vae, components.text_encoder):
        module.eval().requires_grad_(False)
        if torch_dtype is not None:
            module.to(torch_dtype)
    return components


# --------------------------------------------------------------------------- single files


def read_checkpoint_state_dict(path: str | Path) -> Dict[str, Any]:
    """The tensors of a .safetensors or .ckpt file (``.ckpt`` through ``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and pickle raise many unrelated types for a damaged file
        raise ValueError(
            f"Cannot read the checkpoint '{path}' ({type(error).__name__}: {' '.join(str(error).split())[:300]}). "
            "Is the download complete? A .ckpt holding pickled code is refused; convert it to .safetensors."
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"'{path}' does not hold a state dict (found {type(loaded).__name__}).")
    return {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _count_indices(state_dict: Dict[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(match.group(1)) for key in state_dict for match in [regex.match(key)] if match}
    return max(indices) + 1 if indices else 0


def _check_sd1(state_dict: Dict[str, Any], path: Path) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    if not any(key.startswith(_UNET_PREFIX) for key in state_dict):
        raise ValueError(
            f"'{path}' has no Stable Diffusion UNet (no '{_UNET_PREFIX}*' keys): it may be a LoRA, a VAE or an "
            f"embedding. {models_hint()}"
        )
    model_type = infer_diffusers_model_type(state_dict)
    if model_type != "v1":
        kinds = {"v2": "Stable Diffusion 2.x", "inpainting": "an SD 1.x inpainting model", "inpainting_v2": "an SD 2.x inpainting model",
                 "xl_base": "SDXL", "xl_refiner": "an SDXL refiner", "xl_inpaint": "an SDXL inpainting model"}
        raise ValueError(
            f"'{path}' is {kinds.get(model_type, model_type)}; Tune-A-Video needs a Stable Diffusion 1.x text-to-image "
            "checkpoint (SD 1.4/1.5 or a fine-tune of it)."
        )
    if not any(key.startswith(_CLIP_PREFIX) for key in state_dict):
        raise ValueError(f"'{path}' has no SD 1.x CLIP text encoder ('{_CLIP_PREFIX}*' keys).")
    if not any(key.startswith(prefix) for prefix in _VAE_PREFIXES for key in state_dict):
        raise ValueError(f"'{path}' has no VAE ('first_stage_model.*' keys); use a full checkpoint, not a pruned UNet.")


def sd1_configs_from_ldm(state_dict: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """diffusers configs for the UNet, the VAE and the CLIP text encoder of an SD 1.x LDM state dict.

    Starts from :data:`SD1_LDM_CONFIG` and :data:`SD1_CLIP_TEXT_CONFIG` and replaces every
    size the tensors reveal; the UNet and VAE configs come from diffusers'
    ``create_unet_diffusers_config_from_ldm`` / ``create_vae_diffusers_config_from_ldm``.
    """
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    original = copy.deepcopy(SD1_LDM_CONFIG)
    unet_params = original["model"]["params"]["unet_config"]["params"]
    conv_in = state_dict[_UNET_PREFIX + "input_blocks.0.0.weight"]
    model_channels = int(conv_in.shape[0])
    input_blocks = _count_indices(state_dict, re.escape(_UNET_PREFIX) + r"input_blocks\.(\d+)\.")
    levels = 1 + sum(1 for i in range(input_blocks) if _UNET_PREFIX + f"input_blocks.{i}.0.op.weight" in state_dict)
    res_blocks, remainder = divmod(input_blocks - levels, levels)
    if remainder:
        raise ValueError(f"Unrecognised UNet layout: {input_blocks} input blocks over {levels} levels.")
    channel_mult, attention_resolutions = [], []
    for level in range(levels):
        first = 1 + level * (res_blocks + 1)
        out_channels = state_dict[_UNET_PREFIX + f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]
        channel_mult.append(int(out_channels) // model_channels)
        if any(key.startswith(_UNET_PREFIX + f"input_blocks.{first}.1.") for key in state_dict):
            attention_resolutions.append(2**level)
    attention_key = next(key for key in state_dict if key.startswith(_UNET_PREFIX) and key.endswith("attn2.to_k.weight"))
    proj_in = next(key for key in state_dict if key.startswith(_UNET_PREFIX) and key.endswith(".proj_in.weight"))
    transformer_prefix = proj_in[: -len("proj_in.weight")]
    unet_params.update(
        in_channels=int(conv_in.shape[1]),
        out_channels=int(state_dict[_UNET_PREFIX + "out.2.weight"].shape[0]),
        model_channels=model_channels,
        num_res_blocks=res_blocks,
        channel_mult=channel_mult,
        attention_resolutions=attention_resolutions,
        context_dim=int(state_dict[attention_key].shape[1]),
        transformer_depth=_count_indices(state_dict, re.escape(transformer_prefix) + r"transformer_blocks\.(\d+)\."),
        use_linear_in_transformer=state_dict[proj_in].ndim == 2,
    )

    vae_prefix = next(prefix for prefix in _VAE_PREFIXES if any(key.startswith(prefix) for key in state_dict))
    ddconfig = original["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    vae_conv_in = state_dict[vae_prefix + "encoder.conv_in.weight"]
    ch = int(vae_conv_in.shape[0])
    vae_levels = _count_indices(state_dict, re.escape(vae_prefix) + r"encoder\.down\.(\d+)\.")
    ddconfig.update(
        ch=ch,
        in_channels=int(vae_conv_in.shape[1]),
        out_ch=int(state_dict[vae_prefix + "decoder.conv_out.weight"].shape[0]),
        z_channels=int(state_dict[vae_prefix + "decoder.conv_in.weight"].shape[1]),
        num_res_blocks=_count_indices(state_dict, re.escape(vae_prefix) + r"encoder\.down\.0\.block\.(\d+)\."),
        ch_mult=[
            int(state_dict[vae_prefix + f"encoder.down.{level}.block.0.conv2.weight"].shape[0]) // ch
            for level in range(vae_levels)
        ],
    )

    unet_config = create_unet_diffusers_config_from_ldm(original, state_dict)
    vae_config = create_vae_diffusers_config_from_ldm(original, state_dict)

    text = dict(SD1_CLIP_TEXT_CONFIG)
    token_embedding = state_dict[_CLIP_PREFIX + "text_model.embeddings.token_embedding.weight"]
    hidden = int(token_embedding.shape[1])
    if hidden % CLIP_HEAD_DIM:
        raise ValueError(f"The text encoder is {hidden} wide, not a multiple of CLIP's {CLIP_HEAD_DIM}-wide heads.")
    text.update(
        vocab_size=int(token_embedding.shape[0]),
        hidden_size=hidden,
        num_attention_heads=hidden // CLIP_HEAD_DIM,
        intermediate_size=int(state_dict[_CLIP_PREFIX + "text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_count_indices(state_dict, re.escape(_CLIP_PREFIX) + r"text_model\.encoder\.layers\.(\d+)\."),
        max_position_embeddings=int(state_dict[_CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"].shape[0]),
        projection_dim=hidden,
    )
    return {"unet": unet_config, "vae": vae_config, "text_encoder": text}


def _load_into_empty(model_factory, converted: Dict[str, Any], what: str, path: Path, allowed_missing=()) -> Any:
    """Build ``model_factory()`` without allocating weights, then take the converted tensors (strictly)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_factory()
    empty_state = model.state_dict()
    expected = set(empty_state)
    missing = sorted(expected - set(converted) - set(allowed_missing))
    unexpected = sorted(set(converted) - expected)
    if missing or unexpected:
        raise ValueError(
            f"The {what} in '{path}' does not match SD 1.x's layout: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )
    shapes = [(key, tuple(converted[key].shape), tuple(empty_state[key].shape)) for key in converted]
    wrong = [entry for entry in shapes if entry[1] != entry[2]]
    if wrong:
        raise ValueError(f"The {what} in '{path}' has tensors of unexpected shapes, e.g. {wrong[:3]}.")
    model.load_state_dict({key: value.float() for key, value in converted.items()}, strict=False, assign=True)
    still_empty = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if tensor.is_meta]
    if still_empty:
        raise ValueError(f"The {what} in '{path}' left {len(still_empty)} tensors unset, e.g. {still_empty[:3]}.")
    return model


def _drop(state_dict: Dict[str, Any], prefixes: tuple) -> None:
    for key in [key for key in state_dict if key.startswith(prefixes)]:
        del state_dict[key]


def _tokenizer_for_single_file(tokenizer: Any, path: Path):
    from transformers import CLIPTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    if tokenizer is not None:
        folder = Path(tokenizer).expanduser()
        if (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        if not (folder / "vocab.json").is_file():
            raise ValueError(f"The tokenizer folder '{folder}' has no vocab.json (and merges.txt).")
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    try:
        return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_HUB_ID, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"'{path.name}' holds no tokenizer, and {CLIP_TOKENIZER_HUB_ID}'s tokenizer is not in the Hugging Face cache "
            "(the WebUI downloads it at its first start). Start the WebUI once with network access, or give a tokenizer "
            "folder (with vocab.json and merges.txt, e.g. a diffusers SD 1.5 folder's tokenizer/)."
        ) from error


def load_single_file(path: str | Path, *, tokenizer: Any = None, torch_dtype: Any = None) -> SDComponents:
    """An SD 1.x single-file checkpoint (LDM keys) as diffusers components, with no network access."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    state_dict = read_checkpoint_state_dict(path)
    _check_sd1(state_dict, path)
    configs = sd1_configs_from_ldm(state_dict)
    tokenizer = _tokenizer_for_single_file(tokenizer, path)

    # One component at a time, dropping its source tensors after: an fp16 checkpoint is never held twice.
    unet = _load_into_empty(lambda: UNet2DConditionModel(**configs["unet"]),
                            convert_ldm_unet_checkpoint(state_dict, configs["unet"]), "UNet", path)
    _drop(state_dict, (_UNET_PREFIX, "model_ema."))
    vae = _load_into_empty(lambda: AutoencoderKL(**configs["vae"]),
                           convert_ldm_vae_checkpoint(state_dict, configs["vae"]), "VAE", path)
    _drop(state_dict, _VAE_PREFIXES)
    # position_ids is an index buffer; some checkpoints store it as floats (even damaged): rebuild it.
    text_weights = {k: v for k, v in convert_ldm_clip_checkpoint(state_dict).items() if not k.endswith("position_ids")}
    text_config = CLIPTextConfig(**configs["text_encoder"])
    text_encoder = _load_into_empty(
        lambda: CLIPTextModel(text_config), text_weights, "text encoder", path,
        allowed_missing=("text_model.embeddings.position_ids",),
    )
    del state_dict, text_weights
    notes = []
    if len(tokenizer) != text_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder in '{path.name}' has {text_config.vocab_size}; "
            "give the tokenizer that belongs to this model."
        )
    components = SDComponents(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
        scheduler_config=dict(SD1_SCHEDULER_CONFIG), source=str(path), kind="single_file", notes=notes,
    )
    return _finish(components, torch_dtype)


def base_model_fingerprint(unet: Any) -> str:
    """A short hash of a few UNet tensors (as float32): which base model trained weights belong to."""
    import torch

    digest = hashlib.sha256()
    state = unet.state_dict()
    for key in ("conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight"):
        if key in state:
            tensor = state[key].detach().to("cpu", torch.float32).contiguous()
            digest.update(key.encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- helpers the pipelines share


def _encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str]) -> tuple[Any, List[str]]:
    """CLIP hidden states of each prompt, padded to the tokenizer's 77 tokens; notes for truncated prompts."""
    import torch

    notes = []
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    for prompt in prompts:
        if len(tokenizer(prompt).input_ids) > tokenizer.model_max_length:
            notes.append(f"The prompt {prompt[:40]!r}... is longer than {tokenizer.model_max_length} tokens and was cut.")
    with torch.no_grad():
        embeddings = text_encoder(tokens.input_ids.to(text_encoder.device))[0]
    return embeddings, notes


def _decode_latents(vae: Any, latents: Any, chunk: int) -> Any:
    """RGB uint8 ``(frames, H, W, 3)`` numpy frames of scaled latents ``(frames, 4, h, w)``, ``chunk`` frames at a time."""
    import torch

    pictures = []
    with torch.no_grad():
        for begin in range(0, latents.shape[0], chunk):
            part = latents[begin:begin + chunk].to(vae.device, vae.dtype) / float(vae.config.scaling_factor)
            image = vae.decode(part).sample.float()
            pictures.append(((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(pictures).numpy()


def _place_components(components: Any, device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """Move the UNet, VAE and text encoder to ``device`` (default CPU) and ``dtype`` (default float32); both back."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or torch.float32
    for module in (components.unet, components.vae, components.text_encoder):
        module.to(device, dtype)
    return device, dtype


def _run_device_and_dtype(device: Any, half_precision: bool) -> tuple[Any, Any]:
    """The device an edit runs on (given, else CUDA when present) and its dtype (fp16 only on CUDA)."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, (torch.float16 if half_precision and device.type == "cuda" else torch.float32)


def _base_model_note(info: Any, components: Any, what: str) -> Optional[str]:
    """A warning when trained tensors meet another base model than the one they were trained on."""
    if info.base_model_fingerprint and components.fingerprint != info.base_model_fingerprint:
        return (f"{what} were trained on '{info.base_model}', another base model than '{components.name}'; "
                "results may be poor.")
    return None


def _counting_step_callback(total: int, progress: Optional[Callable[[int, int], None]],
                            should_interrupt: Optional[Callable[[], bool]], interrupted: type) -> Callable:
    """A ``callback_on_step_end`` that reports step k of ``total`` across all prompts and raises
    ``interrupted`` (the method's exception) when asked to stop; nothing has been written then."""
    done = {"steps": 0}

    def on_step_end(_pipe, _index, _timestep, _tensors):
        done["steps"] += 1
        if progress is not None:
            progress(done["steps"], total)
        if should_interrupt is not None and should_interrupt():
            raise interrupted(f"Interrupted after sampling step {done['steps']} of {total}; nothing was written.")
        return None

    return on_step_end


def _output_paths(output_path: Optional[str | Path], count: int) -> List[Path]:
    """``name.mp4`` for one video, ``name-1.mp4``, ``name-2.mp4``, ... for several; none without ``output_path``."""
    if output_path is None:
        return []
    path = Path(output_path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"The output '{path.name}' must end in .mp4.")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{index + 1}{path.suffix}") for index in range(count)]
