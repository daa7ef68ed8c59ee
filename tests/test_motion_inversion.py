"""Motion Inversion on a tiny random-weight text-to-video model, on the CPU (PIPELINES.md §3, issue 5).

Measured here: zero-initialised embeddings leave the UNet3D's output exactly unchanged;
gradients reach only the embeddings and frozen weights stay bit-identical; the fixed-noise
loss falls; each inference debias mode does what it says (and the query-key path is the same
in all); embeddings trained on F frames generate 2F; a resumed run reproduces the
uninterrupted losses; processors are re-applied before every run; another resolution is a
clear error; save/load is exact and stores only the trained frame count; the CLI trains and
generates end to end.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_vidguide.pipelines import motion_inversion as mi
from lib_vidguide.pipelines import training
from lib_vidguide.pipelines.cli_support import given
from lib_vidguide.pipelines.training import run_training

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from videos import moving_pattern, write_clip  # noqa: E402

FRAMES = 4
SIZE = 64  # the tiny VAE downsamples 8x: 8x8 latents; the embedded (lowest) level runs at 4x4
PROMPT = "a pattern pans right"


def clip_frames(count: int = FRAMES) -> np.ndarray:
    return np.stack(moving_pattern(count, size=(SIZE, SIZE), shift_px=3.0))


def unet_inputs(frames: int = FRAMES, size: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, frames, size, size, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)
    return latents, context


def run_unet(unet, latents, context, timestep=500):
    with torch.no_grad():
        return unet(latents, timestep, encoder_hidden_states=context).sample


def settings(**overrides) -> mi.MotionInversionSettings:
    values = dict(frames=FRAMES, width=SIZE, height=SIZE, max_train_steps=30, checkpointing_steps=0, inversion_steps=0)
    values.update(overrides)
    return mi.MotionInversionSettings(**values)


def randomise(unet, scale: float = 0.5, seed: int = 3, which=("qk", "v")) -> None:
    """Stand-in for training: every chosen embedding moves."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in mi.motion_parameters(unet).items():
            if name.rsplit(".", 1)[1] in which:
                param.copy_(scale * torch.randn(param.shape, generator=generator))


# --------------------------------------------------------------------------- the embeddings


def test_zero_initialised_embeddings_leave_the_output_exactly_unchanged():
    components = mi.build_tiny_t2v_components()
    unet = components.unet
    latents, context = unet_inputs()
    expected = run_unet(unet, latents, context)

    global_rng = torch.random.get_rng_state()
    mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=8)
    assert torch.equal(global_rng, torch.random.get_rng_state()), "injection must not draw from the global RNG"
    assert mi.is_motion_inversion_applied(unet)
    for mode in ("train", "diff", "drop", "off"):
        mi.set_motion_mode(unet, mode)
        assert (run_unet(unet, latents, context) - expected).abs().max().item() == 0.0, mode

    # The lowest level only (ZeroScope: the 1280-wide blocks): down_blocks.1 and up_blocks.0 here, 4x4 cells each.
    shapes = {name: tuple(p.shape) for name, p in mi.motion_parameters(unet).items()}
    assert {name.split(".temp_attentions")[0] for name in shapes} == {"down_blocks.1", "up_blocks.0"}
    assert all(shape == (1, FRAMES, 64) for name, shape in shapes.items() if name.endswith(".qk"))
    assert all(shape == (16, FRAMES, 64) for name, shape in shapes.items() if name.endswith(".v"))
    assert len(shapes) == 3 * 3  # 3 temporal blocks: one shared qk, a v for attn1 and attn2
    # The parameters are the UNet's own (named as in named_parameters), and the shared qk appears once.
    named = dict(unet.named_parameters())
    assert all(named[name] is param for name, param in mi.motion_parameters(unet).items())
    # Removing them gives back the base model.
    mi.remove_motion_inversion(unet)
    assert not any("processor" in name for name, _ in unet.named_parameters())
    assert torch.equal(run_unet(unet, latents, context), expected)


def test_layer_choices_follow_the_resolution_levels():
    unet = mi.build_tiny_t2v_components().unet
    mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=6, layers="lowest_two")
    cells = {name.split(".transformer_blocks")[0]: p.shape[0] for name, p in mi.motion_parameters(unet).items()
             if name.endswith(".v")}
    # Level 0 runs at 8x6 = 48 cells, level 1 at ceil halves 4x3 = 12.
    assert cells == {"down_blocks.0.temp_attentions.0": 48, "down_blocks.1.temp_attentions.0": 12,
                     "up_blocks.0.temp_attentions.0": 12, "up_blocks.0.temp_attentions.1": 12,
                     "up_blocks.1.temp_attentions.0": 48, "up_blocks.1.temp_attentions.1": 48}
    latents, context = unet_inputs()
    run_unet(unet, latents[..., :6], context)  # 8x6 latents: the geometry hooks agree with the computed sizes
    with pytest.raises(ValueError, match="motion_layers must be one of"):
        mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=8, layers="middle")


def test_gradients_reach_only_the_embeddings():
    unet = mi.build_tiny_t2v_components().unet
    mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=8)
    embeddings = mi.motion_parameters(unet)
    unet.requires_grad_(False)
    for param in embeddings.values():
        param.requires_grad_(True)
    unet.train()
    latents, context = unet_inputs()
    unet(latents, 500, encoder_hidden_states=context).sample.square().mean().backward()
    with_grad = {name for name, param in unet.named_parameters() if param.grad is not None}
    assert with_grad == set(embeddings)
    assert all(torch.count_nonzero(param.grad) > 0 for param in embeddings.values())


def test_loss_falls_and_frozen_weights_stay_bit_identical(tmp_path):
    components = mi.build_tiny_t2v_components()
    frozen_before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    trainer = mi.MotionInversionTrainer(components, clip_frames(), PROMPT, settings())
    trainer.before_run(torch.device("cpu"))
    before = trainer.eval_loss()
    result = run_training(trainer, trainer.settings, tmp_path, device="cpu")
    after = trainer.eval_loss()
    assert result.steps_done == 30 and not result.interrupted and result.output_path.is_file()
    assert after < before - 0.005, (before, after)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    state = components.unet.state_dict()
    changed = {k for k in frozen_before if not torch.equal(frozen_before[k], state[k])}
    assert changed == set()  # every base weight is bit-identical
    moved = [name for name, p in mi.motion_parameters(components.unet).items() if torch.count_nonzero(p) > 0]
    assert len(moved) == len(mi.motion_parameters(components.unet))
    assert not components.unet.training and not any(p.requires_grad for p in components.unet.parameters())
    print(f"fixed-noise eval loss {before:.4f} -> {after:.4f}; {result.seconds['per_step_s'] * 1000:.0f} ms/step")


def test_debiased_losses_follow_the_original():
    """base = MSE; debiased_temporal adds the MSE of sqrt(2)*x - x[anchor] (beta=1); the anchor comes from the generator."""
    components = mi.build_tiny_t2v_components()
    values = {}
    for loss in ("base", "debiased_temporal"):
        trainer = mi.MotionInversionTrainer(copy.deepcopy(components), clip_frames(), PROMPT, settings(loss=loss))
        trainer.before_run(torch.device("cpu"))
        values[loss] = trainer.training_loss(trainer.model, 0, torch.Generator().manual_seed(5)).item()
    # Recompute by hand from the same draws.
    trainer = mi.MotionInversionTrainer(copy.deepcopy(components), clip_frames(), PROMPT, settings(loss="base"))
    trainer.before_run(torch.device("cpu"))
    generator = torch.Generator().manual_seed(5)
    noisy, timesteps, target = trainer._noisy_batch(generator, torch.device("cpu"))
    anchor = int(torch.randint(0, FRAMES, (1,), generator=generator))
    prediction = run_unet(trainer.model, noisy, trainer._prompt_embeddings, timesteps)
    plain = torch.nn.functional.mse_loss(prediction, target).item()
    debiased = torch.nn.functional.mse_loss(
        2**0.5 * prediction - prediction[:, :, anchor:anchor + 1], 2**0.5 * target - target[:, :, anchor:anchor + 1]
    ).item()
    assert values["base"] == pytest.approx(plain, rel=1e-6)
    assert values["debiased_temporal"] == pytest.approx(plain + debiased, rel=1e-6)


# --------------------------------------------------------------------------- inference modes and frames


def test_each_debias_mode_changes_the_output_as_specified():
    unet = mi.build_tiny_t2v_components().unet
    latents, context = unet_inputs()
    base = run_unet(unet, latents, context)
    mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=8)
    randomise(unet)
    outputs = {}
    for mode in ("train", "diff", "drop", "off"):
        mi.set_motion_mode(unet, mode)
        outputs[mode] = run_unet(unet, latents, context)
    assert torch.equal(outputs["off"], base)
    for first, second in (("train", "diff"), ("train", "drop"), ("diff", "drop"), ("drop", "off")):
        difference = (outputs[first] - outputs[second]).abs().max().item()
        assert difference > 1e-3, (first, second, difference)

    # diff = the model whose v is replaced by [v0, v1 - v0, v2 - v1, ...] (frame 0 kept), in train mode.
    differenced = copy.deepcopy(unet)
    with torch.no_grad():
        for name, param in mi.motion_parameters(differenced).items():
            if name.endswith(".v"):
                param.copy_(torch.cat([param[:, :1], param[:, 1:] - param[:, :-1]], dim=1))
    mi.apply_motion_inversion(differenced)
    mi.set_motion_mode(differenced, "train")
    assert torch.equal(run_unet(differenced, latents, context), outputs["diff"])

    # The query-key path is the same in every mode: with v = 0, train, diff and drop agree exactly (and differ from off).
    qk_only = copy.deepcopy(unet)
    with torch.no_grad():
        for name, param in mi.motion_parameters(qk_only).items():
            if name.endswith(".v"):
                param.zero_()
    mi.apply_motion_inversion(qk_only)
    qk_outputs = []
    for mode in ("train", "diff", "drop"):
        mi.set_motion_mode(qk_only, mode)
        qk_outputs.append(run_unet(qk_only, latents, context))
    assert torch.equal(qk_outputs[0], qk_outputs[1]) and torch.equal(qk_outputs[0], qk_outputs[2])
    assert (qk_outputs[0] - base).abs().max().item() > 1e-3
    # drop = train without v.
    assert torch.equal(qk_outputs[0], outputs["drop"])


def test_embeddings_trained_on_f_frames_generate_2f_frames():
    components = mi.build_tiny_t2v_components()
    unet = components.unet
    mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=8, pixel_size=(SIZE, SIZE))
    randomise(unet)
    embedding = next(p for n, p in mi.motion_parameters(unet).items() if n.endswith(".v"))
    stretched = mi._over_frames(embedding, 2 * FRAMES)
    expected = torch.nn.functional.interpolate(embedding.detach().transpose(1, 2), size=2 * FRAMES, mode="linear",
                                               align_corners=False).transpose(1, 2)
    assert stretched.shape == (16, 2 * FRAMES, 64) and torch.equal(stretched, expected)
    assert mi._over_frames(embedding, FRAMES) is embedding  # the trained count: no interpolation at all

    pipe = mi.MotionInversionPipeline(components)
    pipe.weights_info = mi.MotionInversionWeightsInfo(  # as after load_weights, without a file
        path=Path("x"), base_model="tiny", base_model_fingerprint="", frames=FRAMES, width=SIZE, height=SIZE,
        latent_width=8, latent_height=8, motion_layers="lowest", loss="base", prompt=PROMPT, train_steps=1, fps=8.0,
        sample_start=0, sample_stride=1, inversion_steps=0, has_inverted_latents=False, tensors=9, parameters=0)
    output = pipe("a red pattern pans right", num_frames=2 * FRAMES, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0))
    assert output.videos[0].shape == (2 * FRAMES, SIZE, SIZE, 3) and output.videos[0].dtype == np.uint8
    assert any("interpolated to 8" in note for note in output.notes)
    assert any("plain noise" in note for note in output.notes)

    # At 2F frames the embeddings act, exactly as embeddings trained at 2F holding the interpolated values would.
    long_latents, context = unet_inputs(frames=2 * FRAMES)
    mi.apply_motion_inversion(unet)
    mi.set_motion_mode(unet, "off")
    plain = run_unet(unet, long_latents, context)
    mi.set_motion_mode(unet, "train")
    stretched_output = run_unet(unet, long_latents, context)
    reference = mi.build_tiny_t2v_components().unet
    mi.inject_motion_embeddings(reference, frames=2 * FRAMES, latent_height=8, latent_width=8)
    trained = mi.motion_parameters(unet)
    with torch.no_grad():
        for name, param in mi.motion_parameters(reference).items():
            param.copy_(mi._over_frames(trained[name].detach(), 2 * FRAMES))
    assert torch.equal(run_unet(reference, long_latents, context), stretched_output)
    effect = (stretched_output - plain).abs().max().item()
    assert effect > 1e-3
    print(f"2F = {2 * FRAMES} frames from {FRAMES}-frame embeddings: max |with - without embeddings| {effect:.3f}; "
          "equal to 2F-frame embeddings holding the interpolation: exact")


def test_another_resolution_is_a_clear_error():
    components = mi.build_tiny_t2v_components()
    unet = components.unet
    mi.inject_motion_embeddings(unet, frames=FRAMES, latent_height=8, latent_width=8, pixel_size=(SIZE, SIZE))
    randomise(unet)
    latents, context = unet_inputs(size=8)
    with pytest.raises(ValueError, match=r"trained at a 8x8 latent \(64x64 pixels\).*tied to that resolution"):
        run_unet(unet, latents[..., :6], context)  # 64x48 pixels
    # A batch of two videos at the trained size is fine (classifier-free guidance doubles the batch).
    run_unet(unet, torch.cat([latents, latents]), torch.cat([context, context]))
    # The base model (mode off) runs at any size.
    mi.set_motion_mode(unet, "off")
    run_unet(unet, latents[..., :6], context)

    pipe = mi.MotionInversionPipeline(components)
    pipe.weights_info = mi.MotionInversionWeightsInfo(
        path=Path("x"), base_model="tiny", base_model_fingerprint="", frames=FRAMES, width=SIZE, height=SIZE,
        latent_width=8, latent_height=8, motion_layers="lowest", loss="base", prompt=PROMPT, train_steps=1, fps=8.0,
        sample_start=0, sample_stride=1, inversion_steps=0, has_inverted_latents=False, tensors=9, parameters=0)
    with pytest.raises(ValueError, match="trained at 64x64.*Generate at 64x64 \\(asked: 64x48\\)"):
        pipe("a cat", height=48, num_inference_steps=1, generator=torch.Generator())


# --------------------------------------------------------------------------- saving, loading, generation


def test_save_then_load_gives_identical_outputs_and_stores_only_the_trained_frames(tmp_path):
    components = mi.build_tiny_t2v_components()
    mi.inject_motion_embeddings(components.unet, frames=FRAMES, latent_height=8, latent_width=8, pixel_size=(SIZE, SIZE))
    randomise(components.unet)
    inverted = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(9))
    path = mi.save_motion_embeddings(components.unet, tmp_path / "m.safetensors", base_model="tiny",
                                     base_model_fingerprint=components.fingerprint, width=SIZE, height=SIZE,
                                     prompt=PROMPT, loss="debiased_temporal", train_steps=7, fps=4.0, inversion_steps=3,
                                     inverted_latents=inverted)
    latents, context = unet_inputs()
    mi.set_motion_mode(components.unet, "diff")
    trained_output = run_unet(components.unet, latents, context)

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as opened:
        keys = set(opened.keys())
        shapes = {key: tuple(opened.get_slice(key).get_shape()) for key in keys}
    assert keys == set(mi.motion_parameters(components.unet)) | {mi.INVERTED_LATENTS_KEY}
    assert all(shape[1] == FRAMES for key, shape in shapes.items() if key != mi.INVERTED_LATENTS_KEY)

    fresh = mi.build_tiny_t2v_components()  # the same base weights, never embedded
    info, loaded_inverted = mi.load_motion_embeddings(fresh.unet, path)
    assert (info.frames, info.width, info.height, info.loss, info.train_steps, info.fps) == (
        FRAMES, SIZE, SIZE, "debiased_temporal", 7, 4.0)
    assert info.base_model_fingerprint == fresh.fingerprint and info.has_inverted_latents and info.tensors == 9
    assert torch.equal(loaded_inverted, inverted)
    mi.set_motion_mode(fresh.unet, "diff")
    assert torch.equal(run_unet(fresh.unet, latents, context), trained_output)

    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a Motion Inversion embeddings file"):
        mi.load_motion_embeddings(fresh.unet, tmp_path / "other.safetensors")


def test_generation_blends_the_stored_inversion_and_can_be_interrupted(tmp_path):
    components = mi.build_tiny_t2v_components()
    result = mi.train_motion_inversion(clip_frames(), PROMPT, settings(max_train_steps=2, inversion_steps=2),
                                       components=components, output_dir=tmp_path / "run", device="cpu")
    info = mi.read_weights_info(result.weights_path)
    assert info.has_inverted_latents and info.inversion_steps == 2 and info.train_steps == 2
    generate = mi.MotionInversionGenerateSettings(num_inference_steps=2, seed=4)
    steps = []
    output = mi.generate_motion_inversion(["a red pattern", "a blue pattern"], result.weights_path, generate,
                                          components=components, device="cpu", output_path=tmp_path / "out.mp4",
                                          progress=lambda i, n: steps.append((i, n)))
    assert [path.name for path in output.output_paths] == ["out-1.mp4", "out-2.mp4"]
    assert all(path.is_file() for path in output.output_paths) and steps == [(i, 4) for i in range(1, 5)]
    assert not any("plain noise" in note for note in output.notes)  # the inverted clip was blended in

    # BlendInit: sqrt(p) * inverted + sqrt(1 - p) * noise, the noise drawn from the given generator.
    pipe = mi.MotionInversionPipeline(components)
    pipe.load_weights(result.weights_path)
    start, notes = pipe.prepare_latents(FRAMES, SIZE, SIZE, torch.Generator().manual_seed(4), 0.5)
    noise = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(4))
    assert notes == [] and torch.allclose(start, 0.5**0.5 * pipe.inverted_latents + 0.5**0.5 * noise)

    with pytest.raises(mi.MotionInversionInterrupted):
        mi.generate_motion_inversion("a cat", result.weights_path, generate, components=components, device="cpu",
                                     output_path=tmp_path / "stopped.mp4", should_interrupt=lambda: True)
    assert not list(tmp_path.glob("stopped*"))


def test_processors_are_reapplied_before_every_run(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    components = mi.build_tiny_t2v_components()
    mi.inject_motion_embeddings(components.unet, frames=FRAMES, latent_height=8, latent_width=8, pixel_size=(SIZE, SIZE))
    randomise(components.unet)
    path = mi.save_motion_embeddings(components.unet, tmp_path / "m.safetensors", base_model="tiny",
                                     base_model_fingerprint="", width=SIZE, height=SIZE)
    pipe = mi.MotionInversionPipeline(mi.build_tiny_t2v_components())
    pipe.load_weights(path)

    def generate():
        return pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="latent").videos[0]

    reference = generate()
    # diffusers refuses to reset unknown processors, so set_default_attn_processor cannot drop them silently ...
    with pytest.raises(ValueError):
        pipe.unet.set_default_attn_processor()
    assert mi.is_motion_inversion_applied(pipe.unet)
    # ... but set_attn_processor (xformers toggles, other extensions) does, silently, embeddings and all.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    assert not mi.is_motion_inversion_applied(pipe.unet)
    assert not any("processor" in name for name, _ in pipe.unet.named_parameters())
    assert torch.equal(generate(), reference)  # the pipeline re-applied them
    assert mi.is_motion_inversion_applied(pipe.unet)

    # Training re-applies them too: before_run puts back what a reset dropped.
    trainer = mi.MotionInversionTrainer(components, clip_frames(), PROMPT, settings(max_train_steps=1))
    components.unet.set_attn_processor(AttnProcessor2_0())
    run_training(trainer, trainer.settings, tmp_path / "train", device="cpu")
    assert mi.is_motion_inversion_applied(components.unet)
    assert all(torch.count_nonzero(p) > 0 for p in mi.motion_parameters(components.unet).values())


# --------------------------------------------------------------------------- resume and the hybrid loss


def test_resumed_training_reproduces_the_uninterrupted_losses(tmp_path):
    """With the hybrid loss: embeddings and spatial LoRAs, two learning rates, extra draws per step."""
    run_settings = settings(loss="debiased_hybrid", max_train_steps=8, spatial_lora_rank=4, spatial_skip_probability=0.3)
    full = mi.train_motion_inversion(clip_frames(), PROMPT, run_settings, components=mi.build_tiny_t2v_components(),
                                     output_dir=tmp_path / "full", device="cpu")
    first = mi.train_motion_inversion(clip_frames(), PROMPT, run_settings, components=mi.build_tiny_t2v_components(),
                                      output_dir=tmp_path / "split", device="cpu", stop_after_step=3)
    assert first.interrupted and first.steps_done == 3 and first.weights_path is None
    checkpoint = sorted((tmp_path / "split" / "checkpoints").iterdir())[-1]
    state = json.loads((checkpoint / "state.json").read_text())
    assert any(".processor.q_down" in name for name in state["trainable_names"])  # the LoRAs resume too
    rest = mi.train_motion_inversion(clip_frames(), PROMPT, run_settings, components=mi.build_tiny_t2v_components(),
                                     output_dir=tmp_path / "split", device="cpu", resume="latest")
    assert rest.steps_done == 8 and any("Resumed from step-000003" in note for note in rest.notes)
    assert rest.losses == full.losses  # bit-identical: same noise, timesteps, anchors, LoRA skips, optimizer moments
    print(f"MI resume at step 3 of 8: steps 4-8 losses {rest.losses[3]:.6f} .. {rest.losses[-1]:.6f}, "
          f"max |resumed - uninterrupted| {max(abs(a - b) for a, b in zip(rest.losses, full.losses)):.1e}")
    from safetensors.torch import load_file

    full_weights, resumed_weights = load_file(str(full.weights_path)), load_file(str(rest.weights_path))
    assert full_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert not any("q_down" in key for key in full_weights)  # the spatial LoRAs are not part of the result


def test_hybrid_loss_trains_loras_from_the_spatial_pass_and_embeddings_from_the_temporal_pass():
    components = mi.build_tiny_t2v_components()
    trainer = mi.MotionInversionTrainer(components, clip_frames(), PROMPT,
                                        settings(loss="debiased_hybrid", spatial_lora_rank=4, spatial_skip_probability=0.0))
    trainer.before_run(torch.device("cpu"))
    unet = components.unet
    assert mi.is_motion_inversion_applied(unet)
    embeddings, loras = mi.motion_parameters(unet), mi._lora_parameters(unet)
    assert loras and all(".attentions." in name and ".temp_attentions." not in name for name in loras)
    unet.requires_grad_(False)
    for param in list(embeddings.values()) + list(loras.values()):
        param.requires_grad_(True)
    unet.train()
    with torch.no_grad():  # LoRA "up" starts at zero; give it a value so that "down" gets gradients as well
        for name, param in loras.items():
            if name.endswith("_up"):
                param.fill_(0.01)
    loss = trainer.training_loss(unet, 0, torch.Generator().manual_seed(0))
    loss.backward()
    with_grad = {name for name, param in unet.named_parameters() if param.grad is not None}
    assert with_grad == set(embeddings) | set(loras)
    assert all(torch.count_nonzero(param.grad) > 0 for param in loras.values())
    # The spatial pass runs one frame without embeddings: the embeddings' gradient is the temporal loss's alone.
    lora_grads = {name: param.grad.clone() for name, param in loras.items()}
    unet.zero_grad(set_to_none=True)
    state = mi._state(unet)
    generator = torch.Generator().manual_seed(0)
    noisy, timesteps, target = trainer._noisy_batch(generator, torch.device("cpu"))
    torch.rand((), generator=generator)
    frame = int(torch.randint(0, FRAMES, (1,), generator=generator))
    state.mode, state.lora_scale = "off", 1.0
    single = unet(noisy[:, :, frame:frame + 1], timesteps, encoder_hidden_states=trainer._prompt_embeddings).sample
    torch.nn.functional.mse_loss(single, target[:, :, frame:frame + 1]).backward()
    state.mode = "train"
    assert all(torch.allclose(param.grad, lora_grads[name], rtol=1e-4, atol=1e-7) for name, param in loras.items())
    assert all(param.grad is None for param in embeddings.values())

    # The LoRAs train at the spatial learning rate; the optimizer groups keep that through a resume.
    groups = training.optimizer_parameters(trainer, trainer.trainable_parameters())
    optimizer, _ = training.make_optimizer(groups, trainer.settings, "cpu")
    rates = sorted(group["lr"] for group in optimizer.param_groups)
    assert rates == pytest.approx([5e-4, 0.05])
    assert training.optimizer_parameters(object(), {"a": embeddings[next(iter(embeddings))]}) == [embeddings[next(iter(embeddings))]]
    # After training the LoRAs are gone: inference sees the motion embeddings alone.
    trainer.after_run()
    assert not mi._lora_parameters(unet) and mi.is_motion_inversion_applied(unet)
    assert not any("q_down" in name for name, _ in unet.named_parameters())


# --------------------------------------------------------------------------- inputs, loading, command line


def test_inputs_and_settings_errors_teach(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8.*Use 96 or 104"):
        mi.MotionInversionSettings(width=100)
    with pytest.raises(ValueError):
        mi.MotionInversionSettings(loss="fancy")
    defaults = mi.MotionInversionSettings()
    assert (defaults.learning_rate, defaults.max_train_steps, defaults.frames, defaults.width, defaults.height,
            defaults.loss, defaults.gradient_checkpointing) == (0.05, 400, 24, 576, 320, "debiased_temporal", False)
    generate = mi.MotionInversionGenerateSettings()
    assert (generate.num_inference_steps, generate.guidance_scale, generate.noise_prior, generate.debias) == (
        30, 12.0, 0.5, "frame_difference")
    with pytest.raises(ValueError, match="training prompt is empty"):
        mi.train_motion_inversion(clip_frames(), " ", settings(), components=object(), output_dir=tmp_path)
    with pytest.raises(ValueError, match="does not support it; turn it off"):
        mi.MotionInversionTrainer(mi.build_tiny_t2v_components(), clip_frames(), PROMPT,
                                  settings(gradient_checkpointing=True))
    with pytest.raises(ValueError, match="was not found.*UNet3DConditionModel.*text2video"):
        mi.load_t2v_components(str(tmp_path / "nope"), models_dir=tmp_path / "models")
    with pytest.raises(ValueError, match="was not found \\(nothing is downloaded\\)"):
        mi.load_t2v_components("someone/not-cached-model")
    from lib_vidguide.tiny_models import save_tiny_pipeline

    image_model = save_tiny_pipeline(tmp_path / "tiny-sd")
    with pytest.raises(ValueError, match="UNet2DConditionModel, not a UNet3DConditionModel"):
        mi.load_t2v_components(image_model)
    pipe = mi.MotionInversionPipeline.__new__(mi.MotionInversionPipeline)  # check_inputs needs little
    pipe.weights_info = None
    common = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=7.0, noise_prior=0.5,
                  debias="none", decode_chunk_size=8, generator=torch.Generator())
    with pytest.raises(ValueError, match="prompt is empty"):
        pipe.check_inputs("", **common)
    with pytest.raises(ValueError, match="Pass a torch.Generator"):
        pipe.check_inputs("a", **{**common, "generator": None})
    with pytest.raises(ValueError, match="choose from \\['latents'\\]"):
        pipe.check_inputs("a", **common, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_register_cli_adds_train_and_generate():
    import argparse

    parser = argparse.ArgumentParser()
    mi.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["motion-inversion", "train", "v.mp4", "--model", "m", "--prompt", "p", "--out", "o",
                              "--loss", "debiased_hybrid", "--max-train-steps", "7", "--resume"])
    parsed = mi.MotionInversionSettings.from_dict(given(args, mi.MotionInversionSettings))
    assert (args.handler, args.resume, parsed.loss, parsed.max_train_steps, parsed.learning_rate) == (
        mi.run_train_cli, "latest", "debiased_hybrid", 7, 0.05)
    args = parser.parse_args(["motion-inversion", "generate", "out.mp4", "--model", "m", "--weights", "w",
                              "--prompt", "a", "--prompt", "b", "--debias", "drop_value", "--noise-prior", "0"])
    parsed = mi.MotionInversionGenerateSettings.from_dict(given(args, mi.MotionInversionGenerateSettings))
    assert (args.handler, args.prompt, parsed.debias, parsed.noise_prior) == (mi.run_generate_cli, ["a", "b"], "drop_value", 0.0)


def test_cli_trains_and_generates_a_tiny_model_end_to_end(tmp_path):
    model = mi.save_tiny_t2v_model(tmp_path / "tiny-t2v")
    video = write_clip(tmp_path / "clip.mp4", list(clip_frames(6)), fps=8.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    entry = [sys.executable, "-m", "lib_vidguide", "motion-inversion"]  # the package's CLI (lib_vidguide/cli.py)
    train = subprocess.run(
        entry + ["train", str(video), "--model", str(model), "--prompt", PROMPT, "--out", str(tmp_path / "run"),
                 "--frames", "4", "--width", "64", "--height", "64", "--max-train-steps", "3", "--checkpointing-steps", "2",
                 "--inversion-steps", "2", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and Path(summary["weights"]).is_file()
    assert "step 2/3" in train.stderr and "checkpoint step-000002" in train.stderr

    generate = subprocess.run(
        entry + ["generate", str(tmp_path / "new.mp4"), "--model", str(model), "--weights", summary["weights"],
                 "--prompt", "a red pattern pans right", "--num-inference-steps", "2", "--frames", "8", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert generate.returncode == 0, generate.stderr
    result = json.loads(generate.stdout.strip().splitlines()[-1])
    from lib_vidguide.video_io import probe

    info = probe(tmp_path / "new.mp4")
    assert (info.width, info.height, info.frame_count) == (64, 64, 8) and result["frames"] == 8
    assert abs(float(info.fps) - 8.0) < 1e-6



def test_cli_errors_are_one_line(tmp_path, capsys):
    components = mi.build_tiny_t2v_components()
    mi.inject_motion_embeddings(components.unet, frames=FRAMES, latent_height=8, latent_width=8)
    weights = mi.save_motion_embeddings(components.unet, tmp_path / "m.safetensors", base_model="tiny",
                                        base_model_fingerprint="", width=SIZE, height=SIZE)
    code = mi.main(["generate", str(tmp_path / "x.mp4"), "--model", str(tmp_path / "missing"), "--weights", str(weights),
                    "--prompt", "x", "--width", "128"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error:") and error.count("\n") == 1 and "tied to that resolution" in error
    code = mi.main(["generate", str(tmp_path / "x.mp4"), "--model", str(tmp_path / "missing"), "--weights", str(weights),
                    "--prompt", "x"])
    error = capsys.readouterr().err
    assert code == 2 and "was not found" in error and "text2video" in error
