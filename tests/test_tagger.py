"""The booru tagger: a tiny ONNX model with the wd-v1-4 contract, built at test time, run by onnxruntime.

The model (tests/onnx_builder.py) scores each tag as sigmoid(mean colour @ W + b), where the mean is
over the input's pixels in its channel order (B, G, R) and W is per 0..255 unit, so feeding RGB or 0..1
values would give other tags: the checks below see channel order, scale and the white padding.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib_vidguide import tagger as tg
from lib_vidguide.tagger import TaggerError, TaggerSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_builder import channel_mean_tagger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# name, category, (w_B, w_G, w_R) per unit of mean/255, bias
TAGS = [
    ("general", 9, (0, 0, 0), 2.0),  # ratings come first, as in selected_tags.csv
    ("sensitive", 9, (0, 0, 0), 0.0),
    ("questionable", 9, (0, 0, 0), -2.0),
    ("explicit", 9, (0, 0, 0), -4.0),
    ("red_theme", 0, (0, -10, 10), -2.0),
    ("green_theme", 0, (0, 10, -10), -2.0),
    ("blue_theme", 0, (10, 0, -10), -2.0),
    ("long_hair", 0, (0, 0, 0), 0.0),  # always 0.5: over the general threshold
    ("^_^", 0, (0, 4, 0), -3.0),
    ("hatsune_miku", 4, (0, 6, 0), -5.5),  # ~0.62 on green: a general but not a character threshold
    ("ganyu_(genshin_impact)", 4, (6, 0, 0), -3.0),  # ~0.95 on blue
    ("some_artist", 1, (0, 0, 0), 5.0),  # a category the tagger does not use
    ("white_background", 0, (8, 8, 8), -20.0),
]
WEIGHTS = np.array([tag[2] for tag in TAGS], dtype=np.float32).T / 255.0  # [3 (B, G, R), n_tags]
BIAS = np.array([tag[3] for tag in TAGS], dtype=np.float32)
SIZE = 64  # the tiny model's input side (a real wd tagger's is 448)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def frame(color, height=96, width=64, channels=3) -> np.ndarray:
    image = np.zeros((height, width, channels), dtype=np.uint8)
    image[:, :, :3] = color
    if channels == 4:
        image[:, :, 3] = 255
    return image


def write_tagger(folder: Path, *, tags=TAGS, weights=WEIGHTS, bias=BIAS, **model_options) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(channel_mean_tagger(weights, bias, **{"size": SIZE, **model_options}))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, *_rest) in enumerate(tags):
            writer.writerow([1000 + index, name, category, 5000 - index])
    return folder


def names(tag_scores):
    return [name for name, _score in tag_scores]


@pytest.fixture(autouse=True)
def _fresh_cache():
    tg.clear_tagger_cache()
    yield
    tg.clear_tagger_cache()


@pytest.fixture
def models_dir(tmp_path) -> Path:
    root = tmp_path / "models" / tg.TAGGER_FOLDER
    write_tagger(root / "tiny")
    return root


@pytest.fixture
def tiny(models_dir) -> tg.Tagger:
    return tg.load_tagger("tiny", models_dir)


def on(**changes) -> TaggerSettings:
    return TaggerSettings(enabled=True, model="tiny", **changes)


# --------------------------------------------------------------------------- settings


def test_settings_are_off_by_default_with_the_reference_thresholds():
    settings = TaggerSettings()
    assert settings.enabled is False
    assert (settings.general_threshold, settings.character_threshold) == (0.35, 0.85)
    assert settings.placement == "prepend" and settings.max_tags == 0
    assert settings.replace_underscores and settings.escape_parentheses and not settings.include_rating
    assert not settings.use_cuda
    assert TaggerSettings.from_dict(settings.to_dict()) == settings


@pytest.mark.parametrize(
    "bad", [{"placement": "middle"}, {"general_threshold": 1.5}, {"max_tags": -1}, {"unknown": 1}]
)
def test_settings_reject_bad_values(bad):
    with pytest.raises(ValueError):
        TaggerSettings.from_dict(bad)


def test_the_prompt_is_unchanged_when_the_tagger_is_off(models_dir):
    assert tg.prompt_with_tags("a cat", [("red_theme", 0.99)], TaggerSettings()) == "a cat"
    # off means off: no model is even looked for
    assert tg.prompt_for_frame("a cat", frame(RED), TaggerSettings(model="absent"), models_dir) == "a cat"


# --------------------------------------------------------------------------- preprocessing


def test_small_images_are_padded_centred_on_white_not_enlarged_and_made_bgr():
    image = np.array(
        [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]], [[1, 2, 3], [4, 5, 6]]], dtype=np.uint8
    )  # 3 high, 2 wide
    out = tg.preprocess_image(image, 4)
    assert out.dtype == np.float32 and out.shape == (4, 4, 3)
    # side 4: one white row at the bottom (top gets delta // 2 = 0), one white column each side
    expected = np.full((4, 4, 3), 255.0, dtype=np.float32)
    expected[0:3, 1:3] = image[:, :, ::-1]
    np.testing.assert_array_equal(out, expected)
    assert out[0, 1].tolist() == [30.0, 20.0, 10.0]  # B, G, R, still on the 0..255 scale


def test_large_images_are_padded_to_their_longer_side_then_shrunk_with_area():
    out = tg.preprocess_image(frame(RED, height=60, width=40), 30)
    assert out.shape == (30, 30, 3)
    # 60x60 square with 10 white columns each side, halved: 5 white columns each side, exactly
    np.testing.assert_array_equal(out[:, :5], 255.0)
    np.testing.assert_array_equal(out[:, 25:], 255.0)
    np.testing.assert_array_equal(out[:, 5:25], np.broadcast_to([0.0, 0.0, 255.0], (30, 20, 3)))


def test_shrinking_averages_pixels_like_cv2_inter_area():
    stripes = np.zeros((90, 90, 3), dtype=np.uint8)
    stripes[:, 2::3] = 255  # every third column white: by 3 with area averaging, 255 / 3 = 85 everywhere
    np.testing.assert_array_equal(tg.preprocess_image(stripes, 30), 85.0)  # bilinear would sample 0


def test_alpha_is_composited_on_white_and_gray_becomes_three_channels():
    rgba = frame(RED, height=4, width=4, channels=4)
    rgba[:, :2, 3] = 0  # left half transparent
    out = tg.preprocess_image(rgba, 4)
    np.testing.assert_array_equal(out[:, :2], 255.0)
    np.testing.assert_array_equal(out[:, 2:], np.broadcast_to([0.0, 0.0, 255.0], (4, 2, 3)))
    gray = np.full((4, 4), 77, dtype=np.uint8)
    np.testing.assert_array_equal(tg.preprocess_image(gray, 4), 77.0)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8)]
)
def test_images_the_tagger_cannot_take_are_clear_errors(image):
    with pytest.raises(TaggerError, match="tagger takes"):
        tg.preprocess_image(image, 4)


# --------------------------------------------------------------------------- the model


def test_the_model_sees_bgr_values_on_the_0_255_scale(tiny):
    rgb = (200, 40, 10)  # reddish: red_theme ~0.99 read as B, G, R; ~0.04 read as R, G, B; ~0.12 on 0..1
    scores = tiny.scores([frame(rgb, height=SIZE, width=SIZE)])[0]  # exactly the input size: no resize
    bgr_mean = np.array(rgb[::-1], dtype=np.float32)
    expected = 1 / (1 + np.exp(-(bgr_mean @ WEIGHTS + BIAS)))
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    wrong_order = 1 / (1 + np.exp(-(np.array(rgb, np.float32) @ WEIGHTS + BIAS)))
    wrong_scale = 1 / (1 + np.exp(-(bgr_mean / 255 @ WEIGHTS + BIAS)))
    assert np.abs(scores - wrong_order).max() > 0.5 and np.abs(scores - wrong_scale).max() > 0.5


def test_the_input_size_is_read_from_the_model(tmp_path):
    fixed = tg.load_tagger(str(write_tagger(tmp_path / "fixed", size=SIZE)), None)
    assert fixed.input_size == SIZE and fixed.input_name == "input_1:0"
    symbolic = tg.load_tagger(str(write_tagger(tmp_path / "symbolic", size="side")), None)
    assert symbolic.input_size == tg.DEFAULT_INPUT_SIZE == 448


def test_red_green_blue_frames_get_their_tags_by_category_threshold(tiny):
    # 96x64 frames: the white padding (a third of the square) is part of what the model sees
    red, green, blue = (tiny.tag_image(frame(color)) for color in (RED, GREEN, BLUE))
    assert names(red) == ["red_theme", "long_hair"]
    assert names(green) == ["green_theme", "^_^", "long_hair"]  # hatsune_miku ~0.62 < 0.85
    assert names(blue) == ["blue_theme", "ganyu_(genshin_impact)", "long_hair"]
    for tags in (red, green, blue):
        scores = [score for _name, score in tags]
        assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)

    loose_characters = tiny.tag_image(frame(GREEN), TaggerSettings(character_threshold=0.5))
    assert "hatsune_miku" in names(loose_characters)
    strict_general = tiny.tag_image(frame(GREEN), TaggerSettings(general_threshold=0.6))
    assert names(strict_general) == ["green_theme", "^_^"]  # long_hair is 0.5


def test_ratings_only_on_request_and_only_the_likeliest_unused_categories_never(tiny):
    assert not {"general", "sensitive", "questionable", "explicit"} & set(names(tiny.tag_image(frame(RED))))
    with_rating = names(tiny.tag_image(frame(RED), TaggerSettings(include_rating=True)))
    assert "general" in with_rating and not {"sensitive", "questionable", "explicit"} & set(with_rating)
    everything = TaggerSettings(general_threshold=0.0, character_threshold=0.0)
    assert "some_artist" not in names(tiny.tag_image(frame(RED), everything))


def test_batches_give_the_same_tags_as_single_frames(tiny, tmp_path):
    frames = [frame(RED), frame(GREEN), frame(BLUE, height=50, width=120)]
    single = [tiny.tag_image(image) for image in frames]
    batched = tiny.tag_images(frames, batch_size=2)
    assert names(batched[0]) == names(single[0]) and [names(t) for t in batched] == [names(t) for t in single]
    np.testing.assert_allclose(
        [s for t in batched for _n, s in t], [s for t in single for _n, s in t], atol=1e-6
    )
    # a model exported with a fixed batch of 1 is fed one frame at a time
    one_at_a_time = tg.load_tagger(str(write_tagger(tmp_path / "batch1", batch=1)), None)
    assert one_at_a_time.max_batch == 1
    assert [names(t) for t in one_at_a_time.tag_images(frames, batch_size=8)] == [names(t) for t in single]
    assert tiny.scores([]).shape == (0, len(TAGS))


def test_the_session_is_cached_until_the_files_change(models_dir):
    first = tg.load_tagger("tiny", models_dir)
    assert tg.load_tagger("tiny", models_dir) is first
    model_file = models_dir / "tiny" / "model.onnx"
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tg.load_tagger("tiny", models_dir) is not first


def test_cuda_requested_without_the_provider_falls_back_to_the_cpu(models_dir):
    import onnxruntime as ort

    loaded = tg.load_tagger("tiny", models_dir, use_cuda=True)
    providers = loaded.session.get_providers()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers[0] == "CUDAExecutionProvider"
    else:
        assert providers == ["CPUExecutionProvider"]
    assert names(loaded.tag_image(frame(RED))) == ["red_theme", "long_hair"]


# --------------------------------------------------------------------------- model files and errors


def test_list_tagger_models_lists_complete_folders_only(models_dir, tmp_path):
    (models_dir / "half").mkdir()
    (models_dir / "half" / "model.onnx").write_bytes(b"")
    (models_dir / "loose.onnx").write_bytes(b"")
    write_tagger(models_dir / "another")
    assert tg.list_tagger_models(models_dir) == ["another", "tiny"]
    assert tg.list_tagger_models(tmp_path / "nowhere") == [] and tg.list_tagger_models(None) == []
    assert tg.tagger_models_dir(tmp_path / "models") == tmp_path / "models" / "vidguide-tagger"


LAYOUT = "models/vidguide-tagger/<name>/model.onnx + selected_tags.csv"


def test_a_missing_model_is_a_clear_error_naming_the_layout(models_dir, tmp_path):
    with pytest.raises(TaggerError, match="no tagger model chosen") as chosen:
        tg.load_tagger("", models_dir)
    assert LAYOUT in str(chosen.value) and "installed: tiny" in str(chosen.value)

    with pytest.raises(TaggerError, match="does not exist") as absent:
        tg.load_tagger("wd-v1-4-swinv2-tagger-v2", models_dir)
    assert LAYOUT in str(absent.value) and str(models_dir / "wd-v1-4-swinv2-tagger-v2") in str(absent.value)

    (models_dir / "half").mkdir()
    (models_dir / "half" / "model.onnx").write_bytes(b"")
    with pytest.raises(TaggerError, match="lacks selected_tags.csv") as half:
        tg.load_tagger("half", models_dir)
    assert LAYOUT in str(half.value)

    empty = tmp_path / "empty"
    with pytest.raises(TaggerError, match=f"none is installed in {empty}"):
        tg.load_tagger("tiny", empty)

    with pytest.raises(TaggerError, match="must be a folder name"):
        tg.load_tagger(str(models_dir / "tiny"), models_dir, allow_paths=False)


def test_a_path_to_the_folder_or_its_model_file_is_accepted(models_dir):
    assert tg.resolve_model_dir(str(models_dir / "tiny"), None) == models_dir / "tiny"
    assert tg.resolve_model_dir(str(models_dir / "tiny" / "model.onnx"), None) == models_dir / "tiny"


def test_a_csv_that_does_not_match_the_model_is_a_clear_error(tmp_path):
    fewer = write_tagger(tmp_path / "fewer", tags=TAGS[:-1])  # the model still outputs len(TAGS) scores
    with pytest.raises(TaggerError, match=f"lists {len(TAGS) - 1} tags but .* outputs {len(TAGS)} scores"):
        tg.load_tagger(str(fewer), None)

    # a model whose output width onnxruntime cannot tell before running: caught on the first run
    # (onnxruntime infers this tiny graph's width, so the tag list is shortened after loading)
    loaded = tg.load_tagger(str(write_tagger(tmp_path / "matching")), None)
    shortened = dataclasses.replace(loaded, names=loaded.names[:-1], categories=loaded.categories[:-1])
    with pytest.raises(TaggerError, match="same tagger release"):
        shortened.tag_image(frame(RED))


def test_broken_files_are_clear_errors(tmp_path):
    bad_columns = write_tagger(tmp_path / "columns")
    (bad_columns / "selected_tags.csv").write_text("id,tag\n1,red\n", encoding="utf-8")
    with pytest.raises(TaggerError, match="tag_id,name,category,count"):
        tg.load_tagger(str(bad_columns), None)

    bad_category = write_tagger(tmp_path / "category")
    (bad_category / "selected_tags.csv").write_text("tag_id,name,category,count\n1,red,x,3\n", encoding="utf-8")
    with pytest.raises(TaggerError, match="line 2: category 'x'"):
        tg.load_tagger(str(bad_category), None)

    not_onnx = write_tagger(tmp_path / "garbage")
    (not_onnx / "model.onnx").write_bytes(b"this is not a model")
    with pytest.raises(TaggerError, match="onnxruntime cannot load"):
        tg.load_tagger(str(not_onnx), None)

    nchw = tmp_path / "nchw"
    write_tagger(nchw)
    from onnx_builder import model, node, value_info

    # channels-first, as many vision models are: not the wd tagger contract
    (nchw / "model.onnx").write_bytes(
        model(
            [node("Identity", ["x"], ["y"])],
            [],
            [value_info("x", ["batch", 3, SIZE, SIZE])],
            [value_info("y", ["batch", 3, SIZE, SIZE])],
        )
    )
    with pytest.raises(TaggerError, match="NHWC"):
        tg.load_tagger(str(nchw), None)


# --------------------------------------------------------------------------- prompts

SCORED = [
    ("ganyu_(genshin_impact)", 0.95),
    ("red_theme", 0.99),
    ("long_hair", 0.5),
    ("^_^", 0.7),
]


def test_tags_go_before_or_after_the_prompt_highest_score_first():
    assert tg.prompt_with_tags("masterpiece,best quality", SCORED, on()) == (
        r"red theme, ganyu \(genshin impact\), ^_^, long hair, masterpiece,best quality"
    )
    assert tg.prompt_with_tags("masterpiece, ", SCORED, on(placement="append")) == (
        r"masterpiece, red theme, ganyu \(genshin impact\), ^_^, long hair"
    )
    assert tg.prompt_with_tags("", SCORED[1:2], on()) == "red theme"
    assert tg.prompt_with_tags("a cat", [], on()) == "a cat"


def test_tags_already_in_the_prompt_are_not_added_again():
    prompt = r"(Long Hair:1.2), ((red_theme)), ganyu \(genshin impact\), <lora:style:0.8>"
    assert tg.prompt_with_tags(prompt, SCORED, on()) == "^_^, " + prompt
    duplicated = [("long_hair", 0.6), ("long hair", 0.5)]
    assert tg.prompt_with_tags("x", duplicated, on()) == "long hair, x"


def test_exclusions_match_with_spaces_or_underscores_any_case():
    settings = on(exclude="Red Theme, ganyu_(genshin_impact) ,, ^_^")
    assert tg.prompt_with_tags("x", SCORED, settings) == "long hair, x"


def test_max_tags_keeps_the_highest_scores_after_exclusions_and_duplicates():
    assert tg.prompt_with_tags("x", SCORED, on(max_tags=2)) == r"red theme, ganyu \(genshin impact\), x"
    assert tg.prompt_with_tags("red theme", SCORED, on(max_tags=1, exclude="^_^")) == (
        r"ganyu \(genshin impact\), red theme"
    )


def test_underscores_and_escaping_can_be_switched_off():
    raw = on(replace_underscores=False, escape_parentheses=False)
    assert tg.prompt_with_tags("x", SCORED, raw) == "red_theme, ganyu_(genshin_impact), ^_^, long_hair, x"
    assert tg.format_tag("(o)_(o)", on()) == r"\(o\)_\(o\)"  # an emoticon keeps its underscore
    assert tg.format_tag(r"back\slash [x]", on()) == r"back\\slash \[x\]"


def test_prompt_entries_strip_attention_syntax():
    assert tg.prompt_entries("((long hair)), [red eyes], (a, b:1.1)\n c_d , <lora:x:1>") == [
        "long hair",
        "red eyes",
        "a",
        "b",
        "c d",
    ]


def test_seed_001_per_frame_prompt_end_to_end(models_dir):
    settings = on()
    assert tg.prompt_for_frame("masterpiece,best quality", frame(RED), settings, models_dir) == (
        "red theme, long hair, masterpiece,best quality"
    )
    assert tg.prompt_for_frame("masterpiece,best quality", frame(BLUE), settings, models_dir) == (
        r"blue theme, ganyu \(genshin impact\), long hair, masterpiece,best quality"
    )
    batched = tg.tag_images([frame(RED), frame(BLUE)], settings, models_dir)
    assert [names(t) for t in batched] == [["red_theme", "long_hair"], ["blue_theme", "ganyu_(genshin_impact)", "long_hair"]]
    assert names(tg.tag_image(frame(GREEN), settings, models_dir)) == ["green_theme", "^_^", "long_hair"]


def test_importing_the_tagger_loads_neither_onnxruntime_nor_cv2():
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import lib_vidguide.tagger\n"
        "print(sorted(m for m in ('onnxruntime', 'cv2', 'torch') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
