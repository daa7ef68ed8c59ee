"""Issue 3's bad-input matrix, through the surfaces a user reaches them by.

"Each bad input gets a clear error, no crash, and no partial output passed off as complete:
truncated mp4, zero-byte file, audio-only file, RGBA/alpha video, odd size (513x767), 1x1,
variable frame rate, unsupported codec, a non-video file, a path outside the allowed roots,
an upload over the size limit, a wrong script-arg count over the API."

Surfaces: the REST API (POST /vidguide/v1/jobs with a server path inside the allowed roots,
POST /vidguide/v1/jobs/upload with the same bytes) and the selectable "VidGuide video" img2img
script over the stand-in WebUI's /sdapi/v1/img2img, all over real HTTP on loopback.

Refused inputs must answer a 4xx whose message says what is wrong and what to do, create no
job, and leave the server answering. Valid-but-odd inputs (alpha, odd size, variable frame
rate, a file truncated after its index) must finish, with a note saying what was done, and
their output must be complete for what the job reports (frames_total == frames in the file).
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from test_audio import RATE, chirp, durations, make_source
from test_video_io import encode, gradient_frame
from videos import moving_pattern, write_clip

from lib_vidguide.video_io import probe

API = "/vidguide/v1"
TITLE = "VidGuide video"
FAST = {"steps": 2, "denoising_strength": 0.5, "sampler_name": "Euler", "prompt": "a painting"}


def settings(**video) -> dict:
    return {"video": {"seed": 3, "crf": 10, **video}, "img2img": dict(FAST)}


# --------------------------------------------------------------------------- the inputs


def one_pixel_video(path: Path) -> Path:
    return encode(path, [np.full((1, 1, 3), 40 * i, np.uint8) for i in range(3)], codec="png", pix_fmt="rgb24")


def rgba_video(path: Path) -> Path:
    frames = []
    for i in range(3):
        frame = np.zeros((64, 64, 4), np.uint8)
        frame[..., :3] = gradient_frame(i, 64, 64)
        frame[..., 3] = 128
        frame[:, :32, 3] = 255  # left half opaque, right half half-transparent
        frames.append(frame)
    return encode(path, frames, codec="png", pix_fmt="rgba", input_format="rgba")


def odd_size_video(path: Path) -> Path:
    # 4:4:4 H.264: 4:2:0 cannot hold odd sizes, and a 513x767 phone export is exactly that kind of file.
    return encode(path, [gradient_frame(i, 513, 767) for i in range(2)], pix_fmt="yuv444p")


def vfr_video(path: Path) -> Path:
    """12 frames, 6 of them 40 ms apart then 6 of them 125 ms apart, with a chirp for audio."""
    times = [40 * i for i in range(6)] + [200 + 125 * i for i in range(1, 7)]
    return make_source(path, audio=[{"codec": "aac", "signal": chirp(round(1.2 * RATE))}], frames=12,
                       frame_times_ms=times)


def moov_last_video(path: Path) -> Path:
    """Plain PyAV mp4: the index ('moov') is written after the data, as cameras and recorders do."""
    rng = np.random.default_rng(0)
    return encode(path, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(12)])


def make_input(kind: str, folder: Path) -> Path:
    """A file of the given kind, in ``folder``."""
    if kind == "zero_byte":
        path = folder / "empty.mp4"
        path.write_bytes(b"")
        return path
    if kind == "text":
        path = folder / "notes.mp4"
        path.write_text("this is a shopping list, not a video\n" * 20)
        return path
    if kind == "audio_only":
        path = folder / "tone.m4a"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=RATE, layout="mono")
            frame = av.AudioFrame.from_ndarray(chirp(RATE // 2)[None, :], format="flt", layout="mono")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        return path
    if kind == "missing_moov":  # a recording cut off before its index was written
        whole = moov_last_video(folder / "whole_moov_last.mp4")
        path = folder / "cut_recording.mp4"
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        whole.unlink()
        return path
    if kind == "headless":  # the first half lost (header and index gone)
        whole = moov_last_video(folder / "whole_headless.mp4")
        path = folder / "second_half.mp4"
        path.write_bytes(whole.read_bytes()[whole.stat().st_size // 2:])
        whole.unlink()
        return path
    if kind == "unsupported_codec":  # a codec tag this FFmpeg build has no decoder for
        whole = moov_last_video(folder / "whole_codec.mp4")
        path = folder / "unknown_codec.mp4"
        path.write_bytes(whole.read_bytes().replace(b"avc1", b"zzz9"))
        whole.unlink()
        return path
    if kind == "truncated_data":  # index at the front (faststart) survives; the data stops at 60 %
        whole = write_clip(folder / "whole.mp4", moving_pattern(24, size=(64, 64)))
        path = folder / "truncated.mp4"
        path.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
        whole.unlink()
        return path
    if kind == "one_pixel":
        return one_pixel_video(folder / "dot.mov")
    if kind == "rgba":
        return rgba_video(folder / "alpha.mov")
    if kind == "odd_size":
        return odd_size_video(folder / "odd_513x767.mp4")
    if kind == "vfr":
        return vfr_video(folder / "vfr.mp4")
    raise AssertionError(kind)


# --------------------------------------------------------------------------- set-up and checks


class Env:
    def __init__(self, url: str, data: Path, inputs: Path, outside: Path):
        self.url, self.data, self.inputs, self.outside = url, data, inputs, outside

    @property
    def jobs_root(self) -> Path:
        return self.data / "outputs" / "vidguide" / "jobs"

    def job_folders(self) -> list[Path]:
        return sorted(p for p in self.jobs_root.iterdir() if p.is_dir()) if self.jobs_root.exists() else []

    def post_path(self, path, job_settings=None):
        body = {"source_path": str(path), "settings": job_settings or settings(max_frames=2)}
        return requests.post(f"{self.url}{API}/jobs", json=body, timeout=60)

    def upload(self, path: Path, job_settings=None, data: bytes | None = None):
        payload = path.read_bytes() if data is None else data
        return requests.post(f"{self.url}{API}/jobs/upload", files={"file": (path.name, payload, "video/mp4")},
                             data={"settings": json.dumps(job_settings or settings(max_frames=2))}, timeout=60)

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = requests.get(f"{self.url}{API}/jobs/{job_id}", timeout=30).json()
            if info["status"] in ("done", "failed", "interrupted"):
                return info
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {info['status']} after {timeout} s")

    def assert_server_answers(self) -> None:
        """No crash: a following request is served as usual."""
        assert requests.get(f"{self.url}{API}/health", timeout=30).status_code == 200
        assert requests.get(f"{self.url}{API}/jobs", timeout=30).status_code == 200

    def assert_refused(self, response, status: int, *phrases: str) -> str:
        """A clear 4xx with the given phrases, no job created, the server still serving."""
        assert response.status_code == status, (response.status_code, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str), detail
        for phrase in phrases:
            assert phrase.lower() in detail.lower(), (phrase, detail)
        assert self.job_folders() == [], "a refused input left a job folder"
        self.assert_server_answers()
        return detail

    def assert_complete(self, info: dict) -> dict:
        """A finished job whose output holds exactly the frames the job reports; returns the manifest."""
        assert info["status"] == "done", json.dumps(info)  # whole, so a rare failure says why
        assert info["frames_done"] == info["frames_total"] and info["progress"] == 1.0, info
        folder = self.jobs_root / info["job_id"]
        output = folder / "output.mp4"
        assert output.exists() and info["output_url"]
        assert probe(output).frame_count == info["frames_total"]
        assert len(list((folder / "frames").glob("frame_*.png"))) == info["frames_total"]
        download = requests.get(f"{self.url}{info['output_url']}", timeout=60)
        assert download.status_code == 200 and download.content == output.read_bytes()
        return json.loads((folder / "manifest.json").read_text())


@pytest.fixture
def env(standin_url, fresh_state, tmp_path, monkeypatch):
    """A private WebUI data folder; its vidguide-inputs folder is an allowed root, ``outside`` is not."""
    from lib_vidguide.webui import jobs_host
    from modules import paths_internal, shared

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path / "webui"))
    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "")
    monkeypatch.setattr(shared.cmd_opts, "api_auth", None)
    monkeypatch.setitem(shared.opts.data, "outdir_img2img_samples", str(tmp_path / "webui" / "outputs" / "img2img-images"))
    inputs = tmp_path / "webui" / "vidguide-inputs"
    outside = tmp_path / "elsewhere"
    inputs.mkdir(parents=True)
    outside.mkdir()
    yield Env(standin_url, tmp_path / "webui", inputs, outside)
    assert jobs_host.worker().wait_idle(300)
    # Never a job left "running", never an output.mp4 beside a job that is not done.
    for manifest in jobs_host.job_store().list():
        assert manifest.status in ("done", "failed", "interrupted"), manifest
        output = jobs_host.job_store().path_of(manifest.job_id) / "output.mp4"
        assert output.exists() == (manifest.status == "done"), manifest


# --------------------------------------------------------------------------- refused: REST API


REFUSED = {
    # kind: (HTTP status, phrases the message must hold: what is wrong, and what to do)
    "zero_byte": (422, ["empty (0 bytes)", "provide the file again"]),
    "text": (422, ["not a video file", "plays in a video player"]),
    "audio_only": (422, ["contains only audio", "choose a video file"]),
    "missing_moov": (422, ["incomplete mp4", "'moov' box) is missing", "export or download it again"]),
    "headless": (422, ["damaged or incomplete"]),
    "unsupported_codec": (422, ["not supported", "re-encode"]),
    "one_pixel": (422, ["1x1", "at least 64x64", "set the output width and height to 64 or more"]),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_refused_inputs_from_a_server_path(env, kind):
    status, phrases = REFUSED[kind]
    path = make_input(kind, env.inputs)
    env.assert_refused(env.post_path(path), status, *phrases)


@pytest.mark.parametrize("kind", list(REFUSED))
def test_refused_inputs_as_uploads(env, kind):
    status, phrases = REFUSED[kind]
    path = make_input(kind, env.outside)  # an upload may come from anywhere
    env.assert_refused(env.upload(path), status, *phrases)
    inline = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    response = requests.post(f"{env.url}{API}/jobs", json={"source_base64": inline, "settings": settings(max_frames=2)},
                             timeout=60)
    env.assert_refused(response, status, *phrases)


def test_one_pixel_video_runs_once_given_an_output_size(env):
    path = make_input("one_pixel", env.inputs)
    response = env.post_path(path, settings(width=64, height=64))
    assert response.status_code == 200, response.text
    manifest = env.assert_complete(env.wait(response.json()["job_id"]))
    assert manifest["frames_total"] == 3
    meta = probe(env.jobs_root / manifest["job_id"] / "output.mp4")
    assert (meta.width, meta.height) == (64, 64)


def test_paths_outside_the_allowed_roots_are_refused(env):
    elsewhere = write_clip(env.outside / "private.mp4", moving_pattern(2))
    link = env.inputs / "link.mp4"
    link.symlink_to(elsewhere)  # inside the root by name, outside by target
    linked_folder = env.inputs / "linked-folder"
    linked_folder.symlink_to(env.outside, target_is_directory=True)
    for path in (elsewhere, env.inputs / ".." / ".." / "elsewhere" / "private.mp4", link,
                 linked_folder / "private.mp4", "/etc/passwd", "../elsewhere/private.mp4"):
        detail = env.assert_refused(env.post_path(path), 403, "outside the folders the API may use",
                                    "--vidguide-allowed-roots")
        assert str(env.inputs) in detail  # the message names where videos may go


def test_missing_and_folder_paths_inside_the_roots_are_clear_422s(env):
    env.assert_refused(env.post_path(env.inputs / "nope.mp4"), 422, "no video file at")
    env.assert_refused(env.post_path(env.inputs), 422, "no video file at")


def test_an_upload_over_the_size_limit_is_refused(env, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "vidguide_max_upload_mb", 1)
    big = env.outside / "big.mp4"
    big.write_bytes(os.urandom((1 << 20) + 4096))
    phrases = ("larger than the upload limit of 1 MB", "send source_path", "--vidguide-max-upload-mb")
    env.assert_refused(env.upload(big), 413, *phrases)
    inline = base64.b64encode(big.read_bytes()).decode()
    response = requests.post(f"{env.url}{API}/jobs", json={"source_base64": inline}, timeout=60)
    env.assert_refused(response, 413, *phrases)
    # Just under the limit is judged on its content, not refused for its size.
    small = env.outside / "small.mp4"
    small.write_bytes(big.read_bytes()[: (1 << 20) - 4096])
    env.assert_refused(env.upload(small), 422, "not a video file")


def test_a_source_that_disappears_before_the_job_runs_fails_clearly_without_output(env):
    """The job is accepted, then its file is deleted while it waits for the GPU."""
    from modules.call_queue import queue_lock

    source = write_clip(env.inputs / "soon_gone.mp4", moving_pattern(3))
    with queue_lock:  # a generation is running: the job waits in the queue
        response = env.post_path(source)
        assert response.status_code == 200, response.text
        source.unlink()
    info = env.wait(response.json()["job_id"], timeout=60)
    assert info["status"] == "failed" and "is gone; put it back to resume" in info["error"], info
    assert info["output_url"] is None and info["frames_done"] == 0
    assert not (env.jobs_root / info["job_id"] / "output.mp4").exists()
    assert requests.get(f"{env.url}{API}/jobs/{info['job_id']}/output", timeout=30).status_code == 409
    env.assert_server_answers()


# --------------------------------------------------------------------------- valid but odd


def test_a_file_truncated_after_its_index_finishes_with_the_decodable_frames_and_says_so(env):
    path = make_input("truncated_data", env.inputs)
    assert probe(path).frame_count == 24  # the index still promises every frame
    response = env.post_path(path, settings())
    assert response.status_code == 200, response.text
    assert response.json()["frames_total"] == 24
    info = env.wait(response.json()["job_id"])
    manifest = env.assert_complete(info)
    assert 0 < info["frames_total"] < 24, info  # what the file really held, not what it promised
    assert any(f"ended after {info['frames_total']} of the 24 frames" in note and "truncated" in note
               for note in info["notes"]), info["notes"]
    assert manifest["notes"] == info["notes"]


def test_an_rgba_video_is_composited_over_black_and_says_so(env):
    path = make_input("rgba", env.inputs)
    response = env.upload(path, settings(max_frames=2))
    assert response.status_code == 200, response.text
    assert any("alpha channel" in note and "composited over black" in note for note in response.json()["notes"])
    info = env.assert_complete(env.wait(response.json()["job_id"]))
    assert (info["source"]["width"], info["source"]["height"]) == (64, 64)


def test_an_odd_size_video_is_rounded_to_multiples_of_8_and_says_so(env):
    path = make_input("odd_size", env.inputs)
    assert (probe(path).width, probe(path).height) == (513, 767)
    response = env.post_path(path, settings(max_frames=1))  # one 512x760 frame on the tiny model
    assert response.status_code == 200, response.text
    assert any("513x767" in note and "512x760" in note for note in response.json()["notes"]), response.json()
    info = env.wait(response.json()["job_id"])
    env.assert_complete(info)
    meta = probe(env.jobs_root / info["job_id"] / "output.mp4")
    assert (meta.width, meta.height) == (512, 760)


def test_a_variable_frame_rate_video_gives_a_constant_rate_output_with_audio_in_sync(env):
    path = make_input("vfr", env.inputs)
    source = probe(path)
    assert source.variable_frame_rate and source.frame_count == 12
    response = env.post_path(path, settings(width=64, height=64))
    assert response.status_code == 200, response.text
    assert any("Variable frame rate" in note for note in response.json()["notes"])
    info = env.wait(response.json()["job_id"])
    env.assert_complete(info)
    output = env.jobs_root / info["job_id"] / "output.mp4"
    meta = probe(output)
    assert meta.frame_count == 12 and not meta.variable_frame_rate and meta.has_audio, meta
    header = durations(output)
    assert abs(header["audio"] - header["video"]) <= 1 / float(meta.fps), header  # within one frame
    assert abs(header["video"] - source.duration_s) <= 1 / float(meta.fps), (header, source.duration_s)


# --------------------------------------------------------------------------- the img2img script


def script_args(video, **overrides) -> list:
    from lib_vidguide.webui import ui

    values = dict(video=video, enabled=True, strength=1.0, schedule="seed_showcase", weight_mode="consistency",
                  flow_method="dis_medium", warp_space="pixel", start_frame=0, max_frames=2, every_nth=1, fps=0)
    values.update(overrides)
    return [values[name] for name in ui.VIDEO_ARG_NAMES]


def img2img(env: Env, args: list):
    from host_session import sample_picture, to_b64

    request = {"init_images": [to_b64(sample_picture())], "prompt": "a painting", "seed": 11, "steps": 2,
               "denoising_strength": 0.5, "width": 64, "height": 64, "script_name": TITLE, "script_args": args}
    return requests.post(f"{env.url}/sdapi/v1/img2img", json=request, timeout=120)


def assert_script_refused(env: Env, response, *phrases: str) -> None:
    """The img2img route's error: the host answers a script's exception with its JSON error body
    (status 500 unless the exception carries a ``status_code``; A1111's api_middleware), never a
    video; the message is the script's."""
    assert response.status_code >= 400, response.text
    body = response.json()
    message = str(body.get("errors") or body.get("detail"))
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, body)
    videos = env.data / "outputs" / "vidguide"
    assert not videos.exists() or not list(videos.glob("*.mp4")), "a refused request wrote a video"
    env.assert_server_answers()
    assert img2img_ok(env)


def img2img_ok(env: Env) -> bool:
    from host_session import sample_picture, to_b64

    plain = {"init_images": [to_b64(sample_picture())], "prompt": "a painting", "seed": 1, "steps": 2,
             "denoising_strength": 0.5, "width": 64, "height": 64}
    return requests.post(f"{env.url}/sdapi/v1/img2img", json=plain, timeout=120).status_code == 200


@pytest.mark.parametrize("count", [0, 1, 10, 12, 20])
def test_a_wrong_script_arg_count_over_the_api_is_a_clear_error(env, count):
    clip = write_clip(env.inputs / "clip.mp4", moving_pattern(2))
    # Too many: the host drops the extra values outside the script's slice, so only the script's
    # check of the whole args list can tell (the 11 it sees are valid).
    args = (script_args(str(clip)) + [0] * count)[:count]
    assert_script_refused(env, img2img(env, args), "expected 11 script args", f"got {count}",
                          "send exactly that many values, in that order")


def test_the_script_refuses_bad_files_and_paths_over_the_api(env):
    for kind, phrases in (("zero_byte", ["empty (0 bytes)"]), ("text", ["not a video file"]),
                          ("audio_only", ["contains only audio"]), ("unsupported_codec", ["not supported"]),
                          ("missing_moov", ["'moov' box) is missing"])):
        assert_script_refused(env, img2img(env, script_args(str(make_input(kind, env.inputs)))), *phrases)
    elsewhere = write_clip(env.outside / "private.mp4", moving_pattern(2))
    link = env.inputs / "link.mp4"
    link.symlink_to(elsewhere)
    for path in (elsewhere, env.inputs / ".." / ".." / "elsewhere" / "private.mp4", link):
        assert_script_refused(env, img2img(env, script_args(str(path))), "outside the folders the API may use")


def test_the_script_renders_a_valid_video_with_the_right_arg_count(env):
    """The control case: the same route with 11 args renders (so the refusals above are about the input)."""
    clip = write_clip(env.inputs / "clip.mp4", moving_pattern(2))
    response = img2img(env, script_args(str(clip)))
    assert response.status_code == 200, response.text
    info = json.loads(json.loads(response.json()["info"])["infotexts"][0])["vidguide"]
    assert info["frames"] == 2 and not info["interrupted"] and probe(info["output"]).frame_count == 2
