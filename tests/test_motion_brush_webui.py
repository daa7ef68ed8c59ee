"""The SVD motion brush inside the WebUI (stand-in host): the host functions, the sub-tab's functions,
the gradio 3/4 brush values, and POST /vidguide/v1/motion-brush over real HTTP on loopback.

Every run is real: a tiny random-weight SVD (``save_tiny_svd``) in ``<WebUI models>/svd/tiny``,
64x64 pixels, 4 frames, 2 steps, on the CPU (about a second each).
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest
import requests
from PIL import Image

from lib_vidguide.errors import UserInputError
from lib_vidguide.svd_motion_brush import MotionBrushInterrupted, MotionBrushSettings, save_tiny_svd

API = "/vidguide/v1"
TINY = dict(frames=4, steps=2, decode_chunk_size=4, seed=7)


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 90 * np.sin(xx / 5.0), 128 + 90 * np.cos(yy / 4.0), rng.uniform(0, 255, (height, width))], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def right_half_mask(width: int = 64, height: int = 64) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 2:] = 255
    return Image.fromarray(mask, mode="L")


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="session")
def tiny_svd(tmp_path_factory) -> Path:
    return save_tiny_svd(tmp_path_factory.mktemp("mb-tiny-svd") / "tiny")


@pytest.fixture
def env(fresh_state, tiny_svd, tmp_path, monkeypatch):
    """A private WebUI data folder with the tiny SVD in <models>/svd/tiny; no --api-auth."""
    from lib_vidguide.webui import motion_brush_host
    from modules import paths_internal, shared

    data = tmp_path / "webui"
    monkeypatch.setattr(paths_internal, "data_path", str(data))
    monkeypatch.setattr(paths_internal, "models_path", str(data / "models"))
    monkeypatch.setattr(shared.cmd_opts, "api_auth", None, raising=False)
    (data / "models" / "svd").mkdir(parents=True)
    (data / "models" / "svd" / "tiny").symlink_to(tiny_svd, target_is_directory=True)
    yield data
    motion_brush_host.release()


def outputs(data: Path) -> list[Path]:
    folder = data / "outputs" / "vidguide" / "motion-brush"
    return sorted(folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------- host functions


def test_a_run_writes_video_and_frames_reports_progress_and_releases_the_model(env):
    from lib_vidguide.webui import motion_brush_host
    from modules.call_queue import queue_lock
    from modules.shared import state

    seen = []

    def on_progress(step, steps):
        seen.append((state.sampling_step, state.sampling_steps, state.job_count, state.textinfo))

    with queue_lock:  # as wrap_gradio_gpu_call holds it for the tab
        state.begin(job="task(test)")
        try:
            run = motion_brush_host.run_here(picture(), right_half_mask(), model="tiny",
                                             settings=MotionBrushSettings(**TINY), on_progress=on_progress)
        finally:
            state.end()
    assert seen == [(1, 2, 1, "Motion brush: step 1/2"), (2, 2, 1, "Motion brush: step 2/2, then decoding")]
    assert re.fullmatch(r"\d{8}-\d{6}-7", run.run_id)
    folder = env / "outputs" / "vidguide" / "motion-brush"
    assert run.video_path == folder / f"{run.run_id}.mp4" and run.video_path.is_file()
    assert sorted(p.name for p in (folder / run.run_id).iterdir()) == [f"frame_{i:05d}.png" for i in range(4)]
    assert (run.frames, run.width, run.height, run.seed, run.fps) == (4, 64, 64, 7, 8)
    assert not motion_brush_host.runner().is_loaded  # the SD checkpoint gets its VRAM back
    assert motion_brush_host.runner().device == "cpu"  # modules.devices.device
    # A second run with the same seed in the same second gets its own id.
    with queue_lock:
        again = motion_brush_host.run_here(picture(), right_half_mask(), model="tiny",
                                           settings=MotionBrushSettings(**TINY))
    assert again.run_id != run.run_id and again.video_path.is_file() and run.video_path.is_file()


def test_keep_loaded_keeps_the_model_until_released(env):
    from lib_vidguide.webui import motion_brush_host

    motion_brush_host.run_with_queue_lock(picture(), None, model="tiny",
                                          settings=MotionBrushSettings(**TINY, keep_loaded=True))
    runner = motion_brush_host.runner()
    assert runner.is_loaded
    assert motion_brush_host.release() is True and not runner.is_loaded
    assert motion_brush_host.release() is False


def test_the_runner_follows_the_models_folder(env, monkeypatch, tmp_path):
    from lib_vidguide.webui import motion_brush_host
    from modules import paths_internal

    first = motion_brush_host.runner()
    assert motion_brush_host.runner() is first
    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "other-models"))
    second = motion_brush_host.runner()
    assert second is not first and second.models_dir == tmp_path / "other-models"


def test_interrupt_stops_the_run_cleanly_and_only_a_running_one(env):
    from lib_vidguide.webui import motion_brush_host
    from modules.shared import state

    assert motion_brush_host.interrupt() is False  # nothing runs: the host's state is left alone
    assert state.interrupted is False
    answers = []

    def interrupt_at_first_step(step, steps):
        if step == 1:
            answers.append(motion_brush_host.interrupt())

    with pytest.raises(MotionBrushInterrupted, match="after step 1 of 2; nothing was written"):
        motion_brush_host.run_here(picture(), right_half_mask(), model="tiny", settings=MotionBrushSettings(**TINY),
                                   on_progress=interrupt_at_first_step)
    assert answers == [True]
    assert outputs(env) == []  # nothing half-written
    assert not motion_brush_host.runner().is_loaded
    state.interrupted = False


def test_api_runs_wait_for_the_queue_lock(env):
    """An API run takes the WebUI's queue lock: it waits while a generation (here, the test) holds it."""
    from lib_vidguide.webui import motion_brush_host
    from modules.call_queue import queue_lock

    finished = threading.Event()

    def api_run():
        motion_brush_host.run_with_queue_lock(picture(), None, model="tiny", settings=MotionBrushSettings(**TINY))
        finished.set()

    with queue_lock:
        worker = threading.Thread(target=api_run)
        worker.start()
        time.sleep(1.0)
        assert not finished.is_set()
    worker.join(timeout=120)
    assert finished.is_set()


def test_models_are_named_not_given_as_server_paths(env):
    from lib_vidguide.webui import motion_brush_host

    svd = env / "models" / "svd"
    assert motion_brush_host.model_for_run("tiny") == str(svd / "tiny")
    assert motion_brush_host.model_for_run("") == ""
    assert motion_brush_host.model_for_run("stabilityai/stable-video-diffusion-img2vid-xt") == \
        "stabilityai/stable-video-diffusion-img2vid-xt"
    for bad in ("/etc", "../svd/tiny", "a/../b", "C:\\models\\svd", "..", "x\x00y"):
        with pytest.raises(UserInputError) as error:
            motion_brush_host.model_for_run(bad)
        assert error.value.status_code == 422 and str(svd) in str(error.value)
    assert motion_brush_host.model_choices() == ["tiny"]


def test_a_missing_models_folder_is_created_and_named(env, monkeypatch, tmp_path):
    from lib_vidguide.webui import motion_brush_host
    from modules import paths_internal

    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "fresh-models"))
    with pytest.raises(ValueError) as error:
        motion_brush_host.run_with_queue_lock(picture(), None, model="", settings=MotionBrushSettings(**TINY))
    assert (tmp_path / "fresh-models" / "svd").is_dir()
    assert str(tmp_path / "fresh-models" / "svd") in str(error.value) and "model_index.json" in str(error.value)
    assert str(tmp_path / "fresh-models" / "svd") in motion_brush_host.where_models_go()


@pytest.mark.parametrize("text, message", [
    ("", "image is empty"),
    ("   ", "image is empty"),
    ("!!!not base64!!!", "not valid base64"),
    ("NaN", "not valid base64"),
    ("nan", "not valid base64"),
    ("data:image/png,abc", "without base64 data"),
    ("data:image/png;base64", "without base64 data"),
    (base64.b64encode(b"plain text, not a picture").decode(), "not a readable PNG, JPEG or WebP"),
    ("=", "not valid base64"),
])
def test_garbage_base64_is_a_clear_422(text, message):
    from lib_vidguide.webui import motion_brush_host

    with pytest.raises(UserInputError, match=message) as error:
        motion_brush_host.decode_base64_picture(text, "image", required=True)
    assert error.value.status_code == 422


def test_pictures_decode_from_base64_and_data_urls_and_only_safe_formats():
    from lib_vidguide.webui import motion_brush_host

    decode = motion_brush_host.decode_base64_picture
    assert decode(b64(picture()), "image", required=True).size == (64, 64)
    assert decode("data:image/jpeg;base64," + b64(picture(), "JPEG"), "image", required=True).size == (64, 64)
    wrapped = "\n".join(re.findall(".{1,76}", b64(picture())))  # MIME-style line breaks
    assert decode(wrapped, "image", required=True).size == (64, 64)
    assert decode(None, "mask", required=False) is None and decode("", "mask", required=False) is None
    with pytest.raises(UserInputError, match="mask is valid base64 but not a readable PNG"):
        decode(b64(picture(), "BMP"), "mask", required=True)  # PIL reads BMP; the API does not take it


# --------------------------------------------------------------------------- brush values (gradio 3 and 4)


def test_brush_values_from_gradio_3_and_4_and_plain_images():
    from lib_vidguide.motion_brush import mask_to_array
    from lib_vidguide.webui import compat

    image = picture()
    painted = np.zeros((64, 64), np.uint8)
    painted[10:20, 40:60] = 255
    # gradio 3.41 sketch: {"image", "mask"}, the mask's painted pixels white (RGB).
    got_image, mask = compat.brush_image_and_mask({"image": image, "mask": Image.fromarray(painted).convert("RGB")})
    assert got_image is image and np.array_equal(np.asarray(mask), painted)
    # gradio 4 ImageEditor: {"background", "layers", "composite"}; strokes are the layers' alpha.
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[10:20, 40:60] = (255, 255, 255, 255)
    second = np.zeros((64, 64, 4), np.uint8)
    second[50:60, 0:5] = (255, 0, 0, 128)
    got_image, mask = compat.brush_image_and_mask({"background": image, "composite": image, "layers": [
        Image.fromarray(layer, "RGBA"), Image.fromarray(second, "RGBA")]})
    values = mask_to_array(mask)
    assert got_image is image and values[15, 50] == 1.0 and values[55, 2] == pytest.approx(128 / 255)
    assert values[0, 0] == 0.0 and values[30, 30] == 0.0
    assert compat.brush_image_and_mask({"background": image, "layers": [], "composite": image}) == (image, None)
    assert compat.brush_image_and_mask({"background": None, "layers": None, "composite": image}) == (image, None)
    # A plain image (a host that turned the input into gr.Image): no mask.
    assert compat.brush_image_and_mask(image) == (image, None)
    assert compat.brush_image_and_mask(None) == (None, None)
    assert compat.brush_image_and_mask({"image": image, "mask": None}) == (image, None)


def test_the_gradio_3_sketch_input_accepts_an_image_with_no_stroke_yet():
    """gradio 3.41 sends {"image": ..., "mask": null} until the first stroke; the stock preprocess
    fails on it. Ours gives a blank mask (nothing painted) of the image's size."""
    from lib_vidguide.webui import compat

    if compat.gradio_major() >= 4:
        pytest.skip("gradio 4 has no sketch tool: its ImageEditor is checked in test_ui_build and the browser tests")
    component = compat.brush_input("brush", "test_brush")
    assert component.get_block_name() == "image" and component.tool == "sketch"
    value = component.preprocess({"image": "data:image/png;base64," + b64(picture(96, 64)), "mask": None})
    assert value["image"].size == (96, 64) and value["mask"].size == (96, 64)
    assert np.asarray(value["mask"]).max() == 0
    painted = component.preprocess({"image": "data:image/png;base64," + b64(picture()),
                                    "mask": "data:image/png;base64," + b64(right_half_mask().convert("RGBA"))})
    assert np.asarray(painted["mask"].convert("L"))[:, 40].min() == 255


# --------------------------------------------------------------------------- the sub-tab's functions


def tab_values(**changes) -> list:
    from lib_vidguide.webui import motion_brush_tab

    values = {"model": "tiny", "frames": 4, "steps": 2, "fps": 8, "motion_bucket_id": 30, "noise_aug_strength": 0.02,
              "min_guidance_scale": 1.0, "max_guidance_scale": 3.0, "seed": 7, "max_steps_to_replace": -1,
              "composite": True, "feather_px": 8, "width": 0, "height": 0, "output_format": "mp4",
              "decode_chunk_size": 4, "cpu_offload": True, "fp16": True, "keep_loaded": False}
    values.update(changes)
    return [values[name] for name in motion_brush_tab.SETTINGS_INPUT_NAMES]


def test_tab_settings_from_the_controls():
    from lib_vidguide.webui import motion_brush_tab

    named = dict(zip(motion_brush_tab.SETTINGS_INPUT_NAMES, tab_values(width=0, height=320, seed=None,
                                                                       max_steps_to_replace=-1)))
    settings = motion_brush_tab.settings_from_values(named)
    assert settings.width is None and settings.height == 320 and settings.seed == -1
    assert settings.max_steps_to_replace is None and settings.frames == 4
    named["max_steps_to_replace"] = 3
    assert motion_brush_tab.settings_from_values(named).max_steps_to_replace == 3
    named["frames"] = 1
    with pytest.raises(motion_brush_tab.MotionBrushInputError, match="^Frames: "):
        motion_brush_tab.settings_from_values(named)


def test_the_preview_dims_the_still_part_and_notes_what_will_happen(env):
    from lib_vidguide.webui import motion_brush_tab

    image = picture(500, 300)
    preview, notes = motion_brush_tab.mask_preview({"image": image, "mask": Image.new("RGB", (500, 300))})
    assert "Nothing painted: the whole image moves" in notes
    assert "Resized from 500x300 to 512x320" in notes
    assert np.array_equal(np.asarray(preview), np.asarray(image))
    mask = Image.new("L", (500, 300))
    mask.paste(255, (250, 0, 500, 300))
    preview, notes = motion_brush_tab.mask_preview({"image": image, "mask": mask.convert("RGB")})
    shown, original = np.asarray(preview).astype(int), np.asarray(image).astype(int)
    assert np.array_equal(shown[:, 300:], original[:, 300:])  # painted: as is
    assert (shown[:, :200] <= np.ceil(original[:, :200] * 0.3)).all()  # still: dimmed
    assert "50% of the image may move" in notes
    _, notes = motion_brush_tab.mask_preview({"image": image, "mask": mask.convert("RGB")}, 640, 0)
    assert "to 640x384" in notes
    assert motion_brush_tab.mask_preview(None)[0] is None
    _, notes = motion_brush_tab.mask_preview({"image": image, "mask": Image.new("RGB", (300, 300))})
    assert "data-status='error'" in notes and "different shape" in notes


def test_run_from_the_tab_through_the_hosts_gpu_wrapper(env):
    from lib_vidguide.webui import compat, motion_brush_tab

    run = compat.gpu_call(motion_brush_tab.run, extra_outputs=[None, None])
    video, animation, status = run("task(mb-tab)", {"image": picture(), "mask": right_half_mask().convert("RGB")},
                                   *tab_values())
    assert "data-status='done'" in status and "Done: 4 frames at 64x64" in status and "Time taken" in status, status
    assert video["visible"] is True and video["value"].endswith(".mp4") and Path(video["value"]).is_file()
    assert animation["visible"] is False
    video, animation, status = run("task(mb-tab-2)", {"image": picture(), "mask": None},
                                   *tab_values(output_format="gif"))
    assert "No motion mask was painted: the whole image may move" in status, status
    assert animation["value"].endswith(".gif") and animation["visible"] and video["visible"] is False


@pytest.mark.parametrize("case", ["no image", "no model", "missing model", "path model", "guidance", "empty image"])
def test_tab_bad_input_is_a_message_not_a_traceback(env, case, monkeypatch, tmp_path):
    from lib_vidguide.webui import motion_brush_tab
    from modules import paths_internal

    value = {"image": picture(), "mask": None}
    values = tab_values()
    expected = {"no image": "No image: upload", "no model": "No SVD model was found",
                "missing model": "was not found", "path model": "looks like a path",
                "guidance": "min_guidance_scale (5.0) is above max_guidance_scale",
                "empty image": "The image is empty"}[case]
    if case == "no image":
        value = None
    elif case == "no model":
        monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "empty-models"))
        values = tab_values(model=None)
    elif case == "missing model":
        values = tab_values(model="svd-xt")
    elif case == "path model":
        values = tab_values(model="/etc/passwd")
    elif case == "guidance":
        values = tab_values(min_guidance_scale=5.0, max_guidance_scale=2.0)
    elif case == "empty image":
        value = {"image": Image.new("RGB", (0, 0)), "mask": None}
    video, animation, status = motion_brush_tab.run("task(x)", value, *values)
    assert "data-status='error'" in status and expected in status and "Traceback" not in status, status
    if case in ("no model", "missing model"):
        assert "svd" in status and "model_index.json" in status  # where to put the model
    assert outputs(env) == []


def test_tab_interrupt(env, monkeypatch):
    from lib_vidguide.webui import motion_brush_host, motion_brush_tab

    original = motion_brush_host.run_here

    def interrupted_run(*args, **kwargs):
        return original(*args, on_progress=lambda step, steps: motion_brush_tab.interrupt(), **kwargs)

    monkeypatch.setattr(motion_brush_host, "run_here", interrupted_run)
    _, _, status = motion_brush_tab.run("task(x)", {"image": picture(), "mask": None}, *tab_values())
    assert "data-status='interrupted'" in status and "nothing was written" in status, status
    assert outputs(env) == []


# --------------------------------------------------------------------------- the REST API


def post(url, body, **kwargs):
    return requests.post(f"{url}{API}/motion-brush", json=body, timeout=120, **kwargs)


def test_api_runs_and_the_video_downloads(standin_url, env):
    from lib_vidguide.webui import motion_brush_host
    from lib_vidguide.video_io import read_all_frames

    response = post(standin_url, {"image": b64(picture()), "mask": b64(right_half_mask()), "model": "tiny",
                                  "settings": TINY})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["frames"], answer["seed"], answer["width"], answer["height"], answer["fps"]) == (4, 7, 64, 64, 8)
    assert answer["format"] == "mp4" and answer["notes"] == []
    assert answer["video_url"] == f"{API}/motion-brush/{answer['run_id']}/video"
    video = requests.get(standin_url + answer["video_url"], timeout=30)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    saved = env / "outputs" / "vidguide" / "motion-brush" / f"{answer['run_id']}.mp4"
    assert video.content == saved.read_bytes() and len(read_all_frames(saved)) == 4
    assert not motion_brush_host.runner().is_loaded  # released after the run

    # A data: URL, no mask (the whole image moves), a size that is not a multiple of 64, a gif.
    response = post(standin_url, {"image": "data:image/jpeg;base64," + b64(picture(96, 64), "JPEG"),
                                  "mask": None, "model": "tiny", "settings": {**TINY, "output_format": "gif"}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["width"], answer["height"], answer["format"]) == (128, 64, "gif")
    assert any("whole image may move" in note for note in answer["notes"])
    assert any("resized to 128x64" in note for note in answer["notes"])
    gif = requests.get(standin_url + answer["video_url"], timeout=30)
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"


def bad_request(case: str, env: Path):
    body = {"image": b64(picture()), "mask": b64(right_half_mask()), "model": "tiny", "settings": TINY}
    raw = None
    if case == "garbage image":
        body["image"] = "%%%garbage%%%"
    elif case == "NaN image":
        body["image"] = "NaN"
    elif case == "JSON NaN image":
        raw = json.dumps({**body, "image": float("nan")})
    elif case == "JSON NaN setting":
        raw = json.dumps({**body, "settings": {**TINY, "noise_aug_strength": float("nan")}})
    elif case == "garbage mask":
        body["mask"] = "data:image/png;base64,@@@"
    elif case == "empty image":
        body["image"] = ""
    elif case == "not a picture":
        body["image"] = base64.b64encode(b"\x00" * 64).decode()
    elif case == "mask of another size":
        body["mask"] = b64(right_half_mask(64, 32))
    elif case == "missing model folder":
        body["model"] = "svd-xt"
    elif case == "model path":
        body["model"] = str(env / "models" / "svd" / "tiny")
    elif case == "bad settings":
        body["settings"] = {**TINY, "frames": 1}
    elif case == "unknown setting":
        body["settings"] = {**TINY, "strength": 1}
    elif case == "guidance":
        body["settings"] = {**TINY, "min_guidance_scale": 4, "max_guidance_scale": 2}
    elif case == "no image":
        del body["image"]
    return body, raw


BAD_CASES = {
    "garbage image": "image is not valid base64",
    "NaN image": "image is not valid base64",
    "JSON NaN image": "image is not valid base64",  # pydantic 1 turns the number into the text "nan"
    "JSON NaN setting": "noise_aug_strength",
    "garbage mask": "mask is not valid base64",
    "empty image": "image is empty",
    "not a picture": "not a readable PNG, JPEG or WebP",
    "mask of another size": "different shape",
    "missing model folder": "was not found",
    "model path": "looks like a path",
    "bad settings": "frames",
    "unknown setting": "strength",
    "guidance": "min_guidance_scale",
    "no image": "image",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_api_bad_input_is_a_clear_422(standin_url, env, case):
    body, raw = bad_request(case, env)
    if raw is not None:
        response = requests.post(f"{standin_url}{API}/motion-brush", data=raw, timeout=60,
                                 headers={"Content-Type": "application/json"})
    else:
        response = post(standin_url, body)
    assert response.status_code == 422, (response.status_code, response.text)
    expected = BAD_CASES[case]
    if case == "JSON NaN image" and hasattr(pydantic.BaseModel, "model_validate"):
        expected = "Input should be a valid string"  # pydantic 2 (Forge) refuses the number itself
    assert expected in response.text, response.text
    if case == "missing model folder":
        assert str(env / "models" / "svd") in response.text and "model_index.json" in response.text
    assert outputs(env) == []


def test_api_unknown_runs_are_404(standin_url, env):
    for run_id in ("20250101-000000-1", "nope", "..%2F..%2Fetc", "20250101-000000-1.mp4", "x" * 300):
        response = requests.get(f"{standin_url}{API}/motion-brush/{run_id}/video", timeout=30)
        assert response.status_code == 404, (run_id, response.status_code, response.text)


def test_api_interrupt_is_a_409_and_writes_nothing(standin_url, env, monkeypatch):
    from lib_vidguide.webui import motion_brush_host

    original = motion_brush_host.run_here

    def interrupted_run(*args, **kwargs):
        return original(*args, on_progress=lambda step, steps: motion_brush_host.interrupt(), **kwargs)

    monkeypatch.setattr(motion_brush_host, "run_here", interrupted_run)
    response = post(standin_url, {"image": b64(picture()), "model": "tiny", "settings": TINY})
    assert response.status_code == 409 and "nothing was written" in response.text, response.text
    assert outputs(env) == []


def test_api_auth_applies_to_the_motion_brush_routes(standin_url, env, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:s3cret")
    body = {"image": b64(picture()), "model": "tiny", "settings": TINY}
    anonymous = post(standin_url, body)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Basic"
    assert post(standin_url, body, auth=("alice", "wrong")).status_code == 401
    video_url = f"{standin_url}{API}/motion-brush/20250101-000000-1/video"
    assert requests.get(video_url, timeout=30).status_code == 401
    assert requests.get(video_url, auth=("alice", "s3cret"), timeout=30).status_code == 404
    assert outputs(env) == []  # nothing ran for the anonymous request
    answer = post(standin_url, body, auth=("alice", "s3cret"))
    assert answer.status_code == 200, answer.text
    assert requests.get(standin_url + answer.json()["video_url"], timeout=30).status_code == 401
    assert requests.get(standin_url + answer.json()["video_url"], auth=("alice", "s3cret"), timeout=30).status_code == 200


def test_api_oversized_bodies_are_refused_before_they_are_read(standin_url, env, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "vidguide_max_upload_mb", 1, raising=False)
    response = post(standin_url, {"image": "A" * (3 << 20), "model": "tiny"})
    assert response.status_code == 413


def test_api_routes_are_in_the_openapi_schema(standin_url, env):
    schema = requests.get(f"{standin_url}/openapi.json", timeout=30).json()
    assert f"{API}/motion-brush" in schema["paths"] and f"{API}/motion-brush/{{run_id}}/video" in schema["paths"]
    components = schema["components"]["schemas"]
    assert {"MotionBrushRequest", "MotionBrushResponse", "MotionBrushSettings"} <= set(components)
    assert "whole image moves" in components["MotionBrushRequest"]["properties"]["mask"]["description"]
    operation = schema["paths"][f"{API}/motion-brush"]["post"]
    assert operation["security"] and {"404", "409", "422"} <= set(operation["responses"])
