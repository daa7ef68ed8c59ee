#!/usr/bin/env python3
"""AttentionFlow edit time and peak memory at real size (SD 1.5 UNet, random weights), issue 6.

The issue's target: time and peak memory of an AttentionFlow edit at 512x512, 8 frames, on a
GPU when one is lent. Everything runs the library's own code
(:class:`lib_vidguide.pipelines.attention_flow.AttentionFlowPipeline`: cross-frame attention
in every attn1, word-swap control, motion map injection with explicit cross-attention
probabilities) on SD 1.5-sized models with random weights (speed does not depend on weight
values, and no weights can be downloaded here): the UNet (860 M parameters), the VAE and a
CLIP-L-sized text encoder. The tokenizer is the tiny character-level one (no network): a
word is several tokens, which changes nothing in the cost (77 tokens either way).

* **GPU** (``--device cuda``): the whole edit, seed defaults (50 inversion + 50 editing
  steps, guidance 7.5, fp16): DDIM inversion, flow, sampling, decoding; the median
  editing-step time, the total, and the peak of ``torch.cuda.max_memory_allocated``. The same
  clip edited with no control and no injection (plain cross-frame sampling) gives the cost
  of the explicit probabilities.
* **CPU** (no GPU here): ONE denoising step of the editing pass at 512x512 (step 1: word
  swap, self-attention replacement and motion injection all active), on ``--cpu-frames``
  frames (default 2: 8 frames take tens of minutes per step on 2 cores), with the time
  spent in attn1 (cross-frame attention) and attn2 (cross-attention, explicit
  probabilities) measured separately. The 8-frame and 100-step figures are
  **extrapolations**, printed as such: attn1 over all frames grows with frames², the rest
  with frames.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python bench/attention_flow.py                  # CPU: one step, extrapolated
    .venv/bin/python bench/attention_flow.py --device cuda                      # GPU: the whole edit
    .venv/bin/python bench/attention_flow.py --smoke                            # tiny models: checks the script

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_vidguide.pipelines import attention_flow as af  # noqa: E402
from lib_vidguide.pipelines.sd_loading import SD1_CLIP_TEXT_CONFIG, SD1_SCHEDULER_CONFIG, SDComponents  # noqa: E402
from lib_vidguide.synthetic import make_clip  # noqa: E402
from lib_vidguide.tiny_models import write_tiny_tokenizer  # noqa: E402
from _common import SD15_UNET_CONFIG, SMOKE_UNET_CONFIG, device_label, peak_rss_bytes, randomised  # noqa: E402

# The seed's example (USERS.md §B.4, configs "car-moving"): the word swap car -> jeep, "moving" carries the motion.
SOURCE_PROMPT = "a car is moving on the road"
EDITED_PROMPT = "a jeep is moving on the desert"

# runwayml/stable-diffusion-v1-5 vae/config.json.
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)
SMOKE_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64,
    scaling_factor=0.18215,
)


def random_components(smoke: bool) -> SDComponents:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder))
    text_config = dict(SD1_CLIP_TEXT_CONFIG)
    if smoke:
        text_config.update(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    text_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    with init_empty_weights():
        unet = UNet2DConditionModel(**(SMOKE_UNET_CONFIG if smoke else SD15_UNET_CONFIG))
        vae = AutoencoderKL(**(SMOKE_VAE_CONFIG if smoke else SD15_VAE_CONFIG))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    models = []
    for seed, model in enumerate((unet, vae, text_encoder)):
        model.to_empty(device="cpu")
        models.append(randomised(model, seed))
    # to_empty leaves buffers (CLIP's position ids) uninitialised: rebuild them.
    embeddings = models[2].text_model.embeddings
    embeddings.position_ids.copy_(torch.arange(embeddings.position_ids.shape[-1]).expand_as(embeddings.position_ids))
    return SDComponents(tokenizer=tokenizer, text_encoder=models[2], unet=models[0], vae=models[1],
                        scheduler_config=dict(SD1_SCHEDULER_CONFIG), source="random-sd15", kind="diffusers")


def synthetic_clip(frames: int, size: int) -> np.ndarray:
    """A still photo with a horse cut-out moving over it: one region moves (lib_vidguide.synthetic)."""
    clip = make_clip(frames, size=(size, size), pan_px_per_frame=(0.0, 0.0), object_period_frames=12, noise_sigma=0)
    return np.stack(clip.frames)


class SectionTimer:
    """Wall time spent inside the attn1 and attn2 processors (synchronised on a GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = {"attn1": 0.0, "attn2": 0.0}
        self._originals = {}

    def __enter__(self):
        for key, cls in (("attn1", af.CrossFrameAttnProcessor), ("attn2", af.CrossAttnControlProcessor)):
            original = cls.__call__
            self._originals[cls] = original

            def timed(processor, *args, _original=original, _key=key, **kwargs):
                self._sync()
                started = time.perf_counter()
                result = _original(processor, *args, **kwargs)
                self._sync()
                self.seconds[_key] += time.perf_counter() - started
                return result

            cls.__call__ = timed
        return self

    def __exit__(self, *exc_info):
        for cls, original in self._originals.items():
            cls.__call__ = original

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def whole_edit(pipe: af.AttentionFlowPipeline, frames: np.ndarray, steps: int, device: torch.device, report: dict,
               mode: str) -> None:
    """The whole edit, twice: with control + injection (the seed's defaults) and plain (neither)."""
    on_gpu = device.type == "cuda"
    label = "GPU" if on_gpu else "CPU whole edit"
    settings = dict(num_inference_steps=steps, frames=len(frames), width=frames.shape[2], height=frames.shape[1],
                    cross_frame_attention=mode, motion_words="moving")
    runs = {
        "attention_flow": af.AttentionFlowSettings(**settings),
        "plain_cross_frame": af.AttentionFlowSettings(**settings, injection_strength=0.0, edit_mode="none",
                                                      self_replace_steps=0.0, cross_replace_steps=0.0),
    }
    for name, chosen in runs.items():
        synchronize(device)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        stamps: list = []

        def progress(_step: int, _steps: int) -> None:
            synchronize(device)
            stamps.append(time.perf_counter())

        started = time.perf_counter()
        output = pipe(frames, SOURCE_PROMPT, EDITED_PROMPT if name == "attention_flow" else SOURCE_PROMPT, chosen,
                      progress=progress)
        synchronize(device)
        total = time.perf_counter() - started
        boundaries = [started] + stamps
        step_times = [b - a for a, b in zip(boundaries, boundaries[1:])]
        inversion, editing = step_times[:steps], step_times[steps:]
        figures = {
            "total_s": round(total, 2),
            "inversion_step_s_median": round(statistics.median(inversion[1:] or inversion), 4),
            # The first editing step includes the flow (8 frames, DIS) and the prompt encodings.
            "first_edit_step_s": round(editing[0], 4),
            "edit_step_s_median": round(statistics.median(editing[1:] or editing), 4),
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if on_gpu else peak_rss_bytes(),
            "motion_words": output.motion_words,
        }
        if on_gpu:
            figures["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        report[f"{'gpu' if on_gpu else 'cpu_whole_edit'}_{name}"] = figures
        print(f"{label} {name}: {total:.1f} s total ({steps} inversion + {steps} editing steps, flow and decode included); "
              f"editing step {figures['edit_step_s_median'] * 1000:.0f} ms (median), inversion step "
              f"{figures['inversion_step_s_median'] * 1000:.0f} ms; peak {'allocated' if on_gpu else 'RSS'} "
              f"{figures['peak_allocated_bytes'] / 1024**3:.2f} GiB", flush=True)


def cpu_step(pipe: af.AttentionFlowPipeline, frames: np.ndarray, target_frames: int, steps: int, report: dict,
             mode: str) -> None:
    """One denoising step of the editing pass (step 1: control and injection active), timed by part."""
    device = pipe.device
    count = len(frames)
    tokenizer = pipe.components.tokenizer
    flow_started = time.perf_counter()
    maps = af.motion_maps_from_video(frames)
    report["cpu_flow_s"] = round(time.perf_counter() - flow_started, 3)
    source, target = af.prompt_tokens(tokenizer, SOURCE_PROMPT), af.prompt_tokens(tokenizer, EDITED_PROMPT)
    settings = af.AttentionFlowSettings(num_inference_steps=steps, motion_words="moving", cross_frame_attention=mode)
    latent_hw = (frames.shape[1] // 8, frames.shape[2] // 8)
    control = af.build_control(
        source, [target], num_steps=steps, guidance=True, edit_mode=settings.edit_mode,
        cross_replace_steps=settings.cross_replace_steps, self_replace_steps=settings.self_replace_steps,
        motion_maps=maps, injection_strength=settings.injection_strength, injection_decay=settings.injection_decay,
        motion_words=settings.motion_word_list(), latent_hw=latent_hw, device=device,
    )
    control.step = 1  # the seed injects x/step from step 1; word swap (first 20 %) and self replacement (50 %) act
    assert control.explicit_cross(1) and control.step < control.self_replace_until
    af.apply_attention_flow(pipe.unet, cross_frame_attention=mode)
    af.set_num_frames(pipe.unet, count)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2 * count, 4, *latent_hw, generator=generator)
    width = pipe.unet.config.cross_attention_dim
    context = torch.randn(4 * count, 77, width, generator=generator)
    state = af._state(pipe.unet)

    def unet_call(batch_latents, batch_context):
        with torch.no_grad():
            return pipe.unet(batch_latents, 981, encoder_hidden_states=batch_context).sample

    # Inversion step (no control, batch = frames) and the editing step ([uncond | cond] x 2 branches x frames).
    state.control = None
    started = time.perf_counter()
    with SectionTimer(device) as inversion_parts:
        unet_call(latents[:count], context[:count])
    inversion_s = time.perf_counter() - started
    state.control = control
    started = time.perf_counter()
    with SectionTimer(device) as parts:
        unet_call(torch.cat([latents, latents]), context)
    edit_s = time.perf_counter() - started
    state.control = None

    scale = target_frames / count
    attn1_power = 2 if mode == "all" else 1  # all frames: every frame's queries see every frame's keys

    def extrapolate(total: float, attn1: float) -> float:
        return (total - attn1) * scale + attn1 * scale**attn1_power

    edit_8 = extrapolate(edit_s, parts.seconds["attn1"])
    inversion_8 = extrapolate(inversion_s, inversion_parts.seconds["attn1"])
    report.update({
        "cpu_frames_measured": count,
        "cpu_edit_step_s": round(edit_s, 2),
        "cpu_edit_step_attn1_s": round(parts.seconds["attn1"], 2),
        "cpu_edit_step_attn2_explicit_s": round(parts.seconds["attn2"], 2),
        "cpu_inversion_step_s": round(inversion_s, 2),
        "cpu_peak_rss_bytes": peak_rss_bytes(),
        "cpu_extrapolated": {
            "frames": target_frames,
            "edit_step_s": round(edit_8, 1),
            "inversion_step_s": round(inversion_8, 1),
            f"edit_{steps}_plus_inversion_{steps}_steps_min": round((edit_8 + inversion_8) * steps / 60, 1),
            "model": f"attn1 x (frames ratio)^{attn1_power}, everything else x (frames ratio); VAE and flow not included",
        },
    })
    print(f"CPU, measured on {count} frames at {frames.shape[2]}x{frames.shape[1]}: one editing step "
          f"(batch {4 * count}: [uncond|cond] x [source, edit] x {count}) {edit_s:.1f} s, of which attn1 "
          f"{parts.seconds['attn1']:.1f} s and attn2 (explicit probabilities, injection, word swap) "
          f"{parts.seconds['attn2']:.1f} s; one inversion step (batch {count}) {inversion_s:.1f} s; flow of "
          f"{count} frames {report['cpu_flow_s']:.2f} s; peak RSS {report['cpu_peak_rss_bytes'] / 1024**3:.2f} GiB.", flush=True)
    print(f"CPU, EXTRAPOLATED to {target_frames} frames (not measured): editing step ~{edit_8:.0f} s, inversion step "
          f"~{inversion_8:.0f} s, a {steps}+{steps}-step edit ~{(edit_8 + inversion_8) * steps / 60:.0f} min.", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="square frame size in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=50, help="inversion and editing steps (default: the seed's 50)")
    parser.add_argument("--cpu-frames", type=int, default=2, help="frames of the CPU step (default 2; extrapolated)")
    parser.add_argument("--cross-frame-attention", default="all", choices=af.CROSS_FRAME_MODES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny models at 64x64: checks that the script runs")
    parser.add_argument("--whole-edit", action="store_true", help="on the CPU too: the whole edit (with --smoke: checks the GPU path)")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    size = 64 if args.smoke else args.size
    report: dict = {
        "device": device_label(device),
        "torch": torch.__version__, "models": "smoke" if args.smoke else "SD 1.5 sizes (random weights)",
        "frames": args.frames, "size": size, "steps": args.steps, "cross_frame_attention": args.cross_frame_attention,
        "prompts": [SOURCE_PROMPT, EDITED_PROMPT],
        # A shared machine's other jobs slow CPU timings down: the load says how much to trust them.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
    }
    started = time.perf_counter()
    components = random_components(args.smoke)
    report["unet_params"] = sum(p.numel() for p in components.unet.parameters())
    dtype = torch.float16 if on_gpu else torch.float32
    pipe = af.AttentionFlowPipeline(components, device=device, dtype=dtype)
    report["setup_s"] = round(time.perf_counter() - started, 2)
    print(f"UNet {report['unet_params'] / 1e6:.0f} M params; set-up {report['setup_s']} s", flush=True)

    if not on_gpu:
        report["gpu"] = "not measured (no CUDA device)"
        print("GPU: not measured (no CUDA device).", flush=True)
    if on_gpu or args.whole_edit:
        frames = synthetic_clip(args.frames, size)
        whole_edit(pipe, frames, args.steps, device, report, args.cross_frame_attention)
    else:
        frames = synthetic_clip(min(args.cpu_frames, args.frames), size)
        cpu_step(pipe, frames, args.frames, args.steps, report, args.cross_frame_attention)
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
