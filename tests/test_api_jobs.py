"""The /vidguide/v1 REST API on the stand-in host, over real HTTP on loopback."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from test_audio import RATE, constant_tone, make_source

from lib_vidguide.video_io import probe, read_all_frames

REPO = Path(__file__).resolve().parents[1]
API = "/vidguide/v1"


@pytest.fixture
def env(standin_url, fresh_state, tmp_path, monkeypatch):
    """A private WebUI data folder whose inputs folder is an allowed root."""
    from lib_vidguide.webui import jobs_host
    from modules import paths_internal, shared

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path / "webui"))
    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "")
    monkeypatch.setattr(shared.cmd_opts, "api_auth", None)
    inputs = tmp_path / "webui" / "vidguide-inputs"
    inputs.mkdir(parents=True)
    source = make_source(inputs / "clip.mp4", audio=[{"codec": "aac", "signal": constant_tone(RATE * 3, 330.0)}])
    yield standin_url, source, tmp_path
    assert jobs_host.worker().wait_idle(120)


def settings(**video):
    return {"video": {"max_frames": 4, "seed": 9, "crf": 0, "width": 64, "height": 64, **video},
            "img2img": {"prompt": "a painting", "steps": 6, "denoising_strength": 0.5, "sampler_name": "Euler"}}


def wait_for(url, job_id, statuses=("done", "failed", "interrupted"), timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = requests.get(f"{url}{API}/jobs/{job_id}", timeout=30).json()
        if info["status"] in statuses:
            return info
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {info['status']} after {timeout} s")


def frames(tmp_path, job_id, folder="frames"):
    root = tmp_path / "webui" / "outputs" / "vidguide" / "jobs" / job_id / folder
    return [np.asarray(Image.open(path)) for path in sorted(root.glob("frame_*.png"))]


def test_a_job_from_a_server_path_runs_to_a_downloadable_video_with_audio(env):
    url, source, tmp_path = env
    response = requests.post(f"{url}{API}/jobs", json={"source_path": str(source), "settings": settings()}, timeout=30)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] in ("queued", "running") and job["frames_total"] == 4
    info = wait_for(url, job["job_id"])
    assert info["status"] == "done", info
    assert info["progress"] == 1.0 and info["warp_error_x1000"] is not None and info["output_url"]
    video = requests.get(f"{url}{info['output_url']}", timeout=30)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "download.mp4").write_bytes(video.content)
    meta = probe(tmp_path / "download.mp4")
    assert meta.frame_count == 4 and meta.has_audio and (meta.width, meta.height) == (64, 64)
    listed = requests.get(f"{url}{API}/jobs", timeout=30).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job["job_id"]]


def test_upload_and_inline_sources(env):
    url, source, _ = env
    with open(source, "rb") as file:
        uploaded = requests.post(f"{url}{API}/jobs/upload", files={"file": ("my clip.mp4", file, "video/mp4")},
                                 data={"settings": '{"video": {"max_frames": 2, "width": 64, "height": 64}}'}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["name"] == "my clip"
    inline = "data:video/mp4;base64," + base64.b64encode(source.read_bytes()).decode()
    sent = requests.post(f"{url}{API}/jobs", json={"source_base64": inline, "settings": settings(max_frames=2)}, timeout=30)
    assert sent.status_code == 200, sent.text
    for job in (uploaded.json(), sent.json()):
        assert wait_for(url, job["job_id"])["status"] == "done"


@pytest.mark.parametrize("case", ["outside", "escape", "missing", "both", "neither", "text", "empty", "audio_only"])
def test_bad_sources_are_clear_4xx_errors(env, case):
    url, source, tmp_path = env
    inputs = source.parent
    body = {"settings": settings()}
    if case == "outside":
        body["source_path"] = str(make_source(tmp_path / "elsewhere.mp4"))
    elif case == "escape":
        make_source(tmp_path / "webui" / "secret.mp4")
        body["source_path"] = str(inputs / ".." / "secret.mp4")
    elif case == "missing":
        body["source_path"] = str(inputs / "nope.mp4")
    elif case == "both":
        body.update(source_path=str(source), source_base64="AAAA")
    elif case == "text":
        (inputs / "notes.mp4").write_text("not a video")
        body["source_path"] = str(inputs / "notes.mp4")
    elif case == "empty":
        (inputs / "empty.mp4").write_bytes(b"")
        body["source_path"] = str(inputs / "empty.mp4")
    elif case == "audio_only":
        import av

        with av.open(str(inputs / "tone.m4a"), "w") as container:
            stream = container.add_stream("aac", rate=RATE, layout="mono")
            frame = av.AudioFrame.from_ndarray(constant_tone(RATE // 2, 440.0)[None, :], format="flt", layout="mono")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        body["source_path"] = str(inputs / "tone.m4a")
    response = requests.post(f"{url}{API}/jobs", json=body, timeout=30)
    expected = {"outside": 403, "escape": 403}.get(case, 422)
    assert response.status_code == expected, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and len(detail) > 20, detail
    assert requests.get(f"{url}{API}/jobs", timeout=30).json()["jobs"] == []


def test_an_upload_over_the_limit_is_refused_and_leaves_nothing(env, monkeypatch):
    from modules import shared

    url, _, tmp_path = env
    monkeypatch.setattr(shared.cmd_opts, "vidguide_max_upload_mb", 1)
    payload = os.urandom((1 << 20) + 4096)
    response = requests.post(f"{url}{API}/jobs/upload", files={"file": ("big.mp4", payload, "video/mp4")}, timeout=30)
    assert response.status_code == 413 and "upload limit of 1 MB" in response.json()["detail"]
    inline = requests.post(f"{url}{API}/jobs", json={"source_base64": base64.b64encode(payload).decode()}, timeout=30)
    assert inline.status_code == 413
    assert requests.get(f"{url}{API}/jobs", timeout=30).json()["jobs"] == []


def test_cancel_keeps_the_frames_and_resume_finishes_identically(env, monkeypatch):
    from lib_vidguide.webui import video_script

    url, source, tmp_path = env
    reference = requests.post(f"{url}{API}/jobs", json={"source_path": str(source), "settings": settings(max_frames=6)},
                              timeout=30).json()
    assert wait_for(url, reference["job_id"])["status"] == "done"

    original = video_script.WebUIFrameRenderer.render
    job_id = {}

    def slow_render(self, frame, guide, index):
        result = original(self, frame, guide, index)
        if index == 1:
            deadline = time.time() + 30  # the worker may get here before the POST's answer reached the test
            while "id" not in job_id and time.time() < deadline:
                time.sleep(0.01)
            requests.post(f"{url}{API}/jobs/{job_id['id']}/cancel", timeout=30)
        return result

    monkeypatch.setattr(video_script.WebUIFrameRenderer, "render", slow_render)
    job = requests.post(f"{url}{API}/jobs", json={"source_path": str(source), "settings": settings(max_frames=6)},
                        timeout=30).json()
    job_id["id"] = job["job_id"]
    info = wait_for(url, job["job_id"])
    assert info["status"] == "interrupted" and info["frames_done"] == 2 and info["output_url"] is None
    assert requests.get(f"{url}{API}/jobs/{job['job_id']}/output", timeout=30).status_code == 409
    monkeypatch.setattr(video_script.WebUIFrameRenderer, "render", original)
    resumed = requests.post(f"{url}{API}/jobs/{job['job_id']}/resume", timeout=30)
    assert resumed.status_code == 200, resumed.text
    info = wait_for(url, job["job_id"])
    assert info["status"] == "done"
    for ours, theirs in zip(frames(tmp_path, job["job_id"]), frames(tmp_path, reference["job_id"]), strict=True):
        assert np.array_equal(ours, theirs)
    assert requests.post(f"{url}{API}/jobs/{job['job_id']}/resume", timeout=30).status_code == 409


def test_kill_9_mid_job_then_resume_gives_the_uninterrupted_frames(env):
    """A job runs in its own process on the stand-in host and is killed with SIGKILL mid-job;
    resumed over the API, its frames and its (lossless) video equal an uninterrupted run's."""
    url, source, tmp_path = env
    from lib_vidguide.jobs import JobSettings
    from lib_vidguide.webui import jobs_host

    reference = requests.post(f"{url}{API}/jobs", json={"source_path": str(source), "settings": settings(max_frames=8)},
                              timeout=30).json()
    assert wait_for(url, reference["job_id"])["status"] == "done"

    job = jobs_host.job_store().create(source, JobSettings.from_dict(settings(max_frames=8)))
    frames_dir = job.frames_dir
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "run_job_process.py"),
                                str(tmp_path / "webui"), job.job_id, "0.3"],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(list(frames_dir.glob("frame_*.png"))) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done_before = len(list(frames_dir.glob("frame_*.png")))
    assert 3 <= done_before < 8

    resumed = requests.post(f"{url}{API}/jobs/{job.job_id}/resume", timeout=30)
    assert resumed.status_code == 200, resumed.text
    info = wait_for(url, job.job_id)
    assert info["status"] == "done" and info["frames_done"] == 8
    ours, theirs = frames(tmp_path, job.job_id), frames(tmp_path, reference["job_id"])
    assert len(ours) == len(theirs) == 8
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert np.array_equal(a, b), f"frame {index + 1} differs after the resume"
    root = tmp_path / "webui" / "outputs" / "vidguide" / "jobs"
    assert np.array_equal(np.stack(read_all_frames(root / job.job_id / "output.mp4")),
                          np.stack(read_all_frames(root / reference["job_id"] / "output.mp4")))


def test_api_auth_is_enforced_on_our_routes(env, monkeypatch):
    from modules import shared

    url, _, _ = env
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:s3cret,bob:pw")
    for path in ("/health", "/jobs", "/jobs/20250101-000000-00000000"):
        assert requests.get(f"{url}{API}{path}", timeout=30).status_code == 401
        assert requests.get(f"{url}{API}{path}", auth=("alice", "wrong"), timeout=30).status_code == 401
    unauthorised = requests.post(f"{url}{API}/jobs", json={}, timeout=30)
    assert unauthorised.status_code == 401 and unauthorised.headers["www-authenticate"] == "Basic"
    assert requests.get(f"{url}{API}/health", auth=("alice", "s3cret"), timeout=30).status_code == 200
    assert requests.get(f"{url}{API}/jobs", auth=("bob", "pw"), timeout=30).status_code == 200


def test_unknown_jobs_and_deletion(env):
    url, source, _ = env
    assert requests.get(f"{url}{API}/jobs/../../etc/passwd", timeout=30).status_code == 404
    assert requests.get(f"{url}{API}/jobs/20250101-000000-00000000", timeout=30).status_code == 404
    job = requests.post(f"{url}{API}/jobs", json={"source_path": str(source), "settings": settings(max_frames=2)},
                        timeout=30).json()
    wait_for(url, job["job_id"])
    assert requests.delete(f"{url}{API}/jobs/{job['job_id']}", timeout=30).json() == {"deleted": job["job_id"]}
    assert requests.get(f"{url}{API}/jobs/{job['job_id']}", timeout=30).status_code == 404


def test_the_routes_are_in_the_openapi_schema(env):
    url, _, _ = env
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    paths = set(schema["paths"])
    for path in ("/jobs", "/jobs/upload", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/resume",
                 "/jobs/{job_id}/output", "/health"):
        assert API + path in paths
    assert "JobSettings" in schema["components"]["schemas"]


def test_jobs_and_img2img_requests_never_overlap(env, monkeypatch):
    """One job at a time on the GPU: a job holds the WebUI's queue lock, so an img2img request
    sent meanwhile waits for it (and the next job waits for the request)."""
    import threading

    from host_session import sample_picture, to_b64
    from modules import processing

    url, source, _ = env
    events = []
    original = processing.process_images

    def recording(p):
        kind = "job" if getattr(p, "_vg_video_owned", False) else "img2img"
        events.append((kind, "start"))
        try:
            return original(p)
        finally:
            events.append((kind, "end"))

    monkeypatch.setattr(processing, "process_images", recording)
    job = requests.post(f"{url}{API}/jobs", json={"source_path": str(source), "settings": settings(max_frames=6)},
                        timeout=30).json()
    while not any(kind == "job" for kind, _ in events):
        time.sleep(0.01)
    plain = {}
    thread = threading.Thread(target=lambda: plain.update(r=requests.post(f"{url}/sdapi/v1/img2img", json={
        "init_images": [to_b64(sample_picture())], "steps": 4, "width": 64, "height": 64}, timeout=120)))
    thread.start()
    assert wait_for(url, job["job_id"])["status"] == "done"
    thread.join(timeout=120)
    assert plain["r"].status_code == 200
    running = 0
    for kind, edge in events:
        running += 1 if edge == "start" else -1
        assert running <= 1, events
    first_plain = events.index(("img2img", "start"))
    assert all(kind == "job" for kind, _ in events[:first_plain]) and events.count(("job", "end")) == 6
    assert first_plain == len(events) - 2, "the request waited for the whole job"


def test_a_job_left_running_by_a_dead_process_shows_interrupted_and_can_be_deleted(env):
    from lib_vidguide.jobs import JobSettings
    from lib_vidguide.webui import jobs_host

    url, source, _ = env
    job = jobs_host.job_store().create(source, JobSettings.from_dict(settings(max_frames=2)))
    job.manifest.status = "running"  # what a kill -9 leaves behind
    job.save()
    info = requests.get(f"{url}{API}/jobs/{job.job_id}", timeout=30).json()
    assert info["status"] == "interrupted"
    assert requests.delete(f"{url}{API}/jobs/{job.job_id}", timeout=30).status_code == 200


def test_a_job_running_here_cannot_be_resumed_twice(env, monkeypatch):
    from lib_vidguide.jobs import JobSettings
    from lib_vidguide.webui import jobs_host, video_script

    url, source, _ = env
    job = jobs_host.job_store().create(source, JobSettings.from_dict(settings(max_frames=3)))
    answers = {}
    original = video_script.WebUIFrameRenderer.render

    def probing_render(self, frame, guide, index):
        if index == 1:
            answers["resume"] = requests.post(f"{url}{API}/jobs/{job.job_id}/resume", timeout=30).status_code
            answers["delete"] = requests.delete(f"{url}{API}/jobs/{job.job_id}", timeout=30).status_code
        return original(self, frame, guide, index)

    monkeypatch.setattr(video_script.WebUIFrameRenderer, "render", probing_render)
    assert jobs_host.run_job_here(job).status == "done"  # as the tab runs it, in its own request
    assert answers == {"resume": 409, "delete": 409}


def test_unauthenticated_or_oversized_uploads_are_refused_before_their_body_is_stored(env, monkeypatch):
    import starlette.formparsers as formparsers

    from modules import shared

    url, _, _ = env
    spooled = []
    original = formparsers.SpooledTemporaryFile

    def recording(*args, **kwargs):
        spooled.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", recording)
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:s3cret")
    monkeypatch.setattr(shared.cmd_opts, "vidguide_max_upload_mb", 1)
    payload = os.urandom(3 << 20)
    anonymous = requests.post(f"{url}{API}/jobs/upload", files={"file": ("a.mp4", payload)}, timeout=30)
    assert anonymous.status_code == 401 and spooled == []
    oversized = requests.post(f"{url}{API}/jobs/upload", files={"file": ("a.mp4", payload)},
                              auth=("alice", "s3cret"), timeout=30)
    assert oversized.status_code == 413 and spooled == []
    inline = requests.post(f"{url}{API}/jobs", json={"source_base64": "A" * (3 << 20)}, auth=("alice", "s3cret"),
                           timeout=30)
    assert inline.status_code == 413

    def chunked():
        yield b'{"source_path": "x"}'

    no_length = requests.post(f"{url}{API}/jobs", data=chunked(), auth=("alice", "s3cret"),
                              headers={"Content-Type": "application/json"}, timeout=30)
    assert no_length.status_code == 411


def test_upload_errors_name_the_users_file_not_a_server_path(env):
    url, _, _ = env
    response = requests.post(f"{url}{API}/jobs/upload", files={"file": ("holiday.mp4", b"not a video")}, timeout=30)
    detail = response.json()["detail"]
    assert response.status_code == 422 and "holiday.mp4" in detail and "vidguide-upload-" not in detail
