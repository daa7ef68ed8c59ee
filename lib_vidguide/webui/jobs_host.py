"""Video jobs inside the WebUI: rendering through process_images, one job at a time.

Jobs started from the VidGuide tab run in the tab's own request (the WebUI's
``wrap_gradio_gpu_call`` holds the queue lock and drives the progress bar). Jobs
submitted over the REST API go to one worker thread that runs them in turn, each
under the same queue lock the WebUI's generations and API use, so the GPU is never
shared. A running job stops after its current frame when cancelled; the WebUI's own
Interrupt stops it at once (the half-denoised frame is not kept). Either way every
finished frame stays on disk and the job can be resumed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from ..jobs import Job, JobError, JobManifest, JobSettings, JobStore, execute_job
from ..settings import VideoSettings
from . import host

logger = logging.getLogger("vidguide")

_store: Optional[JobStore] = None
_running_here: set[str] = set()
_running_lock = threading.Lock()


def job_store() -> JobStore:
    """<outputs>/vidguide/jobs: inside the default allowed roots, next to the WebUI's outputs."""
    global _store
    root = host.data_path() / "outputs" / "vidguide" / "jobs"
    if _store is None or _store.root != root:
        _store = JobStore(root)
    return _store


def default_script_args(runner: Any) -> list:
    """Every script's UI default, as the WebUI's API starts its requests from."""
    inputs = getattr(runner, "inputs", None) or [None]
    return [0] + [getattr(control, "value", None) for control in inputs[1:]]


def validate_settings(settings: JobSettings, *, from_api: bool) -> None:
    """What only the host can check before a job starts: the tagger model is installed (and, for
    API callers, named by folder, not by a path on the server)."""
    tagger = settings.video.tagger
    if tagger.enabled:
        from ..tagger import resolve_model_dir, tagger_models_dir

        resolve_model_dir(tagger.model, tagger_models_dir(host.models_path()), allow_paths=not from_api)


def processing_for(settings: JobSettings, seed: int, denoising_strength: Optional[float] = None):
    """A StableDiffusionProcessingImg2Img for the job's frames (init images are set per frame)."""
    from modules import processing, scripts, shared

    img2img = settings.img2img
    width, height = settings.video.width, settings.video.height
    p = processing.StableDiffusionProcessingImg2Img(
        sd_model=shared.sd_model,
        prompt=img2img.prompt,
        negative_prompt=img2img.negative_prompt,
        seed=seed,
        steps=img2img.steps,
        cfg_scale=img2img.cfg_scale,
        sampler_name=img2img.sampler_name,
        denoising_strength=denoising_strength if denoising_strength is not None else img2img.denoising_strength,
        width=width,
        height=height,
        batch_size=1,
        n_iter=1,
        do_not_save_samples=True,
        do_not_save_grid=True,
    )
    runner = scripts.scripts_img2img
    p.scripts = runner
    p.script_args = tuple(default_script_args(runner))
    p._vg_video_owned = True
    return p


def renderer_factory(job: Job) -> Callable[[VideoSettings, int, Optional[float]], Any]:
    from .video_script import WebUIFrameRenderer

    plan_size: dict = {}

    def make(settings: VideoSettings, pass_number: int, denoising: Optional[float]):
        if not plan_size:
            from ..engine import plan_frames

            plan = plan_frames(job.source_path, settings)
            plan_size["size"] = plan.size
        width, height = plan_size["size"]
        sized = JobSettings.from_dict({
            **job.manifest.settings.to_dict(),
            "video": {**settings.to_dict(), "width": width, "height": height},
        })
        p = processing_for(sized, job.manifest.seed, denoising)
        return WebUIFrameRenderer(p, sized.video, job.manifest.seed)

    return make


def run_job_here(job: Job, *, should_stop: Optional[Callable[[], bool]] = None, on_frame=None, on_plan=None) -> JobManifest:
    """Run or resume ``job`` in the calling thread (which must hold the queue lock)."""
    from modules.shared import state

    def stop_requested() -> bool:
        return bool(state.interrupted or getattr(state, "stopping_generation", False)
                    or (should_stop is not None and should_stop()))

    def plan_known(plan):
        state.job_count = plan.total
        if on_plan is not None:
            on_plan(plan)

    def frame_done(event, pass_number):
        state.job = f"VidGuide {job.job_id}: frame {event.index + 1}/{event.total}" + (" (second pass)" if pass_number == 2 else "")
        state.textinfo = state.job
        if on_frame is not None:
            on_frame(event, pass_number)

    with _running_lock:
        if job.job_id in _running_here:
            raise JobError(f"job {job.job_id!r} is already running")
        _running_here.add(job.job_id)
    try:
        return execute_job(job, renderer_factory(job), should_stop=stop_requested, on_frame=frame_done,
                           on_plan=plan_known)
    finally:
        with _running_lock:
            _running_here.discard(job.job_id)
        from . import hooks

        hooks.deactivate()


def is_active(job_id: str) -> bool:
    """Running in this process (the tab or the API worker) or queued in the worker."""
    with _running_lock:
        if job_id in _running_here:
            return True
    return worker().position(job_id) is not None


def effective_status(manifest: JobManifest) -> str:
    """A manifest still says "running" (or "queued") after the process that ran it died: only a
    job active now is shown as such; any other is interrupted and can be resumed or deleted."""
    if manifest.status in ("running", "queued") and not is_active(manifest.job_id):
        return "interrupted"
    return manifest.status


def delete_job(job_id: str) -> None:
    """Delete a job and its files, never an active one."""
    if is_active(job_id):
        raise JobError(f"job {job_id!r} is running or queued; interrupt it first")
    store = job_store()
    job = store.get(job_id)
    if job.manifest.status in ("running", "queued"):
        job.manifest.status = "interrupted"  # stale: it stopped with the process that ran it
        job.save()
    store.delete(job_id)


class JobWorker:
    """Runs API-submitted jobs one after another, each under the WebUI's queue lock."""

    def __init__(self, queue_lock):
        self.queue_lock = queue_lock
        self._queue: deque[str] = deque()
        self._wake = threading.Condition()
        self._running: Optional[str] = None
        self._cancel: set[str] = set()
        self._thread: Optional[threading.Thread] = None

    def submit(self, job_id: str) -> None:
        with self._wake:
            if job_id == self._running or job_id in self._queue:
                raise JobError(f"job {job_id!r} is already queued or running")
            self._cancel.discard(job_id)
            self._queue.append(job_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="vidguide-jobs", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, job_id: str) -> str:
        """'running' (stops after the current frame), 'dequeued', or 'idle' (nothing to stop)."""
        with self._wake:
            if job_id == self._running:
                self._cancel.add(job_id)
                return "running"
            if job_id in self._queue:
                self._queue.remove(job_id)
                return "dequeued"
        return "idle"

    def position(self, job_id: str) -> Optional[int]:
        """0 while running, n for the n-th in the queue, None if neither."""
        with self._wake:
            if job_id == self._running:
                return 0
            if job_id in self._queue:
                return list(self._queue).index(job_id) + 1
        return None

    @property
    def running(self) -> Optional[str]:
        return self._running

    def wait_idle(self, timeout: float) -> bool:
        """For tests and shutdown: wait until nothing is queued or running."""
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._wake:
                if not self._queue and self._running is None:
                    return True
            time.sleep(0.05)
        return False

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    if not self._wake.wait(timeout=60):
                        self._thread = None
                        return
                job_id = self._queue.popleft()
                self._running = job_id
            try:
                self._run(job_id)
            except Exception:  # noqa: BLE001 - the job's manifest records the failure; keep serving
                logger.exception("[-] VidGuide: job %s failed", job_id)
            finally:
                with self._wake:
                    self._running = None
                    self._cancel.discard(job_id)

    def _run(self, job_id: str) -> None:
        from modules.shared import state

        with self.queue_lock:
            job = job_store().get(job_id)
            state.begin(job=f"vidguide-{job_id}")
            try:
                run_job_here(job, should_stop=lambda: job_id in self._cancel)
            finally:
                state.end()


_worker: Optional[JobWorker] = None


def worker() -> JobWorker:
    global _worker
    if _worker is None:
        from modules.call_queue import queue_lock

        _worker = JobWorker(queue_lock)
    return _worker


def output_file(job: Job) -> Path:
    if job.manifest.status != "done" or not job.output_path.exists():
        raise JobError(f"job {job.job_id!r} has no output yet (status: {job.manifest.status})")
    return job.output_path
