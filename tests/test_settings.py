from __future__ import annotations

import pytest

from lib_vidguide import cli
from lib_vidguide.settings import (
    ALWAYSON_ARG_NAMES,
    INFOTEXT_LABELS,
    GuidanceSettings,
    VideoSettings,
    args_to_mapping,
    guidance_from_values,
)


def test_defaults_are_off_and_the_seeds_schedule():
    settings = GuidanceSettings()
    assert settings.enabled is False
    assert settings.schedule == "seed_showcase"
    assert settings.infotext() == {}


def test_values_are_validated_with_their_names():
    with pytest.raises(ValueError, match="strength"):
        GuidanceSettings(strength=1.5)
    with pytest.raises(ValueError, match="weight_mode"):
        GuidanceSettings(weight_mode="magic")
    with pytest.raises(ValueError, match="extra|not permitted"):
        GuidanceSettings.from_dict({"strenght": 0.5})
    with pytest.raises(ValueError, match="progress:weight"):
        GuidanceSettings(schedule="os.system('x')")


def test_schedule_is_normalised():
    assert GuidanceSettings(schedule=" 0:1 ,1:0 ").schedule == "0:1, 1:0"
    assert GuidanceSettings(schedule="CONSTANT").schedule == "constant"


def test_infotext_carries_every_setting_when_enabled():
    settings = GuidanceSettings(enabled=True, strength=0.7, warp_space="latent")
    info = settings.infotext()
    assert set(info) == set(INFOTEXT_LABELS.values())
    assert info["VidGuide strength"] == 0.7
    assert info["VidGuide warp space"] == "latent"


def test_positional_args_need_the_exact_count():
    with pytest.raises(ValueError, match="expected 8 script args"):
        args_to_mapping([True, None], ALWAYSON_ARG_NAMES)
    mapping = args_to_mapping([True, "img", None, 0.5, "constant", "uniform", "dis_fast", "latent"], ALWAYSON_ARG_NAMES)
    settings = guidance_from_values(mapping)
    assert (settings.enabled, settings.strength, settings.flow_method) == (True, 0.5, "dis_fast")


def test_video_output_size_rounds_to_multiples_of_eight():
    assert VideoSettings().output_size(513, 767) == (512, 760)
    assert VideoSettings(width=100, height=70).output_size(640, 480) == (96, 64)
    with pytest.raises(ValueError, match="width"):
        VideoSettings(width=32)
    assert VideoSettings().output_size(1, 1) == (8, 8)


def test_cli_options_come_from_the_models():
    parser = cli.build_parser()
    args = parser.parse_args([
        "video", "in.mp4", "out.mp4", "--model", "m", "--prompt", "p", "--no-guidance", "--guidance-strength", "0.3",
        "--schedule", "linear_decay", "--warp-space", "latent", "--max-frames", "5", "--every-nth", "2",
    ])
    settings = cli.video_settings_from(args)
    assert settings.guidance.enabled is False
    assert settings.guidance.strength == 0.3
    assert settings.guidance.schedule == "linear_decay"
    assert settings.guidance.warp_space == "latent"
    assert (settings.max_frames, settings.every_nth) == (5, 2)
    defaults = cli.video_settings_from(parser.parse_args(["video", "a", "b", "--model", "m", "--prompt", "p"]))
    assert defaults.guidance.enabled is True and defaults.every_nth == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["video", "a", "b", "--model", "m", "--prompt", "p", "--weight-mode", "nope"])


def test_cli_reports_bad_values_without_a_traceback(capsys):
    code = cli.main(["video", "a.mp4", "b.mp4", "--model", "m", "--prompt", "p", "--guidance-strength", "3"])
    assert code == 2
    assert "strength" in capsys.readouterr().err


def test_json_schema_is_available_for_the_api():
    schema = VideoSettings.json_schema()
    assert "guidance" in str(schema) and "every_nth" in str(schema)


def test_the_api_schema_is_valid_openapi_3_0():
    """pydantic 1 spells gt=0 as a numeric exclusiveMinimum; OpenAPI 3.0 needs the boolean form."""
    from lib_vidguide.jobs import JobSettings
    from lib_vidguide.settings import PYDANTIC_V2

    text = str(JobSettings.json_schema())
    if not PYDANTIC_V2:
        assert "'exclusiveMinimum': 0" not in text and "'exclusiveMinimum': True" in text
    with pytest.raises(ValueError, match="seed"):
        VideoSettings(seed=10**40)
    with pytest.raises(ValueError, match="fps"):
        VideoSettings(fps=1e-6)
