"""Tune-A-Video on tiny random-weight SD models, on the CPU (PIPELINES.md §2, issue 5).

Measured here: the inflated UNet equals the image UNet at init; gradients reach only TAV's
trainable tensors; the fixed-noise loss falls over 30 steps; save/load is exact; DDIM
inversion pairs with DDIM sampling (analytic ε of one data point); processors are
re-applied before every run; the single-file loader matches the diffusers folder; the CLI
trains and edits end to end.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_vidguide.pipelines import tune_a_video as tav
from lib_vidguide.pipelines.cli_support import given
from lib_vidguide.pipelines.sd_loading import (
    SD1_CLIP_TEXT_CONFIG,
    SD1_SCHEDULER_CONFIG,
    SDComponents,
    load_diffusers_folder,
    load_sd_components,
    load_single_file,
    resolve_base_model,
    sd1_configs_from_ldm,
)
from lib_vidguide.tiny_models import build_tiny_components, save_tiny_pipeline, write_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from videos import moving_pattern, write_clip  # noqa: E402

FRAMES = 4
SIZE = 64  # the tiny VAE downsamples 8x: 8x8 latents


def tiny_components(seed: int = 0) -> SDComponents:
    parts = build_tiny_components(seed)
    return SDComponents(
        tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], unet=parts["unet"], vae=parts["vae"],
        scheduler_config=dict(parts["scheduler"].config), source="tiny", kind="diffusers",
    )


def unet_inputs(frames: int = FRAMES, still: bool = False, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(frames, 4, 8, 8, generator=generator)
    if still:
        latents = latents[:1].repeat(frames, 1, 1, 1)
    context = torch.randn(1, 77, 32, generator=generator).expand(frames, -1, -1)
    return latents, context


def run_unet(unet, latents, context, timestep=500):
    with torch.no_grad():
        return unet(latents, timestep, encoder_hidden_states=context).sample


def clip_frames(count: int = 8) -> np.ndarray:
    return np.stack(moving_pattern(count, size=(SIZE, SIZE), shift_px=3.0))


def small_settings(**overrides) -> tav.TuneAVideoSettings:
    values = dict(frames=FRAMES, sample_stride=1, width=SIZE, height=SIZE, max_train_steps=30, learning_rate=1e-3,
                  checkpointing_steps=0)
    values.update(overrides)
    return tav.TuneAVideoSettings(**values)


# --------------------------------------------------------------------------- inflation


def test_inflated_unet_equals_the_image_unet_at_init():
    components = tiny_components()
    image_unet = copy.deepcopy(components.unet)
    still, context = unet_inputs(still=True)
    moving, _ = unet_inputs()
    expected_still = run_unet(image_unet, still, context)
    expected_moving = run_unet(image_unet, moving, context)

    global_rng = torch.random.get_rng_state()
    unet = tav.inflate_unet(components.unet)
    assert torch.equal(global_rng, torch.random.get_rng_state()), "inflation must not draw from the global RNG"
    tav.set_num_frames(unet, FRAMES)

    # A still clip: every frame equals the image model (sparse-causal keys = the frame's own; attn_temp adds 0).
    still_diff = (run_unet(unet, still, context) - expected_still).abs().max().item()
    assert still_diff <= 1e-5
    # Any clip: frame 0 attends only to itself, so it equals the image model too.
    moving_out = run_unet(unet, moving, context)
    frame0_diff = (moving_out[0] - expected_moving[0]).abs().max().item()
    assert frame0_diff <= 1e-5
    # Later frames see frames 0 and i-1 instead of themselves: the sparse-causal processor is live.
    later_diff = (moving_out[1:] - expected_moving[1:]).abs().max().item()
    assert later_diff > 1e-3
    # One frame is the image model, frame by frame.
    tav.set_num_frames(unet, 1)
    per_frame_diff = (run_unet(unet, moving, context) - expected_moving).abs().max().item()
    assert per_frame_diff <= 1e-5
    print(f"inflated vs 2D UNet, max |diff|: still clip every frame {still_diff:.1e}; moving clip frame 0 {frame0_diff:.1e}, "
          f"frames 1.. {later_diff:.2f} (sparse-causal, by design); frame by frame (F=1) {per_frame_diff:.1e}")

    # The temporal layers exist, zero-initialised in weight and bias, and the state-dict keeps the base keys.
    blocks = tav._transformer_blocks(unet)
    assert blocks and all(hasattr(block, "attn_temp") for block in blocks)
    assert all(torch.count_nonzero(b.attn_temp.to_out[0].weight) == 0 and torch.count_nonzero(b.attn_temp.to_out[0].bias) == 0
               for b in blocks)
    assert set(image_unet.state_dict()) <= set(unet.state_dict())
    assert tav.is_tune_a_video_applied(unet)


def test_cross_frame_groupnorm_switch_changes_outputs_as_tav_does():
    components = tiny_components()
    image_unet = copy.deepcopy(components.unet)
    still, context = unet_inputs(still=True)
    moving, _ = unet_inputs()
    expected_still = run_unet(image_unet, still, context)
    expected_moving = run_unet(image_unet, moving, context)
    keys_before = list(components.unet.state_dict())

    unet = tav.inflate_unet(components.unet, video_groupnorm=True)
    tav.set_num_frames(unet, FRAMES)
    assert tav.is_tune_a_video_applied(unet)
    swapped = tav._frame_groupnorms(unet)
    assert swapped and all(type(module).__name__ == "VideoGroupNorm" for module in swapped)
    # Statistics over all frames of a still clip are those of one frame: still equal.
    assert (run_unet(unet, still, context) - expected_still).abs().max().item() <= 1e-5
    # Over a moving clip they differ: even frame 0 changes at init, as in the original TAV (PIPELINES.md §2.3).
    switched = run_unet(unet, moving, context)
    assert (switched[0] - expected_moving[0]).abs().max().item() > 1e-2
    # Keys are unchanged by the class swap, and switching back restores per-frame GroupNorm exactly.
    assert [k for k in unet.state_dict() if "attn_temp" not in k and "norm_temp" not in k] == keys_before
    tav.inflate_unet(unet, video_groupnorm=False)
    assert all(type(module) is torch.nn.GroupNorm for module in swapped)
    assert (run_unet(unet, moving, context)[0] - expected_moving[0]).abs().max().item() <= 1e-5


def test_only_the_chosen_parameters_get_gradients():
    components = tiny_components()
    unet = tav.inflate_unet(components.unet)
    trainables = tav.trainable_parameters(unet)
    names = list(trainables)
    assert names and all(re.search(r"(attn1\.to_q|attn2\.to_q|attn_temp)\.", name) for name in names)
    assert not any("norm_temp" in name or "attn1.to_k" in name for name in names)
    assert len([n for n in names if ".attn_temp." in n]) == 5 * len(tav._transformer_blocks(unet))

    unet.requires_grad_(False)
    for param in trainables.values():
        param.requires_grad_(True)
    unet.train()
    tav.set_num_frames(unet, FRAMES)
    latents, context = unet_inputs()
    unet(latents, 500, encoder_hidden_states=context).sample.square().mean().backward()
    with_grad = {name for name, param in unet.named_parameters() if param.grad is not None}
    assert with_grad == set(names)
    # The zero output layer passes gradients to itself and to the spatial to_q's; attn_temp's q/k/v start at 0 grad.
    for name in names:
        if name.endswith(("attn1.to_q.weight", "attn2.to_q.weight", "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias")):
            assert torch.count_nonzero(trainables[name].grad) > 0, name


def test_loss_falls_over_30_steps_and_frozen_weights_stay_bit_identical(tmp_path):
    components = tiny_components()
    settings = small_settings()
    frozen_before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    trainer = tav.TuneAVideoTrainer(components, clip_frames()[:FRAMES], "a pattern pans right", settings)
    trainer.before_run(torch.device("cpu"))
    before = trainer.eval_loss()

    from lib_vidguide.pipelines.training import run_training

    result = run_training(trainer, settings, tmp_path, device="cpu")
    after = trainer.eval_loss()
    assert result.steps_done == 30 and len(result.losses) == 30 and not result.interrupted
    assert after < before - 0.01, (before, after)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    trainable_names = set(tav.trainable_parameters(components.unet))
    state = components.unet.state_dict()
    changed = {k for k, v in frozen_before.items() if not torch.equal(v, state[k])}
    assert changed and changed <= trainable_names
    assert not components.unet.training and not any(p.requires_grad for p in components.unet.parameters())
    print(f"fixed-noise eval loss {before:.4f} -> {after:.4f}; {result.seconds['per_step_s'] * 1000:.0f} ms/step")


def test_save_then_load_gives_identical_outputs(tmp_path):
    components = tiny_components()
    unet = tav.inflate_unet(components.unet)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # stand-in for training: every trainable tensor moves
        for param in tav.trainable_parameters(unet).values():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    path = tav.save_tune_a_video_weights(unet, tmp_path / "w.safetensors", base_model="tiny", base_model_fingerprint=components.fingerprint,
                                         frames=FRAMES, width=SIZE, height=SIZE, sample_stride=2, prompt="a cat", train_steps=7, fps=4.0)
    latents, context = unet_inputs()
    tav.set_num_frames(unet, FRAMES)
    trained_output = run_unet(unet, latents, context)

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as opened:
        saved = set(opened.keys())
        metadata = opened.metadata()
    assert saved == set(tav.trainable_parameters(unet))  # only those tensors
    assert metadata["base_model"] == "tiny" and metadata["frames"] == str(FRAMES) and metadata["width"] == str(SIZE)

    fresh = tiny_components()  # the same base weights, never inflated
    info = tav.load_tune_a_video_weights(fresh.unet, path)
    assert (info.frames, info.width, info.height, info.sample_stride, info.prompt, info.train_steps) == (FRAMES, SIZE, SIZE, 2, "a cat", 7)
    assert info.base_model_fingerprint == fresh.fingerprint
    tav.set_num_frames(fresh.unet, FRAMES)
    assert torch.equal(run_unet(fresh.unet, latents, context), trained_output)

    other = tiny_components()
    tav.inflate_unet(other.unet)
    with pytest.raises(ValueError, match="not a Tune-A-Video weights file"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        tav.load_tune_a_video_weights(other.unet, tmp_path / "other.safetensors")


# --------------------------------------------------------------------------- inversion and editing


def test_ddim_inversion_then_sampling_reconstructs_with_an_analytic_noise_predictor():
    """The ε of a single data point z0 is exact: ε(x_t, t) = (x_t − √ᾱ_t z0)/√(1 − ᾱ_t) (PIPELINES.md §2.4)."""
    from diffusers import DDIMScheduler

    z0 = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    alphas = DDIMScheduler.from_config(SD1_SCHEDULER_CONFIG).alphas_cumprod
    seen = []

    def analytic_eps(sample, timestep):
        seen.append(int(timestep))
        alpha = alphas[int(timestep)]
        return (sample - alpha.sqrt() * z0) / (1 - alpha).sqrt()

    errors = {}
    for steps in (10, 50):
        seen.clear()
        inverted = tav.ddim_invert(z0.clone(), analytic_eps, scheduler_config=SD1_SCHEDULER_CONFIG, num_inference_steps=steps)
        inversion_timesteps = list(seen)
        seen.clear()
        rebuilt = tav.ddim_sample(inverted, analytic_eps, scheduler_config=SD1_SCHEDULER_CONFIG, num_inference_steps=steps)
        assert inversion_timesteps == seen[::-1]  # the same timesteps, walked back
        errors[steps] = (rebuilt - z0).abs().mean().item()
    assert inversion_timesteps[:3] == [1, 21, 41] and inversion_timesteps[-1] == 981
    assert errors[50] <= 1e-2 and errors[50] < errors[10], errors
    print(f"analytic round trip mean |error|: 10 steps {errors[10]:.2e}, 50 steps {errors[50]:.2e}")


def test_edit_pipeline_inverts_and_samples_edited_prompts():
    components = tiny_components()
    pipe = tav.TuneAVideoPipeline(components)
    frames = clip_frames()[:FRAMES]
    calls = []

    def zero_on_last_step(pipeline, index, timestep, tensors):
        calls.append((index, sorted(tensors)))
        if index == 2:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return None

    output = pipe(frames, ["a pattern pans right", "a red pattern pans right"], num_inference_steps=3,
                  inversion_steps=3, guidance_scale=7.5, callback_on_step_end=zero_on_last_step)
    assert len(output.videos) == 2 and all(video.shape == (FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8 for video in output.videos)
    assert output.inverted_latents.shape == (FRAMES, 4, 8, 8)
    assert calls == [(i, ["latents"]) for i in range(3)] * 2
    # The callback replaced the final latents: the output is the decode of zeros for every prompt
    # (to one grey level: zeros_like keeps the sampled tensor's memory layout, which convolutions round differently).
    zeros = pipe.decode_latents(torch.zeros(FRAMES, 4, 8, 8)).astype(int)
    assert all(np.abs(video.astype(int) - zeros).max() <= 1 for video in output.videos)

    # Reusing the inverted latents skips the inversion and gives the same result.
    first = pipe(frames, "a cat", num_inference_steps=3, inversion_steps=3, output_type="latent")
    again = pipe(frames, "a cat", num_inference_steps=3, latents=first.inverted_latents, output_type="latent")
    assert torch.equal(first.videos[0], again.videos[0])


def test_edit_reads_the_weights_metadata_and_can_be_interrupted(tmp_path):
    components = tiny_components()
    tav.inflate_unet(components.unet)
    weights = tav.save_tune_a_video_weights(components.unet, tmp_path / "w.safetensors", base_model="other",
                                            base_model_fingerprint="0123", frames=3, width=SIZE, height=SIZE,
                                            sample_start=1, sample_stride=2, fps=4.0)
    settings = tav.TuneAVideoEditSettings(num_inference_steps=2, inversion_steps=2)
    steps = []
    result = tav.edit_tune_a_video(clip_frames(), "a cat", weights, settings, components=components, device="cpu",
                                   output_path=tmp_path / "out.mp4", progress=lambda i, n: steps.append((i, n)))
    assert result.videos[0].shape == (3, SIZE, SIZE, 3) and steps == [(1, 2), (2, 2)]
    assert result.output_paths == [tmp_path / "out.mp4"] and (tmp_path / "out.mp4").is_file() and result.fps == 4.0
    assert any("trained on 'other'" in note for note in result.notes)  # another base model: a warning, not an error
    with pytest.raises(tav.TuneAVideoInterrupted):
        tav.edit_tune_a_video(clip_frames(), ["a", "b"], weights, settings, components=components, device="cpu",
                              output_path=tmp_path / "stopped.mp4", should_interrupt=lambda: True)
    assert not list(tmp_path.glob("stopped*"))


def test_processors_are_reapplied_before_every_run():
    from diffusers.models.attention_processor import AttnProcessor2_0

    components = tiny_components()
    pipe = tav.TuneAVideoPipeline(components)
    frames = clip_frames()[:FRAMES]
    reference = pipe(frames, "a cat", num_inference_steps=2, inversion_steps=2, output_type="latent").videos[0]

    # diffusers refuses to reset unknown processors, so set_default_attn_processor cannot drop them silently ...
    with pytest.raises(ValueError):
        pipe.unet.set_default_attn_processor()
    assert tav.is_tune_a_video_applied(pipe.unet)
    # ... but set_attn_processor (xformers toggles, other extensions) does, silently.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    assert not tav.is_tune_a_video_applied(pipe.unet)
    again = pipe(frames, "a cat", num_inference_steps=2, inversion_steps=2, output_type="latent").videos[0]
    assert tav.is_tune_a_video_applied(pipe.unet)
    assert torch.equal(again, reference)  # the pipeline re-applied them: exactly TAV's result
    # Once they are gone, set_default_attn_processor works too; the next run re-applies them again.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.unet.set_default_attn_processor()
    assert not tav.is_tune_a_video_applied(pipe.unet)
    after_default = pipe(frames, "a cat", num_inference_steps=2, inversion_steps=2, output_type="latent").videos[0]
    assert tav.is_tune_a_video_applied(pipe.unet)
    # attn2 now runs diffusers' non-SDPA AttnProcessor (TAV leaves attn2 alone): rounding only.
    assert (after_default - reference).abs().max().item() <= 1e-4

    # Without re-applying, the reset UNet would have given another result.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    tav.set_num_frames(pipe.unet, FRAMES)
    latents, context = unet_inputs()
    plain = run_unet(pipe.unet, latents, context)
    tav.apply_tune_a_video(pipe.unet)
    assert (run_unet(pipe.unet, latents, context) - plain)[1:].abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompt=""), "edited prompt is empty"),
        (dict(prompt=[]), "No edited prompt"),
        (dict(prompt=[3]), "must be strings"),
        (dict(video=None), "No video"),
        (dict(video="one-frame"), "at least 2 frames"),
        (dict(video="60-wide"), "not a multiple of 8"),
        (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "choose from \\['latents'\\]"),
        (dict(decode_chunk_size=0), "decode_chunk_size"),
        (dict(inversion_steps=0), "pass a torch.Generator"),
    ],
)
def test_check_inputs_errors_teach(change, message):
    pipe = tav.TuneAVideoPipeline.__new__(tav.TuneAVideoPipeline)  # check_inputs needs no model
    frames = clip_frames()[:FRAMES]
    videos = {"one-frame": frames[:1], "60-wide": frames[:, :, :60]}
    arguments = dict(video=frames, prompt="a cat", num_inference_steps=2, inversion_steps=2, guidance_scale=7.5,
                     decode_chunk_size=8, callback_on_step_end_tensor_inputs=["latents"])
    arguments.update(change)
    if isinstance(arguments["video"], str):
        arguments["video"] = videos[arguments["video"]]
    with pytest.raises(ValueError, match=message):
        pipe.check_inputs(arguments.pop("video"), arguments.pop("prompt"), **arguments)


def test_settings_and_training_inputs_errors_teach(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8.*Use 96 or 104"):
        tav.TuneAVideoSettings(width=100)
    with pytest.raises(ValueError, match="multiple of 8"):
        tav.TuneAVideoEditSettings(height=70)
    with pytest.raises(ValueError, match="training prompt is empty"):
        tav.train_tune_a_video(clip_frames(), "  ", small_settings(), components=object(), output_dir=tmp_path)
    with pytest.raises(ValueError, match="has 8 frames; from frame 2, every 3. frame gives only 2"):
        tav.train_tune_a_video(clip_frames(), "a cat", small_settings(sample_start=2, sample_stride=3), components=object(),
                               output_dir=tmp_path)
    # A missing model names where models go.
    with pytest.raises(ValueError, match=r"was not found.*models[/\\]Stable-diffusion.*diffusers folder"):
        tav.train_tune_a_video(clip_frames(), "a cat", small_settings(), model=str(tmp_path / "nope.safetensors"),
                               output_dir=tmp_path, models_dir=tmp_path / "models")
    with pytest.raises(ValueError, match="No base model was given"):
        resolve_base_model("", tmp_path)
    with pytest.raises(ValueError, match="not found"):
        tav.read_weights_info(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- single-file checkpoints

_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                  ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION_TO_LDM = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _ldm_resnet(rest: str) -> str:
    return next(old + rest[len(new):] for new, old in _RESNET_TO_LDM if rest.startswith(new + "."))


def unet_to_ldm(state: dict, layers_per_block: int) -> dict:
    """A diffusers SD 1.x UNet state dict in CompVis' openaimodel.py layout (written from that layout, not by
    inverting diffusers' converter, so the round trip checks the converter against an independent writer)."""
    per_level = layers_per_block + 1
    out = {}
    for key, value in state.items():
        down = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key)
        up = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)
        mid = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
        head, _, leaf = key.rpartition(".")
        if head in simple:
            new = f"{simple[head]}.{leaf}"
        elif down:
            level, kind, index, rest = int(down[1]), down[2], int(down[3]), down[4]
            if kind == "resnets":
                new = f"input_blocks.{1 + level * per_level + index}.0.{_ldm_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + level * per_level + index}.1.{rest}"
            else:
                new = f"input_blocks.{(level + 1) * per_level}.0.op.{leaf}"
        elif mid:
            kind, index, rest = mid[1], int(mid[2]), mid[3]
            new = f"middle_block.{2 * index}.{_ldm_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif up:
            level, kind, index, rest = int(up[1]), up[2], int(up[3]), up[4]
            if kind == "resnets":
                new = f"output_blocks.{level * per_level + index}.0.{_ldm_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{level * per_level + index}.1.{rest}"
            else:
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
                new = f"output_blocks.{level * per_level + layers_per_block}.{2 if has_attention else 1}.conv.{leaf}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, levels: int) -> dict:
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        block = re.match(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
        mid = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if block:
            part, blocks, index, kind, inner, rest = block.groups()
            stage, level = ("down", int(index)) if blocks == "down_blocks" else ("up", levels - 1 - int(index))
            if kind == "resnets":
                new = f"{part}.{stage}.{level}.block.{inner}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{part}.{stage}.{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}.{rest}"
        elif mid:
            part, kind, index, rest = mid.groups()
            if kind == "resnets":
                new = f"{part}.mid.block_{int(index) + 1}.{rest}"
            else:
                name, ldm_name = next((d, l) for d, l in _VAE_ATTENTION_TO_LDM if rest.startswith(d + "."))
                new = f"{part}.mid.attn_1.{ldm_name}{rest[len(name):]}"
                if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def ldm_checkpoint(unet, vae, text_encoder) -> dict:
    text = {"cond_stage_model.transformer." + k: v for k, v in text_encoder.state_dict().items()}
    return {**unet_to_ldm(unet.state_dict(), unet.config.layers_per_block),
            **vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)), **text}


def build_ldm_shaped_tiny(folder: Path) -> Path:
    """SD 1.x's topology (4 levels, 2 resnets each, attention on the first 3, 32-group norms, CLIP heads 64 wide),
    only narrower, saved as a diffusers folder: every architecture choice a single file cannot state is SD 1.x's."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder.parent / "tokenizer-src"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64, 64), layers_per_block=2, sample_size=8, cross_attention_dim=64,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=64)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=64, num_attention_heads=1, intermediate_size=37, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    pipeline = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       scheduler=DDIMScheduler(**SD1_SCHEDULER_CONFIG), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def test_single_file_checkpoint_loads_offline_like_its_diffusers_folder(tmp_path):
    from safetensors.torch import save_file

    folder = build_ldm_shaped_tiny(tmp_path / "tiny-sd1")
    from_folder = load_diffusers_folder(folder)
    single = tmp_path / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    single.parent.mkdir(parents=True)
    # WebUI checkpoints are mostly fp16; float32 here keeps the comparison exact.
    save_file({k: v.contiguous() for k, v in ldm_checkpoint(from_folder.unet, from_folder.vae, from_folder.text_encoder).items()},
              str(single))

    loaded = load_sd_components("tiny-sd1", models_dir=tmp_path / "models", tokenizer=folder / "tokenizer")
    assert loaded.kind == "single_file" and loaded.name == "tiny-sd1"
    assert dict(loaded.unet.config)["block_out_channels"] == [32, 64, 64, 64]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1))
    # The weights are bit-identical; outputs agree to float rounding (CPU kernels sum in another order when
    # the tensors sit at other memory alignments: measured 2.4e-7 at the first differing layer).
    assert all(torch.equal(value, from_folder.unet.state_dict()[key]) for key, value in loaded.unet.state_dict().items())
    with torch.no_grad():
        assert (loaded.unet(latents, 321, context).sample - from_folder.unet(latents, 321, context).sample).abs().max() <= 1e-5
        assert (loaded.vae.decode(latents).sample - from_folder.vae.decode(latents).sample).abs().max() <= 1e-5
        ids = loaded.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert (loaded.text_encoder(ids)[0] - from_folder.text_encoder(ids)[0]).abs().max() <= 1e-5
    assert all(torch.equal(value, from_folder.vae.state_dict()[key]) for key, value in loaded.vae.state_dict().items())
    assert all(torch.equal(value, from_folder.text_encoder.state_dict()[key])
               for key, value in loaded.text_encoder.state_dict().items())
    assert loaded.fingerprint == from_folder.fingerprint

    # WebUI files are mostly fp16: loaded as float32 weights equal to the rounded originals.
    half = tmp_path / "tiny-sd1-fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in ldm_checkpoint(from_folder.unet, from_folder.vae, from_folder.text_encoder).items()},
              str(half))
    loaded_half = load_single_file(half, tokenizer=folder / "tokenizer")
    assert all(value.dtype == torch.float32 and torch.equal(value, from_folder.unet.state_dict()[key].half().float())
               for key, value in loaded_half.unet.state_dict().items())
    assert loaded.scheduler_config["prediction_type"] == "epsilon" and loaded.scheduler_config["clip_sample"] is False

    # Training takes the WebUI's name for it (models/Stable-diffusion/<name>.safetensors), end to end.
    trained = tav.train_tune_a_video(clip_frames(4), "a cat", small_settings(frames=2, max_train_steps=1), model="tiny-sd1",
                                     models_dir=tmp_path / "models", tokenizer=folder / "tokenizer",
                                     output_dir=tmp_path / "run", device="cpu")
    assert trained.steps_done == 1 and np.isfinite(trained.losses).all()
    assert tav.read_weights_info(trained.weights_path).base_model_fingerprint == from_folder.fingerprint

    # A .ckpt (the LDM "state_dict" wrapper) is read with torch.load(weights_only=True).
    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": ldm_checkpoint(from_folder.unet, from_folder.vae, from_folder.text_encoder), "global_step": 1}, ckpt)
    assert load_single_file(ckpt, tokenizer=folder / "tokenizer").fingerprint == from_folder.fingerprint

    # A file that is not SD 1.x is refused with the reason.
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, 1024)}, str(sd2))
    with pytest.raises(ValueError, match="Stable Diffusion 2.x; Tune-A-Video needs a Stable Diffusion 1.x"):
        load_single_file(sd2, tokenizer=folder / "tokenizer")
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, str(lora))
    with pytest.raises(ValueError, match="no Stable Diffusion UNet"):
        load_single_file(lora, tokenizer=folder / "tokenizer")


def test_single_file_layout_at_sd15_size_matches_diffusers_converters():
    """The real SD 1.5 layout, with meta tensors (no memory): inferred configs and converted keys match."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel(cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
        text = CLIPTextModel(CLIPTextConfig(**SD1_CLIP_TEXT_CONFIG))
    checkpoint = ldm_checkpoint(unet, vae, text)
    configs = sd1_configs_from_ldm(checkpoint)
    assert configs["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert configs["unet"]["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert configs["unet"]["cross_attention_dim"] == 768 and configs["unet"]["attention_head_dim"] == 8
    assert configs["vae"]["block_out_channels"] == [128, 256, 512, 512]
    assert configs["text_encoder"]["num_hidden_layers"] == 12 and configs["text_encoder"]["num_attention_heads"] == 12
    converted = convert_ldm_unet_checkpoint(checkpoint, configs["unet"])
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    converted_vae = convert_ldm_vae_checkpoint(checkpoint, configs["vae"])
    assert {k: tuple(v.shape) for k, v in converted_vae.items()} == {k: tuple(v.shape) for k, v in vae.state_dict().items()}


# --------------------------------------------------------------------------- command line


def test_register_cli_adds_train_and_edit():
    import argparse

    parser = argparse.ArgumentParser()
    tav.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune-a-video", "train", "v.mp4", "--model", "m", "--prompt", "p", "--out", "o",
                              "--max-train-steps", "7", "--no-gradient-checkpointing", "--resume"])
    settings = tav.TuneAVideoSettings.from_dict(given(args, tav.TuneAVideoSettings))
    assert (args.handler, args.resume) == (tav.run_train_cli, "latest")
    assert (settings.max_train_steps, settings.gradient_checkpointing, settings.learning_rate) == (7, False, 3e-5)
    args = parser.parse_args(["tune-a-video", "edit", "v.mp4", "out.mp4", "--model", "m", "--weights", "w",
                              "--prompt", "a", "--prompt", "b", "--guidance-scale", "9"])
    settings = tav.TuneAVideoEditSettings.from_dict(given(args, tav.TuneAVideoEditSettings))
    assert (args.handler, args.prompt, settings.guidance_scale, settings.frames) == (tav.run_edit_cli, ["a", "b"], 9.0, None)


def test_cli_trains_and_edits_a_tiny_model_end_to_end(tmp_path):
    model = save_tiny_pipeline(tmp_path / "tiny-sd")
    video = write_clip(tmp_path / "clip.mp4", list(clip_frames(6)), fps=8.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    entry = [sys.executable, "-m", "lib_vidguide", "tune-a-video"]
    train = subprocess.run(
        entry + ["train", str(video), "--model", str(model), "--prompt", "a pattern pans right", "--out", str(tmp_path / "run"),
                 "--frames", "4", "--sample-stride", "1", "--width", "64", "--height", "64", "--max-train-steps", "3",
                 "--checkpointing-steps", "2", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and Path(summary["weights"]).is_file()
    assert "step 2/3" in train.stderr and "checkpoint step-000002" in train.stderr

    edit = subprocess.run(
        entry + ["edit", str(video), str(tmp_path / "edited.mp4"), "--model", str(model), "--weights", summary["weights"],
                 "--prompt", "a red pattern pans right", "--num-inference-steps", "3", "--inversion-steps", "3",
                 "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert edit.returncode == 0, edit.stderr
    result = json.loads(edit.stdout.strip().splitlines()[-1])
    from lib_vidguide.video_io import probe

    info = probe(tmp_path / "edited.mp4")
    assert (info.width, info.height, info.frame_count) == (64, 64, 4) and result["frames"] == 4
    assert abs(float(info.fps) - 8.0) < 1e-6

    bad = subprocess.run(entry + ["edit", str(video), str(tmp_path / "x.mp4"), "--model", str(tmp_path / "missing"),
                                  "--weights", summary["weights"], "--prompt", "x"],
                         capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert bad.returncode == 2 and "Stable-diffusion" in bad.stderr and bad.stderr.startswith("error:")
