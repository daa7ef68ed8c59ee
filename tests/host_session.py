"""Drive the stand-in host like a user or an API client would."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image


WEBUI_ROOT = Path(__file__).resolve().parent / "host" / "webui_root"


def forge_mode() -> bool:
    """Whether the stand-in plays Forge (VIDGUIDE_STANDIN_HOST=forge, tests/host/README.md)."""
    from modules import standin_mode

    return standin_mode.FORGE


def to_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def from_b64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def sample_picture(size=64, seed=0, shift=0) -> Image.Image:
    """A smooth, textured picture (so flows and VAE outputs are non-trivial)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx = xx - shift
    base = np.stack([
        128 + 100 * np.sin(xx / 7.0 + rng.uniform(0, 3)),
        128 + 100 * np.cos(yy / 5.0 + rng.uniform(0, 3)),
        128 + 100 * np.sin((xx + yy) / 9.0),
    ], axis=-1)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@dataclass
class HostSession:
    repo: Path
    runner: Any

    @classmethod
    def start(cls, repo: Path) -> "HostSession":
        from modules import scripts, sd_models, shared

        from modules import script_callbacks

        shared.preload_extensions([str(repo)])
        shared.sd_model = sd_models.load_tiny_model()
        # The WebUI's own scripts (X/Y/Z plot) load first, then extensions'; before_ui comes
        # after every script is loaded and before the UI is built.
        runner = scripts.load_scripts([str(WEBUI_ROOT), str(repo)])
        script_callbacks.before_ui_callback()
        runner.initialize_scripts(is_img2img=True)
        runner.setup_ui()
        return cls(repo, runner)

    def reset(self):
        from modules import errors, shared

        shared.state.begin()
        shared.state.end()
        errors.reported.clear()

    def script(self, title: str):
        for script in self.runner.scripts:
            if script.title().lower() == title.lower():
                return script
        raise KeyError(title)

    def img2img(self, *, alwayson: Optional[dict] = None, script_name: Optional[str] = None,
                script_args: Optional[list] = None, init: Optional[Image.Image] = None, **fields) -> dict:
        """POST /sdapi/v1/img2img, in-process, with the host's args mapping."""
        from modules.api import api

        request = dict(
            init_images=[to_b64(init or sample_picture())], prompt="a painting", seed=1234, steps=10,
            denoising_strength=0.5, width=64, height=64, sampler_name="Euler", cfg_scale=7.0,
        )
        request.update(fields)
        if alwayson is not None:
            request["alwayson_scripts"] = alwayson
        if script_name is not None:
            request["script_name"] = script_name
            request["script_args"] = script_args or []
        return api.img2img(api.Img2ImgRequest(**request))

    def img2img_image(self, **kwargs) -> np.ndarray:
        response = self.img2img(**kwargs)
        return np.asarray(from_b64(response["images"][0]))
