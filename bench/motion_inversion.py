#!/usr/bin/env python3
"""Motion Inversion training step time and peak memory at real size (ZeroScope-size UNet3D, random weights).

The issue's target: 400 steps in <= 5 minutes on one H100, for a ZeroScope UNet3D at 576x320
with 24 frames (72x40 latents).

What is measured, with the library's own code (``MotionInversionTrainer.training_loss`` inside
``training.run_training``: accelerate, AdamW over the motion embeddings, bf16/fp16 autocast on
a GPU, float32 on the CPU):

* a ``UNet3DConditionModel`` with cerspense/zeroscope_v2_576w's ``unet/config.json`` (which are
  also diffusers' class defaults): block_out_channels (320, 640, 1280, 1280), layers_per_block 2,
  down CrossAttnDownBlock3D x3 + DownBlock3D, up UpBlock3D + CrossAttnUpBlock3D x3,
  cross_attention_dim 1024, attention_head_dim 64, norm_num_groups 32, norm_eps 1e-5, in/out
  channels 4, downsample_padding 1, silu; 1.41 G parameters, random N(0, 0.02) weights (speed
  does not depend on weight values, and no weights can be downloaded here);
* the default embedding layers (``lowest``: down_blocks.2 and up_blocks.1, the original's
  [[down, 1280], [up, 1280]]) and the default loss (``debiased_temporal``); trainable
  parameter count and the size of the saved embeddings file;
* **GPU**: ``--warmup`` untimed steps, then ``--steps`` timed steps; the median step time, the
  400-step extrapolation (arithmetic, printed as such) and the peak of
  ``torch.cuda.max_memory_allocated``. diffusers 0.31's UNet3D has no gradient checkpointing;
  only the layers from down_blocks.2 onwards keep activations (nothing before needs a gradient);
* **CPU** (no GPU here): one step (after one untimed warm-up step unless ``--warmup 0``) and the
  peak resident memory of the process. A CPU says nothing about the H100 target, and the
  output says so instead of guessing.

The VAE encode of the clip and the prompt's text encoding happen once per run, not per step,
and are not part of the step: their cached results are filled with random tensors of the real
shapes (latents (1, 4, frames, 40, 72), prompt (1, 77, 1024)). No DDIM inversion is run at the
end (``inversion_steps=0``): it is 50 forward passes once per training, not part of a step.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python bench/motion_inversion.py --frames 4     # CPU: fewer frames
    .venv/bin/python bench/motion_inversion.py --device cuda --steps 10          # H100: the target
    .venv/bin/python bench/motion_inversion.py --smoke                           # tiny UNet3D: checks the script

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

from lib_vidguide.pipelines import motion_inversion as mi  # noqa: E402
from lib_vidguide.pipelines.sd_loading import SDComponents  # noqa: E402
from _common import device_label, peak_rss_bytes, random_unet, report_gpu_time, time_training  # noqa: E402

TARGET_STEPS = 400
TARGET_SECONDS = 300.0

# cerspense/zeroscope_v2_576w unet/config.json (equal to UNet3DConditionModel's defaults in diffusers 0.31).
ZEROSCOPE_UNET_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=64,
)
SMOKE_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
    up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
# cerspense/zeroscope_v2_576w scheduler/scheduler_config.json's noise schedule (SD's), as a DDIM config.
ZEROSCOPE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--loss", default="debiased_temporal", choices=mi.LOSS_TYPES)
    parser.add_argument("--motion-layers", default="lowest", choices=mi.MOTION_LAYERS)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: GPU 10, CPU 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: GPU 2, CPU 1)")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny UNet3D at 64x64: checks that the script runs")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (10 if on_gpu else 1)
    warmup = args.warmup if args.warmup is not None else (2 if on_gpu else 1)
    width, height = (64, 64) if args.smoke else (args.width, args.height)
    config = SMOKE_UNET_CONFIG if args.smoke else ZEROSCOPE_UNET_CONFIG
    report: dict = {
        "device": device_label(device),
        "torch": torch.__version__, "unet": "smoke" if args.smoke else "ZeroScope v2 576w UNet3D config (random weights)",
        "frames": args.frames, "width": width, "height": height, "loss": args.loss, "motion_layers": args.motion_layers,
        "gradient_checkpointing": False,
    }

    # 1. The real-size UNet3D with embeddings; the trainable tensors and the saved file's size.
    from diffusers import UNet3DConditionModel

    started = time.perf_counter()
    unet = random_unet(UNet3DConditionModel, config)
    report["unet_params"] = sum(p.numel() for p in unet.parameters())
    vae = types.SimpleNamespace(config=types.SimpleNamespace(scaling_factor=0.18215, block_out_channels=(128, 256, 512, 512)))
    components = SDComponents(tokenizer=None, text_encoder=None, unet=unet, vae=vae,
                              scheduler_config=dict(ZEROSCOPE_SCHEDULER_CONFIG), source="random-zeroscope",
                              kind="diffusers")
    frames = np.zeros((args.frames, height, width, 3), dtype=np.uint8)  # only the shape is used: the caches are filled below
    settings = mi.MotionInversionSettings(
        frames=args.frames, width=width, height=height, max_train_steps=warmup + steps, checkpointing_steps=0,
        loss=args.loss, motion_layers=args.motion_layers, mixed_precision=args.mixed_precision, inversion_steps=0,
    )
    trainer = mi.MotionInversionTrainer(components, frames, "a car turns around in a city street", settings)
    trainables = trainer.trainable_parameters()
    embeddings = mi.motion_parameters(unet)
    report["trainable_params"] = sum(p.numel() for p in trainables.values())
    report["embedding_params_qk"] = sum(p.numel() for n, p in embeddings.items() if n.endswith(".qk"))
    report["embedding_params_v"] = sum(p.numel() for n, p in embeddings.items() if n.endswith(".v"))
    report["embedded_blocks"] = sorted({n.split(".transformer_blocks")[0] for n in embeddings})
    generator = torch.Generator().manual_seed(1)
    trainer._prompt_embeddings = torch.randn(1, 77, config["cross_attention_dim"], generator=generator)
    trainer._latents = torch.randn(1, 4, args.frames, height // 8, width // 8, generator=generator)
    report["setup_s"] = round(time.perf_counter() - started, 2)
    print(f"UNet3D {report['unet_params'] / 1e6:.0f} M params; trainable {report['trainable_params'] / 1e6:.2f} M "
          f"(qk {report['embedding_params_qk'] / 1e6:.2f} M, v {report['embedding_params_v'] / 1e6:.2f} M) in "
          f"{report['embedded_blocks']}; set-up {report['setup_s']} s", flush=True)

    # 2. Train warmup + steps through the library's loop; the step times come from the progress events.
    result, step_times, timed = time_training(trainer, settings, device, mi.WEIGHTS_FILENAME, warmup, report)

    # 3. Memory and the target.
    if on_gpu:
        peak, per_step, estimate = report_gpu_time(result, device, report, TARGET_STEPS, TARGET_SECONDS)
        print(f"GPU: {per_step:.3f} s/step (median of {len(timed)}) -> {TARGET_STEPS} steps ~ {estimate / 60:.1f} min "
              f"(extrapolated; target {TARGET_SECONDS / 60:.0f} min); peak allocated {peak / 1024**3:.2f} GiB")
    else:
        report["gpu"] = "not measured (no CUDA device)"
        report["cpu_peak_rss_bytes"] = peak_rss_bytes()
        report["targets"] = (
            f"not measurable here: {TARGET_STEPS} steps <= {TARGET_SECONDS / 60:.0f} min is an H100 target; "
            "a CPU step time says nothing about it"
        )
        per_step = report["step_seconds_median"]
        print(f"GPU: not measured (no CUDA device). CPU: {per_step:.1f} s/step (first step {step_times[0]:.1f} s), "
              f"peak RSS {report['cpu_peak_rss_bytes'] / 1024**3:.2f} GiB at {args.frames} frames. {report['targets']}.")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
