"""Guidance settings travel in the infotext and come back on paste; X/Y/Z plot axes work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from host_session import from_b64, sample_picture, to_b64

from lib_vidguide.settings import ALWAYSON_ARG_NAMES, INFOTEXT_LABELS, GuidanceSettings

TITLE = "VidGuide flow guidance"


def infotext_of(response) -> str:
    return json.loads(response["info"])["infotexts"][0]


def pasted_settings(webui, infotext: str) -> dict:
    from modules.infotext_utils import pasted_values

    script = webui.script(TITLE)
    names = {id(control): name for name, control in zip(ALWAYSON_ARG_NAMES, script.controls)}
    values = pasted_values(script.infotext_fields, infotext)
    return {names[id(component)]: value for (component, _), value in zip(script.infotext_fields, values)}


def test_every_guidance_setting_survives_the_infotext_round_trip(fresh_state):
    webui = fresh_state
    settings = GuidanceSettings(enabled=True, strength=0.7, schedule="0:0.6, 0.8:0.6, 0.8:0.4, 1:0.4",
                                weight_mode="motion", flow_method="dis_fast", warp_space="latent")
    args = [True, to_b64(sample_picture(seed=7)), None, settings.strength, settings.schedule, settings.weight_mode,
            settings.flow_method, settings.warp_space]
    infotext = infotext_of(webui.img2img(alwayson={TITLE: {"args": args}}))
    assert 'VidGuide schedule: "0:0.6, 0.8:0.6, 0.8:0.4, 1:0.4"' in infotext  # quoted as the host quotes
    pasted = pasted_settings(webui, infotext)
    assert GuidanceSettings(**pasted) == settings
    assert set(pasted) == {"enabled", *INFOTEXT_LABELS}


def test_pasting_an_image_made_without_guidance_switches_it_off_and_leaves_the_rest(fresh_state):
    infotext = infotext_of(fresh_state.img2img())
    assert "VidGuide" not in infotext
    pasted = pasted_settings(fresh_state, infotext)
    assert pasted["enabled"] is False
    assert all(pasted[name] is None for name in INFOTEXT_LABELS)


def test_an_xyz_plot_over_guidance_strength(fresh_state):
    from modules import scripts

    webui = fresh_state
    plot = webui.script("X/Y/Z plot")
    labels = [option.label for option in plot.current_axis_options]
    assert {"[VidGuide] Strength", "[VidGuide] Schedule", "[VidGuide] Flow"} <= set(labels)
    guide = to_b64(sample_picture(seed=7))
    alwayson = {TITLE: {"args": [True, guide, None, 1.0, "constant", "uniform", "dis_medium", "pixel"]}}
    torch.manual_seed(11)
    plain = np.asarray(from_b64(webui.img2img(seed=5)["images"][0]))
    torch.manual_seed(11)
    response = webui.img2img(seed=5, script_name="X/Y/Z plot",
                             script_args=[labels.index("[VidGuide] Strength"), "0, 0.5, 1"], alwayson_scripts=alwayson)
    cells = [np.asarray(from_b64(image)) for image in response["images"]]
    infotexts = json.loads(response["info"])["infotexts"]
    assert len(cells) == 3
    assert np.array_equal(cells[0], plain), "strength 0 must be the plain image"
    assert not np.array_equal(cells[1], cells[0]) and not np.array_equal(cells[2], cells[1])
    assert ["VidGuide strength: 0.0" in infotexts[0], "VidGuide strength: 0.5" in infotexts[1],
            "VidGuide strength: 1.0" in infotexts[2]] == [True, True, True]
    assert len([data for data in scripts.scripts_data if data.script_class.__module__ == "xyz_grid.py"]) == 1


def test_axes_are_added_once_even_if_before_ui_runs_again(fresh_state):
    from lib_vidguide.webui import xyz

    module = xyz.find_xyz_module()
    before = len(module.axis_options)
    xyz.register_axes()
    assert len(module.axis_options) == before


@pytest.mark.parametrize("bad", ["nope", "0:2"])
def test_a_bad_axis_value_is_reported_not_crashing(fresh_state, bad, caplog):
    webui = fresh_state
    plot = webui.script("X/Y/Z plot")
    labels = [option.label for option in plot.current_axis_options]
    alwayson = {TITLE: {"args": [True, to_b64(sample_picture(seed=7)), None]}}
    with caplog.at_level("ERROR", logger="vidguide"):
        response = webui.img2img(script_name="X/Y/Z plot", alwayson_scripts=alwayson,
                                 script_args=[labels.index("[VidGuide] Schedule"), bad])
    assert len(response["images"]) == 1
    assert any("schedule" in record.getMessage() for record in caplog.records)
