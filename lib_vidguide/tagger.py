"""Per-frame prompts from a wd-v1-4-style booru tagger (ONNX, run with onnxruntime).

Seed 001 (../shared/docs/USERS.md §B.2, step 3) prompts every frame with the booru tags of the
current *source* frame plus "masterpiece,best quality", using SmilingWolf's wd-v1-4-swinv2-tagger-v2.
The user downloads such a tagger and places its two files under the WebUI's models folder:

    models/vidguide-tagger/<name>/model.onnx
    models/vidguide-tagger/<name>/selected_tags.csv

The model contract (all SmilingWolf wd-v1-4 / wd-v3 taggers): one input, NHWC float32
[batch, size, size, 3] (size 448, read from the model; fixed or symbolic), BGR channel order, values
0..255 with no normalisation; one output [batch, n_tags] of sigmoid probabilities, in the row order of
selected_tags.csv (columns tag_id,name,category,count; category 9 = rating, 0 = general, 4 = character).

Host-independent: the WebUI adapter passes the models folder in. onnxruntime and cv2 are imported only
when a tagger is actually used, so importing this module stays light.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .errors import UserInputError
from .settings import TAGGER_FOLDER, TaggerSettings

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
DEFAULT_INPUT_SIZE = 448  # every wd-v1-4 tagger; used when the model's spatial size is symbolic

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9

LAYOUT_HINT = (
    f"expected models/{TAGGER_FOLDER}/<name>/{MODEL_FILE} + {TAGS_FILE} under the WebUI folder, "
    "e.g. the two files of SmilingWolf/wd-v1-4-swinv2-tagger-v2 from Hugging Face"
)

TagScore = Tuple[str, float]

# Danbooru emoticon tags whose underscores are part of the face ("^_^" is not "^ ^"). The same list
# SmilingWolf's wd-tagger space app.py and toriato's WebUI tagger (tagger/ui.py) keep underscores for.
KAOMOJIS = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
        "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)


class TaggerError(UserInputError):
    """A missing, incomplete or inconsistent tagger model, or an image it cannot take."""


# --------------------------------------------------------------------------- model files


def tagger_models_dir(webui_models_path: str | os.PathLike) -> Path:
    """Where the user puts taggers: <WebUI models folder>/vidguide-tagger."""
    return Path(webui_models_path) / TAGGER_FOLDER


def _is_model_dir(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / TAGS_FILE).is_file()


def list_tagger_models(models_dir: str | os.PathLike | None) -> List[str]:
    """Names of the complete taggers (folders with model.onnx + selected_tags.csv), sorted."""
    if models_dir is None or not Path(models_dir).is_dir():
        return []
    return sorted(entry.name for entry in Path(models_dir).iterdir() if entry.is_dir() and _is_model_dir(entry))


def resolve_model_dir(
    model: str, models_dir: str | os.PathLike | None, *, allow_paths: bool = True
) -> Path:
    """The folder of the tagger ``model`` names; a clear error naming the expected layout if incomplete.

    ``model`` is a folder name under ``models_dir``, or (if ``allow_paths``) a path to a tagger folder
    or to its model.onnx. API callers can pass ``allow_paths=False`` to keep to installed taggers.
    """
    where = str(models_dir) if models_dir is not None else f"models/{TAGGER_FOLDER}"
    installed = list_tagger_models(models_dir)
    available = f"installed: {', '.join(installed)}" if installed else f"none is installed in {where}"
    name = (model or "").strip()
    if not name:
        raise TaggerError(f"no tagger model chosen ({available}); {LAYOUT_HINT}")

    looks_like_path = os.sep in name or "/" in name or (os.altsep is not None and os.altsep in name)
    if looks_like_path or name in (".", ".."):
        if not allow_paths:
            raise TaggerError(f"the tagger model must be a folder name under {where}, not a path ({available})")
        folder = Path(name).expanduser()
        if folder.name == MODEL_FILE:
            folder = folder.parent
    else:
        if models_dir is None:
            raise TaggerError(f"no tagger models folder is configured to look for {name!r} in; {LAYOUT_HINT}")
        folder = Path(models_dir) / name

    missing = [file for file in (MODEL_FILE, TAGS_FILE) if not (folder / file).is_file()]
    if missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {' and '.join(missing)}"
        raise TaggerError(f"tagger model {name!r}: {folder} {what} ({available}); {LAYOUT_HINT}")
    return folder


def read_selected_tags(path: str | os.PathLike) -> Tuple[List[str], List[int]]:
    """Tag names and categories, in the model's output order, from a selected_tags.csv."""
    path = Path(path)
    names: List[str] = []
    categories: List[int] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not {"name", "category"} <= columns:
            raise TaggerError(
                f"{path} has columns {sorted(columns)}; a wd tagger's {TAGS_FILE} has tag_id,name,category,count"
            )
        for line, row in enumerate(reader, start=2):
            try:
                categories.append(int(row["category"]))
            except (TypeError, ValueError):
                raise TaggerError(f"{path}, line {line}: category {row['category']!r} is not a number") from None
            names.append(row["name"] or "")
    if not names:
        raise TaggerError(f"{path} lists no tags")
    return names, categories


# --------------------------------------------------------------------------- preprocessing


def preprocess_image(image: np.ndarray, size: int = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """An RGB(A) uint8 frame as the tagger's input: float32 [size, size, 3], BGR, values 0..255.

    Follows SmilingWolf's wd-v1-4-tags Space (huggingface.co/spaces/SmilingWolf/wd-v1-4-tags,
    app.py with dbimutils.make_square / smart_resize; toriato/stable-diffusion-webui-wd14-tagger's
    tagger/dbimutils.py and interrogator.py are the same code): alpha composited on white, RGB -> BGR,
    padded centred on white to a square of side max(height, width, size), then shrunk with cv2's
    INTER_AREA if larger. Because the square is at least ``size``, small images are padded, never
    enlarged (the INTER_CUBIC branch of smart_resize cannot trigger). No scaling to 0..1, no mean/std.
    The later wd-tagger (v3) Space pads to max(height, width) and resizes with PIL bicubic instead; for
    video frames (larger than 448) the two differ only in the downscaling filter.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TaggerError(f"the tagger takes uint8 images (0..255), got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] < 1 or array.shape[1] < 1:
        raise TaggerError(f"the tagger takes an H x W x 3 (RGB) or 4 (RGBA) image, got shape {array.shape}")
    if array.shape[2] == 4:
        # alpha over white, as the reference does with PIL's paste(mask=alpha)
        alpha = array[:, :, 3:4].astype(np.uint16)
        rgb = array[:, :, :3].astype(np.uint16)
        array = ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)

    bgr = array[:, :, ::-1]
    height, width = bgr.shape[:2]
    side = max(height, width, size)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.full((side, side, 3), 255, dtype=np.uint8)
    square[top : top + height, left : left + width] = bgr
    if side > size:
        import cv2  # lazily: importing the library must stay light

        square = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return square.astype(np.float32)


# --------------------------------------------------------------------------- the model


def _static(dim: Any) -> Optional[int]:
    """A fixed dimension, or None for a symbolic/unknown one (onnxruntime gives str or None)."""
    return dim if isinstance(dim, int) and dim > 0 else None


@dataclass
class Tagger:
    """A loaded tagger: an onnxruntime session and the tag list of its output columns."""

    session: Any
    names: List[str]
    categories: List[int]
    model_dir: Path
    input_name: str
    output_name: str
    input_size: int
    max_batch: Optional[int]  # 1 for a model exported with a fixed batch of 1, else None

    @classmethod
    def from_session(cls, session: Any, names: List[str], categories: List[int], model_dir: Path) -> "Tagger":
        """Check the session against the wd contract and the tag list; clear errors if it differs."""
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise TaggerError(
                f"{model_dir / MODEL_FILE} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "a wd tagger has one image input and one score output"
            )
        shape = list(inputs[0].shape or [])
        if len(shape) != 4 or _static(shape[3]) not in (None, 3) or inputs[0].type != "tensor(float)":
            raise TaggerError(
                f"{model_dir / MODEL_FILE} takes {inputs[0].type} {shape}; a wd tagger takes float32 "
                "NHWC [batch, size, size, 3]"
            )
        height, width = _static(shape[1]), _static(shape[2])
        if height and width and height != width:
            raise TaggerError(f"{model_dir / MODEL_FILE} takes {height}x{width} images; a wd tagger's are square")
        tagger = cls(
            session=session,
            names=names,
            categories=categories,
            model_dir=model_dir,
            input_name=inputs[0].name,
            output_name=outputs[0].name,
            input_size=height or width or DEFAULT_INPUT_SIZE,
            max_batch=1 if _static(shape[0]) == 1 else None,
        )
        output_shape = list(outputs[0].shape or [])
        if output_shape and _static(output_shape[-1]) is not None:
            tagger._check_width(int(output_shape[-1]))
        return tagger

    def _check_width(self, width: int) -> None:
        if width != len(self.names):
            raise TaggerError(
                f"{self.model_dir / TAGS_FILE} lists {len(self.names)} tags but {self.model_dir / MODEL_FILE} "
                f"outputs {width} scores: the two files must come from the same tagger release"
            )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Scores [N, n_tags] of preprocessed images [N, size, size, 3] (float32 BGR 0..255)."""
        scores = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        scores = np.asarray(scores, dtype=np.float32).reshape(len(batch), -1)
        self._check_width(scores.shape[1])
        return scores

    def scores(self, images: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """Scores [len(images), n_tags] of RGB(A) uint8 frames, run ``batch_size`` at a time."""
        images = list(images)  # also takes a generator or an [N, H, W, C] array
        step = max(1, min(batch_size, self.max_batch or batch_size))
        rows = []
        for start in range(0, len(images), step):
            batch = np.stack([preprocess_image(image, self.input_size) for image in images[start : start + step]])
            rows.append(self.predict(batch))
        return np.concatenate(rows) if rows else np.zeros((0, len(self.names)), np.float32)

    def select(self, scores: np.ndarray, settings: Optional[TaggerSettings] = None) -> List[TagScore]:
        """The tags of one score row over their category's threshold, highest score first.

        Like the reference Space: general tags above general_threshold, character tags above
        character_threshold (strictly), the rating only as the single most likely one and only if
        asked for; other categories (artist, copyright, meta in some releases) are not used.
        """
        settings = settings or TaggerSettings()
        picked: List[Tuple[float, int]] = []
        best_rating: Optional[Tuple[float, int]] = None
        for index, (category, score) in enumerate(zip(self.categories, scores.tolist())):
            if category == CATEGORY_GENERAL and score > settings.general_threshold:
                picked.append((score, index))
            elif category == CATEGORY_CHARACTER and score > settings.character_threshold:
                picked.append((score, index))
            elif category == CATEGORY_RATING and (best_rating is None or score > best_rating[0]):
                best_rating = (score, index)
        if settings.include_rating and best_rating is not None:
            picked.append(best_rating)
        picked.sort(key=lambda item: (-item[0], item[1]))
        return [(self.names[index], float(score)) for score, index in picked]

    def tag_images(
        self, images: Sequence[np.ndarray], settings: Optional[TaggerSettings] = None, batch_size: int = 8
    ) -> List[List[TagScore]]:
        """Selected (tag, score) lists, one per RGB(A) uint8 frame."""
        return [self.select(row, settings) for row in self.scores(images, batch_size)]

    def tag_image(self, image: np.ndarray, settings: Optional[TaggerSettings] = None) -> List[TagScore]:
        """Selected (tag, score) pairs of one RGB(A) uint8 frame, highest score first."""
        return self.tag_images([image], settings)[0]


_cache_lock = threading.Lock()
_cache: dict = {}  # at most one tagger: key -> Tagger (a wd tagger holds ~400 MB)


def _file_key(path: Path) -> Tuple[str, int, int]:
    stat = path.stat()
    return (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


def _providers(use_cuda: bool) -> List[str]:
    import onnxruntime as ort

    if use_cuda:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        logger.warning("onnxruntime has no CUDA provider here (onnxruntime-gpu not installed); tagging on the CPU")
    return ["CPUExecutionProvider"]


def load_tagger(
    model: str,
    models_dir: str | os.PathLike | None,
    *,
    use_cuda: bool = False,
    allow_paths: bool = True,
) -> Tagger:
    """The tagger ``model`` names, loaded once and kept while its files are unchanged."""
    folder = resolve_model_dir(model, models_dir, allow_paths=allow_paths)
    try:
        import onnxruntime as ort  # lazily: an optional dependency, and a heavy import
    except ImportError as error:
        raise TaggerError("the tagger needs onnxruntime (pip install onnxruntime); it is not installed") from error

    key = (_file_key(folder / MODEL_FILE), _file_key(folder / TAGS_FILE), bool(use_cuda))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        _cache.clear()  # free the previous model before loading another
        names, categories = read_selected_tags(folder / TAGS_FILE)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
        try:
            session = ort.InferenceSession(
                str(folder / MODEL_FILE), sess_options=options, providers=_providers(use_cuda)
            )
        except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise TaggerError(f"onnxruntime cannot load {folder / MODEL_FILE}: {error}; {LAYOUT_HINT}") from error
        tagger = Tagger.from_session(session, names, categories, folder)
        _cache[key] = tagger
        return tagger


def clear_tagger_cache() -> None:
    """Drop the loaded tagger (frees its memory; the next use loads it again)."""
    with _cache_lock:
        _cache.clear()


def tag_image(
    image: np.ndarray, settings: TaggerSettings, models_dir: str | os.PathLike | None
) -> List[TagScore]:
    """Selected (tag, score) pairs of one RGB(A) uint8 frame with the tagger ``settings.model``."""
    return load_tagger(settings.model, models_dir, use_cuda=settings.use_cuda).tag_image(image, settings)


def tag_images(
    images: Sequence[np.ndarray], settings: TaggerSettings, models_dir: str | os.PathLike | None, batch_size: int = 8
) -> List[List[TagScore]]:
    """:func:`tag_image` for several frames, run through the model ``batch_size`` at a time."""
    return load_tagger(settings.model, models_dir, use_cuda=settings.use_cuda).tag_images(images, settings, batch_size)


# --------------------------------------------------------------------------- prompts

_UNESCAPED_BRACKET = re.compile(r"(?<!\\)[()\[\]{}]")
_TRAILING_WEIGHT = re.compile(r":\s*[-+]?\d*\.?\d+\s*$")
_EXTRA_NETWORK = re.compile(r"<[^<>]*>")
_PROMPT_SPECIALS = re.compile(r"([\\()\[\]])")


def normalise_tag(text: str) -> str:
    """The comparison key of a tag or prompt entry: unescaped, lower case, '_' as ' ', single spaces."""
    text = re.sub(r"\\(.)", r"\1", text).lower().replace("_", " ")
    return " ".join(text.split())


def prompt_entries(prompt: str) -> List[str]:
    """The comparison keys of a prompt's comma-separated entries, without attention syntax.

    "((long hair)), (red eyes:1.2), <lora:x:1>" -> ["long hair", "red eyes"], so a tag the user already
    wrote, weighted or not, is not added again.
    """
    entries = []
    for chunk in re.split(r"[,\n]", _EXTRA_NETWORK.sub(",", prompt or "")):
        chunk = _UNESCAPED_BRACKET.sub(" ", chunk).strip()
        chunk = _TRAILING_WEIGHT.sub("", chunk)
        key = normalise_tag(chunk)
        if key:
            entries.append(key)
    return entries


def format_tag(name: str, settings: TaggerSettings) -> str:
    """A tag as prompt text: underscores to spaces (emoticons kept), A1111 specials escaped."""
    if settings.replace_underscores and name not in KAOMOJIS:
        name = name.replace("_", " ")
    if settings.escape_parentheses:
        name = _PROMPT_SPECIALS.sub(r"\\\1", name)
    return name


def prompt_with_tags(prompt: str, tags: Sequence[TagScore], settings: TaggerSettings) -> str:
    """``prompt`` with the tags added before or after it; unchanged when the tagger is off.

    Tags are taken highest score first, skipping excluded ones and those already in the prompt (or
    already taken), up to ``max_tags``; then formatted (underscores, escaping) and joined with ", ".
    """
    if not settings.enabled:
        return prompt
    excluded = {normalise_tag(entry) for entry in settings.exclude.split(",")} - {""}
    present = set(prompt_entries(prompt))
    chosen: List[str] = []
    for name, _score in sorted(tags, key=lambda tag: -tag[1]):  # sorted() is stable: ties keep their order
        key = normalise_tag(name)
        if not key or key in excluded or key in present:
            continue
        present.add(key)
        chosen.append(format_tag(name, settings))
        if settings.max_tags and len(chosen) >= settings.max_tags:
            break
    if not chosen:
        return prompt
    tag_text = ", ".join(chosen)
    if settings.placement == "prepend":
        rest = (prompt or "").lstrip().lstrip(",").lstrip()
        return f"{tag_text}, {rest}" if rest else tag_text
    rest = (prompt or "").rstrip().rstrip(",").rstrip()
    return f"{rest}, {tag_text}" if rest else tag_text


def prompt_for_frame(
    prompt: str, frame: np.ndarray, settings: TaggerSettings, models_dir: str | os.PathLike | None
) -> str:
    """The prompt of one frame: ``prompt`` plus the tags of its source ``frame`` (RGB uint8) if enabled.

    Seed 001's per-frame prompt is prompt_for_frame("masterpiece,best quality", source, enabled settings).
    """
    if not settings.enabled:
        return prompt
    return prompt_with_tags(prompt, tag_image(frame, settings, models_dir), settings)
