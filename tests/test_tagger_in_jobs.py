"""The tagger in a WebUI video job: each frame's prompt carries its own source frame's tags."""

from __future__ import annotations

import numpy as np
import pytest
from test_tagger import write_tagger

from lib_vidguide import tagger as tg
from lib_vidguide.jobs import JobSettings
from lib_vidguide.video_io import write_video


def coloured_clip(path, colours):
    frames = []
    for colour in colours:
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[...] = colour
        frames.append(frame)
    write_video(path, frames, fps=8, crf=4)
    return path


def test_each_frame_gets_its_own_tags(fresh_state, tmp_path, monkeypatch):
    from lib_vidguide.webui import jobs_host
    from modules import paths_internal, processing

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path / "webui"))
    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "webui" / "models"))
    write_tagger(tmp_path / "webui" / "models" / tg.TAGGER_FOLDER / "tiny")
    tg.clear_tagger_cache()
    clip = coloured_clip(tmp_path / "colours.mp4", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])

    prompts = []
    original = processing.process_images

    def recording(p):
        prompts.append(p.prompt)
        return original(p)

    monkeypatch.setattr(processing, "process_images", recording)
    settings = JobSettings.from_dict({
        "video": {"width": 64, "height": 64, "seed": 3,
                  "tagger": {"enabled": True, "model": "tiny", "placement": "append", "exclude": "long hair"}},
        "img2img": {"prompt": "a painting", "steps": 4},
    })
    job = jobs_host.job_store().create(clip, settings)
    manifest = jobs_host.run_job_here(job)
    assert manifest.status == "done"
    assert [prompt.split(", ")[0] for prompt in prompts] == ["a painting"] * 3
    assert "red theme" in prompts[0] and "green theme" in prompts[1] and "blue theme" in prompts[2]
    assert all("long hair" not in prompt for prompt in prompts)
    tg.clear_tagger_cache()


def test_a_missing_tagger_model_fails_the_job_with_the_folder_layout(fresh_state, tmp_path, monkeypatch):
    from lib_vidguide.webui import jobs_host
    from modules import paths_internal

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path / "webui"))
    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "webui" / "models"))
    clip = coloured_clip(tmp_path / "colours.mp4", [(255, 0, 0), (0, 255, 0)])
    settings = JobSettings.from_dict({"video": {"width": 64, "height": 64,
                                                "tagger": {"enabled": True, "model": "wd14"}}})
    job = jobs_host.job_store().create(clip, settings)
    with pytest.raises(ValueError, match="vidguide-tagger"):
        jobs_host.run_job_here(job)
    assert jobs_host.job_store().get(job.job_id).manifest.status == "failed"


@pytest.mark.parametrize("model, message", [("wd14", "none is installed"), ("/etc/tagger", "not a path")])
def test_the_api_refuses_a_bad_tagger_model_before_starting(standin_url, fresh_state, tmp_path, monkeypatch,
                                                            model, message):
    import requests
    from test_audio import make_source

    from modules import paths_internal, shared

    monkeypatch.setattr(paths_internal, "data_path", str(tmp_path / "webui"))
    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "webui" / "models"))
    monkeypatch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "")
    source = make_source((tmp_path / "webui" / "vidguide-inputs").mkdir(parents=True) or
                         tmp_path / "webui" / "vidguide-inputs" / "clip.mp4")
    body = {"source_path": str(source), "settings": {"video": {"width": 64, "height": 64,
                                                               "tagger": {"enabled": True, "model": model}}}}
    response = requests.post(f"{standin_url}/vidguide/v1/jobs", json=body, timeout=30)
    assert response.status_code == 422 and message in response.json()["detail"]
    assert requests.get(f"{standin_url}/vidguide/v1/jobs", timeout=30).json()["jobs"] == []
