"""Host differences, detected by feature, in one place (A1111 v1.10 vs Forge, gradio 3 vs 4).

Nothing here parses a version string: each function asks the host object whether it has
the attribute or behaviour in question.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any, Optional

import numpy as np

from ..guidance import SamplerConventions

logger = logging.getLogger("vidguide")


def is_forge() -> bool:
    try:
        import modules_forge  # noqa: F401
    except ImportError:
        return False
    return True


def gradio_major() -> int:
    import gradio

    # gradio 4 has ImageEditor; 3.41 has the sketch tool on gr.Image instead.
    return 4 if hasattr(gradio, "ImageEditor") else 3


def sampler_conventions(denoiser: Any, p: Any) -> SamplerConventions:
    """What the after-CFG tensor and the sigma argument mean for this generation's sampler.

    - Forge's denoisers carry ``classic_ddim_eps_estimation``: they convert every sampler
      to k-diffusion conventions (sigma, x0) before the callbacks. Where it is True (DDIM,
      PLMS, UniPC) the sampler's own wrapper has no ``sigma_to_t``: progress then comes from
      the model's alpha_bar table, and DDIM gets its timestep grid for the exact last step,
      which Forge needs too (its DDIM also ends at alpha_bar[1], HOST_A1111.md §9.1).
    - A1111's timesteps denoisers (DDIM, PLMS, UniPC) hold ``alphas`` and mask before
      denoising: the callback sees epsilon and integer timesteps.
    - Everything else is k-diffusion: sigma and x0.
    """
    inner = getattr(denoiser, "inner_model", None)
    sigma_to_t = getattr(inner, "sigma_to_t", None)
    if hasattr(denoiser, "classic_ddim_eps_estimation"):
        model_wrap = getattr(getattr(p, "sampler", None), "model_wrap", None)
        sigma_to_t = getattr(model_wrap, "sigma_to_t", sigma_to_t)
        if not getattr(denoiser, "classic_ddim_eps_estimation", False):
            return SamplerConventions(sigma_to_t=sigma_to_t)
        alphas = _model_alphas_cumprod(inner, p)
        return SamplerConventions(
            sigma_to_t=sigma_to_t,
            alphas_cumprod=alphas,
            ddim_timesteps=_ddim_timestep_grid(p) if alphas is not None else None,
        )
    alphas = getattr(denoiser, "alphas", None)
    if alphas is not None and getattr(denoiser, "mask_before_denoising", False):
        return SamplerConventions(
            output_is_eps=True,
            sigma_is_timestep=True,
            alphas_cumprod=alphas.detach().float().cpu(),
            ddim_timesteps=_ddim_timestep_grid(p),
        )
    return SamplerConventions(sigma_to_t=sigma_to_t)


def _model_alphas_cumprod(inner: Any, p: Any):
    """The model's alpha_bar table as a CPU float tensor: on the timesteps wrapper's model
    (Forge sets it there), else on ``p.sd_model``; None where neither has one."""
    for owner in (getattr(inner, "inner_model", None), getattr(p, "sd_model", None)):
        alphas = getattr(owner, "alphas_cumprod", None)
        if alphas is not None:
            return alphas.detach().float().cpu()
    return None


def _ddim_timestep_grid(p: Any) -> Optional[tuple[int, ...]]:
    """DDIM's timestep grid for this img2img run, for its exact last step; None for PLMS/UniPC."""
    sampler = getattr(p, "sampler", None)
    if getattr(getattr(sampler, "func", None), "__name__", "") != "ddim" or not hasattr(sampler, "get_timesteps"):
        return None
    from modules import sd_samplers_common

    steps, _ = sd_samplers_common.setup_img2img_steps(p)
    return tuple(int(t) for t in sampler.get_timesteps(p, steps).tolist())


def encode_rgb(sd_model: Any, rgb: np.ndarray):
    """RGB uint8 (H, W, 3) to a scaled latent (1, C, H/8, W/8): the VAE posterior's mean,
    without touching the global RNG.

    The host's own ``images_tensor_to_samples`` samples the VAE posterior with the global
    torch RNG, which changes the generation's init latent (HOST_A1111.md §9). Where the model
    returns the posterior (LDM), take its mode. Where ``encode_first_stage`` samples it itself
    and returns the latent (Forge's engines: mean + std * torch.randn), it runs with that noise
    at zero, so the same mean comes out. The result is an ordinary tensor even when called
    under Forge's ``inference_mode``.
    """
    import torch
    from modules import devices

    image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    image = (image * 2 - 1).to(devices.device, dtype=devices.dtype_vae)
    with torch.no_grad(), devices.autocast(), torch.random.fork_rng(devices=[]), _zero_noise():
        encoded = sd_model.encode_first_stage(image)
        if not torch.is_tensor(encoded) and hasattr(encoded, "mode"):  # (a tensor's .mode() is a statistic)
            encoded = encoded.mode()
        return ordinary_tensor(sd_model.get_first_stage_encoding(encoded).float())


def _zero_noise():
    """A context in which ``torch.randn`` / ``randn_like`` give zeros, in this thread only
    (a torch function mode): a posterior sampled inside it is its mean."""
    import torch
    from torch.overrides import TorchFunctionMode

    class ZeroNoise(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.randn:
                kwargs.pop("generator", None)
                return torch.zeros(*args, **kwargs)
            if func is torch.randn_like:
                return torch.zeros_like(*args, **kwargs)
            return func(*args, **kwargs)

    return ZeroNoise()


def ordinary_tensor(tensor):
    """A detached copy of ``tensor`` that is not an inference tensor.

    Forge runs generation under ``torch.inference_mode()`` (HOST_A1111.md §6.3): tensors made
    there cannot be modified in place, or saved for backward, once outside it. Use this for
    anything kept beyond the generation.
    """
    import torch

    with torch.inference_mode(False):
        return tensor.detach().clone()


def to_pil(value: Any):
    """An image script arg as PIL: PIL from the UI, base64 (with or without a data: prefix)
    from the API, a numpy array, or gradio's {"image": ...} dict; None when empty."""
    from PIL import Image

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        return to_pil(value.get("image") or value.get("background") or value.get("composite"))
    if isinstance(value, np.ndarray):
        return Image.fromarray(value.astype(np.uint8))
    if isinstance(value, str):
        return _decode_base64_image(value)
    raise ValueError(f"expected an image (PIL or base64 PNG/JPEG), got {type(value).__name__}")


def _decode_base64_image(text: str):
    from PIL import Image

    try:
        from modules.api.api import decode_base64_to_image
    except ImportError:
        decode_base64_to_image = None
    if decode_base64_to_image is not None:
        try:
            return decode_base64_to_image(text)
        except Exception as error:
            # The host raises fastapi's HTTPException, whose str() is empty: its reason is in .detail.
            reason = getattr(error, "detail", None) or str(error) or type(error).__name__
            raise ValueError(f"could not decode a base64 image ({text[:32]!r}...): {reason}") from error
    try:
        data = text.split(",", 1)[1] if text.startswith("data:") else text
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        return image
    except Exception as error:
        raise ValueError(f"could not decode a base64 image ({text[:32]!r}...): {error}") from error


def rgb_for_generation(image: Any, p: Any) -> np.ndarray:
    """An image as RGB uint8 at the generation's size, resized the way the host resizes init images."""
    from modules import images

    pil = to_pil(image)
    if pil is None:
        raise ValueError("no image")
    pil = images.flatten(pil, "#ffffff") if pil.mode in ("RGBA", "LA", "P") else pil.convert("RGB")
    pil = images.resize_image(getattr(p, "resize_mode", 0), pil, p.width, p.height)
    return np.asarray(pil.convert("RGB"), dtype=np.uint8)


def image_input(label: str, elem_id: str):
    """An upload-only PIL image input in gradio 3 (``source=``) and 4 (``sources=``)."""
    import gradio as gr

    if gradio_major() >= 4:
        return gr.Image(label=label, type="pil", sources=["upload", "clipboard"], elem_id=elem_id, height=256)
    return gr.Image(label=label, type="pil", source="upload", elem_id=elem_id, height=256)


def enable_accordion(label: str, elem_id: str):
    """The AlwaysOn "enabled" control: the host's InputAccordion where it exists (a checkbox
    that opens an accordion), else a checkbox inside an accordion. Returns (context, checkbox)."""
    import gradio as gr

    try:
        from modules.ui_components import InputAccordion
    except ImportError:
        InputAccordion = None
    if InputAccordion is not None:
        accordion = InputAccordion(False, label=label, elem_id=elem_id)
        return accordion, accordion
    accordion = gr.Accordion(label, open=False, elem_id=elem_id)
    return accordion, None


def sampler_names() -> list[str]:
    """The host's sampler names for a dropdown: ``visible_sampler_names()`` where it exists
    (A1111 1.6+, Forge: hides the ones the user hid in settings), else every sampler's name."""
    from modules import sd_samplers

    visible = getattr(sd_samplers, "visible_sampler_names", None)
    if callable(visible):
        return list(visible())
    return [sampler.name for sampler in getattr(sd_samplers, "all_samplers", [])]


def video_input(label: str, elem_id: str):
    """An upload-only video input in gradio 3 (``source=``) and 4 (``sources=``); gives a file path."""
    import gradio as gr

    if gradio_major() >= 4:
        return gr.Video(label=label, sources=["upload"], elem_id=elem_id)
    return gr.Video(label=label, source="upload", elem_id=elem_id)


def event_options(js: Optional[str] = None, *, show_progress: bool = True, queue: Optional[bool] = None) -> dict:
    """Keyword arguments of an event listener: the JS function to run first (``_js=`` in
    gradio 3, ``js=`` in 4) and no gradio progress overlay (``False`` in 3, ``"hidden"`` in 4)."""
    options: dict[str, Any] = {}
    if js:
        options["js" if gradio_major() >= 4 else "_js"] = js
    if not show_progress:
        options["show_progress"] = "hidden" if gradio_major() >= 4 else False
    if queue is not None:
        options["queue"] = queue
    return options


def gpu_call(func, extra_outputs: Optional[list] = None):
    """``func`` wrapped as the WebUI wraps txt2img: ``modules.call_queue.wrap_gradio_gpu_call``
    (queue lock, state.begin/end, the "task(...)" id registered for /internal/progress, timing
    HTML appended to the last output). Without it, the lock and state are handled here."""
    try:
        from modules.call_queue import wrap_gradio_gpu_call
    except ImportError:
        wrap_gradio_gpu_call = None
    if wrap_gradio_gpu_call is not None:
        return wrap_gradio_gpu_call(func, extra_outputs=extra_outputs)

    import contextlib
    import functools

    try:
        from modules.call_queue import queue_lock
    except ImportError:  # no queue at all: nothing to serialise with
        queue_lock = contextlib.nullcontext()

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        from modules.shared import state

        with queue_lock:
            state.begin(job=args[0] if args and isinstance(args[0], str) else "vidguide")
            try:
                return func(*args, **kwargs)
            finally:
                state.end()

    return wrapped


# --------------------------------------------------------------------------- motion brush input
# (added for the "Motion brush" sub-tab: lib_vidguide/webui/motion_brush_tab.py)

_sketch_image_class: Any = None


def _gradio3_sketch_image_class():
    """gradio 3.41's ``gr.Image`` with the sketch tool, except that an image with no stroke yet is
    not an error: its frontend sends ``{"image": ..., "mask": null}`` until the first stroke, and the
    stock preprocess then fails decoding ``None``. Here a missing mask becomes a blank one of the
    image's size (nothing painted), which the motion brush reads as "the whole image moves"."""
    global _sketch_image_class
    if _sketch_image_class is not None:
        return _sketch_image_class
    import gradio as gr

    class MotionBrushSketch(gr.Image):
        def get_block_name(self) -> str:
            return "image"  # the same frontend component as gr.Image

        def preprocess(self, x):
            if isinstance(x, dict) and x.get("image") and not x.get("mask"):
                x = {**x, "mask": _blank_mask_like(x["image"])}
            return super().preprocess(x)

    _sketch_image_class = MotionBrushSketch
    return MotionBrushSketch


def _blank_mask_like(data_url: str) -> str:
    """A fully transparent PNG (as a data URL) the size of the picture in ``data_url``."""
    from PIL import Image

    picture = to_pil(data_url)
    buffer = io.BytesIO()
    Image.new("RGBA", picture.size, (0, 0, 0, 0)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def brush_input(label: str, elem_id: str, *, brush_color: str = "#e83e8c", height: int = 360):
    """An image upload the user paints a mask on: gradio 3's sketch tool on ``gr.Image`` (A1111),
    gradio 4's ``gr.ImageEditor`` with a one-colour brush (Forge, whose shim would silently drop
    ``tool="sketch"``). Read its value with :func:`brush_image_and_mask`."""
    import gradio as gr

    if gradio_major() >= 4:
        options: dict[str, Any] = dict(label=label, type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                                       elem_id=elem_id, height=height, layers=False, transforms=())
        try:
            options["brush"] = gr.Brush(colors=[brush_color], color_mode="fixed")
        except (AttributeError, TypeError):  # an ImageEditor without gr.Brush: its default brush
            pass
        try:
            return gr.ImageEditor(**options)
        except TypeError:  # older 4.x without some of the keywords above
            for name in ("layers", "transforms", "brush", "height"):
                options.pop(name, None)
            return gr.ImageEditor(**options)
    return _gradio3_sketch_image_class()(
        label=label, source="upload", tool="sketch", type="pil", image_mode="RGB", elem_id=elem_id,
        height=height, brush_color=brush_color, mask_opacity=0.6)


def _alpha_or_brightness(layer: Any):
    """A painted layer as a PIL "L" mask: its alpha when it has one, else its brightness."""
    from PIL import Image

    if isinstance(layer, np.ndarray):
        array = layer
        if array.dtype != np.uint8:
            array = np.clip(np.asarray(array, dtype=np.float32) * (255.0 if array.max(initial=0) <= 1.0 else 1.0),
                            0, 255).astype(np.uint8)
        layer = Image.fromarray(array)
    if not isinstance(layer, Image.Image):
        layer = to_pil(layer)
    if layer is None:
        return None
    if layer.mode in ("RGBA", "LA", "PA") or (layer.mode == "P" and "transparency" in layer.info):
        return layer.convert("RGBA").getchannel("A")
    return layer.convert("L")


def brush_image_and_mask(value: Any) -> tuple[Any, Any]:
    """(image, mask) from the brush input's value; the mask is a PIL "L" image (255 = painted,
    i.e. may move) or None when there is nothing to read. Accepted values:

    * gradio 3 sketch: ``{"image": PIL, "mask": PIL}``, the mask's painted pixels white;
    * gradio 4 ImageEditor: ``{"background": ..., "layers": [...], "composite": ...}``, the mask
      being every layer's alpha together (the layers hold only the strokes);
    * a plain image (PIL, numpy or base64, e.g. where a host turned the input into a plain
      ``gr.Image``): no mask.
    """
    if value is None:
        return None, None
    if isinstance(value, dict):
        if "background" in value or "layers" in value:
            image = value.get("background")
            if image is None:
                image = value.get("composite")
            masks = [mask for mask in (_alpha_or_brightness(layer) for layer in value.get("layers") or []
                                       if layer is not None) if mask is not None]
            if not masks:
                return image, None
            union = np.maximum.reduce([np.asarray(mask, dtype=np.uint8) for mask in masks]) \
                if len({mask.size for mask in masks}) == 1 else np.asarray(masks[0], dtype=np.uint8)
            from PIL import Image

            return image, Image.fromarray(union, mode="L")
        image, mask = value.get("image"), value.get("mask")
        return image, (_alpha_or_brightness(mask) if mask is not None else None)
    return value, None


def brush_edited_listeners(component) -> list:
    """The brush input's events that mean "the image or the mask changed", as listener methods.

    gradio 3.41's sketch image dispatches ``change`` whenever its page re-renders (its value is an
    object, re-assigned on every update), so a ``change`` listener whose outputs re-render the page
    fires again and again; ``edit`` (a stroke ended), ``upload`` and ``clear`` fire once per user
    action. gradio 4's ImageEditor has a well-behaved ``change``."""
    if gradio_major() >= 4:
        return [component.change]
    return [component.edit, component.upload, component.clear]
