"""Fuzzing the /vidguide/v1 routes from their live OpenAPI schema (issue 3's acceptance:
"a fuzzer run against the routes' OpenAPI finds no 500; without credentials the routes
answer 401 when --api-auth is set").

Schemathesis reads the schema the stand-in WebUI serves (its --nowebui API app, our routes
included, over real HTTP on loopback) and generates valid and invalid requests for every
operation under /vidguide/v1, in its coverage phase (boundary and type-violating values,
deterministic) and its fuzzing phase (random, bounded by ``MAX_EXAMPLES`` per operation).
Every response must be below 500.

Random data alone almost never names a real video or a real job, so a share of the
generated cases is steered: some POST /jobs bodies get a real source video in the allowed
folder (with their fuzzed settings, clamped to a few tiny frames so that no case can start an
hour-long render), some job-id path parameters get the id of a job that exists. Jobs created
that way run on the tiny model; whatever is still queued at the end is cancelled, and the whole
data folder is a pytest temporary folder.
"""

from __future__ import annotations

import collections
import json
import time

import pytest
import requests
from videos import moving_pattern, write_clip

schemathesis = pytest.importorskip("schemathesis")

API = "/vidguide/v1"
MAX_EXAMPLES = 30  # fuzzing-phase cases per operation (the coverage phase adds its own fixed set)
STEER_EVERY = 3  # every third POST /jobs body and job-id path gets a real video / job
UNKNOWN_JOB = "20250101-000000-00000000"  # well-formed, never exists

# status codes seen per operation, for the summary printed at the end
SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


class FuzzEnv:
    """The private WebUI data folder, its one tiny video, and the ids of the jobs in it."""

    def __init__(self, url, root, clip):
        self.url = url
        self.root = root
        self.clip = clip
        self.counters: collections.Counter = collections.Counter()

    def job_ids(self) -> list[str]:
        from lib_vidguide.webui import jobs_host

        return [manifest.job_id for manifest in jobs_host.job_store().list()]

    def idle_job(self) -> str:
        """A job that exists on disk but is not queued (as after a restart): for the job routes."""
        from lib_vidguide.jobs import JobSettings
        from lib_vidguide.webui import jobs_host

        job = jobs_host.job_store().create(self.clip, JobSettings.from_dict(tiny_settings()))
        job.manifest.status = "interrupted"
        job.save()
        return job.job_id


def tiny_settings(**video) -> dict:
    return {"video": {"max_frames": 2, "seed": 5, "width": 64, "height": 64, **video},
            "img2img": {"prompt": "fuzz", "steps": 3, "denoising_strength": 0.5}}


def clamp_job_settings(settings):
    """Fuzzed settings, kept fuzzed except for what decides how long a job runs (frames,
    size, steps): a steered case must never start a long render."""
    if not isinstance(settings, dict):
        return settings
    video = settings.get("video")
    if isinstance(video, dict):
        video["max_frames"] = 2
        video["start_frame"] = 0
        for key in ("width", "height"):
            if isinstance(video.get(key), int) and not isinstance(video.get(key), bool) and video[key] > 128:
                video[key] = 64
    img2img = settings.get("img2img")
    if isinstance(img2img, dict) and isinstance(img2img.get("steps"), int) and img2img["steps"] > 6:
        img2img["steps"] = 6
    return settings


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
    # One finished job (its output can be downloaded) and one idle one, for the job routes.
    done = requests.post(f"{standin_url}{API}/jobs", json={"source_path": str(clip), "settings": tiny_settings()},
                         timeout=30)
    assert done.status_code == 200, done.text
    assert wait_for_job(standin_url, done.json()["job_id"])["status"] == "done"
    env.idle_job()
    yield env
    worker = jobs_host.worker()
    for job_id in env.job_ids():
        worker.cancel(job_id)
    assert worker.wait_idle(120), "a job started by the fuzzer did not stop"
    for manifest in jobs_host.job_store().list():
        # Nothing the fuzzer did may leave a job "running", or an output without "done".
        assert manifest.status != "running", manifest
        if (jobs_host.job_store().path_of(manifest.job_id) / "output.mp4").exists():
            assert manifest.status == "done", manifest


@pytest.fixture
def api_schema(fuzz_env, request):
    # schemathesis 4.32's lazy pytest loader reads and renames ``request.node._nodeid``, which
    # pytest 9 no longer has (node ids are ``_id`` now): give it the attribute it expects.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    config = schemathesis.Config.from_dict({
        "seed": 20250101,  # reproducible runs; change it to explore other cases
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"},
        "phases": {"stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_url(f"{fuzz_env.url}/openapi.json", config=config)


# Only our routes (the stand-in's own /sdapi/v1 routes are the host's). The filter goes on the
# lazy schema: the loader replaces the fixture schema's own filters with it.
fuzz_schema = schemathesis.pytest.from_fixture("api_schema").include(path_regex=f"^{API}/")


def steer(case, env: FuzzEnv) -> None:
    """Point a share of the cases at a real video or a real job (see the module doc)."""
    label = f"{case.method} {case.path}"
    env.counters[label] += 1
    if env.counters[label] % STEER_EVERY:
        return
    if "job_id" in (case.path_parameters or {}):
        ids = env.job_ids() or [env.idle_job()]
        case.path_parameters["job_id"] = ids[env.counters[label] // STEER_EVERY % len(ids)]
    elif case.method.upper() == "POST" and case.path == f"{API}/jobs" and isinstance(case.body, dict):
        case.body["source_path"] = str(env.clip)
        case.body.pop("source_base64", None)
        clamp_job_settings(case.body.get("settings"))


@fuzz_schema.parametrize()
def test_no_request_gets_a_server_error(case, fuzz_env):
    from schemathesis.checks import not_a_server_error

    steer(case, fuzz_env)
    response = case.call(timeout=60)
    SEEN[f"{case.method} {case.path}"][response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code == 200 and case.method.upper() == "POST" and isinstance(case.body, dict) \
            and case.path == f"{API}/jobs":
        # A job the fuzzer started: keep the queue short (cancel stops it after its current frame).
        requests.post(f"{fuzz_env.url}{API}/jobs/{response.json()['job_id']}/cancel", timeout=30)


@pytest.fixture(scope="module", autouse=True)
def print_summary():
    yield
    if SEEN:
        total = sum(sum(counter.values()) for counter in SEEN.values())
        lines = [f"fuzzed {total} requests over {len(SEEN)} operations:"]
        lines += [f"  {label}: {dict(sorted(counter.items()))}" for label, counter in sorted(SEEN.items())]
        print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- --api-auth


def concrete_request(operation, clip) -> dict:
    """A well-formed request for ``operation``: it would succeed or 404 with credentials."""
    path = operation.path.replace("{job_id}", UNKNOWN_JOB)
    request = {"method": operation.method.upper(), "path": path}
    if path == f"{API}/jobs" and request["method"] == "POST":
        request["json"] = {"source_path": str(clip), "settings": tiny_settings()}
    elif path == f"{API}/jobs/upload":
        request["files"] = {"file": ("clip.mp4", clip.read_bytes(), "video/mp4")}
        request["data"] = {"settings": json.dumps(tiny_settings())}
    return request


def test_every_operation_answers_401_without_credentials_when_api_auth_is_set(fuzz_env, monkeypatch):
    from modules import shared

    schema = schemathesis.openapi.from_url(f"{fuzz_env.url}/openapi.json").include(path_regex=f"^{API}/")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [f"{o.method} {o.path}" for o in operations]
    jobs_before = fuzz_env.job_ids()
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:s3cret")
    for operation in operations:
        request = concrete_request(operation, fuzz_env.clip)
        url = fuzz_env.url + request.pop("path")
        label = f"{operation.method.upper()} {operation.path}"
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("alice", "")):
            response = requests.request(url=url, auth=auth, timeout=30, **request)
            assert response.status_code == 401, (label, auth, response.status_code, response.text)
            assert response.headers.get("www-authenticate") == "Basic", label
            assert response.json() == {"detail": "Incorrect username or password"}, label
        # The right credentials get through (a 2xx, or the 404 of the unknown job id).
        response = requests.request(url=url, auth=("alice", "s3cret"), timeout=30, **request)
        assert response.status_code != 401, (label, response.text)
        assert response.status_code < 500, (label, response.text)
        if response.status_code == 200 and "job_id" in response.headers.get("content-type", "") + response.text[:200]:
            requests.post(f"{url.rsplit('/jobs', 1)[0]}/jobs/{response.json()['job_id']}/cancel",
                          auth=("alice", "s3cret"), timeout=30)
    # Unauthenticated requests started nothing.
    monkeypatch.setattr(shared.cmd_opts, "api_auth", None)
    started = set(fuzz_env.job_ids()) - set(jobs_before)
    assert len(started) == 2, started  # exactly the two authorised POSTs (path and upload)
