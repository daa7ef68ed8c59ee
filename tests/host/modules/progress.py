"""UI task registration and POST /internal/progress, as modules/progress.py does them.

The page's requestProgress() polls /internal/progress with the id its submit() made; the
answer is "active" only while that id is ``current_task``, which wrap_gradio_gpu_call sets
(start_task) after the queue lock is taken. Progress is computed from shared.state the way
the real route does (job_no / job_count plus the sampling step's share of one job), and the
live preview is state.current_image as a data: URL, sent only when id_live_preview moved on.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at runtime.
import base64
import io
import time
from collections import OrderedDict
from typing import List, Optional

from pydantic import BaseModel, Field

from modules import shared

current_task = None
pending_tasks: "OrderedDict[str, float]" = OrderedDict()
finished_tasks: list = []
recorded_results: list = []
recorded_results_limit = 2


def start_task(id_task):
    global current_task

    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task

    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
    if len(finished_tasks) > 16:
        finished_tasks.pop(0)


def record_results(id_task, res):
    recorded_results.append((id_task, res))
    if len(recorded_results) > recorded_results_limit:
        recorded_results.pop(0)


def add_task_to_queue(id_job):
    pending_tasks[id_job] = time.time()


class PendingTasksResponse(BaseModel):
    size: int
    tasks: List[str]


class ProgressRequest(BaseModel):
    id_task: Optional[str] = Field(default=None, description="id of the task to get progress for")
    id_live_preview: int = Field(default=-1, description="id of the last live preview received")
    live_preview: bool = Field(default=True, description="whether to include the live preview image")


class ProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: Optional[float] = None
    eta: Optional[float] = None
    live_preview: Optional[str] = None
    id_live_preview: Optional[int] = None
    textinfo: Optional[str] = None


def get_pending_tasks():
    return PendingTasksResponse(size=len(pending_tasks), tasks=list(pending_tasks))


def progressapi(req: ProgressRequest):
    state = shared.state
    active = req.id_task == current_task
    queued = req.id_task in pending_tasks
    completed = req.id_task in finished_tasks

    if not active:
        textinfo = "Waiting..."
        if queued:
            ordered = sorted(pending_tasks, key=lambda task: pending_tasks[task])
            textinfo = f"In queue: {ordered.index(req.id_task) + 1}/{len(ordered)}"
        return ProgressResponse(active=active, queued=queued, completed=completed, id_live_preview=-1,
                                textinfo=textinfo)

    progress = 0.0
    if state.job_count > 0:
        progress += state.job_no / state.job_count
        if state.sampling_steps > 0:
            progress += state.sampling_step / state.sampling_steps / state.job_count
    progress = min(progress, 1.0)

    elapsed = time.time() - (state.time_start or time.time())
    eta = elapsed / progress - elapsed if progress > 0 else None

    live_preview = None
    id_live_preview = req.id_live_preview
    if shared.opts.data.get("live_previews_enable", True) and req.live_preview:
        state.set_current_image()
        if state.id_live_preview != req.id_live_preview and state.current_image is not None:
            buffer = io.BytesIO()
            state.current_image.save(buffer, format="png")
            live_preview = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            id_live_preview = state.id_live_preview

    return ProgressResponse(active=active, queued=queued, completed=completed, progress=progress, eta=eta,
                            live_preview=live_preview, id_live_preview=id_live_preview, textinfo=state.textinfo)


def setup_progress_api(app):
    app.add_api_route("/internal/pending-tasks", get_pending_tasks, methods=["GET"])
    return app.add_api_route("/internal/progress", progressapi, methods=["POST"], response_model=ProgressResponse)
