"""The training loop the fine-tuning editors share (Tune-A-Video now, Motion Inversion next).

A method describes *what* to train as a :class:`TrainingTask` (its model, its trainable
tensors, its loss); :func:`run_training` does the rest, the same way for every method:

* **accelerate** prepares the model and optimizer, so ``accelerate launch`` spreads a run
  over several GPUs, and ``mixed_precision`` (``auto`` = bf16 where the GPU has it, else
  fp16; float32 on the CPU) wraps the forward pass in autocast;
* **gradient checkpointing** through the model's ``enable_gradient_checkpointing``;
* **8-bit AdamW** from bitsandbytes when asked for; where it cannot run (no CUDA GPU, or
  bitsandbytes not installed) the run stops before any work with a ``ValueError`` that names
  the fix, as the original Tune-A-Video does;
* **progress** after every step, an **interrupt** check after every step;
* **checkpoints** every ``checkpointing_steps`` and at an interrupt, and an **exact resume**:
  a checkpoint holds the trainable tensors, the optimizer (and fp16 grad-scaler) state, the
  step, the loss history, and the state of every random generator the run draws from
  (explicit ``torch.Generator`` objects, never the global RNG) including the data order.
  A resumed run therefore reproduces the uninterrupted run's later losses.

Checkpoint layout (``<output_dir>/checkpoints/step-000100/``)::

    trainables.safetensors   the task's trainable tensors (float32), names as in the model
    optimizer.pt             optimizer.state_dict() (loaded with torch.load(weights_only=True))
    scaler.pt                the fp16 GradScaler's state (fp16 runs only)
    rng-process0.pt          noise generator and data order of process 0 (one file per process)
    state.json               step, losses, settings, the task's fingerprint; written last

A checkpoint is written under a temporary name and renamed into place, so a crash never
leaves a half-written one that a resume would pick up.

torch and accelerate are imported inside functions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Protocol, Union

from pydantic import Field

from ..settings import StrictModel

logger = logging.getLogger("vidguide")

__all__ = [
    "CHECKPOINTS_DIR",
    "CheckpointInfo",
    "DataOrder",
    "TrainingProgress",
    "TrainingResult",
    "TrainingSettings",
    "TrainingTask",
    "check_8bit_adam",
    "describe_losses",
    "find_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "make_optimizer",
    "optimizer_parameters",
    "resolve_mixed_precision",
    "run_training",
]

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_PREFIX = "step-"

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
ProgressCallback = Callable[["TrainingProgress"], None]
InterruptCheck = Callable[[], bool]


class TrainingSettings(StrictModel):
    """How to train; methods subclass this with their own defaults (Tune-A-Video: lr 3e-5, 500 steps)."""

    learning_rate: float = Field(3e-5, gt=0.0, le=1.0, description="AdamW learning rate.")
    max_train_steps: int = Field(500, ge=1, le=100_000, description="Optimizer steps in all.")
    lr_warmup_steps: int = Field(0, ge=0, le=100_000, description="Linear warm-up from 0 over this many steps.")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2.")
    adam_weight_decay: float = Field(1e-2, ge=0.0, le=1.0, description="AdamW weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0.0, le=1.0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Clip the gradient norm to this; 0 = no clipping.")
    mixed_precision: MixedPrecision = Field(
        "auto", description="auto: bf16 on GPUs that have it, else fp16; the CPU always trains in float32."
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass: much less memory, ~30% slower."
    )
    use_8bit_adam: bool = Field(
        False, description="8-bit AdamW states from bitsandbytes (CUDA GPU and bitsandbytes needed; refused otherwise)."
    )
    checkpointing_steps: int = Field(
        100, ge=0, description="Save a resumable checkpoint every N steps; 0 = only when interrupted."
    )
    checkpoints_total_limit: int = Field(
        2, ge=1, le=1000, description="Keep at most this many checkpoints (oldest removed)."
    )
    seed: int = Field(33, ge=0, le=2**63 - 1, description="Seed of the training noise, timesteps and data order.")


@dataclass
class TrainingProgress:
    """Reported after every optimizer step (on the main process)."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    elapsed_s: float
    checkpoint: Optional[Path] = None  # set on the steps that saved one


@dataclass
class CheckpointInfo:
    path: Path
    step: int


@dataclass
class TrainingResult:
    """What a run did. ``losses[i]`` is the loss of step ``i + 1`` (the resumed part included)."""

    steps_done: int
    total_steps: int
    losses: List[float]
    interrupted: bool
    output_path: Optional[Path]
    last_checkpoint: Optional[Path]
    resumed_from: Optional[Path]
    notes: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: Optional[int] = None  # CUDA runs only
    mixed_precision: str = "no"


@dataclass
class VideoTrainResult:
    """A method's training on one video: :class:`TrainingResult` named for callers, plus the clip it used."""

    weights_path: Optional[Path]
    losses: List[float]
    steps_done: int
    total_steps: int
    interrupted: bool
    last_checkpoint: Optional[Path]
    notes: List[str]
    seconds: Dict[str, float]
    peak_memory_bytes: Optional[int]
    clip: Any


class TrainingTask(Protocol):
    """What a method gives :func:`run_training`.

    ``model`` is the module accelerate prepares (its forward runs under autocast);
    ``trainable_parameters`` must be a deterministic, ordered mapping of names (as in
    ``model.named_parameters()``) to parameters; ``training_loss`` must draw every random
    number from ``generator``.
    """

    method: str

    @property
    def model(self) -> Any: ...

    def before_run(self, device: Any) -> None:
        """Re-apply processors and hooks, move the frozen parts, fill caches: called at the start of every run."""

    def trainable_parameters(self) -> Dict[str, Any]: ...

    # Optional: ``learning_rate_scales() -> Dict[str, float]`` maps trainable names to a factor of
    # ``settings.learning_rate`` (missing names: 1.0), for methods that train two kinds of tensors at
    # different rates (Motion Inversion's hybrid loss: embeddings at 0.05, spatial LoRAs at 5e-4).

    def dataset_size(self) -> int: ...

    def training_loss(self, model: Any, item: int, generator: Any) -> Any: ...

    def fingerprint(self) -> Dict[str, Any]:
        """What must match for a checkpoint to be resumed (base model, sizes, trainable names...)."""

    def save_result(self, output_dir: Path, steps_done: int) -> Path:
        """Write the trained artefact; return its path."""

    def after_run(self) -> None:
        """Undo what training needed and inference must not keep (train mode, checkpointing)."""


# --------------------------------------------------------------------------- data order


class DataOrder:
    """Which dataset item each step trains on: a fresh permutation per epoch from its own generator."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        import torch

        if size < 1:
            raise ValueError("The training set is empty.")
        self.size = size
        self.shuffle = shuffle
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.permutation: List[int] = []
        self.position = 0
        self.epoch = 0

    def next(self) -> int:
        import torch

        if self.position >= len(self.permutation):
            if self.shuffle and self.size > 1:
                self.permutation = torch.randperm(self.size, generator=self.generator).tolist()
            else:
                self.permutation = list(range(self.size))
            self.position = 0
            self.epoch += 1
        item = self.permutation[self.position]
        self.position += 1
        return item

    def state_dict(self) -> Dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "permutation": list(self.permutation),
            "position": self.position,
            "epoch": self.epoch,
            "size": self.size,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"The checkpoint's data order is over {state['size']} items; this run has {self.size}.")
        self.generator.set_state(state["generator"])
        self.permutation = [int(i) for i in state["permutation"]]
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


# --------------------------------------------------------------------------- accelerate, optimizer


def resolve_mixed_precision(requested: str, device: Any) -> tuple[str, Optional[str]]:
    """The precision to use on ``device`` and a note when it differs from the request."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        if requested in ("fp16", "bf16"):
            return "no", f"mixed precision {requested} applies to GPUs; training on {device.type} in float32."
        return "no", None
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), None
    return requested, None


def _default_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_accelerator(mixed_precision: str, device: Any = None):
    """An ``accelerate.Accelerator``; a single-process WebUI may train with another precision than before.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a second
    Accelerator with another precision ("restart your runtime"). That is right under
    ``accelerate launch`` but wrong for a long-lived single-process WebUI that trains
    once in fp16 and later on the CPU, so outside a distributed launch the state is reset.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    device = torch.device(device) if device is not None else _default_device()
    state = AcceleratorState._shared_state
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if state and not launched:
        current_precision = state.get("_mixed_precision")
        current_device = getattr(PartialState._shared_state.get("device"), "type", None)
        if current_precision != mixed_precision or current_device != device.type:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")


_8BIT_ADAM_OFF = "or turn 8-bit Adam off (use_8bit_adam=False; on the command line --no-use-8bit-adam)"


def check_8bit_adam(settings: TrainingSettings, device: Any) -> Any:
    """bitsandbytes when ``settings.use_8bit_adam`` asks for it (None otherwise); a ``ValueError`` naming the
    fix when 8-bit Adam cannot run on ``device`` (None: the default device; no CUDA GPU, bitsandbytes missing
    or broken)."""
    if not settings.use_8bit_adam:
        return None
    import torch

    device = torch.device(device) if device is not None else _default_device()
    if device.type != "cuda":
        raise ValueError(
            f"8-bit Adam (bitsandbytes' AdamW8bit) needs a CUDA GPU; this run trains on {device.type}. "
            f"Train on a CUDA GPU, {_8BIT_ADAM_OFF}."
        )
    try:
        import bitsandbytes
    except ImportError as error:
        raise ValueError(
            f"8-bit Adam needs bitsandbytes, which is not installed ({error}). Install it into the Python that runs "
            f"the training (pip install bitsandbytes), {_8BIT_ADAM_OFF}."
        ) from error
    except (RuntimeError, OSError) as error:  # bitsandbytes present, but its CUDA library does not load
        raise ValueError(
            f"8-bit Adam: bitsandbytes is installed but does not load ({error}). Reinstall a bitsandbytes that "
            f"matches this torch and CUDA (pip install -U bitsandbytes), {_8BIT_ADAM_OFF}."
        ) from error
    return bitsandbytes


def make_optimizer(parameters: List[Any], settings: TrainingSettings, device: Any) -> tuple[Any, List[str]]:
    """AdamW over ``parameters``: bitsandbytes' 8-bit AdamW when asked for (a ``ValueError`` naming the fix
    when it cannot run here, see :func:`check_8bit_adam`), else torch's.

    ``parameters`` is a list of tensors, or of torch parameter-group dicts; a group's optional
    ``lr_scale`` multiplies ``settings.learning_rate`` for that group (kept in the group, so it
    survives ``optimizer.state_dict()`` and a resume).
    """
    import torch

    notes: List[str] = []
    if parameters and isinstance(parameters[0], dict):
        parameters = [
            {**group, "lr_scale": float(group.get("lr_scale", 1.0)),
             "lr": settings.learning_rate * float(group.get("lr_scale", 1.0))}
            for group in parameters
        ]
    options = dict(
        lr=settings.learning_rate,
        betas=(settings.adam_beta1, settings.adam_beta2),
        weight_decay=settings.adam_weight_decay,
        eps=settings.adam_epsilon,
    )
    bitsandbytes = check_8bit_adam(settings, device)
    if bitsandbytes is not None:
        return bitsandbytes.optim.AdamW8bit(parameters, **options), notes
    return torch.optim.AdamW(parameters, **options), notes


def optimizer_parameters(task: Any, trainables: Dict[str, Any]) -> List[Any]:
    """What :func:`make_optimizer` gets for ``task``: its tensors, or groups by the task's ``learning_rate_scales``."""
    scales_of = getattr(task, "learning_rate_scales", None)
    if scales_of is None:
        return list(trainables.values())
    scales = scales_of()
    groups: Dict[float, List[Any]] = {}
    for name, param in trainables.items():  # insertion order: deterministic groups
        groups.setdefault(float(scales.get(name, 1.0)), []).append(param)
    if list(groups) == [1.0]:
        return list(trainables.values())
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


def _learning_rate(settings: TrainingSettings, step: int) -> float:
    """Constant after a linear warm-up; a function of the step alone, so a resume needs no scheduler state."""
    if settings.lr_warmup_steps and step < settings.lr_warmup_steps:
        return settings.learning_rate * (step + 1) / settings.lr_warmup_steps
    return settings.learning_rate


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_name(step: int) -> str:
    return f"{_CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(output_dir: str | Path) -> List[CheckpointInfo]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if not entry.is_dir() or not entry.name.startswith(_CHECKPOINT_PREFIX) or not (entry / "state.json").is_file():
            continue
        suffix = entry.name[len(_CHECKPOINT_PREFIX):]
        if suffix.isdigit():
            found.append(CheckpointInfo(path=entry, step=int(suffix)))
    return sorted(found, key=lambda info: info.step)


def find_checkpoint(output_dir: str | Path, resume: Union[str, Path, None]) -> Optional[Path]:
    """``"latest"`` (None when there is none), a checkpoint folder, or None."""
    if resume is None or resume is False or str(resume).strip() == "":
        return None
    if str(resume) == "latest":
        found = list_checkpoints(output_dir)
        return found[-1].path if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(
            f"'{path}' is not a complete training checkpoint (no state.json); "
            "give a checkpoints/step-N folder or 'latest'."
        )
    return path


def _save_checkpoint(
    output_dir: Path, step: int, task: TrainingTask, trainables: Dict[str, Any], optimizer: Any, accelerator: Any,
    generator: Any, data_order: DataOrder, losses: List[float], settings: TrainingSettings,
) -> Path:
    import torch
    from safetensors.torch import save_file

    root = output_dir / CHECKPOINTS_DIR
    final = root / _checkpoint_name(step)
    process = accelerator.process_index
    # Every process writes its own generator state; the main process writes the rest.
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        partial = root / f".{final.name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        tensors = {name: param.detach().to("cpu", torch.float32).contiguous() for name, param in trainables.items()}
        save_file(tensors, str(partial / "trainables.safetensors"), metadata={"step": str(step), "method": task.method})
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), partial / "scaler.pt")
    accelerator.wait_for_everyone()
    partial = root / f".{final.name}.partial"
    torch.save({"noise": generator.get_state(), "data_order": data_order.state_dict()}, partial / f"rng-process{process}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": task.method,
            "step": step,
            "losses": losses,
            "num_processes": accelerator.num_processes,
            "trainable_names": list(trainables),
            "task": task.fingerprint(),
            "settings": settings.to_dict(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (partial / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[: -settings.checkpoints_total_limit]:
            shutil.rmtree(old.path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(
    path: Path, task: TrainingTask, trainables: Dict[str, Any], optimizer: Any, accelerator: Any,
    generator: Any, data_order: DataOrder, settings: TrainingSettings,
) -> tuple[int, List[float]]:
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != CHECKPOINT_FORMAT or state.get("method") != task.method:
        raise ValueError(f"'{path}' is a {state.get('method')} checkpoint (format {state.get('format')}), not {task.method}.")
    expected = json.loads(json.dumps(task.fingerprint()))
    if state.get("task") != expected:
        saved = state.get("task", {})
        differing = sorted(key for key in set(expected) | set(saved) if expected.get(key) != saved.get(key))
        raise ValueError(
            f"The checkpoint '{path}' belongs to another training run (differs in: {', '.join(differing)}); "
            "resume with the same video, prompt, base model and sizes, or start a new run in another folder."
        )
    if state.get("trainable_names") != list(trainables):
        raise ValueError(f"The checkpoint '{path}' trains other tensors than this run; start a new run.")
    if int(state.get("num_processes", 1)) != accelerator.num_processes:
        raise ValueError(
            f"The checkpoint '{path}' was written by {state.get('num_processes')} processes; this run has "
            f"{accelerator.num_processes}. Resume with the same number of GPUs."
        )
    step = int(state["step"])
    if step > settings.max_train_steps:
        raise ValueError(f"The checkpoint is at step {step}, beyond max_train_steps={settings.max_train_steps}.")
    tensors = load_file(str(path / "trainables.safetensors"), device="cpu")
    with torch.no_grad():
        for name, param in trainables.items():
            param.copy_(tensors[name].to(param.device, param.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if accelerator.scaler is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = torch.load(path / f"rng-process{accelerator.process_index}.pt", weights_only=True)
    generator.set_state(rng["noise"])
    data_order.load_state_dict(rng["data_order"])
    return step, [float(x) for x in state.get("losses", [])]


# --------------------------------------------------------------------------- the loop


def run_training(
    task: TrainingTask,
    settings: TrainingSettings,
    output_dir: str | Path,
    *,
    device: Any = None,
    resume: Union[str, Path, None] = None,
    progress: Optional[ProgressCallback] = None,
    should_interrupt: Optional[InterruptCheck] = None,
    stop_after_step: Optional[int] = None,
) -> TrainingResult:
    """Train ``task`` for ``settings.max_train_steps`` steps; checkpoints go to ``output_dir/checkpoints``.

    Args:
        task: the method's model, trainables and loss (:class:`TrainingTask`).
        settings: learning rate, steps, precision, checkpointing, seed.
        output_dir: where the checkpoints and (through ``task.save_result``) the result go.
        device: torch device; default CUDA when available. Under ``accelerate launch`` the
            accelerator's device wins.
        resume: ``"latest"`` to continue from the newest checkpoint in ``output_dir`` (a fresh
            start when there is none), or a checkpoint folder.
        progress: called with a :class:`TrainingProgress` after every step.
        should_interrupt: checked after every step; when it returns true a checkpoint is
            saved and the run returns with ``interrupted=True`` (resume with ``"latest"``).
        stop_after_step: stop (as if interrupted, with a checkpoint) after this step; for
            tests and for splitting a long run.

    Returns:
        a :class:`TrainingResult`; ``output_path`` is None when the run did not finish.
    """
    import torch

    started = time.perf_counter()
    output_dir = Path(output_dir)
    notes: List[str] = []
    device = torch.device(device) if device is not None else _default_device()
    check_8bit_adam(settings, device)  # before any work: a clear error, not a fallback
    precision, precision_note = resolve_mixed_precision(settings.mixed_precision, device)
    if precision_note:
        notes.append(precision_note)
    accelerator = make_accelerator(precision, device)
    device = accelerator.device
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = find_checkpoint(output_dir, resume)

    # 1. Processors and hooks are global state on the model: re-apply them for this run.
    task.before_run(device)
    model = task.model
    trainables = task.trainable_parameters()
    if not trainables:
        raise ValueError(f"{task.method}: nothing to train (no trainable parameters were found).")
    model.requires_grad_(False)
    for param in trainables.values():
        param.requires_grad_(True)
    if settings.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    model.train()

    # 2. Optimizer, then accelerate (device placement, autocast, DDP under accelerate launch).
    optimizer, optimizer_notes = make_optimizer(optimizer_parameters(task, trainables), settings, device)
    notes.extend(optimizer_notes)
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    # Each process draws its own noise; the data order is shared.
    generator = torch.Generator(device="cpu").manual_seed(settings.seed + 1_000_003 * accelerator.process_index)
    data_order = DataOrder(task.dataset_size(), seed=settings.seed)
    if torch.cuda.is_available() and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    step, losses = 0, []
    if checkpoint is not None:
        step, losses = _load_checkpoint(checkpoint, task, trainables, optimizer, accelerator, generator, data_order, settings)
        losses = losses[:step]
        notes.append(f"Resumed from {checkpoint.name} (step {step}).")
    setup_s = time.perf_counter() - started

    # 3. The loop.
    interrupted = False
    last_checkpoint: Optional[Path] = checkpoint
    loop_started = time.perf_counter()
    first_step = step
    try:
        while step < settings.max_train_steps:
            learning_rate = _learning_rate(settings, step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * group.get("lr_scale", 1.0)
            item = data_order.next()
            loss = task.training_loss(prepared_model, item, generator)
            if not torch.isfinite(loss.detach()).all():
                raise FloatingPointError(
                    f"The loss became {loss.item()} at step {step + 1}; lower the learning rate or use bf16/float32."
                )
            accelerator.backward(loss)
            if settings.max_grad_norm > 0 and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(list(trainables.values()), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            reported = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
            losses.append(reported)

            wants_stop = (should_interrupt is not None and should_interrupt()) or (
                stop_after_step is not None and step >= stop_after_step
            )
            saved = None
            due = settings.checkpointing_steps and step % settings.checkpointing_steps == 0
            if (due or wants_stop) and step < settings.max_train_steps:
                saved = _save_checkpoint(output_dir, step, task, trainables, optimizer, accelerator, generator,
                                         data_order, losses, settings)
                last_checkpoint = saved
            if progress is not None and accelerator.is_main_process:
                progress(TrainingProgress(step=step, total_steps=settings.max_train_steps, loss=reported,
                                          learning_rate=learning_rate, elapsed_s=time.perf_counter() - started,
                                          checkpoint=saved))
            if wants_stop and step < settings.max_train_steps:
                interrupted = True
                break
    finally:
        # 4. Leave the model as inference expects it: accelerate's autocast wrapper off, eval mode.
        accelerator.unwrap_model(prepared_model, keep_fp32_wrapper=False)
        if hasattr(model, "disable_gradient_checkpointing"):
            model.disable_gradient_checkpointing()
        model.eval()
        model.requires_grad_(False)
        task.after_run()
    loop_s = time.perf_counter() - loop_started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    output_path = None
    if not interrupted:
        if accelerator.is_main_process:
            output_path = task.save_result(output_dir, step)
        accelerator.wait_for_everyone()
    steps_run = step - first_step
    seconds = {"setup_s": setup_s, "train_s": loop_s, "total_s": time.perf_counter() - started}
    if steps_run:
        seconds["per_step_s"] = loop_s / steps_run
    return TrainingResult(
        steps_done=step, total_steps=settings.max_train_steps, losses=losses, interrupted=interrupted,
        output_path=output_path, last_checkpoint=last_checkpoint, resumed_from=checkpoint, notes=notes,
        seconds=seconds, peak_memory_bytes=peak, mixed_precision=precision,
    )


def describe_losses(losses: List[float], window: int = 5) -> str:
    """'1.1490 -> 1.1110' from the first and last ``window`` losses (for logs and the CLI)."""
    if not losses:
        return "no steps"
    window = max(1, min(window, len(losses) // 2 or 1))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return f"{first:.4f} -> {last:.4f}" if math.isfinite(first + last) else "non-finite"


def train_on_video(video: Any, prompt: str, settings: Any, *, empty_prompt_message: str,
                   load_components: Callable[[], Any], make_trainer: Callable[[Any, Any], Any],
                   components: Any, output_dir: Union[str, Path], device: Any, resume: Union[str, Path, None],
                   progress: Optional[Callable[[TrainingProgress], None]],
                   should_interrupt: Optional[Callable[[], bool]],
                   stop_after_step: Optional[int]) -> VideoTrainResult:
    """The training entry points' shared order: inputs checked before anything heavy is loaded, then
    the base model (``load_components()`` unless ``components`` are given), then :func:`run_training`.
    ``make_trainer(components, clip)`` builds the method's :class:`TrainingTask`."""
    from .tune_a_video import sample_video_frames

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(empty_prompt_message)
    check_8bit_adam(settings, device)
    clip = sample_video_frames(video, frames=settings.frames, start=settings.sample_start, stride=settings.sample_stride,
                               width=settings.width, height=settings.height)
    if components is None:
        components = load_components()
    result = run_training(make_trainer(components, clip), settings, output_dir, device=device, resume=resume,
                          progress=progress, should_interrupt=should_interrupt, stop_after_step=stop_after_step)
    return VideoTrainResult(
        weights_path=result.output_path, losses=result.losses, steps_done=result.steps_done,
        total_steps=result.total_steps, interrupted=result.interrupted, last_checkpoint=result.last_checkpoint,
        notes=clip.notes + components.notes + result.notes, seconds=result.seconds,
        peak_memory_bytes=result.peak_memory_bytes, clip=clip,
    )
