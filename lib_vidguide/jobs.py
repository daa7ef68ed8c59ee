"""Video jobs on disk: one folder per job, resumable from its last finished frame.

A job folder holds ``manifest.json`` (settings, the source's fingerprint, the seed,
progress, metrics; rewritten atomically after every frame), ``frames/`` (every finished
frame as a PNG, and the latents a resume needs), ``frames_pass2/`` for the optional
second pass, a copy of the source when it was uploaded, and ``output.mp4`` once done.

The frames on disk are the truth about progress: a job killed at any instant resumes
from its contiguous run of PNGs, whatever the manifest last said.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Literal, Optional

from pydantic import Field

from .errors import UserInputError
from .settings import StrictModel, VideoSettings

logger = logging.getLogger("vidguide")

JOB_ID_PATTERN = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}")
JobStatus = Literal["queued", "running", "interrupted", "failed", "done"]
FINGERPRINT_CHUNK = 1 << 20


class JobError(UserInputError):
    """A job request or state problem, with a message for the user."""


class JobNotFound(JobError):
    default_status = 404


class Img2ImgSettings(StrictModel):
    """The img2img part of a job (the WebUI's own parameters)."""

    prompt: str = Field("", max_length=10000)
    negative_prompt: str = Field("", max_length=10000)
    steps: int = Field(20, ge=1, le=150)
    denoising_strength: float = Field(0.4, gt=0.0, le=1.0)
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    sampler_name: str = Field("Euler", min_length=1, max_length=64)


class JobSettings(StrictModel):
    """Everything a video job needs; what the tab, the API and the manifest share."""

    video: VideoSettings = Field(default_factory=VideoSettings)
    img2img: Img2ImgSettings = Field(default_factory=Img2ImgSettings)
    keep_audio: bool = Field(True, description="Copy the source's audio into the output.")


class SourceInfo(StrictModel):
    path: str
    copied: bool
    size_bytes: int
    fingerprint: str
    width: int
    height: int
    fps: str
    frame_count: int
    has_audio: bool


class JobManifest(StrictModel):
    version: int = 1
    job_id: str
    name: str = ""
    created: float
    updated: float
    status: JobStatus = "queued"
    source: SourceInfo
    settings: JobSettings
    seed: int
    frames_total: int
    frames_done: int = 0
    second_pass_done: int = 0
    skipped_frames: List[int] = Field(default_factory=list)
    warp_error_pairs: List[float] = Field(default_factory=list)
    warp_error_x1000: Optional[float] = None
    output: Optional[str] = None
    error: Optional[str] = None
    audio_notes: List[str] = Field(default_factory=list)
    notes: List[str] = Field(default_factory=list)
    seconds_rendering: float = 0.0


def fingerprint(path: str | os.PathLike) -> str:
    """Size plus hashes of the first and last MiB: cheap on hour-long videos, and any
    re-encode, trim or replacement of the file changes it."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as file:
        digest.update(file.read(FINGERPRINT_CHUNK))
        if size > FINGERPRINT_CHUNK:
            file.seek(max(FINGERPRINT_CHUNK, size - FINGERPRINT_CHUNK))
            digest.update(file.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()


def new_job_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass
class Job:
    root: Path
    manifest: JobManifest

    @property
    def job_id(self) -> str:
        return self.manifest.job_id

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def second_pass_dir(self) -> Path:
        return self.root / "frames_pass2"

    @property
    def output_path(self) -> Path:
        return self.root / "output.mp4"

    @property
    def source_path(self) -> Path:
        return Path(self.manifest.source.path)

    def save(self) -> None:
        from .atomic import write_bytes_atomic

        self.manifest.updated = time.time()
        text = json.dumps(self.manifest.to_dict(), indent=1, sort_keys=True)
        write_bytes_atomic(self.root / "manifest.json", text.encode("utf-8"))

    def check_source(self) -> None:
        source = self.source_path
        if not source.exists():
            raise JobError(f"the job's source video {str(source)!r} is gone; put it back to resume the job")
        if fingerprint(source) != self.manifest.source.fingerprint:
            raise JobError(
                f"the job's source video {str(source)!r} changed since the job started; a resume would mix two "
                "videos. Restore the original file, or start a new job"
            )

    def video_settings(self) -> VideoSettings:
        """The job's video settings with its resolved seed."""
        return VideoSettings.from_dict({**self.manifest.settings.video.to_dict(), "seed": self.manifest.seed})


class JobStore:
    """The jobs folder: create, find, list and delete jobs."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
            raise JobNotFound(f"no job {job_id!r}: job ids look like 20250101-120000-1a2b3c4d")
        return self.root / job_id

    def create(self, source: str | os.PathLike, settings: JobSettings, *, copy_source: bool = False,
               name: str = "") -> Job:
        """A queued job for ``source``. ``copy_source`` keeps a copy in the job folder (uploads:
        their temporary file disappears, and a resume must find the same video)."""
        from .engine import plan_frames
        from .video_io import probe

        info = probe(source)
        plan = plan_frames(source, settings.video)
        if plan.total == 0:
            raise JobError(f"no frames to render from {str(source)!r} with start frame {settings.video.start_frame}")
        job_id = new_job_id()
        root = self.path_of(job_id)
        root.mkdir(parents=True)
        source = Path(source)
        if copy_source:
            copied = root / f"source{source.suffix.lower() or '.video'}"
            shutil.copyfile(source, copied)
            source = copied
        seed = settings.video.seed if settings.video.seed >= 0 else random.SystemRandom().randrange(2**32)
        now = time.time()
        manifest = JobManifest(
            job_id=job_id, name=name or Path(info.path).stem, created=now, updated=now,
            source=SourceInfo(
                path=str(source.resolve()), copied=copy_source, size_bytes=source.stat().st_size,
                fingerprint=fingerprint(source), width=info.width, height=info.height, fps=str(info.fps),
                frame_count=info.frame_count, has_audio=info.has_audio,
            ),
            settings=settings, seed=seed, frames_total=plan.total,
            # What the user should know from the start: alpha composited, variable frame rate, size rounded...
            notes=[*info.notes, *([plan.sizes.note] if plan.sizes is not None and plan.sizes.note else [])],
        )
        job = Job(root, manifest)
        job.save()
        return job

    def get(self, job_id: str) -> Job:
        root = self.path_of(job_id)
        manifest_path = root / "manifest.json"
        if not manifest_path.exists():
            raise JobNotFound(f"no job {job_id!r} in {str(self.root)!r}")
        try:
            manifest = JobManifest.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")))
        except (ValueError, OSError) as error:
            raise JobError(f"job {job_id!r} has an unreadable manifest ({error}); delete the job folder") from error
        return Job(root, manifest)

    def list(self) -> list[JobManifest]:
        manifests = []
        for path in sorted(self.root.iterdir(), reverse=True):
            if not JOB_ID_PATTERN.fullmatch(path.name):
                continue
            try:
                manifests.append(self.get(path.name).manifest)
            except JobError as error:
                logger.warning("[-] VidGuide: %s", error)
        return manifests

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job.manifest.status == "running":
            raise JobError(f"job {job_id!r} is running; cancel it first")
        shutil.rmtree(job.root)


RendererFactory = Callable[[VideoSettings, int, Optional[float]], "object"]


def execute_job(
    job: Job,
    make_renderer: RendererFactory,
    *,
    should_stop: Optional[Callable[[], bool]] = None,
    on_frame=None,
    on_plan=None,
) -> JobManifest:
    """Run (or resume) a job to the end, or until ``should_stop``; returns its manifest.

    ``make_renderer(video_settings, pass_number, denoising_override)`` builds the host's
    renderer: pass 1 at the job's denoising strength, the optional pass 2 at the drift
    settings' second-pass strength. Progress is saved after every frame.
    """
    from .engine import load_frame, load_resume_state, run_video

    manifest = job.manifest
    settings = job.video_settings()
    manifest.status = "running"
    manifest.error = None
    job.save()
    started = time.perf_counter()
    second_pass = settings.drift.second_pass

    def recorder(pass_number: int):
        def record(event) -> None:
            if pass_number == 1:
                manifest.frames_done = event.index + 1
                if event.warp_error is not None and not second_pass:
                    manifest.warp_error_pairs = manifest.warp_error_pairs[: event.index - 1] + [event.warp_error]
                if event.skipped and event.index not in manifest.skipped_frames:
                    manifest.skipped_frames.append(event.index)
            else:
                manifest.second_pass_done = event.index + 1
                if event.warp_error is not None:
                    manifest.warp_error_pairs = manifest.warp_error_pairs[: event.index - 1] + [event.warp_error]
            manifest.seconds_rendering += event.seconds
            job.save()
            if on_frame is not None:
                on_frame(event, pass_number)

        return record

    try:
        # Inside the try: a source gone or changed while the job waited in the queue marks it failed,
        # with the reason; before, the job kept saying "queued" forever.
        job.check_source()
        resume = load_resume_state(job.frames_dir)
        manifest.frames_done = resume.done if resume else 0
        if second_pass and manifest.frames_done == 0:
            manifest.warp_error_pairs = []
        result = run_video(
            job.source_path, None if second_pass else _video_only_path(job), make_renderer(settings, 1, None),
            settings, frames_dir=job.frames_dir, resume=resume, measure=not second_pass,
            on_plan=on_plan, on_frame=recorder(1), should_stop=should_stop,
        )
        if not result.interrupted and second_pass:
            resume = load_resume_state(job.second_pass_dir)
            result = run_video(
                job.source_path, _video_only_path(job),
                make_renderer(settings, 2, settings.drift.second_pass_strength), settings,
                frames_dir=job.second_pass_dir, resume=resume,
                init_frame_for=lambda index: load_frame(job.frames_dir, index).image,
                on_frame=recorder(2), should_stop=should_stop,
            )
    except Exception as error:
        manifest.status = "failed"
        manifest.error = str(error)[:2000] or type(error).__name__
        job.save()
        raise
    finally:
        logger.info("[+] VidGuide: job %s: %.1f s this run", job.job_id, time.perf_counter() - started)

    if result.interrupted or result.output_path is None:
        manifest.status = "interrupted"
        job.save()
        return manifest
    if result.notes:
        manifest.notes = list(dict.fromkeys([*manifest.notes, *result.notes]))
        manifest.frames_total = result.total_frames
    _finish_output(job, Path(result.output_path), settings)
    pairs = manifest.warp_error_pairs
    manifest.warp_error_x1000 = round(sum(pairs) / len(pairs) * 1000.0, 6) if pairs else None
    manifest.output = str(job.output_path)
    manifest.status = "done"
    job.save()
    return manifest


def _video_only_path(job: Job) -> Path:
    return job.root / "video-only.mp4"


def _finish_output(job: Job, video_only: Path, settings: VideoSettings) -> None:
    """The final output: the rendered video plus the source's audio when asked and present."""
    manifest = job.manifest
    if manifest.settings.keep_audio and manifest.source.has_audio:
        from .engine import plan_frames
        from .video_io import frame_time_s, mux_audio

        plan = plan_frames(job.source_path, settings)
        # Timestamps, not frame / fps: right for variable-frame-rate sources too.
        start_s = frame_time_s(job.source_path, plan.start)
        duration_s = float(plan.total * plan.step / plan.source_fps) if settings.fps else None
        muxed = mux_audio(video_only, job.source_path, job.output_path, start_s=start_s, duration_s=duration_s,
                          delete_video=True)
        manifest.audio_notes = list(muxed.notes)
    else:
        os.replace(video_only, job.output_path)
