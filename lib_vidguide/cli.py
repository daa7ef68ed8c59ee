"""Command line: ``python -m lib_vidguide video|demo ...``.

Options of ``video`` are generated from the settings models (VideoSettings and its
GuidanceSettings), the same models that drive the WebUI controls, the API and infotext.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

from .settings import PYDANTIC_V2, GuidanceSettings, VideoSettings

# CLI names where a field's own name would be ambiguous next to img2img's options.
_RENAMES = {"enabled": "guidance", "strength": "guidance-strength"}


def _fields(model) -> dict:
    return model.model_fields if PYDANTIC_V2 else model.__fields__


def _annotation(field) -> Any:
    return field.annotation if PYDANTIC_V2 else field.outer_type_


def _description(field) -> str:
    return (field.description if PYDANTIC_V2 else field.field_info.description) or ""


def _default(field) -> Any:
    if PYDANTIC_V2:
        return None if field.default_factory else field.default
    return field.default


def add_model_options(parser: argparse.ArgumentParser, model, *, skip: Sequence[str] = ()) -> None:
    """One option per field; options default to None so only what the user gives overrides."""
    for name, field in _fields(model).items():
        if name in skip:
            continue
        flag = "--" + _RENAMES.get(name, name.replace("_", "-"))
        annotation = _annotation(field)
        origin = typing.get_origin(annotation)
        if origin is typing.Union:
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
            origin = typing.get_origin(annotation)
        help_text = f"{_description(field)} (default: {_default(field)})"
        if annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin is typing.Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(annotation), default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=annotation if annotation in (int, float) else str,
                                default=None, help=help_text)


def _given(namespace: argparse.Namespace, model) -> dict:
    return {name: getattr(namespace, name) for name in _fields(model) if getattr(namespace, name, None) is not None}


def video_settings_from(namespace: argparse.Namespace) -> VideoSettings:
    guidance = GuidanceSettings.from_dict({"enabled": True, **_given(namespace, GuidanceSettings)})
    return VideoSettings.from_dict({**_given(namespace, VideoSettings), "guidance": guidance.to_dict()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib_vidguide", description="sd-webui-vidguide without the WebUI")
    parser.add_argument("--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    video = commands.add_parser("video", help="flow-guided img2img of a whole video on diffusers")
    video.add_argument("input", help="source video file")
    video.add_argument("output", help="output .mp4 (written only when every frame is done)")
    video.add_argument("--model", required=True, help="diffusers Stable Diffusion folder, or a hub id already cached")
    video.add_argument("--prompt", required=True)
    video.add_argument("--negative-prompt", default="")
    video.add_argument("--steps", type=int, default=20, help="sampler steps of a full denoise (default: 20)")
    video.add_argument("--strength", type=float, default=0.5, help="denoising strength (default: 0.5)")
    video.add_argument("--cfg-scale", type=float, default=7.0)
    video.add_argument("--sampler", choices=("euler", "dpmpp_2m"), default="euler")
    video.add_argument("--device", default="cpu")
    video.add_argument("--frames-dir", default=None,
                       help="also keep every finished frame here as a PNG (default: OUTPUT without its suffix)")
    video.add_argument("--no-frames", action="store_true", help="do not keep the PNG frames")
    add_model_options(video, VideoSettings, skip=("guidance",))
    add_model_options(video, GuidanceSettings)

    from .pipelines.attention_flow import register_cli as register_attention_flow
    from .pipelines.motion_inversion import register_cli as register_motion_inversion
    from .pipelines.tune_a_video import register_cli as register_tune_a_video
    from .svd_motion_brush import register_cli as register_motion_brush

    register_motion_brush(commands)
    register_tune_a_video(commands)
    register_motion_inversion(commands)
    register_attention_flow(commands)

    demo = commands.add_parser("demo", help="the end-to-end demo on a tiny random-weight model")
    demo.add_argument("--out", default="out", help="output folder (default: out)")
    demo.add_argument("--frames", type=int, default=16)
    demo.add_argument("--size", type=int, default=128, help="square frame size, multiple of 8 (default: 128)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if hasattr(args, "handler"):
            return args.handler(args)
        if args.command == "video":
            return _video(args)
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.out, frames=args.frames, size=args.size)
            return 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1


def _video(args: argparse.Namespace) -> int:
    from .diffusers_runner import Img2ImgParams, run_video_file

    settings = video_settings_from(args)
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    params = Img2ImgParams(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, strength=args.strength,
        cfg_scale=args.cfg_scale, sampler=args.sampler, seed=seed,
    )

    def progress(event) -> None:
        print(f"frame {event.index + 1}/{event.total} ({event.seconds:.2f} s)", file=sys.stderr)

    frames_dir = None if args.no_frames else (args.frames_dir or str(Path(args.output).with_suffix("")))
    result = run_video_file(args.input, args.output, model=args.model, params=params, settings=settings,
                            device=args.device, frames_dir=frames_dir, on_frame=progress)
    print(json.dumps({"output": str(result.output_path), "frames_dir": frames_dir, "frames": result.frames_written, "seed": seed,
                      "fps": float(result.fps), "size": list(result.size)}))
    return 0
