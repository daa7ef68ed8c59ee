"""Tiny random-weight Stable Diffusion components, built from configs.

No weights can be downloaded in tests, CI or the demo, so these follow
diffusers' own tests: real classes, tiny configs, ``torch.manual_seed`` before
each component. The outputs are meaningless pictures; the point is that every
code path (tokenizer, text encoder, UNet, VAE with SD's 8x downsampling and
scale factor, schedulers) is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_TEXT_DIM = 32
TINY_VAE_SCALING = 0.18215  # SD 1.x's latent scale, so scaled latents behave as in the WebUI


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet (the same table CLIPTokenizer uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def write_tiny_tokenizer(directory: str | Path) -> Path:
    """A real CLIPTokenizer with a byte-level vocabulary and no merges (one token per character)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(set(_bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for char in alphabet:
        vocab[char] = len(vocab)
    for char in alphabet:
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}), encoding="utf-8"
    )
    return directory


def build_tiny_components(seed: int = 0) -> dict:
    """Tokenizer, text encoder, UNet, VAE and a DDIM scheduler with SD 1.x's noise schedule."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp))

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    # Four blocks give three downsamplings: the WebUI's 8x latent grid.
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=TINY_VAE_SCALING,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=tokenizer.pad_token_id,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae, "scheduler": scheduler}


def save_tiny_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """Save the tiny components as a diffusers StableDiffusionPipeline folder."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    components = build_tiny_components(seed)
    pipeline = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    (directory / "VIDGUIDE_RANDOM_WEIGHTS.txt").write_text(
        "This model has random weights. It exercises every code path but draws no meaningful pictures.\n",
        encoding="utf-8",
    )
    return directory
