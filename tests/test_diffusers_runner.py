"""The standalone runner: the same guidance on diffusers, and the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import moving_pattern, write_clip

from lib_vidguide.diffusers_runner import DiffusersImg2Img, Img2ImgParams
from lib_vidguide.guidance import GuideTarget, StepGuidance
from lib_vidguide.video_io import probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from lib_vidguide.tiny_models import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    return DiffusersImg2Img(str(tiny_model_dir))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_full_weight_lands_on_the_guide_and_zero_weight_changes_nothing(runner, sampler):
    frame = moving_pattern(1)[0]
    guide_rgb = moving_pattern(3)[2]
    k0 = runner.encode_rgb(guide_rgb)
    params = Img2ImgParams("a painting", steps=10, strength=0.6, sampler=sampler, seed=3)
    plain_image, plain_latent = runner.img2img(frame, params)

    full = StepGuidance(GuideTarget(k0, torch.ones(1, 1, 8, 8)), "constant", 1.0)
    _, guided_latent = runner.img2img(frame, params, full)
    assert (guided_latent - k0).abs().max().item() <= 1e-4
    assert [round(r.progress, 3) for r in full.history][0] == 0.0

    zero = StepGuidance(GuideTarget(k0, torch.ones(1, 1, 8, 8)), "constant", 0.0)
    zero_image, zero_latent = runner.img2img(frame, params, zero)
    assert torch.equal(zero_latent, plain_latent) and np.array_equal(zero_image, plain_image)

    half_weight = torch.zeros(1, 1, 8, 8)
    half_weight[..., 4:, :] = 1.0
    _, half_latent = runner.img2img(frame, params, StepGuidance(GuideTarget(k0, half_weight), "constant", 1.0))
    assert (half_latent[..., 4:, :] - k0[..., 4:, :]).abs().max().item() <= 1e-4
    assert (half_latent[..., :4, :] - k0[..., :4, :]).abs().mean().item() > 0.05


def test_encoding_is_deterministic_and_leaves_the_global_rng(runner):
    frame = moving_pattern(1)[0]
    state = torch.random.get_rng_state()
    a, b = runner.encode_rgb(frame), runner.encode_rgb(frame)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_frame_size_must_be_a_multiple_of_eight(runner):
    with pytest.raises(ValueError, match="multiple of 8"):
        runner.img2img(np.zeros((60, 64, 3), np.uint8), Img2ImgParams("x"))


def test_missing_model_folder_is_explained():
    with pytest.raises(ValueError, match="does not exist"):
        DiffusersImg2Img(os.path.join("no", "such", "model"))


def test_cli_video_end_to_end(tiny_model_dir, tmp_path):
    source = write_clip(tmp_path / "in.mp4", moving_pattern(5, size=(64, 80)))
    output = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "lib_vidguide", "video", str(source), str(output), "--model", str(tiny_model_dir),
               "--prompt", "a painting", "--steps", "6", "--seed", "11", "--warp-space", "latent"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 5 and summary["seed"] == 11 and summary["size"] == [80, 64]
    info = probe(output)
    assert (info.width, info.height, info.frame_count) == (80, 64, 5)
    assert len(list((tmp_path / "out").glob("frame_*.png"))) == 5
    assert "frame 5/5" in completed.stderr


def test_cli_bad_input_is_one_clear_line(tiny_model_dir, tmp_path):
    not_a_video = tmp_path / "notes.txt"
    not_a_video.write_text("hello")
    completed = subprocess.run(
        [sys.executable, "-m", "lib_vidguide", "video", str(not_a_video), str(tmp_path / "o.mp4"), "--model",
         str(tiny_model_dir), "--prompt", "x"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and "Traceback" not in completed.stderr
    assert not (tmp_path / "o.mp4").exists()
