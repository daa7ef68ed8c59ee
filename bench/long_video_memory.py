#!/usr/bin/env python3
"""Peak memory of a long video job: RSS growth beyond the models must stay under 300 MB.

Issue 3's acceptance point: "a 3,000-frame 512x768 synthetic video runs with peak RSS growth
under 300 MB beyond the models". Memory must not grow with the video's length: frames are
decoded, guided, rendered, saved and encoded one at a time.

What runs, all library code except the renderer:

1. A synthetic source is written to a temporary folder, streamed frame by frame with PyAV
   (H.264 at a low CRF, a textured background panning and zooming slowly with a moving object
   on top, and an AAC tone as audio track so that the job's final mux runs too). The frames
   are never held in memory together.
2. The job layer (``lib_vidguide.jobs``: a job folder, the manifest rewritten after every
   frame, every frame kept as a PNG for resume, the final mux of the source's audio) runs it
   through ``engine.run_video`` with flow guidance on: ``FlowPrefetcher`` computes DIS flows
   both ways and the consistency weight map of the next frame in worker threads, the warp
   error of consecutive outputs is measured, the mp4 is encoded as frames arrive.
   ``--layer engine`` calls ``run_video`` directly instead (no job folder, no audio mux).
3. The renderer: ``--renderer warp`` (the default) does no diffusion. It blends the source
   frame with the previous output warped by the flow (``flow.backward_warp``, what a guided
   frame starts from) and blurs it a little, so 3,000 frames finish on a CPU. ``identity``
   returns the frame. ``tiny`` renders with the tiny random-weight SD model through the
   diffusers runner (real img2img, guidance in the sampler; slow on a CPU: use ``--frames``).

Memory is read from ``/proc/self/status``: the baseline VmRSS is taken after every import and
model load (and a ``gc.collect()``), then the kernel's high-water mark is reset
(``/proc/self/clear_refs`` = 5) so that VmHWM at the end is the run's own peak. A sampling
thread reads VmRSS every ``--sample-interval`` seconds as well, and RSS is logged every 100
frames so that a slow leak shows as a slope. "The models" are their weights plus what one
frame's diffusion needs at this size: before the run, frame 1 is rendered on its own and the
peak of that is the models' part (with ``--renderer tiny`` one 512x768 frame of the tiny model
peaks ~210 MB above its weights, mostly attention over 64x96 latents; with the warp renderer it
is next to nothing). The result
is PASS when the run's peak minus the larger of the baseline and that one-frame peak is under
``--limit-mb``; the growth over the bare baseline is printed too.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/long_video_memory.py              # 3,000 frames, warp renderer
    .venv/bin/python bench/long_video_memory.py --frames 300 --renderer tiny   # tiny SD model, shorter run
    .venv/bin/python bench/long_video_memory.py --keep --workdir /data/tmp     # keep the files

The PNG frames of 3,000 frames at 512x768 take about 1.5 GB; free space is checked first and
everything is deleted afterwards unless ``--keep``. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

MB = 1 << 20
PNG_BYTES_PER_PIXEL = 1.4  # measured on these frames at compress_level 4 (the job's PNGs); estimate only


# --------------------------------------------------------------------------- memory


def proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    kb = proc_status_kb("VmRSS")
    if kb is None:  # not Linux: ru_maxrss is the only figure (a peak, in kB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (MB if sys.platform == "darwin" else 1024)
    return kb / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Reads VmRSS every ``interval`` seconds; ``peak_mb`` is the largest value seen."""

    def __init__(self, interval: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.peak_mb = rss_mb()
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        return self.peak_mb


# --------------------------------------------------------------------------- the source video


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, detailed RGB texture (sums of random sinusoids), so the flows have texture to track."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        value = np.zeros((height, width), np.float32)
        for _ in range(6):
            fx, fy = rng.uniform(-0.12, 0.12, 2)
            value += rng.uniform(15, 35) * np.sin(fx * xx + fy * yy + rng.uniform(0, 6.3))
        channels.append(128 + value)
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def synthetic_frame(index: int, background: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frame ``index``: the background panning 2 px/frame to the right and 1 px/frame down (wrapping
    around), with a textured square moving on its own path on top."""
    frame = np.roll(background, shift=(index // 2 % background.shape[0], 2 * index % background.shape[1]),
                    axis=(0, 1))[:height, :width].copy()
    size = max(16, min(width, height) // 5)
    phase = index / 40.0
    left = int((width - size) * (0.5 + 0.45 * np.sin(phase)))
    top = int((height - size) * (0.5 + 0.45 * np.sin(0.7 * phase + 1.0)))
    patch = background[-size:, -size:]
    frame[top:top + size, left:left + size] = 255 - patch
    return frame


def write_source(path: Path, frames: int, width: int, height: int, fps: int, audio: bool) -> Path:
    """Encode the synthetic clip frame by frame (never all frames in memory), with a tone as audio."""
    import av

    background = texture(height + 64, width + 64)
    rate, chunk = 48_000, 1024
    samples_per_frame = rate / fps
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "12", "preset": "veryfast"}
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=rate, layout="mono")
            sound.codec_context.open()  # to learn the encoder's frame size and format
            chunk = sound.codec_context.frame_size or chunk
        written = 0  # audio samples encoded so far
        for index in range(frames):
            picture = av.VideoFrame.from_ndarray(synthetic_frame(index, background, width, height), format="rgb24")
            picture.pts = index
            container.mux(video.encode(picture))
            while sound is not None and written + chunk <= (index + 1) * samples_per_frame:
                t = (written + np.arange(chunk)) / rate
                tone = (0.3 * np.sin(2 * np.pi * (330 + 20 * np.sin(t)) * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, written, Fraction(1, rate)
                container.mux(sound.encode(frame))
                written += chunk
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return path


# --------------------------------------------------------------------------- renderers


class WarpBlendRenderer:
    """No diffusion: the source frame blended with the previous output warped by the flow (the
    picture a guided frame starts from), slightly blurred. Cheap enough for 3,000 frames on a CPU."""

    def __init__(self, blend: float = 0.5):
        self.blend = blend

    def render(self, frame, guide, index):
        import cv2

        from lib_vidguide.engine import RenderedFrame
        from lib_vidguide.flow import backward_warp

        if guide is None:
            image = frame
        else:
            warped = backward_warp(guide.previous_output, guide.motion.pair.backward)
            image = cv2.addWeighted(frame, 1.0 - self.blend, warped, self.blend, 0.0)
        return RenderedFrame(cv2.GaussianBlur(image, (3, 3), 0), None)


class IdentityRenderer:
    def render(self, frame, guide, index):
        from lib_vidguide.engine import RenderedFrame

        return RenderedFrame(frame, None)


def tiny_renderer(workdir: Path, settings, steps: int):
    """The tiny random-weight SD model through the diffusers runner (loaded before the baseline)."""
    from lib_vidguide.diffusers_runner import DiffusersFrameRenderer, DiffusersImg2Img, Img2ImgParams
    from lib_vidguide.tiny_models import save_tiny_pipeline

    model = save_tiny_pipeline(workdir / "tiny-sd")
    runner = DiffusersImg2Img(str(model))
    params = Img2ImgParams(prompt="an oil painting", steps=steps, strength=0.5, seed=1)
    return DiffusersFrameRenderer(runner, params, settings)


# --------------------------------------------------------------------------- the run


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--renderer", choices=("warp", "identity", "tiny"), default="warp")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of --renderer tiny (default 4)")
    parser.add_argument("--layer", choices=("job", "engine"), default="job",
                        help="job: the job store and execute_job (default); engine: run_video alone")
    parser.add_argument("--no-guidance", action="store_true", help="no flows (the prefetcher still measures)")
    parser.add_argument("--no-audio", action="store_true", help="a source without audio (no final mux)")
    parser.add_argument("--limit-mb", type=float, default=300.0)
    parser.add_argument("--sample-interval", type=float, default=0.1)
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary folder (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the source, frames and output")
    args = parser.parse_args(argv)

    import cv2
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    cv2.setNumThreads(1)

    from lib_vidguide.engine import run_video
    from lib_vidguide.jobs import JobSettings, JobStore, execute_job
    from lib_vidguide.settings import GuidanceSettings, VideoSettings
    from lib_vidguide.video_io import probe

    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    needed = int(args.frames * args.width * args.height * (PNG_BYTES_PER_PIXEL + 0.3)) + 200 * MB
    free = shutil.disk_usage(parent).free
    if free < needed * 1.2:
        print(f"not enough disk space in {parent}: about {needed / MB:.0f} MB needed (PNG frames, source and "
              f"output), {free / MB:.0f} MB free; use --workdir or fewer --frames", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vidguide-memory-bench-", dir=parent))
    print(f"work folder {workdir} ({free / MB:.0f} MB free, about {needed / MB:.0f} MB needed)")
    try:
        started = time.perf_counter()
        source = write_source(workdir / "source.mp4", args.frames, args.width, args.height, args.fps,
                              audio=not args.no_audio)
        info = probe(source)
        generate_s = time.perf_counter() - started
        print(f"source: {info.frame_count} frames {info.width}x{info.height} at {float(info.fps):g} fps"
              f"{' with audio' if info.has_audio else ''}, {source.stat().st_size / MB:.1f} MB, written in "
              f"{generate_s:.1f} s")

        guidance = GuidanceSettings(enabled=not args.no_guidance, flow_method="dis_medium", weight_mode="consistency")
        video_settings = VideoSettings(guidance=guidance, seed=1, crf=18)
        if args.renderer == "tiny":
            renderer = tiny_renderer(workdir, video_settings, args.steps)
        elif args.renderer == "identity":
            renderer = IdentityRenderer()
        else:
            renderer = WarpBlendRenderer()

        # Baseline: every import done, the model (if any) loaded, garbage collected.
        import lib_vidguide.flow  # noqa: F401
        import lib_vidguide.metrics  # noqa: F401
        from lib_vidguide.video_io import iter_frames

        # The models' own working set: the first frame rendered on its own (unguided, as frame 1 is).
        # What a diffusion step needs at this size is the model's, not the video pipeline's; with the
        # warp renderer it is next to nothing.
        first_frame = next(iter(iter_frames(source, stop=1)))
        gc.collect()
        weights_mb = rss_mb()
        hwm_reset = reset_peak()
        renderer.render(first_frame, None, 0)
        models_peak_mb = max(rss_mb(), (proc_status_kb("VmHWM") or 0) / 1024 if hwm_reset else 0.0)
        del first_frame
        gc.collect()
        baseline_mb = rss_mb()
        hwm_reset = reset_peak()
        sampler = RssSampler(args.sample_interval)
        sampler.start()
        checkpoints: list[tuple[int, float]] = []
        frame_started = [time.perf_counter()]

        def on_frame(event, *_pass_number) -> None:
            done = event.index + 1
            if done % 100 == 0 or done == event.total:
                checkpoints.append((done, rss_mb()))
                elapsed = time.perf_counter() - run_started
                print(f"  frame {done}/{event.total}: RSS {checkpoints[-1][1]:.0f} MB "
                      f"(+{checkpoints[-1][1] - baseline_mb:.0f} MB), {elapsed / done * 1000:.0f} ms/frame",
                      flush=True)

        run_started = time.perf_counter()
        if args.layer == "job":
            store = JobStore(workdir / "jobs")
            job = store.create(source, JobSettings(video=video_settings))
            manifest = execute_job(job, lambda settings, pass_number, denoising: renderer, on_frame=on_frame)
            assert manifest.status == "done", manifest.error
            output, frames_dir = job.output_path, job.frames_dir
            frames_written, notes = manifest.frames_done, list(manifest.notes) + list(manifest.audio_notes)
            warp_error = manifest.warp_error_x1000
        else:
            output, frames_dir = workdir / "output.mp4", workdir / "frames"
            result = run_video(source, output, renderer, video_settings, frames_dir=frames_dir, on_frame=on_frame)
            assert result.output_path is not None and not result.interrupted
            frames_written, notes = result.frames_written, list(result.notes)
            pairs = result.warp_error_pairs
            warp_error = round(sum(pairs) / len(pairs) * 1000, 6) if pairs else None
        run_s = time.perf_counter() - run_started
        sampled_peak_mb = sampler.stop()
        hwm_kb = proc_status_kb("VmHWM")
        peak_mb = max(sampled_peak_mb, hwm_kb / 1024 if (hwm_kb and hwm_reset) else 0.0)
        growth_mb = peak_mb - max(baseline_mb, models_peak_mb)  # beyond the models, their working set included
        out = probe(output)
        assert out.frame_count == args.frames == frames_written, (out.frame_count, frames_written)

        # A leak shows as RSS rising with the frame count: slope over the second half of the run.
        half = [(frame, mb) for frame, mb in checkpoints if frame >= args.frames // 2]
        slope = None
        if len(half) >= 3:
            slope = float(np.polyfit([f for f, _ in half], [mb for _, mb in half], 1)[0] * 1000)

        verdict = "PASS" if growth_mb < args.limit_mb else "MISS"
        print(f"frames: {frames_written} rendered ({args.renderer} renderer, {args.layer} layer, guidance "
              f"{'on' if not args.no_guidance else 'off'}), output {out.width}x{out.height} "
              f"{out.frame_count} frames{' with audio' if out.has_audio else ''}, {output.stat().st_size / MB:.1f} MB")
        print(f"time: {run_s:.0f} s, {run_s / frames_written * 1000:.0f} ms per frame; PNG frames on disk: "
              f"{folder_bytes(frames_dir) / MB:.0f} MB")
        print(f"RSS: models' one-frame working set {models_peak_mb - weights_mb:.0f} MB (peak {models_peak_mb:.0f} MB "
              f"rendering frame 1 alone)")
        print(f"RSS: baseline {baseline_mb:.0f} MB (imports and models loaded), peak {peak_mb:.0f} MB "
              f"(VmHWM {'reset at the baseline' if hwm_reset else 'not resettable: sampled only'}; "
              f"sampler {sampled_peak_mb:.0f} MB over {sampler.samples} samples), end {rss_mb():.0f} MB")
        if slope is not None:
            print(f"RSS slope over the second half: {slope:+.1f} MB per 1,000 frames")
        for note in notes:
            print(f"note: {note}")
        print(f"{verdict}: peak RSS growth {growth_mb:.0f} MB beyond the models (limit {args.limit_mb:.0f} MB)")
        print(json.dumps({
            "benchmark": "long_video_memory", "verdict": verdict, "frames": frames_written,
            "size": [args.width, args.height], "renderer": args.renderer, "layer": args.layer,
            "guidance": not args.no_guidance, "audio": out.has_audio,
            "baseline_rss_mb": round(baseline_mb, 1), "models_one_frame_peak_rss_mb": round(models_peak_mb, 1),
            "peak_rss_mb": round(peak_mb, 1), "peak_growth_over_baseline_mb": round(peak_mb - baseline_mb, 1),
            "peak_growth_mb": round(growth_mb, 1), "limit_mb": args.limit_mb,
            "sampled_peak_rss_mb": round(sampled_peak_mb, 1), "hwm_reset": hwm_reset,
            "rss_slope_mb_per_1000_frames": None if slope is None else round(slope, 2),
            "rss_checkpoints_mb": [[frame, round(mb, 1)] for frame, mb in checkpoints],
            "run_s": round(run_s, 1), "ms_per_frame": round(run_s / frames_written * 1000, 1),
            "source_generation_s": round(generate_s, 1), "warp_error_x1000": warp_error,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        }))
        return 0 if verdict == "PASS" else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
