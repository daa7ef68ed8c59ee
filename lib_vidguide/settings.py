"""One validated settings model per feature: it drives the UI, the API, infotext and the CLI.

The models are written against the API pydantic 1.10 (A1111) and 2.x (Forge) share;
``StrictModel`` hides the few spelling differences.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional, Sequence

import pydantic
from pydantic import BaseModel, Field

from .schedules import DEFAULT_SCHEDULE, parse_schedule

PYDANTIC_V2 = hasattr(BaseModel, "model_validate")

if PYDANTIC_V2:
    from pydantic import ConfigDict, field_validator as _field_validator

    def field_check(*fields: str):
        return _field_validator(*fields)

    class StrictModel(BaseModel):
        model_config = ConfigDict(extra="forbid", validate_assignment=True)

        @classmethod
        def from_dict(cls, data: dict):
            return cls.model_validate(data)

        def to_dict(self) -> dict:
            return self.model_dump()

        @classmethod
        def json_schema(cls) -> dict:
            return cls.model_json_schema()

else:
    from pydantic import validator as _validator

    def field_check(*fields: str):
        return _validator(*fields, allow_reuse=True)

    def _openapi_3_0_bounds(schema: dict, model: type) -> None:
        """pydantic 1 writes gt/lt as numeric exclusiveMinimum/Maximum (JSON Schema draft 6);
        the OpenAPI 3.0 documents FastAPI 0.94 serves need minimum + exclusiveMinimum: true."""
        for prop in schema.get("properties", {}).values():
            for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                bound = prop.get(exclusive)
                if isinstance(bound, (int, float)) and not isinstance(bound, bool):
                    prop[inclusive] = bound
                    prop[exclusive] = True

    class StrictModel(BaseModel):  # type: ignore[no-redef]
        class Config:
            extra = pydantic.Extra.forbid
            validate_assignment = True
            schema_extra = staticmethod(_openapi_3_0_bounds)

        @classmethod
        def from_dict(cls, data: dict):
            return cls.parse_obj(data)

        def to_dict(self) -> dict:
            return self.dict()

        @classmethod
        def json_schema(cls) -> dict:
            return cls.schema()


WeightMode = Literal["consistency", "motion", "uniform"]
FlowMethod = Literal["dis_medium", "dis_fast", "farneback"]
WarpSpace = Literal["pixel", "latent"]

WEIGHT_MODES: tuple[str, ...] = ("consistency", "motion", "uniform")
FLOW_METHODS: tuple[str, ...] = ("dis_medium", "dis_fast", "farneback")
WARP_SPACES: tuple[str, ...] = ("pixel", "latent")


class GuidanceSettings(StrictModel):
    """Flow guidance for one img2img generation (or every frame of a video)."""

    enabled: bool = Field(False, description="Guide the sampler toward the warped previous frame.")
    strength: float = Field(1.0, ge=0.0, le=1.0, description="Multiplies the schedule and the weight map.")
    schedule: str = Field(
        DEFAULT_SCHEDULE,
        description="A preset name or a 'progress:weight, ...' table over denoising progress 0..1.",
    )
    weight_mode: WeightMode = Field(
        "consistency",
        description="consistency: low where the flow fails its forward-backward check; "
        "motion: the seed's rule (low where pixels move); uniform: the same everywhere.",
    )
    flow_method: FlowMethod = Field("dis_medium", description="Optical flow between source frames.")
    warp_space: WarpSpace = Field(
        "pixel",
        description="pixel: warp the guide image and VAE-encode it; latent: warp latents (no encode).",
    )

    @field_check("schedule")
    def _schedule_is_valid(cls, value: str) -> str:  # noqa: N805
        return parse_schedule(value).to_text()

    def parsed_schedule(self):
        return parse_schedule(self.schedule)

    def infotext(self) -> Dict[str, Any]:
        """Infotext entries, only for an enabled run."""
        if not self.enabled:
            return {}
        return {label: getattr(self, name) for name, label in INFOTEXT_LABELS.items()}


INFOTEXT_LABELS: dict[str, str] = {
    "strength": "VidGuide strength",
    "schedule": "VidGuide schedule",
    "weight_mode": "VidGuide weight mode",
    "flow_method": "VidGuide flow",
    "warp_space": "VidGuide warp space",
}

# Positional order of the AlwaysOn script's args (UI controls and the API's "args" list).
ALWAYSON_ARG_NAMES: tuple[str, ...] = (
    "enabled",
    "guide_image",
    "previous_source",
    "strength",
    "schedule",
    "weight_mode",
    "flow_method",
    "warp_space",
)


def guidance_from_values(values: dict) -> GuidanceSettings:
    """Validate the settings part of a name->value mapping; image entries are ignored."""
    fields = set(GuidanceSettings.__fields__ if not PYDANTIC_V2 else GuidanceSettings.model_fields)
    return GuidanceSettings.from_dict({k: v for k, v in values.items() if k in fields and v is not None})


def args_to_mapping(args: Sequence[Any], names: Sequence[str]) -> dict:
    """Pair positional script args with their names; too few or too many is a clear error."""
    if len(args) != len(names):
        raise ValueError(
            f"expected {len(names)} script args ({', '.join(names)}), got {len(args)}; "
            "over the API send exactly that many values, in that order"
        )
    return dict(zip(names, args))


TAGGER_FOLDER = "vidguide-tagger"
Placement = Literal["prepend", "append"]


class TaggerSettings(StrictModel):
    """Booru tags of each source frame added to that frame's prompt (off by default)."""

    enabled: bool = Field(False, description="Add the tagger's tags of each source frame to its prompt.")
    model: str = Field(
        "",
        description=f"A folder name under models/{TAGGER_FOLDER} (holding model.onnx + selected_tags.csv), or a path to one.",
    )
    general_threshold: float = Field(0.35, ge=0.0, le=1.0, description="Minimum score of a general tag.")
    character_threshold: float = Field(0.85, ge=0.0, le=1.0, description="Minimum score of a character tag.")
    exclude: str = Field("", description="Comma-separated tags never added (spaces or underscores alike).")
    placement: Placement = Field("prepend", description="Put the tags before (seed 001) or after the prompt.")
    max_tags: int = Field(0, ge=0, le=500, description="At most this many tags, highest scores first; 0 = no limit.")
    replace_underscores: bool = Field(True, description="long_hair -> long hair (emoticons such as ^_^ are kept).")
    escape_parentheses: bool = Field(
        True, description="Write ( ) [ ] as \\( \\) \\[ \\] so the WebUI does not read them as attention."
    )
    include_rating: bool = Field(False, description="Also add the most likely rating tag (general, sensitive, ...).")
    use_cuda: bool = Field(False, description="Run on onnxruntime's CUDA provider when it is installed.")


class DriftSettings(StrictModel):
    """Against drift over long videos (seed 001's known issues: first-frame errors accumulate)."""

    first_frame_guide: bool = Field(False, description="Also guide toward the first output, warped by the flow from the first source frame.")
    first_frame_strength: float = Field(0.3, ge=0.0, le=1.0, description="Strength of the first-frame guide.")
    first_frame_schedule: str = Field("linear_decay", description="Schedule of the first-frame guide (preset or table).")
    color_correction: bool = Field(False, description="Match each output's colours to the first output's.")
    second_pass: bool = Field(False, description="Run every output through a second, light guided img2img.")
    second_pass_strength: float = Field(0.15, gt=0.0, le=1.0, description="Denoising strength of the second pass.")

    @field_check("first_frame_schedule")
    def _schedule_is_valid(cls, value: str) -> str:  # noqa: N805
        return parse_schedule(value).to_text()

    @property
    def active(self) -> bool:
        return self.first_frame_guide or self.color_correction or self.second_pass


class VideoSettings(StrictModel):
    """A whole-video run: which frames, what size, and the guidance for frames 2..n."""

    guidance: GuidanceSettings = Field(default_factory=lambda: GuidanceSettings(enabled=True))
    drift: DriftSettings = Field(default_factory=DriftSettings)
    tagger: TaggerSettings = Field(default_factory=TaggerSettings)
    start_frame: int = Field(0, ge=0, description="First source frame to use (0-based).")
    max_frames: int = Field(0, ge=0, description="Stop after this many output frames; 0 = the whole video.")
    every_nth: int = Field(1, ge=1, le=1000, description="Use every n-th source frame.")
    width: Optional[int] = Field(None, ge=64, le=8192, description="Output width; default the source's, to a multiple of 8.")
    height: Optional[int] = Field(None, ge=64, le=8192, description="Output height; default the source's, to a multiple of 8.")
    fit: Literal["resize", "crop", "pad"] = Field(
        "resize",
        description="How the source becomes a multiple of 8: resize (stretch to the size), crop (centre crop), "
        "pad (extend the edges while rendering; the output keeps the source's size).",
    )
    fps: Optional[float] = Field(None, ge=0.01, le=240, description="Output frame rate; default the source's / every_nth.")
    seed: int = Field(-1, ge=-1, le=2**32 - 1, description="Seed of every frame; -1 picks one at random (and reports it).")
    crf: int = Field(18, ge=0, le=51, description="H.264 quality (lower is better).")

    def size_plan(self, source_width: int, source_height: int):
        """How source frames become render frames (a frame_prep.SizePlan, multiples of 8)."""
        from .frame_prep import choose_output_size

        return choose_output_size(source_width, source_height, self.width, self.height, self.fit)

    def output_size(self, source_width: int, source_height: int) -> tuple[int, int]:
        """The size frames are rendered at: the requested one or the source's, to multiples of 8."""
        return self.size_plan(source_width, source_height).size
