#!/usr/bin/env python3
"""Tune-A-Video training step time and peak memory at real size (SD 1.5 UNet, random weights).

The issue's targets: 500 steps in <= 10 minutes and <= 24 GB on one H100, for an SD 1.5
UNet at 512x512 with 8 frames (64x64 latents, the 8 frames folded into the batch).

What is measured, with the library's own code (``TuneAVideoTrainer.training_loss`` inside
``training.run_training``: accelerate, gradient checkpointing, AdamW over TAV's trainable
tensors, the fp16/bf16 autocast on a GPU):

* the real-size SD 1.5 ``UNet2DConditionModel`` (860 M parameters, SD 1.5's config,
  random weights: speed does not depend on weight values, and no weights can be downloaded
  here), inflated for Tune-A-Video; trainable parameter count and the size of the saved
  weights file;
* **GPU**: ``--warmup`` untimed steps, then ``--steps`` timed steps; the median step time,
  the 500-step extrapolation (arithmetic, printed as such) and the peak of
  ``torch.cuda.max_memory_allocated`` over the run;
* **CPU** (no GPU here): one or two steps at the same size, reported per step, and the peak
  resident memory of the process. A CPU cannot say anything about the H100 targets, and
  the output says so instead of guessing.

The VAE encode of the frames and the prompt's text encoding happen once per run, not per
step, and are not part of the step: their cached results are filled with random tensors of
the real shapes (latent posterior (8, 4, 64, 64), prompt (1, 77, 768)).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python bench/tune_a_video.py                 # CPU: minutes per step
    .venv/bin/python bench/tune_a_video.py --device cuda --steps 10          # H100: the targets
    .venv/bin/python bench/tune_a_video.py --smoke                           # tiny UNet: checks the script

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_vidguide.pipelines import tune_a_video as tav  # noqa: E402
from lib_vidguide.pipelines.sd_loading import SD1_SCHEDULER_CONFIG, SDComponents  # noqa: E402
from lib_vidguide.pipelines.training import run_training  # noqa: E402

TARGET_STEPS = 500
TARGET_SECONDS = 600.0
TARGET_BYTES = 24 * 1024**3

# runwayml/stable-diffusion-v1-5 unet/config.json (the class defaults, spelled out).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SMOKE_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)


def random_unet(config: dict, seed: int = 0):
    """The UNet with N(0, 0.02) weights from an explicit generator (allocation without diffusers' slow init)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**config)
    unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return unet.eval().requires_grad_(False)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="square frame size in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: GPU 10, CPU 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: GPU 2, CPU 1)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny UNet at 64x64: checks that the script runs")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (10 if on_gpu else 1)
    warmup = args.warmup if args.warmup is not None else (2 if on_gpu else 1)
    size = 64 if args.smoke else args.size
    config = SMOKE_UNET_CONFIG if args.smoke else SD15_UNET_CONFIG
    latent = size // 8
    report: dict = {
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "unet": "smoke" if args.smoke else "SD 1.5 (random weights)",
        "frames": args.frames, "size": size, "gradient_checkpointing": not args.no_gradient_checkpointing,
    }

    # 1. The real-size UNet, inflated; the trainable tensors and the saved file's size.
    started = time.perf_counter()
    unet = random_unet(config)
    report["unet_params"] = sum(p.numel() for p in unet.parameters())
    components = SDComponents(
        tokenizer=None, text_encoder=None, unet=unet, scheduler_config=dict(SD1_SCHEDULER_CONFIG), source="random-sd15",
        kind="diffusers", vae=types.SimpleNamespace(config=types.SimpleNamespace(scaling_factor=0.18215)),
    )
    frames = np.zeros((args.frames, size, size, 3), dtype=np.uint8)  # only their shape is used: the caches are filled below
    settings = tav.TuneAVideoSettings(
        frames=args.frames, width=size, height=size, sample_stride=1, max_train_steps=warmup + steps,
        checkpointing_steps=0, gradient_checkpointing=not args.no_gradient_checkpointing,
        mixed_precision=args.mixed_precision,
    )
    trainer = tav.TuneAVideoTrainer(components, frames, "a man is skiing", settings)
    trainables = tav.trainable_parameters(unet)
    report["trainable_params"] = sum(p.numel() for p in trainables.values())
    report["trainable_tensors"] = len(trainables)
    report["weights_file_bytes_fp32"] = sum(p.numel() * 4 for p in trainables.values())
    generator = torch.Generator().manual_seed(1)
    trainer._prompt_embeddings = torch.randn(1, 77, config["cross_attention_dim"], generator=generator)
    trainer._latent_mean = torch.randn(args.frames, 4, latent, latent, generator=generator)
    trainer._latent_std = torch.full((args.frames, 4, latent, latent), 0.05)
    report["setup_s"] = round(time.perf_counter() - started, 2)
    print(f"UNet {report['unet_params'] / 1e6:.0f} M params; trainable {report['trainable_params'] / 1e6:.1f} M "
          f"({report['trainable_tensors']} tensors, {report['weights_file_bytes_fp32'] / 1e6:.0f} MB as float32); "
          f"set-up {report['setup_s']} s", flush=True)

    # 2. Train warmup + steps through the library's loop; the step times come from the progress events.
    stamps: list[float] = []
    losses: list[float] = []

    def progress(event) -> None:
        if on_gpu:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        losses.append(event.loss)
        print(f"step {event.step}/{event.total_steps}: loss {event.loss:.4f}, {event.elapsed_s:.1f} s since start", flush=True)

    with tempfile.TemporaryDirectory() as output_dir:
        loop_started = time.perf_counter()
        result = run_training(trainer, settings, output_dir, device=device, progress=progress)
        weights_file = Path(output_dir) / tav.WEIGHTS_FILENAME
        report["weights_file_bytes"] = weights_file.stat().st_size if weights_file.is_file() else None
    boundaries = [loop_started] + stamps
    step_times = [b - a for a, b in zip(boundaries, boundaries[1:])]
    timed = step_times[warmup:]
    report["mixed_precision"] = result.mixed_precision
    report["notes"] = result.notes
    report["step_seconds_all"] = [round(t, 3) for t in step_times]
    report["step_seconds_median"] = round(statistics.median(timed), 3) if timed else None
    report["losses"] = [round(x, 4) for x in losses]

    # 3. Memory and the targets.
    if on_gpu:
        peak = result.peak_memory_bytes
        report["gpu_peak_allocated_bytes"] = peak
        report["gpu_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        per_step = report["step_seconds_median"]
        estimate = per_step * TARGET_STEPS if per_step else None
        report["extrapolated_500_steps_s"] = round(estimate, 1) if estimate else None
        report["meets_time_target"] = bool(estimate and estimate <= TARGET_SECONDS)
        report["meets_memory_target"] = bool(peak is not None and peak <= TARGET_BYTES)
        print(f"GPU: {per_step:.3f} s/step (median of {len(timed)}) -> {TARGET_STEPS} steps ~ {estimate / 60:.1f} min "
              f"(extrapolated; target {TARGET_SECONDS / 60:.0f} min); peak allocated {peak / 1024**3:.2f} GiB "
              f"(target {TARGET_BYTES / 1024**3:.0f} GiB)")
    else:
        report["gpu"] = "not measured (no CUDA device)"
        report["cpu_peak_rss_bytes"] = peak_rss_bytes()
        report["targets"] = (
            f"not measurable here: {TARGET_STEPS} steps <= {TARGET_SECONDS / 60:.0f} min and <= "
            f"{TARGET_BYTES / 1024**3:.0f} GB are H100 targets; a CPU step time says nothing about them"
        )
        per_step = report["step_seconds_median"]
        print(f"GPU: not measured (no CUDA device). CPU: {per_step:.1f} s/step (first step {step_times[0]:.1f} s), "
              f"peak RSS {report['cpu_peak_rss_bytes'] / 1024**3:.2f} GiB. {report['targets']}.")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
