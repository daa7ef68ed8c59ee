"""Scripts: loading, UI args slicing and the runner, as modules/scripts.py does them.

- Every class in a scripts/*.py module namespace that subclasses Script is registered.
- While a scripts file is imported, its extension root is first on sys.path; the old
  sys.path is restored afterwards (so an extension's own package must be imported at the
  top of the file).
- Each script's ui() controls are appended to one flat inputs list: AlwaysOn scripts first,
  then the "Script" dropdown at index 0, then selectable scripts; args_from/args_to index it.
- AlwaysOn hooks get p.script_args[args_from:args_to]; exceptions are reported and swallowed.
- A selectable script only gets run(); it is picked by args[0] (1-based, 0 = None).
- Forge mode: every script basedir stays on sys.path, PostprocessImageArgs(image, index),
  Script.sorting_priority.
"""

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass

from modules import errors, standin_mode


class AlwaysVisibleSentinel:
    pass


AlwaysVisible = AlwaysVisibleSentinel()


@dataclass
class PostSampleArgs:
    samples: object


if standin_mode.FORGE:
    class PostprocessImageArgs:
        def __init__(self, image, index):
            self.image = image
            self.index = index
else:
    @dataclass
    class PostprocessImageArgs:
        image: object


@dataclass
class MaskBlendArgs:
    current_latent: object
    nmask: object
    init_latent: object
    mask: object
    blended_latent: object
    denoiser: object = None
    sigma: object = None


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None
    if standin_mode.FORGE:
        sorting_priority = 0

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def on_mask_blend(self, p, mba, *args):
        pass

    def elem_id(self, item_id):
        tabname = "img2img" if self.is_img2img else "txt2img"
        title = "".join(c if c.isalnum() else "_" for c in self.title().lower())
        return f"script_{tabname}_{title}_{item_id}"


@dataclass
class ScriptClassData:
    script_class: type
    path: str
    basedir: str
    module: object


scripts_data: list[ScriptClassData] = []
current_basedir = os.getcwd()
scripts_img2img = None


def basedir():
    return current_basedir


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_scripts(extension_dirs):
    """Import every scripts/*.py of the given extension roots, as the host does at start-up."""
    global current_basedir, scripts_img2img
    from modules import script_callbacks

    scripts_data.clear()
    script_callbacks.clear_callbacks()
    if standin_mode.FORGE:  # Forge keeps every script basedir on sys.path for good
        for extension_dir in extension_dirs:
            if extension_dir not in sys.path:
                sys.path = [extension_dir] + sys.path
    syspath = sys.path
    for extension_dir in extension_dirs:
        scripts_dir = os.path.join(extension_dir, "scripts")
        for filename in sorted(os.listdir(scripts_dir)):
            if not filename.endswith(".py"):
                continue
            path = os.path.join(scripts_dir, filename)
            try:
                sys.path = [extension_dir] + sys.path
                current_basedir = extension_dir
                module = load_module(path)
                for candidate in module.__dict__.values():
                    if inspect.isclass(candidate) and issubclass(candidate, Script):
                        scripts_data.append(ScriptClassData(candidate, path, extension_dir, module))
            except Exception:
                errors.report(f"Error loading script: {filename}", exc_info=True)
            finally:
                sys.path = syspath
                current_basedir = os.getcwd()
    scripts_img2img = ScriptRunner()
    return scripts_img2img


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.inputs = [None]
        self.is_img2img = True

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        self.is_img2img = is_img2img
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def _create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        if controls is None:
            return
        script.name = script.title().lower()
        script.controls = list(controls)
        self.inputs.extend(script.controls)
        script.args_to = len(self.inputs)
        # Scripts set these in ui(); the host collects them for paste / "send to".
        self.infotext_fields += script.infotext_fields or []
        self.paste_field_names += script.paste_field_names or []

    def setup_ui(self):
        """Build every script's UI inside a Blocks, AlwaysOn first, then the selectable ones."""
        import gradio as gr

        self.titles = [script.title() for script in self.selectable_scripts]
        self.infotext_fields = []
        self.paste_field_names = []
        with gr.Blocks(analytics_enabled=False):
            for script in self.alwayson_scripts:
                with gr.Group(visible=script.alwayson) as group:
                    self._create_script_ui(script)
                script.group = group
            self.inputs[0] = gr.Dropdown(label="Script", choices=["None"] + self.titles, value="None", type="index")
            for script in self.selectable_scripts:
                with gr.Group(visible=False) as group:
                    self._create_script_ui(script)
                script.group = group
        return self.inputs

    def default_script_args(self):
        """What the API starts from: each control's value (Api.init_default_script_args)."""
        last = max([s.args_to for s in self.scripts] + [1])
        args = [None] * last
        args[0] = 0
        for script in self.scripts:
            if script.args_from is None or script.args_to is None:
                continue
            for index, control in enumerate(self.inputs[script.args_from:script.args_to]):
                args[script.args_from + index] = getattr(control, "value", None)
        return args

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        script_args = args[script.args_from:script.args_to]
        return script.run(p, *script_args)

    def _call_alwayson(self, method_name, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            if getattr(type(script), method_name) is getattr(Script, method_name):
                continue
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call_alwayson("before_process", p)

    def process(self, p):
        self._call_alwayson("process", p)

    def before_process_batch(self, p, **kwargs):
        self._call_alwayson("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call_alwayson("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._call_alwayson("process_before_every_sampling", p, **kwargs)

    def post_sample(self, p, ps):
        self._call_alwayson("post_sample", p, ps)

    def postprocess_batch(self, p, images, **kwargs):
        self._call_alwayson("postprocess_batch", p, images=images, **kwargs)

    def postprocess_image(self, p, pp):
        self._call_alwayson("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._call_alwayson("postprocess", p, processed)

    def on_mask_blend(self, p, mba):
        self._call_alwayson("on_mask_blend", p, mba)
