"""AttentionFlow (seed 003, issue 6) on tiny random-weight SD models, on the CPU.

Measured here: motion map injection raises the motion word's correlation with the moving
region and leaves every other token's map bit-identical; strength 0 is bit-identical to the
plain prompt-to-prompt edit; DDIM inversion pairs with sampling (analytic ε) and null-text
optimisation repairs guided reconstruction; word swap, refinement and re-weighting do what
P2P does; the cross-frame attention switch; processors are re-applied; the CLI end to end.
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
import torch.nn.functional as F

from lib_vidguide.pipelines import attention_flow as af
from lib_vidguide.pipelines import tune_a_video as tav
from lib_vidguide.pipelines.cli_support import given
from lib_vidguide.pipelines.sd_loading import SD1_SCHEDULER_CONFIG, SDComponents
from lib_vidguide.synthetic import make_clip
from lib_vidguide.tiny_models import build_tiny_components, save_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from videos import write_clip  # noqa: E402

FRAMES = 4
SIZE = 128  # the tiny VAE downsamples 8x: 16x16 latents; the tiny UNet's cross-attention runs at 8x8
SOURCE = "a horse is moving"


def tiny_components(seed: int = 0) -> SDComponents:
    parts = build_tiny_components(seed)
    return SDComponents(
        tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], unet=parts["unet"], vae=parts["vae"],
        scheduler_config=dict(parts["scheduler"].config), source="tiny", kind="diffusers",
    )


_CLIP_CACHE: dict = {}


def moving_object_clip():
    """A static photo with a horse cut-out moving over it (exact flows): frames and the moving-region masks."""
    if "clip" not in _CLIP_CACHE:
        clip = make_clip(FRAMES, size=(SIZE, SIZE), pan_px_per_frame=(0.0, 0.0), object_period_frames=12, noise_sigma=0)
        flows = list(clip.flows_forward) + [clip.flows_backward[-1]]  # frame i -> i+1; the last frame backward
        masks = np.stack([(np.linalg.norm(flow, axis=-1) > 0.5).astype(np.float32) for flow in flows])
        _CLIP_CACHE["clip"] = (np.stack(clip.frames), masks)
    return _CLIP_CACHE["clip"]


def settings(**overrides) -> af.AttentionFlowSettings:
    values = dict(num_inference_steps=4, frames=FRAMES, width=SIZE, height=SIZE, guidance_scale=7.5)
    values.update(overrides)
    return af.AttentionFlowSettings(**values)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


# --------------------------------------------------------------------------- import cost


def test_importing_the_module_loads_no_heavy_package():
    code = (
        "import sys; import lib_vidguide.pipelines.attention_flow\n"
        "print(sorted(m for m in ('torch', 'cv2', 'av', 'diffusers', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    assert output == "[]", output


# --------------------------------------------------------------------------- motion maps and similarity


def test_motion_maps_come_from_the_flow_of_the_moving_region():
    frames, masks = moving_object_clip()
    maps = af.motion_maps_from_video(frames)
    assert maps.shape == (FRAMES, SIZE, SIZE) and maps.dtype == np.float32
    assert np.allclose(maps.reshape(FRAMES, -1).max(axis=1), 1.0)  # each frame divided by its maximum (the seed)
    for index in range(FRAMES):
        inside, outside = maps[index][masks[index] > 0].mean(), maps[index][masks[index] == 0].mean()
        assert inside > 5 * outside, (index, inside, outside)
    # A still clip has no motion: zeros, not NaNs.
    still = af.motion_maps_from_video(np.repeat(frames[:1], 3, axis=0))
    assert still.shape == (3, SIZE, SIZE) and not still.any()


def test_similarity_is_opencv_tm_ccoeff_normed():
    import cv2

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 64, 5, generator=generator)
    motion = torch.rand(3, 64, generator=generator)
    ours = af.motion_similarity(maps, motion)
    for frame in range(3):
        for token in range(5):
            expected = cv2.matchTemplate(maps[frame, :, token].reshape(8, 8).numpy(), motion[frame].reshape(8, 8).numpy(),
                                         cv2.TM_CCOEFF_NORMED)
            assert abs(float(expected.item()) - ours[frame, token].item()) < 1e-5
    flat = af.motion_similarity(maps, torch.zeros(3, 64))
    assert torch.equal(flat, torch.zeros(3, 5))  # no motion: no correlation, no NaN


def test_injection_moves_the_chosen_columns_only_and_keeps_their_mass():
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 3, 16, 10, generator=generator).softmax(dim=-1)  # (frames, heads, pixels, tokens)
    motion = torch.zeros(2, 16)
    motion[:, :4] = 1.0
    weights = torch.tensor([[0.7, 0.9], [0.6, 0.8]])
    before = probs.clone()
    af.inject_motion_map(probs, motion, [4, 5], weights, 0.2, "token_mass")
    others = [i for i in range(10) if i not in (4, 5)]
    assert torch.equal(probs[..., others], before[..., others])
    # Each injected column keeps its total over the pixels, and moves toward the motion.
    assert torch.allclose(probs[..., [4, 5]].sum(dim=2), before[..., [4, 5]].sum(dim=2), atol=1e-6)
    assert (probs[..., :4, 4].sum(-1) > before[..., :4, 4].sum(-1)).all()
    # Rows sum to 1 on average over the frame (exactly up to rounding), not pixel by pixel.
    assert torch.allclose(probs.sum(-1).mean(-1), torch.ones(2, 3), atol=1e-6)
    # The seed's behaviour: the map is only added.
    added = before.clone()
    af.inject_motion_map(added, motion, [4], weights[:, :1], 0.2, "none")
    assert torch.allclose(added[..., 4] - before[..., 4], 0.2 * weights[:, None, None, 0] * motion[:, None, :])
    # Strength 0 changes nothing at all.
    same = before.clone()
    assert torch.equal(af.inject_motion_map(same, motion, [4], weights[:, :1], 0.0), before)


# --------------------------------------------------------------------------- the acceptance: injection in the pipeline


def test_injection_raises_the_motion_words_correlation_with_the_moving_region_and_keeps_other_tokens():
    frames, masks = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    records = []
    output = pipe(frames, SOURCE, "a zebra is moving", settings(motion_words="moving"), attention_recorder=records.append)
    assert output.videos[0].shape == (FRAMES, SIZE, SIZE, 3) and output.source_video.shape == (FRAMES, SIZE, SIZE, 3)
    assert set(output.motion_words) == {"moving"}
    tokenizer = pipe.components.tokenizer
    prompts = [af.prompt_tokens(tokenizer, SOURCE), af.prompt_tokens(tokenizer, "a zebra is moving")]
    injected_records = [r for r in records if r.step > 0]  # the seed injects x/step, nothing at step 0
    assert len(injected_records) == 3 * 4  # 3 steps x 4 cross-attention layers of the tiny UNet
    assert all(torch.equal(r.injected, r.raw) for r in records if r.step == 0)
    before, after = [], []
    for record in injected_records:
        region = F.interpolate(torch.from_numpy(masks)[:, None], size=(record.height, record.width), mode="area")
        region = region[:, 0].flatten(1)
        for branch, tokens in enumerate(prompts):
            positions = tokens.positions("moving")
            others = [p for p in range(77) if p not in positions]
            assert record.chosen[branch] == ["moving"]
            raw_map = record.raw[branch][..., positions].mean(dim=(1, 3))  # heads and the word's tokens
            new_map = record.injected[branch][..., positions].mean(dim=(1, 3))
            before.append(np.mean([pearson(raw_map[f], region[f]) for f in range(FRAMES)]))
            after.append(np.mean([pearson(new_map[f], region[f]) for f in range(FRAMES)]))
            assert after[-1] > before[-1] + 0.2
            # Every other token's map is bit-identical; the injected tokens keep their attention mass.
            assert torch.equal(record.injected[branch][..., others], record.raw[branch][..., others])
            assert torch.allclose(record.injected[branch][..., positions].sum(dim=2),
                                  record.raw[branch][..., positions].sum(dim=2), rtol=1e-5, atol=1e-7)
    print(f"motion word vs moving region, Pearson over {len(before)} (layer, step, branch) maps: "
          f"before {np.mean(before):+.3f} (min {np.min(before):+.3f}, max {np.max(before):+.3f}) -> "
          f"after {np.mean(after):+.3f} (min {np.min(after):+.3f})")
    assert np.mean(after) > 0.5 > np.mean(before) + 0.3


def test_without_named_words_the_best_matching_word_gets_the_motion():
    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    records = []
    output = pipe(frames, SOURCE, "a zebra is moving", settings(motion_top_k=1, injection_decay="constant"),
                  attention_recorder=records.append)
    for record in records:
        for branch in range(2):
            scores = {word: np.mean(values) for word, values in record.scores[branch].items()}
            assert record.chosen[branch] == [max(scores, key=scores.get)]
    assert sum(output.motion_words.values()) == len(records) * 2
    assert any(note.startswith("Motion map injected into:") for note in output.notes)


def test_strength_zero_is_bit_identical_to_the_plain_edit(monkeypatch):
    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    plain_settings = settings(injection_strength=0.0)
    plain = pipe(frames, SOURCE, "a zebra is moving", plain_settings, output_type="latent")
    injected = pipe(frames, SOURCE, "a zebra is moving", settings(injection_strength=0.2), output_type="latent")
    assert (injected.videos[0] - plain.videos[0]).abs().max().item() > 1e-4  # the injection changes the edit

    # Strength 0 computes no flow at all, and given motion maps change nothing.
    def no_flow(*_args, **_kwargs):
        raise AssertionError("strength 0 must not compute optical flow")

    monkeypatch.setattr(af, "motion_maps_from_video", no_flow)
    again = pipe(frames, SOURCE, "a zebra is moving", plain_settings, output_type="latent")
    with_maps = pipe(frames, SOURCE, "a zebra is moving", plain_settings, output_type="latent",
                     motion_maps=np.ones((FRAMES, SIZE, SIZE), np.float32))
    for output in (again, with_maps):
        assert torch.equal(output.videos[0], plain.videos[0]) and torch.equal(output.source_video, plain.source_video)
    assert plain.motion_maps is None and plain.motion_words == {}


def test_explicit_probabilities_only_where_the_control_or_the_injection_acts(monkeypatch):
    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    calls = []
    original = af.CrossAttnControlProcessor._controlled

    def counting(self, attn, control, *args):
        calls.append(control.step)
        return original(self, attn, control, *args)

    monkeypatch.setattr(af.CrossAttnControlProcessor, "_controlled", counting)
    pipe(frames, SOURCE, SOURCE, settings(injection_strength=0.0), output_type="latent")
    assert calls == []  # no control, no injection: SDPA everywhere
    pipe(frames, SOURCE, "a zebra is moving", settings(injection_strength=0.0, cross_replace_steps=0.5), output_type="latent")
    assert calls == [0] * 4 + [1] * 4  # word swap during the first 2 of 4 steps, in the 4 cross-attention layers
    calls.clear()
    pipe(frames, SOURCE, SOURCE, settings(injection_strength=0.2), output_type="latent")
    assert calls == [1] * 4 + [2] * 4 + [3] * 4  # injection x/step: from step 1 on


# --------------------------------------------------------------------------- inversion


def analytic_eps(z0: torch.Tensor):
    """ε of a single data point is exact: ε(x_t, t) = (x_t − √ᾱ_t z0)/√(1 − ᾱ_t) (PIPELINES.md §2.4)."""
    from diffusers import DDIMScheduler

    alphas = DDIMScheduler.from_config(SD1_SCHEDULER_CONFIG).alphas_cumprod

    def predict(sample, timestep):
        alpha = alphas[int(timestep)]
        return (sample - alpha.sqrt() * z0) / (1 - alpha).sqrt()

    return predict


def test_inversion_round_trip_with_an_analytic_noise_predictor():
    z0 = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    predict = analytic_eps(z0)
    errors = {}
    for steps in (10, 50):
        trajectory = af.invert_latents(z0.clone(), predict, scheduler_config=SD1_SCHEDULER_CONFIG, num_inference_steps=steps)
        assert len(trajectory) == steps + 1 and torch.equal(trajectory[0], z0)
        rebuilt = tav.ddim_sample(trajectory[-1], predict, scheduler_config=SD1_SCHEDULER_CONFIG, num_inference_steps=steps)
        errors[steps] = (rebuilt - z0).abs().mean().item()
    assert errors[50] <= 1e-2 and errors[50] < errors[10], errors
    print(f"analytic round trip mean |error|: 10 steps {errors[10]:.2e}, 50 steps {errors[50]:.2e}")


def test_null_text_optimisation_repairs_the_guided_reconstruction():
    """The unconditional prediction is off by mean(embedding − condition); guidance 7.5 amplifies that 6.5x.

    P2P's early stop (loss below 1e-5 + 2e-5·step) bounds how exact the repair gets: about 1e-2."""
    steps, guidance = 10, 7.5
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    exact = analytic_eps(z0)
    condition = torch.zeros(1, 77, 16)
    unconditional = torch.full((1, 77, 16), 0.3)

    def predict(sample, timestep, context):
        return exact(sample, timestep) + (context - condition).mean()

    trajectory = af.invert_latents(z0.clone(), lambda s, t: predict(s, t, condition), scheduler_config=SD1_SCHEDULER_CONFIG,
                                   num_inference_steps=steps)

    def guided(embeddings):
        step = {"i": 0}

        def eps(sample, timestep):
            null = embeddings[step["i"]] if isinstance(embeddings, list) else embeddings
            step["i"] += 1
            uncond, cond = predict(sample, timestep, null), predict(sample, timestep, condition)
            return uncond + guidance * (cond - uncond)

        return tav.ddim_sample(trajectory[-1], eps, scheduler_config=SD1_SCHEDULER_CONFIG, num_inference_steps=steps)

    plain_error = (guided(unconditional) - z0).abs().mean().item()
    optimised = af.null_text_optimization(trajectory, predict, condition=condition, unconditional=unconditional,
                                          scheduler_config=SD1_SCHEDULER_CONFIG, guidance_scale=guidance, inner_steps=20)
    assert len(optimised) == steps and all(e.shape == unconditional.shape and not e.requires_grad for e in optimised)
    null_error = (guided(optimised) - z0).abs().mean().item()
    print(f"guided reconstruction mean |error|: plain {plain_error:.3e}, null-text {null_error:.3e}")
    assert null_error < plain_error / 20 and null_error <= 2e-2


def test_pipeline_null_text_and_reusing_the_inversion():
    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    steps = []
    first = pipe(frames, SOURCE, "a zebra is moving", settings(null_text_inner_steps=2, num_inference_steps=3),
                 output_type="latent", progress=lambda i, n: steps.append((i, n)))
    assert first.inversion.null_text_embeddings is not None and len(first.inversion.null_text_embeddings) == 3
    assert steps == [(i, 9) for i in range(1, 10)]  # inversion, null-text, sampling
    again = pipe(frames, SOURCE, "a zebra is moving", settings(null_text_inner_steps=2, num_inference_steps=3),
                 output_type="latent", inversion=first.inversion)
    assert torch.equal(again.videos[0], first.videos[0])
    with pytest.raises(ValueError, match="same count, or invert again"):
        pipe(frames, SOURCE, "a zebra is moving", settings(num_inference_steps=4), inversion=first.inversion)
    with pytest.raises(ValueError, match="optimised for guidance 7.5"):
        pipe(frames, SOURCE, "a zebra", settings(num_inference_steps=3, guidance_scale=5.0), inversion=first.inversion)


# --------------------------------------------------------------------------- prompt-to-prompt control


def run_recorded(source: str, target: str, **overrides):
    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    records = []
    values = dict(injection_strength=0.0, cross_replace_steps=0.5)
    values.update(overrides)
    output = pipe(frames, source, target, settings(**values), output_type="latent", attention_recorder=records.append)
    tokenizer = pipe.components.tokenizer
    return records, af.prompt_tokens(tokenizer, source), af.prompt_tokens(tokenizer, target), output


def test_word_swap_keeps_the_sources_maps_for_unchanged_words():
    records, source, target, output = run_recorded(SOURCE, "a zebra is moving", swap_word_replace_steps=0.0)
    assert any("word swap" in note for note in output.notes)
    swapped = target.positions("zebra")
    unchanged = [p for p in range(77) if p not in swapped]
    assert source.positions("horse") == swapped  # 5 tokens each in the tiny character-level tokenizer
    controlled = [r for r in records if r.step < 2]
    assert len(controlled) == 8 and len(records) == 16
    for record in controlled:
        # Unchanged words (and start, end and padding tokens) take the source's maps ...
        assert torch.equal(record.final[1][..., unchanged], record.injected[0][..., unchanged])
        # ... the swapped word keeps its own (swap_word_replace_steps 0) ...
        assert torch.equal(record.final[1][..., swapped], record.injected[1][..., swapped])
        assert not torch.equal(record.injected[1][..., unchanged], record.injected[0][..., unchanged])
    for record in records:
        assert torch.equal(record.final[0], record.injected[0])  # the source branch is never controlled
        if record.step >= 2:  # ... and after the controlled steps the edit uses its own maps
            assert torch.equal(record.final[1], record.injected[1])

    # P2P's default: the swapped word takes the replaced word's map too.
    records, *_ = run_recorded(SOURCE, "a zebra is moving")
    for record in records:
        if record.step < 2:
            assert torch.equal(record.final[1], record.injected[0])


def test_word_swap_with_other_token_counts_spreads_the_replaced_words_map():
    records, source, target, _ = run_recorded("a cat is moving", "a horse is moving")
    cat, horse = source.positions("cat"), target.positions("horse")
    assert (len(cat), len(horse)) == (3, 5)
    record = next(r for r in records if r.step == 0)
    expected = record.injected[0][..., cat].sum(dim=-1, keepdim=True) / len(horse)
    assert torch.allclose(record.final[1][..., horse], expected.expand(*expected.shape[:-1], len(horse)), atol=1e-7)
    # Later words shift by the difference in token count.
    assert torch.equal(record.final[1][..., target.positions("moving")], record.injected[0][..., source.positions("moving")])
    assert torch.allclose(record.final[1].sum(-1), torch.ones_like(record.final[1].sum(-1)), atol=1e-5)


def test_refinement_takes_the_sources_maps_for_aligned_tokens_and_keeps_new_ones():
    records, source, target, output = run_recorded(SOURCE, "a brown horse is moving fast")
    assert any("refine" in note for note in output.notes)
    new = target.positions("brown") + target.positions("fast")
    for record in records:
        if record.step >= 2:
            assert torch.equal(record.final[1], record.injected[1])
            continue
        for word in ("a", "horse", "is", "moving"):
            assert torch.equal(record.final[1][..., target.positions(word)], record.injected[0][..., source.positions(word)])
        assert torch.equal(record.final[1][..., new], record.injected[1][..., new])
        assert torch.equal(record.final[1][..., target.end], record.injected[0][..., source.end])  # end of text


def test_reweighting_scales_a_words_attention_and_renormalises():
    records, _, target, _ = run_recorded(SOURCE, SOURCE, reweight="moving:3")
    moving = target.positions("moving")
    others = [p for p in range(77) if p not in moving]
    for record in records:
        edited, final = record.injected[1], record.final[1]
        weights = torch.ones(77)
        weights[moving] = 3.0
        expected = edited * weights
        assert torch.allclose(final, expected / expected.sum(-1, keepdim=True), atol=1e-7)
        assert torch.allclose(final.sum(-1), torch.ones_like(final.sum(-1)), atol=1e-5)
        share_before = edited[..., moving].sum(-1) / edited[..., others].sum(-1)
        share_after = final[..., moving].sum(-1) / final[..., others].sum(-1)
        assert torch.allclose(share_after, 3 * share_before, rtol=1e-4)
        assert torch.equal(record.final[0], record.injected[0])  # the source branch is not re-weighted


def test_self_attention_replacement_is_the_sources_probabilities_with_the_edits_values():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    state = af._AttentionFlowState(num_frames=2, cross_frame="all")
    edited = af._BranchControl(mode="none", alphas=torch.zeros(4, 77), active=[False] * 4)
    state.control = af.AttentionFlowControl(branches=2, guidance=False, num_steps=4, self_replace_until=2, edited=[edited],
                                            latent_hw=(8, 8))
    processor = af.CrossFrameAttnProcessor(state)
    hidden = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(1))  # 2 branches x 2 frames, a 4x4 layer
    with torch.no_grad():
        out = processor(attn, hidden)
        q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)

        def explicit(query, keys, values):
            heads = lambda t: t.view(t.shape[0], 4, 8).transpose(0, 1)  # noqa: E731
            probs = (heads(query) @ heads(keys).transpose(-1, -2) * attn.scale).softmax(-1)
            return attn.to_out[0]((probs @ heads(values)).transpose(0, 1).reshape(query.shape[0], 32))

        all_k = [torch.cat([k[0], k[1]]), torch.cat([k[2], k[3]])]  # every frame's keys, per branch
        all_v = [torch.cat([v[0], v[1]]), torch.cat([v[2], v[3]])]
        for frame in range(2):
            assert torch.allclose(out[frame], explicit(q[frame], all_k[0], all_v[0]), atol=1e-5)
            # The edited branch: the source's queries and keys, its own values (P2P's self-attention replacement).
            assert torch.allclose(out[2 + frame], explicit(q[frame], all_k[0], all_v[1]), atol=1e-5)
        state.control.step = 2  # after self_replace_steps: its own attention
        out_late = processor(attn, hidden)
        assert torch.allclose(out_late[2], explicit(q[2], all_k[1], all_v[1]), atol=1e-5)


# --------------------------------------------------------------------------- cross-frame attention


def test_cross_frame_switch_all_frames_versus_sparse_causal():
    components = tiny_components()
    image_unet = copy.deepcopy(components.unet)
    unet = af.apply_attention_flow(components.unet)
    assert af.is_attention_flow_applied(unet)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(FRAMES, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator).expand(FRAMES, -1, -1)
    outputs = {}
    with torch.no_grad():
        expected = image_unet(latents, 500, encoder_hidden_states=context).sample
        for mode in af.CROSS_FRAME_MODES:
            af.apply_attention_flow(unet, cross_frame_attention=mode)
            af.set_num_frames(unet, FRAMES)
            outputs[mode] = unet(latents, 500, encoder_hidden_states=context).sample
            # One frame: both are the image model's self-attention.
            af.set_num_frames(unet, 1)
            assert (unet(latents, 500, encoder_hidden_states=context).sample - expected).abs().max().item() <= 1e-5
    assert all(torch.isfinite(out).all() for out in outputs.values())
    assert (outputs["all"] - outputs["sparse_causal"]).abs().max().item() > 1e-3
    # Sparse-causal frame 0 attends only to itself: the image model; all-frames frame 0 sees every frame.
    assert (outputs["sparse_causal"][0] - expected[0]).abs().max().item() <= 1e-5
    assert (outputs["all"][0] - expected[0]).abs().max().item() > 1e-3


def test_both_cross_frame_modes_run_in_the_pipeline():
    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    results = {mode: pipe(frames, SOURCE, "a zebra is moving", settings(cross_frame_attention=mode, num_inference_steps=2),
                          output_type="latent").videos[0] for mode in af.CROSS_FRAME_MODES}
    assert (results["all"] - results["sparse_causal"]).abs().max().item() > 1e-4


def test_processors_are_reapplied_before_every_run():
    from diffusers.models.attention_processor import AttnProcessor2_0

    frames, _ = moving_object_clip()
    pipe = af.AttentionFlowPipeline(tiny_components())
    reference = pipe(frames, SOURCE, "a zebra is moving", settings(num_inference_steps=2), output_type="latent").videos[0]
    pipe.unet.set_attn_processor(AttnProcessor2_0())  # an xformers toggle or another extension
    assert not af.is_attention_flow_applied(pipe.unet)
    again = pipe(frames, SOURCE, "a zebra is moving", settings(num_inference_steps=2), output_type="latent").videos[0]
    assert af.is_attention_flow_applied(pipe.unet) and torch.equal(again, reference)
    assert af._state(pipe.unet).control is None  # the control does not outlive its call


def test_tune_a_video_weights_keep_their_temporal_layers(tmp_path):
    frames, _ = moving_object_clip()
    zero_shot = af.AttentionFlowPipeline(tiny_components())
    reference = zero_shot(frames, SOURCE, "a zebra is moving", settings(num_inference_steps=2), output_type="latent")
    components = tiny_components()
    tav.inflate_unet(components.unet)  # untrained: zero output layers
    weights = tav.save_tune_a_video_weights(components.unet, tmp_path / "w.safetensors", base_model="tiny",
                                            base_model_fingerprint="", frames=FRAMES, width=SIZE, height=SIZE)
    pipe = af.AttentionFlowPipeline(tiny_components())
    pipe.load_weights(weights)
    output = pipe(frames, SOURCE, "a zebra is moving", settings(num_inference_steps=2), output_type="latent")
    blocks = tav._transformer_blocks(pipe.unet)
    assert all(hasattr(block, "attn_temp") and block._forward_hooks for block in blocks)
    assert af.is_attention_flow_applied(pipe.unet)
    assert (output.videos[0] - reference.videos[0]).abs().max().item() <= 1e-4  # zero temporal layers add nothing


# --------------------------------------------------------------------------- inputs, settings, command line


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(source_prompt=" "), "source prompt is empty"),
        (dict(prompt=[]), "No edited prompt"),
        (dict(prompt=""), "edited prompt is empty"),
        (dict(prompt=[3]), "must be strings"),
        (dict(video="one-frame"), "at least 2 frames"),
        (dict(video="60-wide"), "not a multiple of 8"),
        (dict(settings=dict(edit_mode="word_swap"), prompt="a horse runs"), "same number of words"),
        (dict(settings=dict(motion_words="flying")), "appear in neither"),
        (dict(settings=dict(reweight="flying:2")), "not in the edited prompt"),
        (dict(motion_maps=np.ones((2, 8, 8))), "with 4 frames"),
        (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "choose from \\['latents'\\]"),
    ],
)
def test_check_inputs_errors_teach(change, message):
    pipe = af.AttentionFlowPipeline.__new__(af.AttentionFlowPipeline)  # check_inputs needs no model
    frames, _ = moving_object_clip()
    videos = {"one-frame": frames[:1], "60-wide": frames[:, :, :60]}
    arguments = dict(video=frames, source_prompt=SOURCE, prompt="a zebra is moving", settings={},
                     callback_on_step_end_tensor_inputs=["latents"])
    arguments.update(change)
    if isinstance(arguments["video"], str):
        arguments["video"] = videos[arguments["video"]]
    arguments["settings"] = settings(**arguments["settings"])
    with pytest.raises(ValueError, match=message):
        pipe.check_inputs(arguments.pop("video"), arguments.pop("source_prompt"), arguments.pop("prompt"),
                          arguments.pop("settings"), **arguments)


def test_settings_errors_teach():
    with pytest.raises(ValueError, match="no weight"):
        af.AttentionFlowSettings(reweight="moving")
    with pytest.raises(ValueError, match="weights go from 0"):
        af.AttentionFlowSettings(reweight="moving:20")
    with pytest.raises(ValueError, match="multiple of 8"):
        af.AttentionFlowSettings(width=100)
    assert af.parse_reweight("Moving:2, red:0.5,") == {"moving": 2.0, "red": 0.5}
    defaults = af.AttentionFlowSettings()
    assert (defaults.injection_strength, defaults.cross_replace_steps, defaults.self_replace_steps) == (0.2, 0.2, 0.5)
    assert (defaults.guidance_scale, defaults.num_inference_steps, defaults.cross_frame_attention) == (7.5, 50, "all")


def test_register_cli_adds_attention_flow():
    import argparse

    parser = argparse.ArgumentParser()
    af.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["attention-flow", "v.mp4", "out.mp4", "--model", "m", "--source-prompt", "a car is moving",
                              "--prompt", "a jeep is moving", "--injection-strength", "0.09", "--motion-words", "moving",
                              "--cross-frame-attention", "sparse_causal", "--no-half-precision"])
    chosen = af.AttentionFlowSettings.from_dict(given(args, af.AttentionFlowSettings))
    assert args.handler is af.run_cli and args.prompt == ["a jeep is moving"]
    assert (chosen.injection_strength, chosen.motion_word_list(), chosen.cross_frame_attention) == (0.09, ["moving"],
                                                                                                    "sparse_causal")
    assert chosen.half_precision is False and chosen.frames == 8


def _cli_entry() -> list:
    from lib_vidguide.cli import build_parser

    wired = any("attention-flow" in (getattr(action, "choices", None) or {}) for action in build_parser()._actions)
    return ([sys.executable, "-m", "lib_vidguide", "attention-flow"] if wired
            else [sys.executable, "-m", "lib_vidguide.pipelines.attention_flow"])


def test_cli_inverts_and_edits_a_tiny_clip_end_to_end(tmp_path, capsys):
    model = save_tiny_pipeline(tmp_path / "tiny-sd")
    frames, _ = moving_object_clip()
    video = write_clip(tmp_path / "clip.mp4", list(frames), fps=8.0)  # the CLI resizes it to 64x64
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    entry = _cli_entry()
    run = subprocess.run(
        entry + [str(video), str(tmp_path / "edited.mp4"), "--model", str(model), "--source-prompt", SOURCE,
                 "--prompt", "a zebra is moving", "--frames", "4", "--width", "64", "--height", "64",
                 "--num-inference-steps", "3", "--motion-words", "moving", "--device", "cpu",
                 "--frames-dir", str(tmp_path / "png")],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    from lib_vidguide.video_io import probe

    info = probe(tmp_path / "edited.mp4")
    assert (info.width, info.height, info.frame_count) == (64, 64, 4) and result["frames"] == 4
    assert abs(float(info.fps) - 8.0) < 1e-6 and result["motion_words"].get("moving", 0) > 0
    assert len(list((tmp_path / "png").glob("frame_*.png"))) == 4
    assert "step 6/6" in run.stderr and "word swap" in run.stderr  # 3 inversion + 3 editing steps

    # Bad input: one "error:" line and status 2, before any model is loaded (in-process: no second interpreter).
    status = af.main([str(video), str(tmp_path / "x.mp4"), "--model", str(model), "--source-prompt", SOURCE,
                      "--prompt", "a zebra is moving", "--motion-words", "flying", "--width", "64", "--height", "64",
                      "--frames", "4"])
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("error:") and "appear in neither" in error
