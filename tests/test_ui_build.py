"""Every VidGuide UI builds under the gradio this environment has (3.41 as A1111, 4.40 as Forge),
with the elem_ids the pages, the JavaScript and the tests rely on, and with nothing silently lost.

Under gradio 4 the page is built as Forge builds it, after Forge's shim
(tests/host/webui_page.py ``install_forge_gradio_shim``), which drops any keyword a component does
not take with only a warning: a gradio-3 ``tool="sketch"`` would leave a plain image with no mask.
So the build here records warnings and checks the component types where a dropped keyword would
change what the user gets (the brush, the upload-only sources).
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest

import ui_expectations as expected

TABLES = {
    "Video": expected.VIDEO_TAB, "Jobs": expected.JOBS_TAB, "Motion brush": expected.MOTION_BRUSH_TAB,
    "AlwaysOn script": expected.ALWAYSON_SCRIPT, "video Script": expected.VIDEO_SCRIPT,
}


@pytest.fixture(scope="module")
def built(webui):
    """The whole stand-in page (img2img tab with the scripts, the VidGuide tab), and every warning
    raised while it was built."""
    from webui_page import build_demo

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        demo = build_demo()
    yield demo, [str(warning.message) for warning in caught]
    demo.close()


def _gradio_major() -> int:
    from lib_vidguide.webui import compat

    return compat.gradio_major()


def test_no_keyword_was_dropped_while_building(built):
    _, messages = built
    # Forge's shim: "unexpected argument for <Class>: <name>"; gradio 3: "You have unused kwarg parameters in ...".
    dropped = [m for m in messages if "unexpected argument" in m.lower() or "unused kwarg" in m.lower()]
    assert dropped == [], f"keywords the host's gradio dropped: {dropped}"


def test_the_page_config_keeps_every_elem_id_and_visibility(built):
    """What the browser gets (the Blocks config) has each component's elem_id and visibility: gradio 4
    builds a component's props from its class's ``__init__`` signature, so a subclass whose
    ``__init__`` hides it (no ``@wraps``) silently loses them on the page."""
    demo, _ = built
    config = demo.get_config_file()
    props = {component["id"]: component.get("props", component) for component in config["components"]}
    lost = []
    for block in expected.iter_blocks(demo):
        elem_id = getattr(block, "elem_id", None)
        if not elem_id or block._id not in props:
            continue
        shown = props[block._id]
        if shown.get("elem_id") != elem_id or shown.get("visible", True) != getattr(block, "visible", True):
            lost.append((type(block).__name__, elem_id, shown.get("elem_id"), shown.get("visible")))
    assert lost == [], f"(class, elem_id, on the page, visible on the page): {lost}"


@pytest.mark.parametrize("ui", list(TABLES))
def test_every_ui_has_its_elem_ids_with_the_right_kind(built, ui):
    from ui_expectations import find_block

    demo, _ = built
    for elem_id, kind in TABLES[ui].items():
        block = find_block(demo, elem_id)
        name = type(block).__name__
        if kind == "accordion":
            assert name in ("Accordion",) or hasattr(block, "accordion"), (elem_id, name)
        elif kind == "button":
            assert name == "Button", (elem_id, name)
        elif kind == "input":
            assert getattr(block, "interactive", None) is not False, f"{elem_id} ({name}) is not interactive"
            assert getattr(block, "visible", True) is not False, f"{elem_id} ({name}) is hidden"


def test_elem_ids_are_unique_on_the_page(built):
    demo, _ = built
    ids = [block.elem_id for block in expected.iter_blocks(demo) if "vidguide" in (getattr(block, "elem_id", None) or "")]
    twice = [elem_id for elem_id, count in Counter(ids).items() if count > 1]
    assert twice == [], twice


def test_the_scripts_args_are_their_controls_in_api_order(built):
    demo, _ = built
    runner = demo.img2img_scripts
    by_title = {script.title(): script for script in runner.scripts}
    alwayson, video = by_title["VidGuide flow guidance"], by_title["VidGuide video"]
    assert alwayson in runner.alwayson_scripts and video in runner.selectable_scripts
    ids = [getattr(control, "elem_id", None) for control in runner.inputs[alwayson.args_from:alwayson.args_to]]
    # "enabled" is the InputAccordion (its hidden checkbox's id ends "-checkbox"), or a checkbox in an accordion.
    assert [i.removesuffix("-checkbox").removesuffix("_checkbox") for i in ids] == expected.ALWAYSON_ARG_IDS, ids
    ids = [getattr(control, "elem_id", None) for control in runner.inputs[video.args_from:video.args_to]]
    assert ids == expected.VIDEO_ARG_IDS, ids


def test_the_brush_is_a_mask_painter_in_this_gradio(built):
    """gradio 3: ``gr.Image`` with the sketch tool; gradio 4: ``gr.ImageEditor`` with one brush colour
    (not a plain ``gr.Image``, which is what the shim makes of a gradio-3 sketch)."""
    import gradio as gr

    demo, _ = built
    brush = expected.find_block(demo, "vidguide_mb_image")
    if _gradio_major() >= 4:
        assert isinstance(brush, gr.ImageEditor), type(brush).__mro__
        assert brush.type == "pil" and list(brush.sources) == ["upload", "clipboard"]
        assert brush.brush is not None and brush.brush.color_mode == "fixed", brush.brush
        assert brush.layers is False
    else:
        assert isinstance(brush, gr.Image) and brush.tool == "sketch" and brush.source == "upload", vars(brush)
        assert brush.type == "pil"


@pytest.mark.parametrize("elem_id", ["vidguide_video", "script_img2img_vidguide_video_video",
                                     "script_img2img_vidguide_flow_guidance_guide_image",
                                     "script_img2img_vidguide_flow_guidance_previous_source"])
def test_file_inputs_are_upload_only(built, elem_id):
    """No webcam: gradio 4 takes ``sources=[...]`` (its default offers the webcam), gradio 3 ``source=``."""
    demo, _ = built
    block = expected.find_block(demo, elem_id)
    if _gradio_major() >= 4:
        assert "webcam" not in list(block.sources), (elem_id, block.sources)
    else:
        assert block.source == "upload", (elem_id, block.source)


def test_the_shim_really_drops_a_sketch_tool_under_gradio_4():
    """The check above is meaningful: under gradio 4 with Forge's shim, a gradio-3 sketch image is
    built without error as a plain image, with only a warning."""
    if _gradio_major() < 4:
        pytest.skip("gradio 3 has the sketch tool")
    import gradio as gr
    from webui_page import install_forge_gradio_shim

    assert install_forge_gradio_shim()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = gr.Image(source="upload", tool="sketch", type="pil", brush_color="#ffffff")
    assert type(image) is gr.Image and list(image.sources) == ["upload"]
    assert sorted(str(w.message) for w in caught if "unexpected argument" in str(w.message)) == [
        "unexpected argument for Image: brush_color", "unexpected argument for Image: tool"]


def test_event_options_match_this_gradio():
    from lib_vidguide.webui import compat

    options = compat.event_options(js="vidguideSubmit", show_progress=False, queue=False)
    if _gradio_major() >= 4:
        assert options == {"js": "vidguideSubmit", "show_progress": "hidden", "queue": False}
    else:
        assert options == {"_js": "vidguideSubmit", "show_progress": False, "queue": False}
