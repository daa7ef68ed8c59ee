"""REST API under /vidguide/v1 (added in on_app_started; works with --nowebui).

Routes added this way do not get the WebUI's ``--api-auth``: this module checks it itself
(HTTP Basic, constant-time comparison). Paths sent by callers must lie inside the allowed
roots; uploads are streamed to disk with a size limit.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations,
# and those name classes imported inside build_router.
import base64
import binascii
import logging
import math
import secrets
import tempfile
from pathlib import Path
from typing import Any, List, Optional

from pydantic import Field

from .. import __version__
from ..jobs import JobError, JobSettings, JobStatus
from ..paths import resolve_inside
from ..settings import StrictModel
from . import host, jobs_host

logger = logging.getLogger("vidguide")

PREFIX = "/vidguide/v1"
UPLOAD_CHUNK = 1 << 20


class JobCreateRequest(StrictModel):
    """A new job from a video on the server (inside the allowed roots) or sent inline."""

    settings: JobSettings = Field(default_factory=JobSettings)
    source_path: Optional[str] = Field(None, max_length=4096, description="A video file on the server, inside the allowed roots.")
    source_base64: Optional[str] = Field(None, description="A video sent inline: base64, or a data: URL (small files).")
    name: str = Field("", max_length=200)


class JobInfo(StrictModel):
    job_id: str
    name: str
    status: JobStatus
    queue_position: Optional[int] = Field(None, description="0 while running, n when n-th in the queue.")
    frames_done: int
    frames_total: int
    second_pass_done: int
    progress: float = Field(description="Fraction of the job done, 0..1 (both passes counted).")
    seed: int
    warp_error_x1000: Optional[float] = Field(None, description="Temporal warp error of the output (lower is steadier).")
    output_url: Optional[str] = None
    error: Optional[str] = None
    audio_notes: List[str] = Field(default_factory=list)
    notes: List[str] = Field(default_factory=list, description=(
        "What differs from a plain run: e.g. the source ended before its announced frame count (truncated "
        "file), alpha composited over black, variable frame rate, the size rounded to multiples of 8."))
    created: float
    updated: float


class JobList(StrictModel):
    jobs: List[JobInfo]


class Deleted(StrictModel):
    deleted: str


class Health(StrictModel):
    version: str
    running_job: Optional[str] = None


def job_info(manifest) -> JobInfo:
    passes = 2 if manifest.settings.video.drift.second_pass else 1
    total = max(1, manifest.frames_total * passes)
    done = manifest.frames_done + manifest.second_pass_done
    return JobInfo(
        job_id=manifest.job_id, name=manifest.name, status=jobs_host.effective_status(manifest),
        queue_position=jobs_host.worker().position(manifest.job_id),
        frames_done=manifest.frames_done, frames_total=manifest.frames_total,
        second_pass_done=manifest.second_pass_done, progress=round(min(1.0, done / total), 6), seed=manifest.seed,
        warp_error_x1000=manifest.warp_error_x1000,
        output_url=f"{PREFIX}/jobs/{manifest.job_id}/output" if manifest.status == "done" else None,
        error=manifest.error, audio_notes=list(manifest.audio_notes), notes=list(manifest.notes),
        created=manifest.created, updated=manifest.updated,
    )


def api_credentials() -> dict[str, str]:
    """user -> password from --api-auth ("user:pass,user2:pass2"), as the WebUI parses it."""
    text = host.cmd_option("api_auth", None) or ""
    credentials = {}
    for entry in text.split(","):
        if ":" in entry:
            user, password = entry.split(":", 1)
            credentials[user] = password
    return credentials


def max_upload_bytes() -> int:
    return int(host.cmd_option("vidguide_max_upload_mb", 2048)) * (1 << 20)


def body_limit(method: str, path: str) -> Optional[int]:
    """The largest request body a route accepts (None: no body expected)."""
    if method != "POST":
        return None
    if path.endswith("/jobs/upload"):
        return max_upload_bytes() + (1 << 20)  # the file plus the multipart envelope and settings
    if path.endswith("/jobs"):
        return max_upload_bytes() * 4 // 3 + (1 << 20)  # base64 of the largest video, plus settings
    if path.endswith("/motion-brush"):  # the motion brush's image and mask (motion_brush_host.py)
        from .motion_brush_host import request_body_limit

        return request_body_limit()
    if "/edit/" in path:  # the edit routes' inline videos (edit_host.py)
        from .edit_host import request_body_limit as edit_body_limit

        return edit_body_limit()
    return 1 << 20


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (which JSON cannot carry) replaced by its text;
    ``value`` itself when it has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        items = {key: _json_safe(item) for key, item in value.items()}
        return value if all(items[key] is item for key, item in value.items()) else items
    if isinstance(value, (list, tuple)):
        items = [_json_safe(item) for item in value]
        return value if all(new is old for new, old in zip(items, value)) else type(value)(items)
    return value


def build_router():
    from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import FileResponse
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import APIRoute
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    basic = HTTPBasic(auto_error=False)

    def check_credentials(credentials: Optional[HTTPBasicCredentials]) -> None:
        allowed = api_credentials()
        if not allowed:
            return
        if credentials is not None:
            expected = allowed.get(credentials.username)
            if expected is not None and secrets.compare_digest(credentials.password.encode(), expected.encode()):
                return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    def require_auth(credentials: Optional[HTTPBasicCredentials] = Depends(basic)) -> None:
        # Also a dependency, so that the OpenAPI document declares the Basic security scheme.
        check_credentials(credentials)

    class CheckedFirstRoute(APIRoute):
        """Credentials and the body's announced size are checked before FastAPI reads the body:
        an unauthenticated or oversized upload is refused before a byte of it is stored."""

        def get_route_handler(self):
            handle = super().get_route_handler()

            async def checked(request: Request):
                check_credentials(await basic(request))
                limit = body_limit(request.method, request.url.path)
                if limit is not None:
                    length = request.headers.get("content-length")
                    if length is None or not length.isdigit():
                        raise HTTPException(status_code=411, detail="send the request with a Content-Length header")
                    if int(length) > limit:
                        raise too_large()
                try:
                    return await handle(request)
                except RequestValidationError as error:
                    # pydantic 2 (Forge) keeps the rejected input in each error: a JSON NaN there
                    # would make FastAPI's own 422 answer unserialisable (a 500). Keep it as text.
                    errors = error.errors()
                    safe = _json_safe(errors)
                    if safe is errors:
                        raise
                    raise RequestValidationError(safe, body=_json_safe(error.body)) from None

            return checked

    router = APIRouter(prefix=PREFIX, tags=["VidGuide"], dependencies=[Depends(require_auth)],
                       route_class=CheckedFirstRoute)

    def http_error(error: Exception) -> HTTPException:
        status = getattr(error, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            return HTTPException(status_code=status, detail=str(error))
        if isinstance(error, ValueError):
            return HTTPException(status_code=422, detail=str(error))
        return HTTPException(status_code=500, detail=f"{type(error).__name__}: {error}")

    def too_large() -> HTTPException:
        return HTTPException(status_code=413, detail=(
            f"the video is larger than the upload limit of {max_upload_bytes() >> 20} MB; put it in an allowed "
            "folder on the server and send source_path, or raise --vidguide-max-upload-mb"))

    def start(source: Path, settings: JobSettings, *, copy: bool, name: str, shown_as: Optional[str] = None) -> JobInfo:
        """``shown_as``: how messages name an upload (its temporary path means nothing to the caller)."""
        try:
            jobs_host.validate_settings(settings, from_api=True)
            job = jobs_host.job_store().create(source, settings, copy_source=copy, name=name)
        except Exception as error:  # noqa: BLE001 - every bad input becomes a 4xx with its message
            failure = http_error(error)
            if shown_as is not None and isinstance(failure.detail, str):
                failure.detail = failure.detail.replace(str(source), shown_as)
            raise failure from error
        jobs_host.worker().submit(job.job_id)
        return job_info(job.manifest)

    @router.get("/health", response_model=Health, summary="Version and the running job")
    def health() -> Health:
        return Health(version=__version__, running_job=jobs_host.worker().running)

    @router.post("/jobs", response_model=JobInfo, summary="Start a video job from a server path or an inline video")
    def create_job(request: JobCreateRequest) -> JobInfo:
        if bool(request.source_path) == bool(request.source_base64):
            raise HTTPException(status_code=422, detail="give exactly one of source_path or source_base64")
        if request.source_path:
            try:
                source = resolve_inside(request.source_path, host.allowed_roots(), what="video")
            except ValueError as error:  # outside the roots (403), or no path at all, e.g. a NUL byte (422)
                raise http_error(error) from error
            try:
                is_file = source.is_file()
            except OSError:  # e.g. a name longer than the file system allows
                is_file = False
            if not is_file:
                raise HTTPException(status_code=422, detail=f"no video file at {request.source_path!r}")
            return start(source, request.settings, copy=False, name=request.name)
        payload = request.source_base64.partition(",")[2] if request.source_base64.startswith("data:") else request.source_base64
        if len(payload) * 3 // 4 > max_upload_bytes():
            raise too_large()
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise HTTPException(status_code=422, detail="source_base64 is not valid base64") from error
        with tempfile.TemporaryDirectory(prefix="vidguide-upload-") as folder:
            path = Path(folder) / "upload.video"
            path.write_bytes(data)
            return start(path, request.settings, copy=True, name=request.name or "upload", shown_as="the inline video")

    @router.post("/jobs/upload", response_model=JobInfo, summary="Start a video job from an uploaded file")
    def upload_job(file: UploadFile = File(...), settings: str = Form("{}"), name: str = Form("")) -> JobInfo:
        import json

        try:
            parsed = JobSettings.from_dict(json.loads(settings or "{}"))
        except (ValueError, TypeError, RecursionError) as error:  # RecursionError: absurdly nested JSON
            raise HTTPException(status_code=422, detail=f"settings: {error}") from error
        limit = max_upload_bytes()
        # Only letters and digits from the caller's name reach the file system (no NUL, no separators).
        suffix = "".join(c for c in Path(file.filename or "upload").suffix.lower()[1:8] if c.isascii() and c.isalnum())
        suffix = f".{suffix}" if suffix else ".video"
        with tempfile.TemporaryDirectory(prefix="vidguide-upload-") as folder:
            path = Path(folder) / f"upload{suffix}"
            written = 0
            with open(path, "wb") as out:
                while True:
                    chunk = file.file.read(UPLOAD_CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > limit:
                        raise too_large()
                    out.write(chunk)
            shown_as = f"the uploaded file {Path(file.filename or 'upload').name!r}"
            return start(path, parsed, copy=True, name=name or Path(file.filename or "upload").stem, shown_as=shown_as)

    @router.get("/jobs", response_model=JobList, summary="All jobs, newest first")
    def list_jobs() -> JobList:
        return JobList(jobs=[job_info(manifest) for manifest in jobs_host.job_store().list()])

    def get_job(job_id: str):
        try:
            return jobs_host.job_store().get(job_id)
        except JobError as error:
            raise http_error(error) from error

    @router.get("/jobs/{job_id}", response_model=JobInfo, summary="A job's status and progress")
    def job_status(job_id: str) -> JobInfo:
        return job_info(get_job(job_id).manifest)

    @router.post("/jobs/{job_id}/cancel", response_model=JobInfo,
                 summary="Stop a job after its current frame (finished frames are kept)")
    def cancel_job(job_id: str) -> JobInfo:
        job = get_job(job_id)
        outcome = jobs_host.worker().cancel(job_id)
        if outcome == "dequeued":
            job.manifest.status = "interrupted"
            job.save()
        return job_info(jobs_host.job_store().get(job_id).manifest)

    @router.post("/jobs/{job_id}/resume", response_model=JobInfo, summary="Continue an interrupted or failed job")
    def resume_job(job_id: str) -> JobInfo:
        job = get_job(job_id)
        if job.manifest.status == "done":
            raise HTTPException(status_code=409, detail=f"job {job_id!r} is already done")
        if jobs_host.is_active(job_id):
            raise HTTPException(status_code=409, detail=f"job {job_id!r} is already queued or running")
        try:
            job.check_source()
            jobs_host.worker().submit(job_id)
        except JobError as error:
            raise http_error(error) from error
        job.manifest.status = "queued"
        job.save()
        return job_info(job.manifest)

    @router.get("/jobs/{job_id}/output", summary="Download the finished video (mp4)",
                responses={200: {"content": {"video/mp4": {}}}})
    def job_output(job_id: str):
        job = get_job(job_id)
        try:
            path = jobs_host.output_file(job)
        except JobError as error:
            raise HTTPException(status_code=409, detail=str(error)) from error
        return FileResponse(str(path), media_type="video/mp4", filename=f"{job.manifest.name or job_id}.mp4")

    @router.delete("/jobs/{job_id}", response_model=Deleted, summary="Delete a job and its files")
    def delete_job(job_id: str) -> Deleted:
        get_job(job_id)
        try:
            jobs_host.delete_job(job_id)
        except JobError as error:
            raise HTTPException(status_code=409, detail=str(error)) from error
        return Deleted(deleted=job_id)

    # The motion brush's routes (lib_vidguide/webui/motion_brush_host.py), with the same auth and body checks.
    from . import motion_brush_host

    motion_brush_host.register_routes(router, http_error, PREFIX)

    # The Edit sub-tab's routes (lib_vidguide/webui/edit_host.py): trainings, edits, their videos.
    from . import edit_host

    edit_host.register_routes(router, http_error, PREFIX)

    return router


def on_app_started(demo, app) -> None:
    """script_callbacks.on_app_started: ``demo`` is None under --nowebui."""
    app.include_router(build_router())
    logger.info("[+] VidGuide %s: API at %s (docs in the app's /docs)", __version__, PREFIX)


__all__ = ["PREFIX", "build_router", "on_app_started"]
