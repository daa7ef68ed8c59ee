"""The extension's behaviours over HTTP, against any WebUI base URL (real or stand-in).

Request sizes follow A1111's own CPU CI (64x64, few steps). img2img output depends on the
global RNG state the previous request left (HOST_A1111.md §9), so every comparison is made
between requests preceded by the same request.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import requests
from PIL import Image

ALWAYSON_TITLE = "VidGuide flow guidance"
VIDEO_TITLE = "VidGuide video"
TIMEOUT = 600


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def picture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 6, size=3)
    image = np.stack([128 + 100 * np.sin(xx / 6 + phase[0]), 128 + 100 * np.cos(yy / 5 + phase[1]),
                      128 + 100 * np.sin((xx + yy) / 9 + phase[2])], axis=-1)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def decode(image_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image_b64))).convert("RGB")).astype(int)


def img2img(base_url: str, **fields) -> requests.Response:
    payload = dict(init_images=[png_b64(picture(1))], prompt="a painting", seed=1234, steps=10,
                   denoising_strength=0.5, width=64, height=64, sampler_name="Euler", cfg_scale=7.0)
    payload.update(fields)
    return requests.post(f"{base_url}/sdapi/v1/img2img", json=payload, timeout=TIMEOUT)


def image_of(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    return decode(response.json()["images"][0])


def script_arg_count(base_url: str, title: str) -> int:
    infos = requests.get(f"{base_url}/sdapi/v1/script-info", timeout=60).json()
    matches = [info for info in infos if info["name"] == title.lower() and info.get("is_img2img", True)]
    assert matches, f"{title!r} is not among the WebUI's img2img scripts"
    return len(matches[0]["args"])


def check_scripts_are_registered(base_url: str) -> None:
    scripts = requests.get(f"{base_url}/sdapi/v1/scripts", timeout=60).json()
    assert VIDEO_TITLE.lower() in scripts["img2img"]
    assert script_arg_count(base_url, ALWAYSON_TITLE) == 8
    assert script_arg_count(base_url, VIDEO_TITLE) == 11


def check_disabled_alwayson_is_identical_to_plain(base_url: str) -> None:
    image_of(img2img(base_url))
    plain = image_of(img2img(base_url))
    disabled = image_of(img2img(base_url, alwayson_scripts={ALWAYSON_TITLE: {"args": [False, png_b64(picture(2)), None]}}))
    assert np.array_equal(plain, disabled)


def check_full_guidance_is_seed_independent(base_url: str) -> None:
    args = [True, png_b64(picture(2)), None, 1.0, "constant", "uniform", "dis_medium", "pixel"]
    guided = [image_of(img2img(base_url, seed=seed, alwayson_scripts={"vidguide FLOW guidance": {"args": args}}))
              for seed in (5, 6)]
    plain = [image_of(img2img(base_url, seed=seed)) for seed in (5, 6)]
    assert np.abs(guided[0] - guided[1]).max() <= 1, "x0 pinned to the guide at every step: the seed cannot matter"
    assert np.abs(plain[0] - plain[1]).mean() > 1.0


def small_video_data_url(frames: int = 3) -> str:
    import av  # the tests' environment has PyAV

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(frames):
            image = np.asarray(picture(1).transform((64, 64), Image.AFFINE, (1, 0, -2 * index, 0, 1, 0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def video_script_args(video: str) -> list:
    return [video, True, 1.0, "seed_showcase", "consistency", "dis_medium", "pixel", 0, 0, 1, 0]


def check_video_script_over_the_api(base_url: str) -> None:
    args = video_script_args(small_video_data_url(3))
    assert len(args) == script_arg_count(base_url, VIDEO_TITLE)
    response = img2img(base_url, script_name=VIDEO_TITLE, script_args=args, steps=6)
    assert response.status_code == 200, response.text[:500]
    info = json.loads(json.loads(response.json()["info"])["infotexts"][0])["vidguide"]
    assert info["frames"] == 3 and info["output"].endswith(".mp4") and not info["interrupted"]


def check_wrong_video_arg_count_is_explained(base_url: str) -> None:
    response = img2img(base_url, script_name=VIDEO_TITLE, script_args=[small_video_data_url(2), True])
    assert response.status_code >= 400
    assert "expected 11 script args" in response.text


ALL_CHECKS = [
    check_scripts_are_registered,
    check_disabled_alwayson_is_identical_to_plain,
    check_full_guidance_is_seed_independent,
    check_video_script_over_the_api,
    check_wrong_video_arg_count_is_explained,
]
