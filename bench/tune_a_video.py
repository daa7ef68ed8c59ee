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
import sys
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
from _common import (  # noqa: E402
    SD15_UNET_CONFIG,
    SMOKE_UNET_CONFIG,
    device_label,
    peak_rss_bytes,
    random_unet,
    report_gpu_time,
    time_training,
)

TARGET_STEPS = 500
TARGET_SECONDS = 600.0
TARGET_BYTES = 24 * 1024**3


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
        "device": device_label(device),
        "torch": torch.__version__, "unet": "smoke" if args.smoke else "SD 1.5 (random weights)",
        "frames": args.frames, "size": size, "gradient_checkpointing": not args.no_gradient_checkpointing,
    }

    # 1. The real-size UNet, inflated; the trainable tensors and the saved file's size.
    from diffusers import UNet2DConditionModel

    started = time.perf_counter()
    unet = random_unet(UNet2DConditionModel, config)
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
    result, step_times, timed = time_training(trainer, settings, device, tav.WEIGHTS_FILENAME, warmup, report)

    # 3. Memory and the targets.
    if on_gpu:
        peak, per_step, estimate = report_gpu_time(result, device, report, TARGET_STEPS, TARGET_SECONDS)
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
