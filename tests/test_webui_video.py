"""The selectable "VidGuide video" script, driven through the host's script_name/script_args mapping."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from videos import moving_pattern, write_clip

from lib_vidguide.video_io import probe, read_all_frames
from lib_vidguide.webui import ui

TITLE = "VidGuide video"


@pytest.fixture
def video_env(fresh_state, tmp_path, monkeypatch):
    from modules import shared

    monkeypatch.setitem(shared.opts.data, "outdir_img2img_samples", str(tmp_path / "outputs" / "img2img-images"))
    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", str(tmp_path / "inputs"))
    (tmp_path / "inputs").mkdir()
    clip = write_clip(tmp_path / "inputs" / "source.mp4", moving_pattern(4))
    return fresh_state, clip, tmp_path


def video_args(video, **overrides):
    values = dict(video=video, enabled=True, strength=1.0, schedule="seed_showcase", weight_mode="consistency",
                  flow_method="dis_medium", warp_space="pixel", start_frame=0, max_frames=0, every_nth=1, fps=0)
    values.update(overrides)
    return [values[name] for name in ui.VIDEO_ARG_NAMES]


def run_video_request(webui, args, **fields):
    response = webui.img2img(script_name=TITLE, script_args=args, seed=77, steps=8, denoising_strength=0.5, **fields)
    return json.loads(response["info"])["infotexts"][0]


def test_the_script_arg_count_is_what_script_info_reports(video_env):
    webui, _, _ = video_env
    script = webui.script(TITLE)
    assert script.args_to - script.args_from == len(ui.VIDEO_ARG_NAMES) == 11


@pytest.fixture
def rendered(monkeypatch):
    """The frames as rendered, before H.264 (whose lookahead re-quantizes frame 1 by later frames)."""
    from lib_vidguide.webui.video_script import WebUIFrameRenderer

    frames = []
    original = WebUIFrameRenderer.render

    def recording_render(self, frame, guide, index):
        result = original(self, frame, guide, index)
        frames.append(result.image)
        return result

    monkeypatch.setattr(WebUIFrameRenderer, "render", recording_render)
    return frames


def test_guided_video_over_the_api(video_env, rendered):
    webui, clip, tmp_path = video_env
    info = json.loads(run_video_request(webui, video_args(str(clip))))["vidguide"]
    assert info["frames"] == 4 and not info["interrupted"]
    output = info["output"]
    assert output and output.endswith(".mp4") and str(tmp_path / "outputs" / "vidguide") in output
    meta = probe(output)
    assert (meta.width, meta.height, meta.frame_count) == (64, 64, 4)
    from pathlib import Path

    kept = sorted(Path(info["frames_dir"]).glob("frame_*.png"))
    assert len(kept) == 4

    decoded = read_all_frames(output)
    for index, frame in enumerate(decoded):
        # H.264 loses much of the random model's noise-like texture; each decoded frame must
        # still be closest to its own render.
        errors = [np.abs(frame.astype(int) - other).mean() for other in rendered[:4]]
        assert int(np.argmin(errors)) == index, errors

    json.loads(run_video_request(webui, video_args(str(clip), enabled=False)))
    guided_frames, plain_frames = rendered[:4], rendered[4:]
    assert np.array_equal(guided_frames[0], plain_frames[0]), "frame 1 is never guided"
    for guided, plain in zip(guided_frames[1:], plain_frames[1:]):
        assert np.abs(guided.astype(int) - plain.astype(int)).mean() > 1.0


def test_every_frame_goes_through_process_images_with_alwayson_hooks(video_env, monkeypatch):
    from lib_vidguide.webui.alwayson import VidGuideFlowScript
    from modules.shared import state

    webui, clip, _ = video_env
    seen = []
    original = VidGuideFlowScript.process

    def counting_process(self, p, *args):
        seen.append((state.job_count, p._vg_video_owned))
        return original(self, p, *args)

    monkeypatch.setattr(VidGuideFlowScript, "process", counting_process)
    run_video_request(webui, video_args(str(clip)))
    assert seen == [(4, True)] * 4


def test_the_alwayson_script_stands_down_while_the_video_script_guides(video_env, rendered):
    from host_session import sample_picture, to_b64

    webui, clip, _ = video_env
    guide = to_b64(sample_picture(seed=9))
    run_video_request(webui, video_args(str(clip)))
    run_video_request(
        webui, video_args(str(clip)),
        alwayson_scripts={"VidGuide flow guidance": {"args": [True, guide, None, 1.0, "constant", "uniform"]}},
    )
    assert np.array_equal(np.stack(rendered[:4]), np.stack(rendered[4:]))


def test_frames_do_not_depend_on_the_global_rng_left_by_earlier_requests(video_env, rendered):
    webui, clip, _ = video_env
    for previous_seed in (1, 999):
        torch.manual_seed(previous_seed)
        torch.randn(100)
        run_video_request(webui, video_args(str(clip)))
    assert np.array_equal(np.stack(rendered[:4]), np.stack(rendered[4:]))


def test_latent_warp_uses_the_previous_frames_latent_without_encoding(video_env, monkeypatch):
    from lib_vidguide.webui import compat

    webui, clip, _ = video_env
    encodes = []
    original = compat.encode_rgb
    monkeypatch.setattr(compat, "encode_rgb", lambda model, rgb: encodes.append(rgb.shape) or original(model, rgb))
    info = json.loads(run_video_request(webui, video_args(str(clip), warp_space="latent")))["vidguide"]
    assert info["frames"] == 4 and info["output"]
    assert encodes == []
    encodes.clear()
    run_video_request(webui, video_args(str(clip), warp_space="pixel"))
    assert len(encodes) == 3


def test_a_base64_video_is_accepted(video_env):
    webui, clip, _ = video_env
    data_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode("ascii")
    info = json.loads(run_video_request(webui, video_args(data_url, max_frames=2)))["vidguide"]
    assert info["frames"] == 2


def test_interrupt_stops_after_the_current_frame_and_writes_no_partial_video(video_env, monkeypatch):
    from lib_vidguide.webui.video_script import WebUIFrameRenderer
    from modules.shared import state

    webui, clip, tmp_path = video_env
    original = WebUIFrameRenderer.render

    def interrupting_render(self, frame, guide, index):
        result = original(self, frame, guide, index)
        if index == 1:
            state.interrupt()
        return result

    monkeypatch.setattr(WebUIFrameRenderer, "render", interrupting_render)
    info = json.loads(run_video_request(webui, video_args(str(clip))))["vidguide"]
    assert info["interrupted"] and info["frames"] == 2 and info["output"] is None
    assert not list((tmp_path / "outputs" / "vidguide").glob("*.mp4"))
    from pathlib import Path

    assert [p.name for p in sorted(Path(info["frames_dir"]).iterdir())] == ["frame_000001.png", "frame_000002.png"]


def test_wrong_script_arg_count_is_a_clear_error(video_env):
    webui, clip, _ = video_env
    with pytest.raises(ValueError, match="expected 11 script args") as error:
        webui.img2img(script_name=TITLE, script_args=[str(clip), True])
    assert error.value.status_code == 422  # the WebUI's API answers with it, not 500


def test_a_missing_video_is_a_clear_error(video_env):
    webui, _, _ = video_env
    with pytest.raises(ValueError, match="no source video"):
        webui.img2img(script_name=TITLE, script_args=video_args(None))


def test_api_paths_outside_the_allowed_roots_are_refused(video_env):
    webui, clip, tmp_path = video_env
    outside = write_clip(tmp_path / "elsewhere.mp4", moving_pattern(2))
    escape = tmp_path / "inputs" / ".." / "elsewhere.mp4"
    link = tmp_path / "inputs" / "link.mp4"
    link.symlink_to(outside)
    for path in (outside, escape, link, "/etc/passwd"):
        with pytest.raises(ValueError, match="outside the folders the API may use") as error:
            webui.img2img(script_name=TITLE, script_args=video_args(str(path)))
        assert error.value.status_code == 403
    assert not (tmp_path / "outputs" / "vidguide").exists() or not list((tmp_path / "outputs" / "vidguide").iterdir())


def test_default_roots_are_the_outputs_and_an_inputs_folder(monkeypatch):
    from lib_vidguide.webui import host
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "")
    assert [path.name for path in host.allowed_roots()] == ["outputs", "vidguide-inputs"]
