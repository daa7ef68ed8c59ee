#!/usr/bin/env python3
"""What the SVD motion brush costs per sampling step, against the plain step plus the UNet.

The issue's acceptance point: the brush (``MotionBrushEulerScheduler.step`` minus
``EulerDiscreteScheduler.step``) must cost <= 1 % of one step's plain work, i.e. the plain
scheduler step plus one CFG-batched UNet call of a real-size SVD UNet (random weights).

What is measured:

* The brush's own cost at the **real latent size**: (1, frames, 4, 72, 128) latents, i.e.
  576x1024 pixels, for 14 and 25 frames, with a painted mask of about a third of the image.
  Median over many repeats of the brush step and of the plain step on identical inputs, at a
  middle step and at the final step (where the brush also copies frame 1's static region).
* One UNet call of SVD-XT's ``UNetSpatioTemporalConditionModel`` (1.52 B parameters, random
  weights; speed does not depend on weight values and no weights can be downloaded here),
  CFG batch 2, as the pipeline calls it. On a GPU it is timed at 576x1024. On a CPU one such
  call takes many minutes, so it is timed at a smaller setting (by default 14 frames at
  128x256 pixels, 16x32 latents) and scaled to 576x1024 linearly in frames x latent pixels.
  Attention grows faster than linearly, so the scaled UNet time is a lower bound and the
  real-size CPU ratio printed is an upper bound. The output says which numbers are measured
  and which are scaled. The ratio at the small setting itself (brush measured there too) is
  printed as well: every part of it is measured.
* Peak VRAM of a whole motion-brush run at 576x1024 for 14 and 25 frames, with model CPU
  offload, fp16 and decode_chunk_size 4, on CUDA only (real-size UNet, VAE and CLIP ViT-H
  image encoder, random weights, 2 steps). On a CPU it prints that it was not measured.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/motion_brush.py          # CPU: ~2-3 minutes
    .venv/bin/python bench/motion_brush.py --device cuda              # fp16, plus peak VRAM
    .venv/bin/python bench/motion_brush.py --smoke                    # tiny UNet: checks the script only

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_vidguide.motion_brush import MotionBrushEulerScheduler  # noqa: E402

TARGET = 0.01
REAL_HEIGHT, REAL_WIDTH = 576, 1024
VAE_FACTOR = 8
LATENT_CHANNELS = 4

# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json (the class defaults, spelled out).
SVD_XT_UNET_CONFIG = dict(
    sample_size=96,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 20, 20),
    num_frames=25,
)
SMOKE_UNET_CONFIG = dict(
    sample_size=16, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64), addition_time_embed_dim=32, projection_class_embeddings_input_dim=96,
    layers_per_block=2, cross_attention_dim=1024, num_attention_heads=2, num_frames=4,
)
# stabilityai/stable-video-diffusion-img2vid-xt scheduler/scheduler_config.json
SVD_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
    timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
)
# vae/config.json and image_encoder/config.json of the same model.
SVD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
    scaling_factor=0.18215, force_upcast=True,
)
SVD_IMAGE_ENCODER_CONFIG = dict(
    hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32,
    num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Cost of the SVD motion brush per step, as a share of the step.")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--frames", type=int, nargs="+", default=[14, 25], help="frame counts (default 14 25)")
    parser.add_argument("--steps", type=int, default=25, help="schedule length; the brush is timed mid-way and last")
    parser.add_argument("--repeats", type=int, default=None, help="timed scheduler steps (default: cpu 40, cuda 200)")
    parser.add_argument("--unet-frames", type=int, default=14, help="CPU: frames of the timed UNet call (default 14)")
    parser.add_argument("--unet-height", type=int, default=128, help="CPU: pixel height of the timed UNet call")
    parser.add_argument("--unet-width", type=int, default=256, help="CPU: pixel width of the timed UNet call")
    parser.add_argument("--unet-calls", type=int, default=None, help="timed UNet calls after warm-up (cpu 1, cuda 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, the stable CPU figure)")
    parser.add_argument("--no-vram", action="store_true", help="skip the CUDA peak-VRAM runs")
    parser.add_argument("--smoke", action="store_true", help="tiny UNet: checks the script, figures meaningless")
    args = parser.parse_args(argv)
    for value in (args.unet_height, args.unet_width):
        if value % 64:
            parser.error("--unet-height and --unet-width must be multiples of 64")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def painted_mask(height: int, width: int) -> torch.Tensor:
    """An ellipse over about a third of the picture: a typical painted region."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return ((((yy + 0.1) / 0.65) ** 2 + ((xx - 0.2) / 0.65) ** 2) < 1.0).float()


def time_scheduler_steps(frames: int, latent_hw: tuple[int, int], args, device, dtype, repeats) -> dict:
    """Median plain step and brush step on identical (1, frames, 4, h, w) inputs, mid-schedule and last."""
    from diffusers import EulerDiscreteScheduler

    height, width = latent_hw
    plain = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    brush = MotionBrushEulerScheduler.from_config(plain.config)
    brush.motion_mask = painted_mask(height * VAE_FACTOR, width * VAE_FACTOR)
    for scheduler in (plain, brush):
        scheduler.set_timesteps(args.steps, device=device)
        scheduler.is_scale_input_called = True
    generator = torch.Generator(device="cpu").manual_seed(0)
    shape = (1, frames, LATENT_CHANNELS, height, width)
    sample = torch.randn(shape, generator=generator).to(device, dtype)
    model_output = torch.randn(shape, generator=generator).to(device, dtype)
    figures = {}
    for label, index in (("mid", args.steps // 2), ("last", args.steps - 1)):
        timestep = plain.timesteps[index]

        def plain_step():
            plain._step_index = index
            return plain.step(model_output, timestep, sample).prev_sample

        def brush_step():
            brush._step_index = index
            brush._brush_step_count = 0
            return brush.step(model_output, timestep, sample).prev_sample

        brush_step()  # fills the resized-mask cache, as the first step of a run does
        plain_seconds = median_seconds(plain_step, repeats, device)
        brush_seconds = median_seconds(brush_step, repeats, device)
        figures[label] = {"plain_step_s": plain_seconds, "brush_step_s": brush_seconds,
                          "brush_overhead_s": max(0.0, brush_seconds - plain_seconds)}
    # The one-off cost of the first brushed step of a run: resizing the mask to the latents.
    brush._static_cache = None
    synchronize(device)
    started = time.perf_counter()
    brush.static_region(sample)
    synchronize(device)
    figures["mask_resize_once_s"] = time.perf_counter() - started
    return figures


def build_unet(smoke: bool, device, dtype):
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    started = time.perf_counter()
    unet = UNetSpatioTemporalConditionModel(**(SMOKE_UNET_CONFIG if smoke else SVD_XT_UNET_CONFIG))
    unet = unet.to(device, dtype).eval().requires_grad_(False)
    parameters = sum(p.numel() for p in unet.parameters())
    return unet, parameters, time.perf_counter() - started


def time_unet(unet, frames: int, latent_hw: tuple[int, int], calls: int, warmup_frames: int, device, dtype) -> float:
    """Median seconds of one CFG-batched UNet call, as StableVideoDiffusionPipeline makes it."""
    height, width = latent_hw
    generator = torch.Generator(device="cpu").manual_seed(1)
    cross = unet.config.cross_attention_dim

    def inputs(frame_count):
        latents = torch.randn((2, frame_count, 2 * LATENT_CHANNELS, height, width), generator=generator)
        return dict(
            sample=latents.to(device, dtype),
            timestep=torch.tensor(1.2, device=device),
            encoder_hidden_states=torch.randn((2, 1, cross), generator=generator).to(device, dtype),
            added_time_ids=torch.tensor([[7.0, 30.0, 0.02]] * 2, device=device, dtype=dtype),
            return_dict=False,
        )

    with torch.no_grad():
        warm = inputs(warmup_frames)
        unet(**warm)  # first-call allocations and kernel selection
        del warm
        call = inputs(frames)
        return median_seconds(lambda: unet(**call), calls, device, warmup=0)


def peak_vram_runs(frames_list, device) -> dict:
    """Whole brushed runs at 576x1024 with offload + fp16; peak allocated VRAM per frame count."""
    from diffusers import AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
    from diffusers import EulerDiscreteScheduler
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    pipe = StableVideoDiffusionPipeline(
        unet=UNetSpatioTemporalConditionModel(**SVD_XT_UNET_CONFIG),
        vae=AutoencoderKLTemporalDecoder(**SVD_VAE_CONFIG),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_IMAGE_ENCODER_CONFIG)),
        feature_extractor=CLIPImageProcessor(),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG),
    ).to(dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device=device)
    brush = MotionBrushEulerScheduler.from_config(pipe.scheduler.config)
    brush.motion_mask = painted_mask(REAL_HEIGHT, REAL_WIDTH)
    pipe.scheduler = brush
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (REAL_HEIGHT, REAL_WIDTH, 3), dtype=np.uint8))
    figures = {}
    for frames in frames_list:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        pipe(image, height=REAL_HEIGHT, width=REAL_WIDTH, num_frames=frames, num_inference_steps=2,
             decode_chunk_size=4, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
        synchronize(device)
        figures[str(frames)] = {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
            "seconds_2_steps": time.perf_counter() - started,
        }
    pipe.remove_all_hooks()
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    repeats = args.repeats or (200 if on_gpu else 40)
    unet_calls = args.unet_calls or (5 if on_gpu else 1)
    real_latent = (REAL_HEIGHT // VAE_FACTOR, REAL_WIDTH // VAE_FACTOR)
    if on_gpu or args.smoke:
        unet_frames_list = args.frames
        unet_latent = real_latent if on_gpu else (16, 32)
    else:
        unet_frames_list = [args.unet_frames]
        unet_latent = (args.unet_height // VAE_FACTOR, args.unet_width // VAE_FACTOR)

    import diffusers

    report: dict = {
        "device": str(device), "dtype": str(dtype).replace("torch.", ""), "threads": args.threads,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "smoke": args.smoke, "target": TARGET, "schedule_steps": args.steps, "scheduler_repeats": repeats,
    }
    print(f"device {device} ({report['dtype']}), torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{args.threads} thread(s){'  [SMOKE: figures meaningless]' if args.smoke else ''}")

    # 1. The brush's own cost at the real latent size.
    brush_real = {}
    for frames in args.frames:
        figures = time_scheduler_steps(frames, real_latent, args, device, dtype, repeats)
        brush_real[str(frames)] = figures
        print(f"scheduler, {frames} frames at {real_latent[0]}x{real_latent[1]} latents (576x1024 px), "
              f"median of {repeats}:")
        for label in ("mid", "last"):
            f = figures[label]
            print(f"  {label:4s} step: plain {f['plain_step_s'] * 1e3:8.3f} ms, brush {f['brush_step_s'] * 1e3:8.3f} ms, "
                  f"brush overhead {f['brush_overhead_s'] * 1e3:8.3f} ms")
        print(f"  mask resize, once per run: {figures['mask_resize_once_s'] * 1e3:.3f} ms")
    report["brush_at_real_size"] = brush_real

    # 2. The UNet.
    unet, parameters, build_seconds = build_unet(args.smoke, device, dtype)
    print(f"UNet: {'tiny (smoke)' if args.smoke else 'SVD-XT UNetSpatioTemporalConditionModel'}, "
          f"{parameters / 1e9:.3f} B parameters, random weights (built in {build_seconds:.1f} s)")
    unet_seconds = {}
    for frames in unet_frames_list:
        seconds = time_unet(unet, frames, unet_latent, unet_calls, min(2, frames), device, dtype)
        unet_seconds[str(frames)] = seconds
        print(f"  one CFG-batched call (batch 2), {frames} frames at {unet_latent[0]}x{unet_latent[1]} latents "
              f"({unet_latent[0] * VAE_FACTOR}x{unet_latent[1] * VAE_FACTOR} px), median of {unet_calls}: "
              f"{seconds:.2f} s  [measured]")
    del unet
    gc.collect()
    report["unet"] = {"parameters": parameters, "calls_timed": unet_calls,
                      "latent_hw": list(unet_latent), "seconds_per_call": unet_seconds}

    # 3. Ratios.
    ratios: dict = {}
    worst = 0.0
    if on_gpu or args.smoke:
        for frames in args.frames:
            for label in ("mid", "last"):
                f = brush_real[str(frames)][label]
                ratio = f["brush_overhead_s"] / (f["plain_step_s"] + unet_seconds[str(frames)])
                ratios[f"{frames}_{label}"] = {"ratio": ratio, "unet": "measured", "size": "576x1024"}
                worst = max(worst, ratio)
    else:
        frames_small = args.unet_frames
        small = time_scheduler_steps(frames_small, unet_latent, args, device, dtype, repeats)
        measured_unet = unet_seconds[str(frames_small)]
        print(f"ratio = brush overhead / (plain step + UNet call):")
        for label in ("mid", "last"):
            f = small[label]
            ratio = f["brush_overhead_s"] / (f["plain_step_s"] + measured_unet)
            ratios[f"{frames_small}_{label}_small"] = {
                "ratio": ratio, "unet": "measured", "size": f"{unet_latent[0] * 8}x{unet_latent[1] * 8}",
                "brush_overhead_s": f["brush_overhead_s"], "plain_step_s": f["plain_step_s"]}
            worst = max(worst, ratio)
            print(f"  {frames_small} frames at the timed UNet size, {label} step: {ratio * 100:.4f} %  "
                  "[all measured]")
        per_frame_pixel = measured_unet / (frames_small * unet_latent[0] * unet_latent[1])
        for frames in args.frames:
            scaled_unet = per_frame_pixel * frames * real_latent[0] * real_latent[1]
            for label in ("mid", "last"):
                f = brush_real[str(frames)][label]
                ratio = f["brush_overhead_s"] / (f["plain_step_s"] + scaled_unet)
                ratios[f"{frames}_{label}"] = {"ratio": ratio, "unet": "scaled linearly (a lower bound)",
                                               "unet_seconds": scaled_unet, "size": "576x1024"}
                worst = max(worst, ratio)
                print(f"  {frames} frames at 576x1024, {label} step: {ratio * 100:.5f} %  [brush measured; UNet "
                      f"{scaled_unet:.0f} s scaled linearly from the timed call, a lower bound -> ratio is an upper bound]")
    report["ratios"] = ratios
    # Arithmetic on the measured figures: the UNet step time below which the brush would reach the target.
    worst_overhead = max(brush_real[str(frames)][label]["brush_overhead_s"] for frames in args.frames
                         for label in ("mid", "last"))
    report["break_even_unet_seconds"] = worst_overhead / TARGET
    print(f"break-even: the brush's worst overhead here ({worst_overhead * 1e3:.2f} ms at 576x1024) reaches "
          f"{TARGET * 100:.0f} % only if a whole step took under {worst_overhead / TARGET:.2f} s")
    report["worst_ratio"] = worst
    report["meets_target"] = worst <= TARGET
    print(f"worst ratio {worst * 100:.4f} % (target <= {TARGET * 100:.0f} %): {'OK' if worst <= TARGET else 'OVER'}")

    # 4. Peak VRAM.
    if on_gpu and not args.no_vram and not args.smoke:
        vram = peak_vram_runs(args.frames, device)
        for frames, f in vram.items():
            print(f"peak VRAM, {frames} frames at 576x1024, offload + fp16, decode_chunk_size 4: "
                  f"{f['peak_allocated_gib']:.2f} GiB allocated, {f['peak_reserved_gib']:.2f} GiB reserved")
        report["peak_vram"] = vram
    else:
        reason = "no CUDA device" if not on_gpu else ("--no-vram" if args.no_vram else "--smoke")
        print(f"peak VRAM at 576x1024 (14 and 25 frames, offload): not measured ({reason})")
        report["peak_vram"] = f"not measured: {reason}"
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
