"""Callbacks, as modules/script_callbacks.py registers and dispatches them.

Behaviours the extension depends on:
- every dispatcher catches and reports a callback's exception, and generation goes on;
- on_cfg_denoiser's x / image_cond / sigma / text_cond / text_uncond are read back;
- on_cfg_denoised's x is not read back (in-place edits do take effect);
- on_cfg_after_cfg's x is read back;
- remove_callbacks_for_function removes a function's registrations from every category,
  from both the registration map and the ordered cache.
"""

import inspect
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

from modules import errors


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise = noise
        self.x = x
        self.xi = xi


@dataclass
class ScriptCallback:
    script: str
    callback: Callable
    name: Optional[str] = None


CATEGORIES = (
    "callbacks_app_started",
    "callbacks_model_loaded",
    "callbacks_ui_tabs",
    "callbacks_ui_train_tabs",
    "callbacks_ui_settings",
    "callbacks_before_image_saved",
    "callbacks_image_saved",
    "callbacks_extra_noise",
    "callbacks_cfg_denoiser",
    "callbacks_cfg_denoised",
    "callbacks_cfg_after_cfg",
    "callbacks_before_component",
    "callbacks_after_component",
    "callbacks_image_grid",
    "callbacks_infotext_pasted",
    "callbacks_script_unloaded",
    "callbacks_before_ui",
    "callbacks_on_reload",
    "callbacks_list_optimizers",
    "callbacks_list_unets",
    "callbacks_before_token_counter",
)
callback_map: dict[str, list[ScriptCallback]] = {key: [] for key in CATEGORIES}
ordered_callbacks_map: dict[str, list[ScriptCallback]] = {}
_name_counts: dict[str, int] = defaultdict(int)


def _caller_filename() -> str:
    for frame in inspect.stack():
        if os.path.abspath(frame.filename) != os.path.abspath(__file__):
            return frame.filename
    return "unknown"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    filename = filename or _caller_filename()
    unique = f"{os.path.basename(filename)}/{category}" + (f"/{name}" if name else "")
    _name_counts[unique] += 1
    if _name_counts[unique] > 1:
        unique = f"{unique}-{_name_counts[unique] - 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    callbacks = unordered_callbacks if unordered_callbacks is not None else callback_map["callbacks_" + category]
    cached = ordered_callbacks_map.get(category)
    if cached is not None and len(cached) == len(callbacks):
        return cached
    ordered_callbacks_map[category] = list(callbacks)
    return ordered_callbacks_map[category]


def _dispatch(category, *args):
    for callback in ordered_callbacks(category):
        try:
            callback.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {callback.name} for {callback.script}", exc_info=True)


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()
    ordered_callbacks_map.clear()


def remove_current_script_callbacks():
    filename = _caller_filename()
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        for callback in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(callback)


def remove_callbacks_for_function(callback_func):
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        for callback in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback)


def app_started_callback(demo, app):
    _dispatch("app_started", demo, app)


def model_loaded_callback(sd_model):
    _dispatch("model_loaded", sd_model)


def ui_tabs_callback():
    result = []
    for callback in ordered_callbacks("ui_tabs"):
        try:
            result += callback.callback() or []
        except Exception:
            errors.report(f"Error executing callback {callback.name}", exc_info=True)
    return result


def ui_settings_callback():
    _dispatch("ui_settings")


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _dispatch("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _dispatch("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _dispatch("cfg_after_cfg", params)


def extra_noise_callback(params: ExtraNoiseParams):
    _dispatch("extra_noise", params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    _dispatch("infotext_pasted", infotext, params)


def before_ui_callback():
    _dispatch("before_ui")


def script_unloaded_callback():
    for callback in reversed(ordered_callbacks("script_unloaded")):
        try:
            callback.callback()
        except Exception:
            errors.report(f"Error executing callback {callback.name}", exc_info=True)


def _register(category):
    def register(callback, *, name=None):
        add_callback(callback_map["callbacks_" + category], callback, name=name, category=category)

    register.__name__ = "on_" + category
    return register


on_app_started = _register("app_started")
on_model_loaded = _register("model_loaded")
on_ui_tabs = _register("ui_tabs")
on_ui_settings = _register("ui_settings")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_extra_noise = _register("extra_noise")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
on_list_optimizers = _register("list_optimizers")
