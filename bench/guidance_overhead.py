#!/usr/bin/env python3
"""Main-thread time that flow guidance adds to one video frame, against the frame's diffusion time.

The issue's acceptance point: at 512x768 (width x height) with a real-size SD1.5 UNet, the
guidance must add <= 2 % to a frame's time with flows prefetched (<= 1 % in latent-warp mode).

What is measured, all with the library's own code on real-size tensors and arrays:

* Frame diffusion time: the denoiser calls of one WebUI-style img2img frame (Euler, ``steps``
  at ``strength`` -> t_enc + 1 calls, each a CFG batch of 2 through :class:`EpsDenoiser`), plus
  the host's own VAE encode of the init image and VAE decode of the result. Real-size SD1.5
  UNet (860 M parameters) and SD VAE (84 M), random weights: speed does not depend on the
  weight values, and no weights can be downloaded here.
* Guidance on the main thread, per frame:
  (a) ``StepGuidance`` set-up plus ``observe_input`` + ``apply`` at every denoiser call;
  (b) pixel mode: ``build_guide_target`` = backward warp of the previous 768x512 RGB output with
      a precomputed ``FrameFlow``, VAE encode of the warped image, weight-map resize; reported
      with the encode and without it (the encode replaced by returning a ready latent);
  (c) latent mode: ``build_guide_target`` with the previous frame's latent (``warp_latent``,
      no encode).
* Not on the main thread: flows and weight maps of frame n+1 are computed by
  :class:`FlowPrefetcher`'s worker while frame n is diffused (FLOW.md section 6). Its per-frame
  time is measured through the prefetcher itself, to show it keeps up, and to give the ratio
  that computing flows serially on the main thread would cost.

On CPU a real-size UNet call takes tens of seconds, so only a few calls are timed and the
frame's UNet time is extrapolated from their median (printed as such). The CPU-side guidance
steps take milliseconds and are timed over many repeats. Medians everywhere; on CUDA every
timed region is bracketed by ``torch.cuda.synchronize``.

Usage (the defaults keep a CPU run under ~10 minutes on 1 thread)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/guidance_overhead.py            # CPU (or CUDA if present)
    .venv/bin/python bench/guidance_overhead.py --device cuda                # fp16 on the GPU
    .venv/bin/python bench/guidance_overhead.py --quick                      # fewer repeats
    .venv/bin/python bench/guidance_overhead.py --smoke                      # tiny models: checks the script only

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_vidguide.diffusers_runner import _GuidedModel  # noqa: E402
from lib_vidguide.flow import FlowPrefetcher  # noqa: E402
from lib_vidguide.frame_guide import build_guide_target, motion_between  # noqa: E402
from lib_vidguide.guidance import SamplerConventions, StepGuidance  # noqa: E402
from lib_vidguide.sampling import EpsDenoiser, img2img_schedule, sample_euler, sigmas_for  # noqa: E402
from lib_vidguide.settings import GuidanceSettings  # noqa: E402

# The targets: guidance main-thread time / frame diffusion time, flows prefetched.
TARGET_PIXEL = 0.02
TARGET_LATENT = 0.01

SD_VAE_SCALING = 0.18215
CFG_SCALE = 7.0

# Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json): 859.5 M parameters.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
# Stable Diffusion's KL autoencoder (vae/config.json): 83.7 M parameters, 8x downsampling.
SD_VAE_CONFIG = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    scaling_factor=SD_VAE_SCALING,
)
# --smoke: the same classes at toy size, only to exercise every code path of this script quickly.
SMOKE_UNET_CONFIG = dict(
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8,
)
SMOKE_VAE_CONFIG = dict(
    sample_size=64, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4, norm_num_groups=8, scaling_factor=SD_VAE_SCALING,
)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Main-thread time flow guidance adds per frame, and its ratio to the frame's diffusion time.",
    )
    parser.add_argument("--width", type=int, default=512, help="frame width in pixels (default 512)")
    parser.add_argument("--height", type=int, default=768, help="frame height in pixels (default 768)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of the img2img frame (default 20)")
    parser.add_argument("--strength", type=float, default=0.5, help="denoising strength (default 0.5)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda when available, else cpu (default auto)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="model dtype; auto: float16 on cuda, float32 on cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and OpenCV threads (default 1: on the shared 2-core CPU the 1-thread "
                             "timings are the stable ones, FLOW.md section 0)")
    parser.add_argument("--unet-calls-measured", type=int, default=None,
                        help="denoiser (UNet) calls actually timed, after warm-up; the frame's UNet time is "
                             "extrapolated when this is below the frame's call count "
                             "(default: cpu 2, cuda 3x the frame's calls)")
    parser.add_argument("--vae-repeats", type=int, default=None,
                        help="timed repeats of each VAE figure (default: cpu 2, cuda 10)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats of each CPU-side guidance step (default 60)")
    parser.add_argument("--flow-frames", type=int, default=None,
                        help="frames pushed through the flow prefetcher (default 16)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats (cpu: 1 UNet call, 1 repeat per VAE figure, no decode warm-up)")
    parser.add_argument("--e2e", action="store_true",
                        help="also time whole guided vs unguided frames (on by default on cuda; on a CPU the "
                             "ms differences drown in the noise of multi-second UNet calls)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models instead of SD1.5: checks that the script runs, figures are meaningless")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.width % 8 or args.height % 8:
        parser.error(f"--width {args.width} and --height {args.height} must be multiples of 8")
    if not 0.0 < args.strength <= 1.0:
        parser.error(f"--strength {args.strength} must be in (0, 1]")
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be at least 1")
    return args


@dataclass
class Plan:
    """How many times each thing is timed (warm-up calls are never counted)."""

    unet_warmup: int
    unet_measured: int
    vae_encode_warmup: int
    vae_repeats: int
    vae_decode_warmup: int
    cpu_side_repeats: int
    cpu_side_warmup: int
    flow_frames: int
    e2e_repeats: int


def make_plan(args: argparse.Namespace, device: torch.device, denoiser_calls: int) -> Plan:
    on_gpu = device.type == "cuda"
    if args.quick:
        plan = Plan(unet_warmup=1 if not on_gpu else 3, unet_measured=1 if not on_gpu else denoiser_calls,
                    vae_encode_warmup=1, vae_repeats=1 if not on_gpu else 3, vae_decode_warmup=0 if not on_gpu else 1,
                    cpu_side_repeats=15, cpu_side_warmup=2, flow_frames=6, e2e_repeats=3)
    else:
        plan = Plan(unet_warmup=1 if not on_gpu else 3, unet_measured=2 if not on_gpu else 3 * denoiser_calls,
                    vae_encode_warmup=1 if not on_gpu else 2, vae_repeats=2 if not on_gpu else 10,
                    vae_decode_warmup=1 if not on_gpu else 2, cpu_side_repeats=60, cpu_side_warmup=3,
                    flow_frames=16, e2e_repeats=7)
    if args.unet_calls_measured is not None:
        plan.unet_measured = max(1, args.unet_calls_measured)
    if args.vae_repeats is not None:
        plan.vae_repeats = max(1, args.vae_repeats)
    if args.repeats is not None:
        plan.cpu_side_repeats = max(1, args.repeats)
    if args.flow_frames is not None:
        plan.flow_frames = max(3, args.flow_frames)
    return plan


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of one measured thing."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)


def make_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(fn: Callable[[], object], *, repeats: int, warmup: int, sync: Callable[[], None],
            label: str = "", verbose: bool = False) -> Timing:
    """Median-ready samples of ``fn()``; ``sync`` brackets every call so GPU work is counted."""
    for index in range(warmup):
        started = time.perf_counter()
        fn()
        sync()
        if verbose:
            print(f"    {label}: warm-up {index + 1}/{warmup} {time.perf_counter() - started:.2f} s", flush=True)
    timing = Timing()
    for index in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        timing.samples.append(time.perf_counter() - started)
        if verbose:
            print(f"    {label}: timed {index + 1}/{repeats} {timing.samples[-1]:.2f} s", flush=True)
    return timing


# ---------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------


def sd_alphas_cumprod() -> torch.Tensor:
    """SD 1.x's training noise schedule (scaled_linear, 0.00085 .. 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def build_models(device: torch.device, dtype: torch.dtype, seed: int, smoke: bool):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(SMOKE_UNET_CONFIG if smoke else SD15_UNET_CONFIG))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**(SMOKE_VAE_CONFIG if smoke else SD_VAE_CONFIG))
    for module in (unet, vae):
        module.eval().requires_grad_(False).to(device=device, dtype=dtype)
    # The denoiser's sigma tables stay float32, as in the diffusers runner; only the UNet is cast.
    denoiser = EpsDenoiser(unet, sd_alphas_cumprod()).to(device)
    return denoiser, vae


class HostVae:
    """The host's VAE calls, as ``DiffusersImg2Img.encode_rgb`` / ``decode`` do them, dtype-aware.

    The runner's own methods assume float32; these differ only in casting the input to the
    model's dtype, so fp16 on CUDA works.
    """

    def __init__(self, vae, device: torch.device, dtype: torch.dtype):
        self.vae = vae
        self.device = device
        self.dtype = dtype
        self.scaling = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode_rgb(self, rgb: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return self.vae.encode(image.to(self.device, self.dtype)).latent_dist.mode() * self.scaling

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> np.ndarray:
        image = self.vae.decode(latent / self.scaling).sample
        return ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def make_frames(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two consecutive source frames with real photo texture and layered motion (up to ~28 px).

    DIS's run time depends on image content, so flat or random frames would not be honest.
    """
    from lib_vidguide.synthetic import make_pair

    pair = make_pair("moving_object", size=(height, width), seed=seed)
    return pair.frame1, pair.frame2


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> Optional[list[float]]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    import diffusers

    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda_available": torch.cuda.is_available(),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "cpu_model": cpu_model(),
        "load_average_start": load_average(),
        "smoke": bool(args.smoke),
    }
    return info


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def per_call_guidance(target, sigmas: torch.Tensor, denoiser: EpsDenoiser, settings: GuidanceSettings,
                      latent_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                      repeats: int, warmup: int, sync) -> tuple[Timing, Timing]:
    """(a): one frame's StepGuidance set-up and observe_input + apply at each of its denoiser calls.

    The sampler's inputs and the denoiser's outputs are made beforehand: only the guidance's
    own work is inside the timed region, as the diffusers runner's ``_GuidedModel`` calls it.
    On CUDA, ``observe_input`` reads the noise level back to the host (a device sync per call);
    the time that costs the GPU pipeline is not visible here, only in the ``--e2e`` figures.
    Returns (per frame, per call).
    """
    calls = len(sigmas) - 1
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(latent_shape, generator=generator).to(device, dtype) for _ in range(calls)]
    outputs = [torch.randn(latent_shape, generator=generator).to(device, dtype) for _ in range(calls)]
    ones = torch.ones(latent_shape[0], device=device)
    sigma_inputs = [sigmas[i] * ones for i in range(calls)]
    conventions = SamplerConventions(sigma_to_t=denoiser.sigma_to_t)
    sink: list[torch.Tensor] = []

    def one_frame() -> None:
        guidance = StepGuidance(target, settings.parsed_schedule(), settings.strength)
        guidance.conventions = conventions
        for x, sigma, output in zip(inputs, sigma_inputs, outputs):
            guidance.observe_input(x, sigma)
            sink.append(guidance.apply(output))
        if any(record.rule == "skip" for record in guidance.history):
            raise RuntimeError("a guided call was skipped: the measurement would understate apply()")
        sink.clear()

    with torch.no_grad():
        per_frame = measure(one_frame, repeats=repeats, warmup=warmup, sync=sync)
    per_call = Timing([sample / calls for sample in per_frame.samples])
    return per_frame, per_call


def flow_worker_per_frame(frame_a: np.ndarray, frame_b: np.ndarray, settings: GuidanceSettings,
                          n_frames: int) -> Timing:
    """Per-frame time of FlowPrefetcher's worker (flows fwd + bwd, weight map), through the prefetcher.

    The consumer takes each item as soon as it exists, so the gaps between arrivals are the
    worker's time per frame. Frames alternate a/b: every step has the same ~28 px layered motion.
    The first frame has no flow and its gap is not counted.
    """
    frames = [frame_a if index % 2 == 0 else frame_b for index in range(n_frames)]
    arrivals: list[float] = []
    with FlowPrefetcher(iter(frames), method=settings.flow_method, weight_mode=settings.weight_mode,
                        max_ahead=n_frames) as prefetcher:
        for _item in prefetcher:
            arrivals.append(time.perf_counter())
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    # gaps[0] is the first frame with flows, which also allocates the worker thread's DIS
    # objects: a once-per-video cost, left out.
    return Timing(gaps[1:] if len(gaps) > 2 else gaps)


def end_to_end(denoiser: EpsDenoiser, host_vae: HostVae, sigmas: torch.Tensor, init_latent: torch.Tensor,
               cond: torch.Tensor, uncond: torch.Tensor, settings_by_mode: dict, guide_inputs: dict,
               latent_hw: tuple[int, int], repeats: int, sync) -> dict[str, Timing]:
    """Whole frames' sampling loops, unguided and guided, interleaved (for the GPU cross-check).

    The guided variants include building the guide target, as ``DiffusersFrameRenderer.render``
    does. Host encode/decode are the same in both and left out.
    """
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(init_latent.shape, generator=generator).to(init_latent)
    # sigmas are float32: cast back, or an fp16 UNet would be fed float32 latents.
    x_start = (init_latent + noise * sigmas[0]).to(init_latent.dtype)
    extra = {"cond": cond, "uncond": uncond, "cond_scale": CFG_SCALE}

    def unguided() -> None:
        sample_euler(denoiser, x_start, sigmas, extra_args=extra)

    def guided(mode: str) -> Callable[[], None]:
        settings = settings_by_mode[mode]

        def run() -> None:
            target = build_guide_target(settings, encode=host_vae.encode_rgb, latent_hw=latent_hw, **guide_inputs[mode])
            guidance = StepGuidance(target, settings.parsed_schedule(), settings.strength)
            guidance.conventions = SamplerConventions(sigma_to_t=denoiser.sigma_to_t)
            sample_euler(_GuidedModel(denoiser, guidance), x_start, sigmas, extra_args=extra)

        return run

    runs = {"unguided": unguided, "guided_latent": guided("latent"), "guided_pixel": guided("pixel")}
    timings = {name: Timing() for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        sync()
        for _ in range(repeats):
            for name, fn in runs.items():
                sync()
                started = time.perf_counter()
                fn()
                sync()
                timings[name].samples.append(time.perf_counter() - started)
    return timings


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Milliseconds with a precision that suits the size (sub-ms steps and minute-long UNet calls)."""
    size = abs(seconds)
    if size >= 100:
        return f"{seconds * 1e3:,.0f}"
    return f"{seconds * 1e3:,.3f}" if size < 0.01 else f"{seconds * 1e3:,.2f}"


def pct(ratio: float) -> str:
    """A percentage that stays readable for the tiny CPU-side shares (0.00067 %, not 0.00 %)."""
    percent = ratio * 100
    return f"{percent:.2f} %" if abs(percent) >= 0.1 else f"{percent:.2g} %"


def verdict(ratio: float, target: float) -> str:
    if ratio <= target:
        return f"PASS (<= {target * 100:.0f} %)"
    return f"MISS (> {target * 100:.0f} %, by {(ratio - target) * 100:.2f} points, {ratio / target:.1f}x the target)"


def print_rows(rows: list[tuple[str, Timing, float]], frame_seconds: float) -> None:
    """rows: (label, timing, occurrences per frame)."""
    header = f"  {'item':<62} {'median ms':>11} {'min ms':>11} {'n':>4} {'x/frame':>7} {'ms/frame':>11} {'% frame':>9}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for label, timing, per_frame in rows:
        frame_cost = timing.median * per_frame
        print(f"  {label:<62} {ms(timing.median):>11} {ms(timing.minimum):>11} {timing.n:>4} "
              f"{per_frame:>7g} {ms(frame_cost):>11} {pct(frame_cost / frame_seconds):>9}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    run_started = time.perf_counter()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for, but CUDA is not available to this torch "
              f"({torch.__version__}); run on a GPU host, or use --device cpu", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if args.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        print("warning: float16 on CPU is slow and unrepresentative; the WebUI runs fp32 on CPU", file=sys.stderr)

    torch.set_num_threads(args.threads)
    # The library never sets OpenCV's thread count (it is process-global); the benchmark does,
    # so that the flow and warp timings use the same core budget as torch.
    cv2.setNumThreads(args.threads)
    sync = make_sync(device)

    height, width = args.height, args.width
    latent_hw = (height // 8, width // 8)
    latent_shape = (1, 4, *latent_hw)

    print("=" * 110)
    print("Flow guidance overhead per frame (bench/guidance_overhead.py)")
    print("=" * 110)
    env = environment(device, dtype, args)
    print(f"python {env['python']}, torch {env['torch']}, diffusers {env['diffusers']}, opencv {env['opencv']}, "
          f"numpy {env['numpy']}")
    print(f"device: {device}" + (f" ({env['gpu']})" if env["gpu"] else f" ({env['cpu_model']})")
          + f", dtype {env['dtype']}")
    print(f"threads: torch {env['torch_threads']}, opencv {env['opencv_threads']}, OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']}; CPUs: {env['cpu_count']} (usable {env['usable_cpus']}); "
          f"load average at start {env['load_average_start']}")
    if device.type == "cpu":
        print("CUDA: not available in this run (" + ("not requested" if torch.cuda.is_available() else
              f"torch {torch.__version__} sees no GPU") + "). ALL FIGURES BELOW ARE CPU FIGURES; "
              "GPU figures need `--device cuda` on a GPU host.")
    if args.smoke:
        print("SMOKE RUN: tiny UNet/VAE instead of SD1.5 -- checks the script only, the ratios mean nothing.")

    # ---- models and the frame's schedule ---------------------------------------------------
    started = time.perf_counter()
    denoiser, vae = build_models(device, dtype, args.seed, args.smoke)
    host_vae = HostVae(vae, device, dtype)
    unet_params = sum(p.numel() for p in denoiser.unet.parameters())
    vae_params = sum(p.numel() for p in vae.parameters())
    print(f"models: UNet2DConditionModel {unet_params / 1e6:.1f} M params, AutoencoderKL {vae_params / 1e6:.1f} M params, "
          f"random weights (seed {args.seed}); built in {time.perf_counter() - started:.1f} s")

    sigmas = img2img_schedule(sigmas_for("euler", denoiser, args.steps), args.strength).to(device)
    denoiser_calls = len(sigmas) - 1
    plan = make_plan(args, device, denoiser_calls)
    run_e2e = args.e2e or device.type == "cuda"
    print(f"frame: {width}x{height} (latent {latent_hw[0]}x{latent_hw[1]}), img2img Euler, {args.steps} steps at "
          f"strength {args.strength} -> {denoiser_calls} denoiser calls (t_enc + 1), CFG batch 2, "
          f"text context (2, 77, 768) random")

    generator = torch.Generator().manual_seed(args.seed + 3)
    context = torch.randn((2, 77, 768), generator=generator).to(device, dtype)
    cond, uncond = context[:1], context[1:]
    previous_source, current_source = make_frames(height, width, args.seed)
    # The previous *stylized* output: any real-looking 768x512 RGB image costs the same to warp/encode.
    previous_output = previous_source.copy()

    # ---- 1. frame diffusion time -------------------------------------------------------------
    print(f"\n[1/4] denoiser (UNet) calls: {plan.unet_warmup} warm-up + {plan.unet_measured} timed ...", flush=True)
    x_t = torch.randn(latent_shape, generator=generator).to(device, dtype)
    mid_sigma = sigmas[denoiser_calls // 2] * torch.ones(1, device=device)
    last_output: list[torch.Tensor] = []

    def denoiser_call() -> None:
        last_output[:] = [denoiser(x_t, mid_sigma, cond=cond, uncond=uncond, cond_scale=CFG_SCALE)]

    with torch.no_grad():
        unet_call = measure(denoiser_call, repeats=plan.unet_measured, warmup=plan.unet_warmup, sync=sync,
                            label="denoiser call", verbose=device.type == "cpu")
    outputs_finite = bool(torch.isfinite(last_output[0]).all())

    print(f"[2/4] host VAE: encode {plan.vae_encode_warmup} warm-up + {plan.vae_repeats} timed, decode "
          f"{plan.vae_decode_warmup} warm-up + {plan.vae_repeats} timed ...", flush=True)
    host_encode = measure(lambda: host_vae.encode_rgb(current_source), repeats=plan.vae_repeats,
                          warmup=plan.vae_encode_warmup, sync=sync, label="host encode (init image)",
                          verbose=device.type == "cpu")
    init_latent = host_vae.encode_rgb(current_source)
    previous_latent = init_latent.clone()  # stands in for the previous frame's final latent (same shape, device, dtype)
    host_decode = measure(lambda: host_vae.decode(init_latent), repeats=plan.vae_repeats,
                          warmup=plan.vae_decode_warmup, sync=sync, label="host decode (result)",
                          verbose=device.type == "cpu")

    unet_frame_s = unet_call.median * denoiser_calls
    diffusion_s = unet_frame_s + host_encode.median + host_decode.median
    extrapolated = plan.unet_measured < denoiser_calls

    # ---- 2. guidance on the main thread --------------------------------------------------------
    print(f"[3/4] guidance steps on the main thread ({plan.cpu_side_repeats} repeats each; pixel mode with the "
          f"real encode {plan.vae_repeats}) ...", flush=True)
    pixel_settings = GuidanceSettings(enabled=True, warp_space="pixel")
    latent_settings = GuidanceSettings(enabled=True, warp_space="latent")
    # The precomputed flows and weight map the prefetcher would hand over (current frame's grid).
    motion = motion_between(previous_source, current_source, pixel_settings)
    ready_latent = previous_latent.clone()

    def build_pixel_without_encode():
        return build_guide_target(pixel_settings, encode=lambda _rgb: ready_latent, latent_hw=latent_hw,
                                  guide_rgb=previous_output, motion=motion)

    def build_pixel_with_encode():
        return build_guide_target(pixel_settings, encode=host_vae.encode_rgb, latent_hw=latent_hw,
                                  guide_rgb=previous_output, motion=motion)

    def build_latent():
        return build_guide_target(latent_settings, encode=host_vae.encode_rgb, latent_hw=latent_hw,
                                  guide_rgb=previous_output, guide_latent=previous_latent, motion=motion)

    with torch.no_grad():
        pixel_no_encode = measure(build_pixel_without_encode, repeats=plan.cpu_side_repeats,
                                  warmup=plan.cpu_side_warmup, sync=sync)
        latent_build = measure(build_latent, repeats=plan.cpu_side_repeats, warmup=plan.cpu_side_warmup, sync=sync)
        # The VAE is warm already (host encode above); no extra warm-up for this slow figure.
        pixel_with_encode = measure(build_pixel_with_encode, repeats=plan.vae_repeats, warmup=0, sync=sync,
                                    label="build_guide_target pixel + encode", verbose=device.type == "cpu")
        target = build_latent()
    steps_frame, steps_call = per_call_guidance(target, sigmas, denoiser, latent_settings, latent_shape, device,
                                                dtype, plan.cpu_side_repeats, plan.cpu_side_warmup, sync)

    # ---- 3. the flow worker (off the main thread) ------------------------------------------------
    print(f"[4/4] flow prefetch worker: {plan.flow_frames} frames through FlowPrefetcher "
          f"({pixel_settings.flow_method}, fwd + bwd, weight map '{pixel_settings.weight_mode}') ...", flush=True)
    flow_worker = flow_worker_per_frame(previous_source, current_source, pixel_settings, plan.flow_frames)

    e2e = None
    if run_e2e:
        print(f"[e2e] whole frames, unguided vs guided, {plan.e2e_repeats} interleaved repeats ...", flush=True)
        e2e = end_to_end(
            denoiser, host_vae, sigmas, init_latent, cond, uncond,
            {"pixel": pixel_settings, "latent": latent_settings},
            {"pixel": {"guide_rgb": previous_output, "motion": motion},
             "latent": {"guide_rgb": previous_output, "guide_latent": previous_latent, "motion": motion}},
            latent_hw, plan.e2e_repeats, sync,
        )

    # ---- report ------------------------------------------------------------------------------
    per_call_s = steps_frame.median
    main_pixel_s = per_call_s + pixel_with_encode.median
    main_pixel_no_encode_s = per_call_s + pixel_no_encode.median
    main_latent_s = per_call_s + latent_build.median
    ratio_pixel = main_pixel_s / diffusion_s
    ratio_pixel_no_encode = main_pixel_no_encode_s / diffusion_s
    ratio_latent = main_latent_s / diffusion_s
    flow_s = flow_worker.median
    keeps_up = flow_s < diffusion_s

    print("\n" + "-" * 110)
    print("Frame diffusion time (the denominator)")
    print("-" * 110)
    print_rows([
        ("denoiser call (UNet, CFG batch 2, EpsDenoiser)", unet_call, denoiser_calls),
        ("host VAE encode of the init image", host_encode, 1),
        ("host VAE decode of the result", host_decode, 1),
    ], diffusion_s)
    if extrapolated:
        print(f"  NOTE: the frame's UNet time is EXTRAPOLATED: {plan.unet_measured} call(s) timed "
              f"(median {ms(unet_call.median)} ms per call) x {denoiser_calls} calls = {ms(unet_frame_s)} ms.")
    else:
        print(f"  the frame's UNet time: median of {plan.unet_measured} timed calls x {denoiser_calls} calls.")
    print(f"  UNet only ({denoiser_calls} calls):{'':<18} {ms(unet_frame_s):>12} ms per frame")
    print(f"  frame diffusion (UNet + VAE enc + dec): {ms(diffusion_s):>12} ms per frame  <- the ratios' denominator")
    print("  (not included: prompt encoding, cached across frames; video decode/encode; the sampler's own "
          "arithmetic between calls)")
    if not outputs_finite:
        print("  WARNING: the random-weight UNet produced non-finite values; CPU timings may be distorted.")

    print("\n" + "-" * 110)
    print("Guidance on the main thread (flows prefetched)")
    print("-" * 110)
    print_rows([
        ("(a) StepGuidance set-up + observe_input + apply, per frame", steps_frame, 1),
        ("    ... the same per denoiser call", steps_call, denoiser_calls),
        ("(b) build_guide_target pixel: warp + VAE encode + weights", pixel_with_encode, 1),
        ("(b') build_guide_target pixel without the encode", pixel_no_encode, 1),
        ("(c) build_guide_target latent: warp_latent + weights", latent_build, 1),
    ], diffusion_s)
    print()
    print(f"  {'mode':<40} {'main thread ms/frame':>21} {'/ diffusion':>12} {'/ UNet only':>12}   target")
    for label, seconds, ratio, target_ratio in (
        ("pixel, with the guide's VAE encode", main_pixel_s, ratio_pixel, TARGET_PIXEL),
        ("pixel, without the encode", main_pixel_no_encode_s, ratio_pixel_no_encode, TARGET_PIXEL),
        ("latent (warp_latent, no encode)", main_latent_s, ratio_latent, TARGET_LATENT),
    ):
        print(f"  {label:<40} {ms(seconds):>21} {pct(ratio):>12} {pct(seconds / unet_frame_s):>12}   "
              f"{verdict(ratio, target_ratio)}")
    # Hardware-independent reading of the CPU-side figures: the frame time at which they would
    # reach the target. Not a projection of GPU speed; pixel mode's encode is left out of it
    # because on a GPU the encode speeds up with the UNet (it is GPU work too).
    print("  break-even: the CPU-side main-thread work stays within target as long as a frame's diffusion "
          "takes at least")
    for label, seconds, target_ratio in (
        ("pixel without the encode", main_pixel_no_encode_s, TARGET_PIXEL),
        ("latent", main_latent_s, TARGET_LATENT),
    ):
        needed_s = seconds / target_ratio
        print(f"    {label:<26} {ms(needed_s):>10} ms per frame (~{ms(needed_s / denoiser_calls)} ms per denoiser call "
              f"if the VAE took no time)")

    print("\n" + "-" * 110)
    print("Flows (background worker, NOT on the main thread)")
    print("-" * 110)
    print_rows([("FlowPrefetcher worker: DIS fwd + bwd (sequential) + weight map", flow_worker, 1)], diffusion_s)
    print(f"  worker per frame {ms(flow_s)} ms vs frame diffusion {ms(diffusion_s)} ms: prefetch "
          + ("KEEPS UP (the next frame's flows are ready before this frame is diffused)" if keeps_up
             else "FALLS BEHIND (the main thread would wait for flows)"))
    serial_pixel = (main_pixel_s + flow_s) / diffusion_s
    serial_latent = (main_latent_s + flow_s) / diffusion_s
    print(f"  if flows ran serially on the main thread: pixel {pct(serial_pixel)}, latent {pct(serial_latent)} "
          f"(prefetching saves {pct(flow_s / diffusion_s)} of the frame)")

    e2e_report = None
    if e2e is not None:
        print("\n" + "-" * 110)
        print("End-to-end cross-check: whole sampling loops (host encode/decode excluded, same in all)")
        print("-" * 110)
        base = e2e["unguided"].median
        print_rows([(name, timing, 1) for name, timing in e2e.items()], diffusion_s)
        e2e_report = {}
        for name in ("guided_latent", "guided_pixel"):
            extra_s = e2e[name].median - base
            e2e_report[name] = {"extra_ms": extra_s * 1e3, "ratio_to_diffusion": extra_s / diffusion_s}
            print(f"  {name}: {ms(extra_s)} ms more than unguided = {pct(extra_s / diffusion_s)} of the frame "
                  "(differences of medians; noisy when small)")
        if device.type == "cpu":
            print("  (with a real-size UNet on CPU these differences are far below the noise of the UNet calls)")

    elapsed = time.perf_counter() - run_started
    print(f"\nload average at end {load_average()}; whole run {elapsed:.0f} s")

    def summary(timing: Timing) -> dict:
        return {"median_ms": timing.median * 1e3, "min_ms": timing.minimum * 1e3, "n": timing.n}

    result = {
        "benchmark": "guidance_overhead",
        "environment": env,
        "config": {
            "width": width, "height": height, "latent_hw": list(latent_hw), "steps": args.steps,
            "strength": args.strength, "sampler": "euler", "denoiser_calls": denoiser_calls,
            "cfg_batch": 2, "unet_params_m": unet_params / 1e6, "vae_params_m": vae_params / 1e6,
            "plan": plan.__dict__, "quick": bool(args.quick),
        },
        "unet_extrapolated": extrapolated,
        "unet_outputs_finite": outputs_finite,
        "timings": {
            "denoiser_call": summary(unet_call),
            "host_vae_encode": summary(host_encode),
            "host_vae_decode": summary(host_decode),
            "guidance_steps_per_frame": summary(steps_frame),
            "guidance_steps_per_call": summary(steps_call),
            "build_guide_pixel_with_encode": summary(pixel_with_encode),
            "build_guide_pixel_without_encode": summary(pixel_no_encode),
            "build_guide_latent": summary(latent_build),
            "flow_worker_per_frame": summary(flow_worker),
        },
        "per_frame_ms": {
            "unet_only": unet_frame_s * 1e3,
            "diffusion": diffusion_s * 1e3,
            "main_thread_pixel": main_pixel_s * 1e3,
            "main_thread_pixel_without_encode": main_pixel_no_encode_s * 1e3,
            "main_thread_latent": main_latent_s * 1e3,
            "flow_worker": flow_s * 1e3,
        },
        "ratios": {
            "pixel": ratio_pixel,
            "pixel_without_encode": ratio_pixel_no_encode,
            "latent": ratio_latent,
            "pixel_vs_unet_only": main_pixel_s / unet_frame_s,
            "pixel_without_encode_vs_unet_only": main_pixel_no_encode_s / unet_frame_s,
            "latent_vs_unet_only": main_latent_s / unet_frame_s,
            "serial_flows_pixel": serial_pixel,
            "serial_flows_latent": serial_latent,
        },
        "targets": {"pixel": TARGET_PIXEL, "latent": TARGET_LATENT},
        "pass": {
            "pixel": ratio_pixel <= TARGET_PIXEL,
            "pixel_without_encode": ratio_pixel_no_encode <= TARGET_PIXEL,
            "latent": ratio_latent <= TARGET_LATENT,
        },
        "flow_prefetch_keeps_up": keeps_up,
        "end_to_end": e2e_report,
        "run_seconds": elapsed,
    }
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
