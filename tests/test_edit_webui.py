"""The Edit sub-tab's host and REST routes (issues 5 and 6, WebUI side) over real HTTP on loopback, on
tiny random-weight models: Tune-A-Video train -> edit, Motion Inversion train -> generate, AttentionFlow
edit, interrupt and resume of a training, bad inputs as clear 4xx, and --api-auth.

Every run is real (tiny SD in <models>/Stable-diffusion/tiny, tiny text-to-video model in
<models>/text2video/tiny-t2v; 2 frames of 64x64, 2 steps) on the CPU.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import requests
from videos import moving_pattern, write_clip

API = "/vidguide/v1"
CLIP = dict(frames=2, width=64, height=64, sample_stride=1)
TAV_TRAIN = dict(CLIP, max_train_steps=2, learning_rate=1e-3, checkpointing_steps=1, gradient_checkpointing=False)
MI_TRAIN = dict(CLIP, max_train_steps=2, checkpointing_steps=1, inversion_steps=2, loss="base")
TAV_EDIT = dict(num_inference_steps=2, inversion_steps=2, guidance_scale=2.0, decode_chunk_size=2)
MI_GENERATE = dict(num_inference_steps=2, guidance_scale=2.0, decode_chunk_size=2)
AF_EDIT = dict(CLIP, num_inference_steps=2, guidance_scale=2.0, decode_chunk_size=2)


@pytest.fixture(scope="session")
def tiny_edit_models(tmp_path_factory) -> dict:
    from lib_vidguide.pipelines.motion_inversion import save_tiny_t2v_model
    from lib_vidguide.tiny_models import save_tiny_pipeline

    root = tmp_path_factory.mktemp("edit-models")
    return {"sd": save_tiny_pipeline(root / "tiny"), "t2v": save_tiny_t2v_model(root / "tiny-t2v")}


def install_edit_models(data: Path, models: dict) -> None:
    (data / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    (data / "models" / "text2video").mkdir(parents=True, exist_ok=True)
    (data / "models" / "Stable-diffusion" / "tiny").symlink_to(models["sd"], target_is_directory=True)
    (data / "models" / "text2video" / "tiny-t2v").symlink_to(models["t2v"], target_is_directory=True)


@pytest.fixture
def env(fresh_state, tiny_edit_models, tmp_path, monkeypatch):
    """A private WebUI data folder with the tiny models and a 4-frame clip in vidguide-inputs; no --api-auth."""
    from lib_vidguide.webui import edit_host
    from modules import paths_internal, shared

    data = tmp_path / "webui"
    monkeypatch.setattr(paths_internal, "data_path", str(data))
    monkeypatch.setattr(paths_internal, "models_path", str(data / "models"))
    monkeypatch.setattr(shared.cmd_opts, "api_auth", None, raising=False)
    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "", raising=False)
    install_edit_models(data, tiny_edit_models)
    (data / "vidguide-inputs").mkdir(parents=True)
    write_clip(data / "vidguide-inputs" / "clip.mp4", moving_pattern(4))
    yield data
    assert edit_host.worker().wait_idle(120)


def clip_path(data: Path) -> str:
    return str(data / "vidguide-inputs" / "clip.mp4")


def wait_for_training(url: str, artefact_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = requests.get(f"{url}{API}/edit/trainings/{artefact_id}", timeout=30).json()
        if info["status"] in ("done", "failed", "interrupted"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"training {artefact_id} still {info['status']} after {timeout} s")


def read_video(path_or_bytes, tmp_path: Path):
    from lib_vidguide.video_io import read_all_frames

    if isinstance(path_or_bytes, bytes):
        path = tmp_path / f"download-{time.monotonic_ns()}.mp4"
        path.write_bytes(path_or_bytes)
    else:
        path = path_or_bytes
    return read_all_frames(path)


def train_over_http(url: str, data: Path, route: str, settings: dict, prompt: str = "a pattern moving right") -> dict:
    response = requests.post(f"{url}{API}/edit/{route}/train", timeout=60, json={
        "source_path": clip_path(data), "prompt": prompt, "model": "", "name": "my run", "settings": settings})
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["status"] in ("queued", "running", "done") and started["total_steps"] == 2
    return wait_for_training(url, started["artefact_id"])


# --------------------------------------------------------------------------- whole runs over HTTP


def test_tune_a_video_trains_as_a_job_then_edits_two_prompts(env, standin_url, tmp_path):
    done = train_over_http(standin_url, env, "tune-a-video", TAV_TRAIN)
    assert done["status"] == "done" and done["steps_done"] == 2 and done["progress"] == 1.0, done
    assert done["method"] == "tune-a-video" and done["name"] == "my run" and done["last_loss"] > 0
    folder = env / "outputs" / "vidguide" / "edit" / "trained" / done["artefact_id"]
    assert (folder / "tune_a_video.safetensors").is_file() and (folder / "checkpoints").is_dir()
    listed = requests.get(f"{standin_url}{API}/edit/trainings", timeout=30).json()["trainings"]
    assert [item["artefact_id"] for item in listed] == [done["artefact_id"]]

    # No video given: the edit inverts the video it was trained on.
    response = requests.post(f"{standin_url}{API}/edit/tune-a-video/edit", timeout=120, json={
        "artefact_id": done["artefact_id"], "prompts": ["a red pattern", "a blue pattern"], "settings": TAV_EDIT})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["frames"], result["width"], result["height"]) == (2, 64, 64)
    assert len(result["video_urls"]) == 2 and result["prompts"] == ["a red pattern", "a blue pattern"]
    videos = [requests.get(standin_url + url, timeout=30) for url in result["video_urls"]]
    assert [video.status_code for video in videos] == [200, 200]
    assert videos[0].headers["content-type"] == "video/mp4" and videos[0].content != videos[1].content
    frames = read_video(videos[0].content, tmp_path)
    assert len(frames) == 2 and frames[0].shape == (64, 64, 3)
    assert sorted(p.name for p in (env / "outputs" / "vidguide" / "edit" / "videos").iterdir()) == \
        sorted(url.rsplit("/", 1)[1] for url in result["video_urls"])


def test_motion_inversion_trains_as_a_job_then_generates(env, standin_url, tmp_path):
    done = train_over_http(standin_url, env, "motion-inversion", MI_TRAIN)
    assert done["status"] == "done" and done["steps_done"] == 2, done
    folder = env / "outputs" / "vidguide" / "edit" / "trained" / done["artefact_id"]
    assert (folder / "motion_inversion.safetensors").is_file()
    response = requests.post(f"{standin_url}{API}/edit/motion-inversion/generate", timeout=120, json={
        "artefact_id": done["artefact_id"], "prompts": ["a car turning"], "settings": MI_GENERATE})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["method"], result["frames"], result["width"], result["height"]) == ("motion-inversion", 2, 64, 64)
    video = requests.get(standin_url + result["video_urls"][0], timeout=30)
    assert video.status_code == 200 and len(read_video(video.content, tmp_path)) == 2


def test_attention_flow_edits_an_inline_video(env, standin_url, tmp_path):
    inline = "data:video/mp4;base64," + base64.b64encode(Path(clip_path(env)).read_bytes()).decode()
    response = requests.post(f"{standin_url}{API}/edit/attention-flow/edit", timeout=120, json={
        "source_base64": inline, "source_prompt": "a pattern moving right", "prompts": ["a stripe moving right"],
        "settings": AF_EDIT})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["method"], result["frames"], result["width"], result["height"]) == ("attention-flow", 2, 64, 64)
    assert len(read_video(requests.get(standin_url + result["video_urls"][0], timeout=30).content, tmp_path)) == 2


# --------------------------------------------------------------------------- host: interrupt and resume, progress


def test_an_interrupted_training_keeps_its_checkpoint_and_resumes_over_the_api(env, standin_url):
    from lib_vidguide.pipelines.tune_a_video import TuneAVideoSettings
    from lib_vidguide.webui import edit_host
    from modules.call_queue import queue_lock
    from modules.shared import state

    record = edit_host.create_training("tune-a-video", Path(clip_path(env)), "a pattern", "tiny",
                                       TuneAVideoSettings(**dict(TAV_TRAIN, max_train_steps=4)), copy_source=False)
    seen = []

    def on_progress(step, steps):
        seen.append((state.sampling_step, state.sampling_steps, state.textinfo))
        if step == 1:
            assert edit_host.interrupt() is True  # the tab's Interrupt: the host's state.interrupt()

    with queue_lock:
        state.begin(job="task(test)")
        try:
            stopped = edit_host.train_here(record.artefact_id, on_progress=on_progress)
        finally:
            state.end()
    # The training loop asks before it reports a step: the request made at step 1 stops it after step 2.
    assert stopped.status == "interrupted" and stopped.steps_done == 2
    assert seen[0][:2] == (1, 4) and seen[0][2].startswith("Tune-A-Video training: step 1/4, loss ")
    assert not stopped.weights_path.exists()
    assert sorted(p.name for p in (stopped.folder / "checkpoints").iterdir())[-1] == "step-000002"
    assert edit_host.interrupt() is False  # nothing runs now

    response = requests.post(f"{standin_url}{API}/edit/trainings/{record.artefact_id}/resume", timeout=30)
    assert response.status_code == 200, response.text
    done = wait_for_training(standin_url, record.artefact_id)
    assert done["status"] == "done" and done["steps_done"] == 4, done
    assert any("Resumed from step-000002" in note for note in done["notes"]), done["notes"]
    again = requests.post(f"{standin_url}{API}/edit/trainings/{record.artefact_id}/resume", timeout=30)
    assert again.status_code == 409 and "already trained" in again.text


def test_cancel_over_the_api_stops_a_running_training_after_its_step(env, standin_url, monkeypatch):
    """The worker's training waits after step 1 until cancelled; it then stops there, resumable."""
    import threading

    from lib_vidguide.pipelines.tune_a_video import TuneAVideoSettings
    from lib_vidguide.webui import edit_host

    reached = threading.Event()
    original = edit_host.train_here

    def slow_after_first_step(artefact_id, *, should_stop=None, on_progress=None):
        def hold(step, steps):
            if step == 1:
                reached.set()
                deadline = time.time() + 30
                while not should_stop() and time.time() < deadline:
                    time.sleep(0.02)

        return original(artefact_id, should_stop=should_stop, on_progress=hold)

    monkeypatch.setattr(edit_host, "train_here", slow_after_first_step)
    record = edit_host.create_training("tune-a-video", Path(clip_path(env)), "a pattern", "tiny",
                                       TuneAVideoSettings(**dict(TAV_TRAIN, max_train_steps=4)), copy_source=False)
    edit_host.submit_training(record.artefact_id)
    assert reached.wait(120)
    running = requests.get(f"{standin_url}{API}/edit/trainings/{record.artefact_id}", timeout=30).json()
    assert running["status"] == "running" and running["queue_position"] == 0
    response = requests.post(f"{standin_url}{API}/edit/trainings/{record.artefact_id}/cancel", timeout=30)
    assert response.status_code == 200
    info = wait_for_training(standin_url, record.artefact_id)
    # (the loop asks whether to stop before it reports step 1, so it stops after step 2)
    assert info["status"] == "interrupted" and info["steps_done"] == 2, info


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_clear_4xx(env, standin_url, tmp_path):
    from lib_vidguide.pipelines.motion_inversion import MotionInversionSettings
    from lib_vidguide.pipelines.tune_a_video import TuneAVideoSettings
    from lib_vidguide.webui import edit_host

    clip = clip_path(env)
    (env / "vidguide-inputs" / "not-a-video.mp4").write_bytes(b"this is text, not a video")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(Path(clip).read_bytes())
    untrained = edit_host.create_training("tune-a-video", Path(clip), "a pattern", "tiny",
                                          TuneAVideoSettings(**TAV_TRAIN), copy_source=False)
    untrained.status = "interrupted"
    untrained.save()
    motion = edit_host.create_training("motion-inversion", Path(clip), "a pattern", "tiny-t2v",
                                       MotionInversionSettings(**MI_TRAIN), copy_source=False)
    train = {"source_path": clip, "prompt": "a pattern", "settings": TAV_TRAIN}
    cases = [
        # (route, body, status, words in the detail)
        ("tune-a-video/train", {**train, "source_path": str(outside)}, 403, "outside the folders"),
        ("tune-a-video/train", {**train, "source_path": clip + ".missing"}, 422, "no video file"),
        ("tune-a-video/train", {**train, "source_path": str(env / "vidguide-inputs" / "not-a-video.mp4")}, 422,
         "not-a-video.mp4"),
        ("tune-a-video/train", {**train, "model": "no-such-model"}, 422, "Stable-diffusion"),
        ("tune-a-video/train", {**train, "model": "../models/Stable-diffusion/tiny"}, 422, "not a model name"),
        ("tune-a-video/train", {**train, "model": "/etc"}, 422, "not a model name"),
        ("tune-a-video/train", {**train, "prompt": "  "}, 422, "training prompt is empty"),
        ("tune-a-video/train", {**train, "settings": dict(TAV_TRAIN, width=72 - 4)}, 422, "multiple of 8"),
        ("tune-a-video/train", {**train, "settings": dict(TAV_TRAIN, frames=5)}, 422, "has 4 frames"),
        ("tune-a-video/train", {**train, "source_path": None}, 422, "give the video"),
        ("tune-a-video/train", {**train, "source_base64": "%%%"}, 422, "at most one"),
        ("tune-a-video/train", {**{k: v for k, v in train.items() if k != "source_path"}, "source_base64": "%%%"},
         422, "not valid base64"),
        ("motion-inversion/train", {**train, "settings": MI_TRAIN, "model": "tiny"}, 422, "text2video"),
        ("tune-a-video/edit", {"artefact_id": "20250101-000000-tav-abcdef", "prompts": ["x"]}, 404, "unknown"),
        ("tune-a-video/edit", {"artefact_id": "../../etc", "prompts": ["x"]}, 404, "unknown"),
        ("tune-a-video/edit", {"artefact_id": untrained.artefact_id, "prompts": ["x"]}, 409, "not trained yet"),
        ("tune-a-video/edit", {"artefact_id": motion.artefact_id, "prompts": ["x"]}, 422, "Motion Inversion weights"),
        ("tune-a-video/edit", {"artefact_id": untrained.artefact_id, "prompts": []}, 422, "at least one prompt"),
        ("motion-inversion/generate", {"artefact_id": motion.artefact_id, "prompts": ["x"] * 9}, 422, "at most 8"),
        ("attention-flow/edit", {"source_prompt": "a", "prompts": ["b"], "model": "tiny"}, 422, "give the video"),
        ("attention-flow/edit", {"source_path": clip, "source_prompt": "", "prompts": ["b"], "model": "tiny"}, 422,
         "source prompt is empty"),
        ("attention-flow/edit", {"source_path": clip, "source_prompt": "a", "prompts": ["b"], "model": "tiny",
                                 "settings": {"reweight": "oops"}}, 422, "reweight"),
    ]
    trainings_before = {record.artefact_id for record in edit_host.list_records()}
    for route, body, status, words in cases:
        response = requests.post(f"{standin_url}{API}/edit/{route}", json=body, timeout=60)
        assert response.status_code == status, (route, body, response.status_code, response.text)
        assert words.lower() in response.text.lower(), (route, body, response.text)
        assert "Traceback" not in response.text
    assert {record.artefact_id for record in edit_host.list_records()} == trainings_before  # nothing queued
    for name in ("nothing.mp4", "20250101-000000-af-abcdef.mp4", "..%2F..%2Fetc%2Fpasswd"):
        assert requests.get(f"{standin_url}{API}/edit/videos/{name}", timeout=30).status_code == 404
    assert requests.get(f"{standin_url}{API}/edit/trainings/nope", timeout=30).status_code == 404
    assert requests.post(f"{standin_url}{API}/edit/trainings/20250101-000000-mi-abcdef/resume",
                         timeout=30).status_code == 404


def test_routes_need_api_auth_when_set(env, standin_url, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:s3cret")
    url = f"{standin_url}{API}/edit/trainings"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, auth=("alice", "nope"), timeout=30).status_code == 401
    assert requests.get(url, auth=("alice", "s3cret"), timeout=30).status_code == 200
    body = {"source_path": clip_path(env), "prompt": "a pattern", "settings": TAV_TRAIN}
    assert requests.post(f"{standin_url}{API}/edit/tune-a-video/train", json=body, timeout=30).status_code == 401
    assert not (env / "outputs" / "vidguide" / "edit" / "trained").exists()  # nothing was created


def test_base_models_are_named_or_the_webuis_loaded_checkpoint(env, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from lib_vidguide.errors import UserInputError
    from lib_vidguide.webui import edit_host
    from modules import shared

    assert edit_host.sd_model_choices() == ["tiny"] and edit_host.t2v_model_choices() == ["tiny-t2v"]
    sd = env / "models" / "Stable-diffusion"
    assert edit_host.sd_model_for_run("tiny") == str(sd / "tiny")
    assert edit_host.t2v_model_for_run("") == str(env / "models" / "text2video" / "tiny-t2v")
    # Empty = the checkpoint file the WebUI has loaded (its sd_checkpoint_info.filename).
    checkpoint = tmp_path / "loaded.safetensors"
    checkpoint.write_bytes(b"x")
    monkeypatch.setattr(shared, "sd_model", SimpleNamespace(sd_checkpoint_info=SimpleNamespace(filename=str(checkpoint))))
    assert edit_host.sd_model_for_run("") == str(checkpoint)
    for bad in ("../tiny", "/etc/passwd", "tiny\x00", "other"):
        with pytest.raises(UserInputError) as error:
            edit_host.sd_model_for_run(bad)
        assert error.value.status_code == 422 and str(sd) in str(error.value)


# --------------------------------------------------------------------------- the sub-tab's functions


def test_tab_settings_take_method_defaults_and_name_the_control_at_fault():
    from lib_vidguide.webui import edit_tab

    defaults = edit_tab.train_settings_from_values("tune-a-video", {"frames": 0, "width": 0, "train_steps": 0,
                                                                    "learning_rate": 0, "train_seed": -1})
    assert (defaults.frames, defaults.width, defaults.max_train_steps, defaults.learning_rate) == (24, 512, 500, 3e-5)
    chosen = edit_tab.train_settings_from_values("motion-inversion", {**CLIP, "train_steps": 3, "checkpoint_every": 0,
                                                                      "inversion_steps": 2})
    assert (chosen.frames, chosen.width, chosen.max_train_steps, chosen.checkpointing_steps, chosen.inversion_steps) \
        == (2, 64, 3, 0, 2)
    edit = edit_tab.edit_settings_from_values("tune-a-video", {"edit_steps": 3, "guidance_scale": 0,
                                                               "inversion_steps": -1, "edit_seed": 5})
    assert (edit.num_inference_steps, edit.guidance_scale, edit.inversion_steps, edit.seed, edit.frames) == \
        (3, 0.0, 50, 5, None)  # frames: as trained
    with pytest.raises(edit_tab.EditInputError, match=r"Width: .*multiple of 8"):
        edit_tab.edit_settings_from_values("attention-flow", {"width": 100})
    with pytest.raises(edit_tab.EditInputError, match=r"Training steps: .*less than or equal to 100000"):
        edit_tab.train_settings_from_values("tune-a-video", {"train_steps": 10**6})


def test_tab_buttons_answer_bad_input_with_a_message(env):
    from lib_vidguide.webui import edit_tab

    def call(function, **values):
        named = {name: None for name in edit_tab.INPUT_NAMES}
        named.update(values)
        return function("task(x)", *[named[name] for name in edit_tab.INPUT_NAMES])

    _, status = call(edit_tab.edit, method="Tune-A-Video", edit_prompts="x")
    assert "data-status='error'" in status and "Select a trained Tune-A-Video artefact" in status
    _, status = call(edit_tab.train, method="AttentionFlow")
    assert "needs no training" in status
    _, status = call(edit_tab.train, method="Tune-A-Video", source_prompt="a pattern", server_path="/etc/passwd")
    assert "outside the folders VidGuide may read" in status
    _, status = call(edit_tab.train, method="Tune-A-Video", source_prompt="a pattern", server_path=clip_path(env),
                     frames=9, width=64, height=64, sample_stride=1)
    assert "has 4 frames" in status and "Traceback" not in status
    _, status = call(edit_tab.resume)
    assert "Select the interrupted training" in status
    sd, t2v, training, train_button, resume_button, edit_button = edit_tab.method_changed("Motion Inversion")
    assert (sd["visible"], t2v["visible"], training["visible"], edit_button["value"]) == (False, True, True, "Generate")
    assert edit_tab.method_changed("AttentionFlow")[3]["visible"] is False
