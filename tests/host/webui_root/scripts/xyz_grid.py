"""A minimal X/Y/Z plot with the host's axis interface (scripts/xyz_grid.py in the WebUI root).

Extensions add axes by finding this module among the loaded scripts and appending to
``axis_options`` before the UI is built (ControlNet's and ADetailer's pattern); an axis's
``apply(p, value, all_values)`` edits a copy of ``p`` before each ``process_images``.
Only one axis (X) is modelled here.
"""

from copy import copy

import gradio as gr

from modules import processing, scripts
from modules.processing import Processed, process_images


def apply_field(field):
    def apply(p, x, xs):
        setattr(p, field, x)

    return apply


def do_nothing(p, x, xs):
    pass


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionImg2Img("Denoising", float, apply_field("denoising_strength")),
]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) == AxisOption or x.is_img2img == is_img2img]
        x_type = gr.Dropdown(label="X type", choices=[x.label for x in self.current_axis_options],
                             value=self.current_axis_options[1].label, type="index")
        x_values = gr.Textbox(label="X values", lines=1)
        return [x_type, x_values]

    def run(self, p, x_type, x_values):
        option = self.current_axis_options[x_type]
        values = [option.type(value.strip()) for value in str(x_values).split(",") if value.strip()]
        if option.confirm:
            option.confirm(p, values)
        processing.fix_seed(p)
        images, infotexts = [], []
        for value in values:
            cell = copy(p)
            option.apply(cell, value, values)
            processed = process_images(cell)
            images += processed.images
            infotexts += processed.infotexts
        return Processed(p, images, p.seed, infotexts[0] if infotexts else "", infotexts=infotexts)
