"""Fuzzing the /vidguide/v1 routes from their live OpenAPI schema (issue 3's acceptance:
"a fuzzer run against the routes' OpenAPI finds no 500; without credentials the routes
answer 401 when --api-auth is set").

Schemathesis reads the schema the stand-in WebUI serves (its --nowebui API app with our routes,
over real HTTP on loopback) and generates valid and invalid requests for every operation under
/vidguide/v1: its coverage phase (boundary values, wrong types, missing fields, unexpected
methods; a fixed set) and its fuzzing phase (random; ``MAX_EXAMPLES`` per operation and mode).
No response may be a 5xx.

Random data almost never names a real video or a real job, so a share of the cases is steered:
some POST /jobs bodies get the real video in the allowed folder (their fuzzed settings kept, but
clamped to two small frames so that no case can start a long render), some job-id path
parameters get the id of a job that exists. Jobs started that way run on the tiny model and are
cancelled at once; the data folder is a pytest temporary folder; uploads are capped at 1 MB.

Values found by hand that the generators had not hit (each once answered 500) are kept as
explicit regression cases below.
"""

from __future__ import annotations

import collections
import json
import os
import time

import pytest
import requests
from videos import moving_pattern, write_clip

schemathesis = pytest.importorskip("schemathesis")

API = "/vidguide/v1"
# Fuzzing-phase cases per operation (the coverage phase adds its own fixed set) and the seed; a
# longer exploration: VIDGUIDE_FUZZ_EXAMPLES=300 VIDGUIDE_FUZZ_SEED=7 pytest tests/test_api_fuzz.py -s
MAX_EXAMPLES = int(os.environ.get("VIDGUIDE_FUZZ_EXAMPLES", "30"))
SEED = int(os.environ.get("VIDGUIDE_FUZZ_SEED", "20250101"))
STEER_EVERY = 3  # every third POST /jobs body and job-id path gets a real video / job
UNKNOWN_JOB = "20250101-000000-00000000"  # well-formed, never exists
UNKNOWN_ARTEFACT = "20250101-000000-tav-000000"  # a well-formed trained-artefact id (edit_host.py), never exists

# Status codes seen per operation, printed at the end (pytest -s) as the run's summary.
SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def tiny_settings(**video) -> dict:
    return {"video": {"max_frames": 2, "seed": 5, "width": 64, "height": 64, **video},
            "img2img": {"prompt": "fuzz", "steps": 3, "denoising_strength": 0.5}}


class FuzzEnv:
    """The private WebUI data folder, its one tiny video, and the jobs in it."""

    def __init__(self, url, root, clip):
        self.url = url
        self.root = root
        self.clip = clip
        self.counters: collections.Counter = collections.Counter()
        self.finished_job = ""  # kept from DELETE, so that GET .../output has something to send

    def job_ids(self) -> list[str]:
        from lib_vidguide.webui import jobs_host

        return [manifest.job_id for manifest in jobs_host.job_store().list()]

    def idle_job(self) -> str:
        """A job on disk that is not queued (as after a restart of the WebUI)."""
        from lib_vidguide.jobs import JobSettings
        from lib_vidguide.webui import jobs_host

        job = jobs_host.job_store().create(self.clip, JobSettings.from_dict(tiny_settings()))
        job.manifest.status = "interrupted"
        job.save()
        return job.job_id


def wait_for_job(url, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = requests.get(f"{url}{API}/jobs/{job_id}", timeout=30).json()
        if info["status"] in ("done", "failed", "interrupted"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {info['status']} after {timeout} s")


@pytest.fixture
def fuzz_env(standin_url, fresh_state, tmp_path, monkeypatch):
    from lib_vidguide.webui import jobs_host
    from modules import paths_internal, shared

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path / "webui"))
    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "")  # the defaults: outputs + vidguide-inputs
    monkeypatch.setattr(shared.cmd_opts, "api_auth", None)
    # Uploads and inline videos over 1 MB are refused (413): the fuzzer cannot fill the disk.
    monkeypatch.setattr(shared.cmd_opts, "vidguide_max_upload_mb", 1)
    inputs = tmp_path / "webui" / "vidguide-inputs"
    inputs.mkdir(parents=True)
    clip = write_clip(inputs / "tiny.mp4", moving_pattern(2))
    env = FuzzEnv(standin_url, tmp_path / "webui", clip)
    # A finished job (its output can be downloaded) and an idle one, for the job routes.
    done = requests.post(f"{standin_url}{API}/jobs", json={"source_path": str(clip), "settings": tiny_settings()},
                         timeout=30)
    assert done.status_code == 200, done.text
    assert wait_for_job(standin_url, done.json()["job_id"])["status"] == "done"
    env.finished_job = done.json()["job_id"]
    env.idle_job()
    yield env
    worker = jobs_host.worker()
    for job_id in env.job_ids():
        worker.cancel(job_id)
    assert worker.wait_idle(120), "a job started by the fuzzer did not stop"
    for manifest in jobs_host.job_store().list():
        # Whatever the requests did, no job is left "running", and no output exists without "done".
        assert manifest.status != "running", manifest
        if (jobs_host.job_store().path_of(manifest.job_id) / "output.mp4").exists():
            assert manifest.status == "done", manifest


def openapi_3_0(document):
    """The served schema with numeric ``exclusiveMinimum``/``exclusiveMaximum`` in OpenAPI 3.0's
    boolean form. FastAPI 0.94 with pydantic 1.10 (the WebUI's) writes pydantic's JSON Schema
    draft-6 numbers (``gt=0`` becomes ``"exclusiveMinimum": 0.0``) into an "openapi: 3.0.2"
    document, and schemathesis then refuses to generate any POST /jobs body. Same constraint,
    spelled the way the declared version wants it."""
    if isinstance(document, dict):
        for keyword, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            value = document.get(keyword)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                document[bound], document[keyword] = value, True
        for value in document.values():
            openapi_3_0(value)
    elif isinstance(document, list):
        for value in document:
            openapi_3_0(value)
    return document


def served_schema(url, config=None):
    document = requests.get(f"{url}/openapi.json", timeout=30).json()
    return schemathesis.openapi.from_dict(openapi_3_0(document), config=config)


@pytest.fixture
def api_schema(fuzz_env, request):
    # schemathesis 4.32's lazy pytest loader reads and renames ``request.node._nodeid``, which
    # pytest 9 no longer has (node ids live in ``_id``): give it the attribute it expects.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    config = schemathesis.Config.from_dict({
        "base-url": fuzz_env.url,
        "seed": SEED,  # reproducible runs
        # No generated Authorization headers here: with --api-auth unset a malformed one is a 401 before
        # the route runs (HTTPBasic), which would spend the cases; --api-auth has its own test below.
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none",
                       "with-security-parameters": False},
        "phases": {"stateful": {"enabled": False}},
    })
    return served_schema(fuzz_env.url, config)


# Only our routes (the stand-in's /sdapi/v1 routes are the host's). The filter goes on the lazy
# schema: its loader replaces the fixture schema's own filters with it.
fuzz_schema = schemathesis.pytest.from_fixture("api_schema").include(path_regex=f"^{API}/")


def clamp_job_settings(settings) -> None:
    """Keep fuzzed settings fuzzed, except what decides how long a job runs (frames, size, steps)."""
    if not isinstance(settings, dict):
        return
    video = settings.get("video")
    if isinstance(video, dict):
        video["max_frames"], video["start_frame"] = 2, 0
        for key in ("width", "height"):
            if isinstance(video.get(key), int) and not isinstance(video[key], bool) and video[key] > 128:
                video[key] = 64
    img2img = settings.get("img2img")
    if isinstance(img2img, dict) and isinstance(img2img.get("steps"), int) and img2img["steps"] > 6:
        img2img["steps"] = 6


def steer(case, env: FuzzEnv) -> None:
    """Point a share of the cases at the real video or at a real job (see the module doc)."""
    label = f"{case.method} {case.path}"
    env.counters[label] += 1
    turn, remainder = divmod(env.counters[label], STEER_EVERY)
    if remainder:
        return
    if "job_id" in (case.path_parameters or {}):
        ids = env.job_ids()
        if case.method.upper() == "DELETE":
            ids = [job_id for job_id in ids if job_id != env.finished_job] or [env.idle_job()]
        elif turn % 2 and env.finished_job in ids:
            ids = [env.finished_job]  # half the steered turns: the finished job (downloads, resume of a done job)
        case.path_parameters["job_id"] = ids[turn % len(ids)]
    elif case.method.upper() != "POST" or not isinstance(case.body, dict):
        return
    elif case.path == f"{API}/jobs":
        case.body["source_path"] = str(env.clip)
        case.body.pop("source_base64", None)
        clamp_job_settings(case.body.get("settings"))
    elif case.path == f"{API}/jobs/upload":
        case.body["file"] = env.clip.read_bytes()
        try:
            settings = json.loads(case.body.get("settings") or "{}")
        except (TypeError, ValueError, RecursionError):
            return
        clamp_job_settings(settings)
        case.body["settings"] = json.dumps(settings)


@fuzz_schema.parametrize()
def test_no_request_gets_a_server_error(case, fuzz_env):
    from schemathesis.checks import not_a_server_error

    steer(case, fuzz_env)
    response = case.call(timeout=60)
    SEEN[f"{case.method.upper()} {case.path}"][response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code == 200 and case.method.upper() == "POST" and case.path.startswith(f"{API}/jobs") \
            and "job_id" in response.json():
        # A job started (or resumed) by the fuzzer: stop it after its current frame, keep the queue short.
        requests.post(f"{fuzz_env.url}{API}/jobs/{response.json()['job_id']}/cancel", timeout=30)


@pytest.fixture(scope="module", autouse=True)
def print_summary():
    yield
    if SEEN:
        total = sum(sum(counter.values()) for counter in SEEN.values())
        lines = [f"schemathesis sent {total} requests to {len(SEEN)} method+path pairs; status codes:"]
        lines += [f"  {label}: {dict(sorted(counter.items()))}" for label, counter in sorted(SEEN.items())
                  if set(counter) != {405}]
        others = sorted(label for label, counter in SEEN.items() if set(counter) == {405})
        lines.append(f"  {len(others)} undeclared method+path pairs: 405 each")
        print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- hand-picked values


HOSTILE_JOB_BODIES = {
    # name: (body with {inputs}/{clip} placeholders, expected status)
    "NUL byte in the path": ({"source_path": "a\x00b.mp4"}, 422),
    "NUL byte inside the allowed folder": ({"source_path": "{inputs}/a\x00b.mp4"}, 422),
    "file name longer than the file system allows": ({"source_path": "{inputs}/" + "a" * 300 + ".mp4"}, 422),
    "data URL without a comma": ({"source_base64": "data:video/mp4;base64"}, 422),
    "data URL with nothing after the comma": ({"source_base64": "data:video/mp4;base64,"}, 422),
    "non-ASCII base64": ({"source_base64": "éé=="}, 422),
    "the allowed folder itself": ({"source_path": "{inputs}"}, 422),
    "relative path": ({"source_path": "tiny.mp4"}, 403),
    "null settings": ({"source_path": "{clip}", "settings": None}, 422),
    "unknown settings key": ({"source_path": "{clip}", "settings": {"video": {"frames": 3}}}, 422),
    "schedule that is not numbers": ({"source_path": "{clip}", "settings": {"video": {"guidance": {"schedule": "nan:nan"}}}}, 422),
    "schedule with an overflowing number": ({"source_path": "{clip}", "settings": {"video": {"guidance": {"schedule": "1e309:1"}}}}, 422),
    "start frame past the end": ({"source_path": "{clip}", "settings": tiny_settings(start_frame=10**12)}, 422),
}


@pytest.mark.parametrize("name", list(HOSTILE_JOB_BODIES))
def test_hand_picked_job_bodies_are_4xx(fuzz_env, name):
    body, expected = HOSTILE_JOB_BODIES[name]
    text = json.dumps(body).replace("{inputs}", str(fuzz_env.clip.parent)).replace("{clip}", str(fuzz_env.clip))
    jobs_before = fuzz_env.job_ids()
    response = requests.post(f"{fuzz_env.url}{API}/jobs", data=text, headers={"content-type": "application/json"},
                             timeout=30)
    assert response.status_code == expected, response.text
    assert fuzz_env.job_ids() == jobs_before


@pytest.mark.parametrize(("filename", "settings", "expected"), [
    ("clip.m\x00p4", "{}", 422),  # a NUL byte in the name's suffix once reached open()
    ("../../../etc/clip.mp4", "{}", 422),  # never a path: the upload is stored under a fixed name
    ("clip.mp4", "[" * 100_000, 422),  # nested past the JSON decoder's recursion limit
    ("clip.mp4", "1", 422),
    ("clip.mp4", "not json", 422),
])
def test_hand_picked_uploads_are_4xx(fuzz_env, filename, settings, expected):
    jobs_before = fuzz_env.job_ids()
    response = requests.post(f"{fuzz_env.url}{API}/jobs/upload", files={"file": (filename, b"not a video", "video/mp4")},
                             data={"settings": settings}, timeout=30)
    assert response.status_code == expected, response.text
    assert fuzz_env.job_ids() == jobs_before


# --------------------------------------------------------------------------- --api-auth


def concrete_request(operation, clip) -> dict:
    """A well-formed request for ``operation``: with credentials it would succeed, or 404."""
    method, path = operation.method.upper(), operation.path.replace("{job_id}", UNKNOWN_JOB)
    path = path.replace("{artefact_id}", UNKNOWN_ARTEFACT).replace("{file_name}", f"{UNKNOWN_ARTEFACT}.mp4")
    request = {"method": method, "path": path}
    if (method, path) == ("POST", f"{API}/jobs"):
        request["json"] = {"source_path": str(clip), "settings": tiny_settings()}
    elif (method, path) == ("POST", f"{API}/jobs/upload"):
        request["files"] = {"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}
        request["data"] = {"settings": json.dumps(tiny_settings())}
    elif (method, path) == ("POST", f"{API}/motion-brush"):
        # No SVD model is installed here: with credentials the request is read and refused for that reason.
        request["json"] = {"image": TINY_PNG_BASE64, "model": "no-such-svd-model"}
    elif method == "POST" and path.startswith(f"{API}/edit/"):
        # The Edit routes (edit_host.py): no base model or trained artefact exists here, so with credentials
        # the request is read and refused for that reason (422 unknown model, 404 unknown artefact).
        clip_settings = {"frames": 2, "width": 64, "height": 64, "sample_stride": 1, "max_train_steps": 1}
        request["json"] = {
            f"{API}/edit/tune-a-video/train": {"source_path": str(clip), "prompt": "a clip", "model": "no-such-model",
                                               "settings": clip_settings},
            f"{API}/edit/motion-inversion/train": {"source_path": str(clip), "prompt": "a clip",
                                                   "model": "no-such-model", "settings": clip_settings},
            f"{API}/edit/tune-a-video/edit": {"artefact_id": UNKNOWN_ARTEFACT, "prompts": ["an edit"]},
            f"{API}/edit/motion-inversion/generate": {"artefact_id": UNKNOWN_ARTEFACT, "prompts": ["an edit"]},
            f"{API}/edit/attention-flow/edit": {"source_path": str(clip), "source_prompt": "a clip",
                                                "prompts": ["an edit"], "model": "no-such-model"},
        }.get(path)  # the /edit/trainings/{artefact_id}/... POSTs have no body
    return request


def _tiny_png_base64() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


TINY_PNG_BASE64 = _tiny_png_base64()


def test_every_operation_answers_401_without_credentials_when_api_auth_is_set(fuzz_env, monkeypatch):
    from lib_vidguide.webui import jobs_host
    from modules import shared

    schema = served_schema(fuzz_env.url).include(path_regex=f"^{API}/")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = sorted(f"{operation.method.upper()} {operation.path}" for operation in operations)
    # Every route the router has (the jobs routes, the motion brush's, and any later ones) is in the schema.
    from lib_vidguide.webui import api

    routed = sorted(f"{method} {route.path}" for route in api.build_router().routes for method in route.methods)
    assert labels == routed, (labels, routed)
    assert {"POST /vidguide/v1/jobs", "POST /vidguide/v1/jobs/upload", "POST /vidguide/v1/motion-brush",
            "GET /vidguide/v1/jobs/{job_id}/output"} <= set(labels), labels
    jobs_before = set(fuzz_env.job_ids())
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:s3cret,bob:pw")
    for operation in operations:
        request = concrete_request(operation, fuzz_env.clip)
        url = fuzz_env.url + request.pop("path")
        label = f"{operation.method.upper()} {operation.path}"
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("alice", ""), ("bob", "s3cret")):
            response = requests.request(url=url, auth=auth, timeout=30, **request)
            assert response.status_code == 401, (label, auth, response.status_code, response.text)
            assert response.headers.get("www-authenticate") == "Basic", label
            assert response.json() == {"detail": "Incorrect username or password"}, label
        # A malformed Authorization header is a 401 too, not a 400 or a 500.
        response = requests.request(url=url, headers={"Authorization": "Basic %%%"}, timeout=30, **request)
        assert response.status_code == 401, (label, response.text)
        # With the right credentials the same request gets through (a 2xx, or the unknown job's 404).
        response = requests.request(url=url, auth=("alice", "s3cret"), timeout=30, **request)
        if label == f"POST {API}/motion-brush":
            assert response.status_code in (404, 422) and "svd" in response.text, (label, response.text)
        elif label.startswith(f"POST {API}/edit/"):
            assert response.status_code in (404, 422), (label, response.status_code, response.text)
            assert "no-such-model" in response.text or UNKNOWN_ARTEFACT in response.text, (label, response.text)
        else:
            assert response.status_code in (200, 404), (label, response.status_code, response.text)
    # Only the two authorised POSTs (server path and upload) started jobs.
    assert len(set(fuzz_env.job_ids()) - jobs_before) == 2
    assert jobs_host.worker().wait_idle(60)
