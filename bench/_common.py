"""What the Tune-A-Video, Motion Inversion and AttentionFlow benches share.

Imported by the bench scripts as ``_common`` (``python bench/x.py`` puts ``bench/`` first on
``sys.path``); the scripts put the repository root there before anything from ``lib_vidguide``.
"""

from __future__ import annotations

import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

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
# A tiny UNet2DConditionModel for --smoke.
SMOKE_UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)


def randomised(model, seed: int = 0):
    """N(0, 0.02) weights from an explicit generator, zero biases, unit norms (no slow default init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval().requires_grad_(False)


def random_unet(unet_class, config: dict, seed: int = 0):
    """``unet_class(**config)`` with :func:`randomised` weights (allocation without diffusers' slow init)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        unet = unet_class(**config)
    unet.to_empty(device="cpu")
    return randomised(unet, seed)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def device_label(device: torch.device) -> str:
    """The GPU's name, or the CPU with torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_training(trainer, settings, device: torch.device, weights_filename: str, warmup: int, report: dict):
    """Train ``warmup`` + timed steps through the library's loop; the step times come from the progress events.

    Fills ``report`` (weights file size, mixed precision, notes, step times, their median after
    ``warmup``, losses) and returns ``(result, step_times, timed)``.
    """
    from lib_vidguide.pipelines.training import run_training

    on_gpu = device.type == "cuda"
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
        weights_file = Path(output_dir) / weights_filename
        report["weights_file_bytes"] = weights_file.stat().st_size if weights_file.is_file() else None
    boundaries = [loop_started] + stamps
    step_times = [b - a for a, b in zip(boundaries, boundaries[1:])]
    timed = step_times[warmup:]
    report["mixed_precision"] = result.mixed_precision
    report["notes"] = result.notes
    report["step_seconds_all"] = [round(t, 3) for t in step_times]
    report["step_seconds_median"] = round(statistics.median(timed), 3) if timed else None
    report["losses"] = [round(x, 4) for x in losses]
    return result, step_times, timed


def report_gpu_time(result, device: torch.device, report: dict, target_steps: int, target_seconds: float):
    """GPU: the peak memory and the time of ``target_steps`` steps extrapolated from the median step, against
    ``target_seconds``; fills ``report`` and returns ``(peak, per_step, estimate)``."""
    peak = result.peak_memory_bytes
    report["gpu_peak_allocated_bytes"] = peak
    report["gpu_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    per_step = report["step_seconds_median"]
    estimate = per_step * target_steps if per_step else None
    report[f"extrapolated_{target_steps}_steps_s"] = round(estimate, 1) if estimate else None
    report["meets_time_target"] = bool(estimate and estimate <= target_seconds)
    return peak, per_step, estimate
