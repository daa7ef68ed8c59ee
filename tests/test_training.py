"""The shared training loop (lib_vidguide/pipelines/training.py): exact resume, checkpoints, options.

Exercised with Tune-A-Video on the tiny model and with a toy task whose dataset has several
items (so the shuffled data order is part of what a resume must restore).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_vidguide.pipelines import training
from lib_vidguide.pipelines import tune_a_video as tav
from lib_vidguide.pipelines.sd_loading import SDComponents
from lib_vidguide.pipelines.training import DataOrder, TrainingSettings, list_checkpoints, run_training
from lib_vidguide.tiny_models import build_tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from videos import moving_pattern  # noqa: E402

SIZE = 64
PROMPT = "a pattern pans right"


def tiny_components() -> SDComponents:
    parts = build_tiny_components(0)
    return SDComponents(
        tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], unet=parts["unet"], vae=parts["vae"],
        scheduler_config=dict(parts["scheduler"].config), source="tiny", kind="diffusers",
    )


def frames() -> np.ndarray:
    return np.stack(moving_pattern(4, size=(SIZE, SIZE), shift_px=3.0))


def tav_settings(**overrides) -> tav.TuneAVideoSettings:
    values = dict(frames=4, sample_stride=1, width=SIZE, height=SIZE, max_train_steps=16, learning_rate=1e-3,
                  checkpointing_steps=0)
    values.update(overrides)
    return tav.TuneAVideoSettings(**values)


class ToyTask:
    """Linear regression over 5 items with input noise: a TrainingTask that is not Tune-A-Video."""

    method = "toy"

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(5, 3, generator=generator)
        self.targets = self.inputs @ torch.tensor([[1.0], [-2.0], [0.5]])
        self._model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Linear(1, 1))
        with torch.no_grad():  # deterministic start without the global RNG
            for param in self._model.parameters():
                param.copy_(torch.linspace(-0.5, 0.5, param.numel()).reshape(param.shape))
        self.items_seen: list[int] = []
        self.runs = 0

    @property
    def model(self):
        return self._model

    def before_run(self, device):
        self.runs += 1

    def trainable_parameters(self):
        return {name: p for name, p in self._model.named_parameters() if name.startswith("0.")}

    def dataset_size(self):
        return 5

    def training_loss(self, model, item, generator):
        self.items_seen.append(item)
        noisy = self.inputs[item] + 0.1 * torch.randn(3, generator=generator)
        return (model(noisy) - self.targets[item]).square().mean()

    def fingerprint(self):
        return {"items": 5}

    def save_result(self, output_dir, steps_done):
        path = Path(output_dir) / "toy.pt"
        torch.save(self._model.state_dict(), path)
        return path

    def after_run(self):
        pass


def toy_settings(**overrides) -> TrainingSettings:
    values = dict(learning_rate=0.05, max_train_steps=17, checkpointing_steps=0, gradient_checkpointing=False, seed=5)
    values.update(overrides)
    return TrainingSettings(**values)


# --------------------------------------------------------------------------- exact resume


def test_tune_a_video_resumed_from_a_checkpoint_reproduces_the_uninterrupted_losses(tmp_path):
    settings = tav_settings()
    full = tav.train_tune_a_video(frames(), PROMPT, settings, components=tiny_components(), output_dir=tmp_path / "full")

    stop_at = {"step": 0}

    def interrupt_after_6() -> bool:
        stop_at["step"] += 1
        return stop_at["step"] >= 6

    first = tav.train_tune_a_video(frames(), PROMPT, settings, components=tiny_components(), output_dir=tmp_path / "split",
                                   should_interrupt=interrupt_after_6)
    assert first.interrupted and first.steps_done == 6 and first.weights_path is None
    assert first.last_checkpoint.name == "step-000006"
    # A fresh process would rebuild everything: fresh components, a fresh inflated UNet.
    rest = tav.train_tune_a_video(frames(), PROMPT, settings, components=tiny_components(), output_dir=tmp_path / "split",
                                  resume="latest")
    assert rest.steps_done == 16 and not rest.interrupted
    assert any("Resumed from step-000006" in note for note in rest.notes)
    assert rest.losses[:6] == first.losses
    assert rest.losses == full.losses  # bit-identical: same noise, timesteps, optimizer moments
    print(f"TAV resume at step 6 of 16: steps 7-16 losses {rest.losses[6]:.6f} .. {rest.losses[-1]:.6f}, "
          f"max |resumed - uninterrupted| {max(abs(a - b) for a, b in zip(rest.losses, full.losses)):.1e}")
    from safetensors.torch import load_file

    full_weights, resumed_weights = load_file(str(full.weights_path)), load_file(str(rest.weights_path))
    assert full_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)


def test_tune_a_video_training_reapplies_processors_that_a_reset_dropped(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    settings = tav_settings(max_train_steps=3)
    reference = run_training(tav.TuneAVideoTrainer(tiny_components(), frames(), PROMPT, settings), settings,
                             tmp_path / "a", device="cpu")
    components = tiny_components()
    trainer = tav.TuneAVideoTrainer(components, frames(), PROMPT, settings)  # inflates the UNet
    components.unet.set_attn_processor(AttnProcessor2_0())  # then an xformers toggle or another extension resets it
    assert not tav.is_tune_a_video_applied(components.unet)
    seen = []
    again = run_training(trainer, settings, tmp_path / "b", device="cpu",
                         progress=lambda _event: seen.append(tav.is_tune_a_video_applied(components.unet)))
    assert seen == [True] * 3 and again.losses == reference.losses


def test_toy_task_resume_restores_the_shuffled_data_order(tmp_path):
    full_task = ToyTask()
    full = run_training(full_task, toy_settings(), tmp_path / "full", device="cpu")
    assert sorted(full_task.items_seen[:5]) == [0, 1, 2, 3, 4] and full_task.items_seen[:5] != [0, 1, 2, 3, 4]

    first_task = ToyTask()
    first = run_training(first_task, toy_settings(), tmp_path / "split", device="cpu", stop_after_step=7)  # mid-epoch
    second_task = ToyTask()
    second = run_training(second_task, toy_settings(), tmp_path / "split", device="cpu", resume="latest")
    assert first.interrupted and first.steps_done == 7
    assert first_task.items_seen + second_task.items_seen == full_task.items_seen
    assert second.losses == full.losses
    assert torch.equal(torch.load(full.output_path)["0.weight"], torch.load(second.output_path)["0.weight"])
    # Only the chosen tensors trained: the second layer is where it started.
    assert torch.equal(second_task.model[1].weight, ToyTask().model[1].weight)


def test_data_order_state_round_trip():
    order = DataOrder(4, seed=1)
    taken = [order.next() for _ in range(6)]
    copy = DataOrder(4, seed=99)
    copy.load_state_dict(order.state_dict())
    assert [order.next() for _ in range(9)] == [copy.next() for _ in range(9)]
    assert sorted(taken[:4]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="over 4 items"):
        DataOrder(5, seed=1).load_state_dict(order.state_dict())


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_every_n_steps_hold_everything_a_resume_needs(tmp_path):
    events = []
    result = run_training(ToyTask(), toy_settings(max_train_steps=9, checkpointing_steps=2, checkpoints_total_limit=2),
                          tmp_path, device="cpu", progress=events.append)
    assert [event.step for event in events] == list(range(1, 10))
    assert [event.checkpoint.name for event in events if event.checkpoint] == [f"step-00000{i}" for i in (2, 4, 6, 8)]
    assert all(event.total_steps == 9 and np.isfinite(event.loss) for event in events)
    kept = list_checkpoints(tmp_path)
    assert [info.step for info in kept] == [6, 8]  # the oldest are removed
    assert not list((tmp_path / "checkpoints").glob(".*partial"))
    files = sorted(path.name for path in kept[-1].path.iterdir())
    assert files == ["optimizer.pt", "rng-process0.pt", "state.json", "trainables.safetensors"]
    state = json.loads((kept[-1].path / "state.json").read_text())
    assert state["step"] == 8 and len(state["losses"]) == 8 and state["method"] == "toy"
    assert state["trainable_names"] == ["0.weight", "0.bias"] and state["settings"]["checkpointing_steps"] == 2
    rng = torch.load(kept[-1].path / "rng-process0.pt", weights_only=True)
    assert set(rng) == {"noise", "data_order"} and rng["noise"].dtype == torch.uint8
    optimizer = torch.load(kept[-1].path / "optimizer.pt", weights_only=True)
    assert int(optimizer["state"][0]["step"]) == 8
    assert result.output_path.is_file() and result.last_checkpoint == kept[-1].path


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    tav.train_tune_a_video(frames(), PROMPT, tav_settings(max_train_steps=4), components=tiny_components(),
                           output_dir=tmp_path, stop_after_step=2)
    with pytest.raises(ValueError, match="belongs to another training run \\(differs in: prompt\\)"):
        tav.train_tune_a_video(frames(), "another prompt", tav_settings(max_train_steps=4), components=tiny_components(),
                               output_dir=tmp_path, resume="latest")
    with pytest.raises(ValueError, match="not a complete training checkpoint"):
        run_training(ToyTask(), toy_settings(), tmp_path, device="cpu", resume=tmp_path / "nowhere")
    # "latest" with no checkpoint is a fresh start.
    fresh = run_training(ToyTask(), toy_settings(max_train_steps=2), tmp_path / "empty", device="cpu", resume="latest")
    assert fresh.resumed_from is None and fresh.steps_done == 2


def test_non_finite_loss_stops_with_advice(tmp_path):
    class Exploding(ToyTask):
        def training_loss(self, model, item, generator):
            return super().training_loss(model, item, generator) * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        run_training(Exploding(), toy_settings(), tmp_path, device="cpu")


# --------------------------------------------------------------------------- options


def test_gradient_checkpointing_is_on_while_training_and_off_after(tmp_path):
    components = tiny_components()
    seen = {}
    trainer = tav.TuneAVideoTrainer(components, frames(), PROMPT, tav_settings(max_train_steps=2, gradient_checkpointing=True))
    original = trainer.training_loss

    def spy(model, item, generator):
        seen["checkpointing"] = [m.gradient_checkpointing for m in components.unet.modules() if hasattr(m, "gradient_checkpointing")]
        seen["training"] = components.unet.training
        return original(model, item, generator)

    trainer.training_loss = spy
    run_training(trainer, trainer.settings, tmp_path, device="cpu")
    assert seen["training"] and seen["checkpointing"] and all(seen["checkpointing"])
    assert not components.unet.training
    assert not any(m.gradient_checkpointing for m in components.unet.modules() if hasattr(m, "gradient_checkpointing"))
    assert tav.is_tune_a_video_applied(components.unet)

    # Checkpointing recomputes the same graph, temporal hooks included: the same losses and trained tensors.
    plain_components = tiny_components()
    plain = tav.TuneAVideoTrainer(plain_components, frames(), PROMPT, tav_settings(max_train_steps=2, gradient_checkpointing=False))
    plain_result = run_training(plain, plain.settings, tmp_path / "plain", device="cpu")
    checkpointed = run_training(tav.TuneAVideoTrainer(tiny_components(), frames(), PROMPT, tav_settings(max_train_steps=2)),
                                tav_settings(max_train_steps=2), tmp_path / "checkpointed", device="cpu")
    assert np.allclose(plain_result.losses, checkpointed.losses, rtol=1e-5, atol=0)
    from safetensors.torch import load_file

    a, b = load_file(str(plain_result.output_path)), load_file(str(checkpointed.output_path))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_eight_bit_adam_is_used_when_importable_and_otherwise_fails_naming_the_fix(monkeypatch, tmp_path, capsys):
    params = [torch.nn.Parameter(torch.zeros(2))]
    settings = toy_settings(use_8bit_adam=True)

    # No CUDA GPU: refused, not silently replaced by AdamW.
    with pytest.raises(ValueError, match="needs a CUDA GPU.*--no-use-8bit-adam"):
        training.make_optimizer(params, settings, "cpu")
    # A GPU without bitsandbytes (as in this environment: it is not installable here): the fix is named.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ValueError, match=r"bitsandbytes, which is not installed.*pip install bitsandbytes.*turn 8-bit Adam off"):
        training.make_optimizer(params, settings, "cuda")
    # The loop refuses before any work: no before_run, no step, no checkpoint.
    task = ToyTask()
    with pytest.raises(ValueError, match="8-bit Adam"):
        run_training(task, settings, tmp_path / "run", device="cpu")
    assert task.runs == 0 and task.items_seen == [] and not (tmp_path / "run").exists()
    # Off (the default): torch's AdamW, no note.
    optimizer, notes = training.make_optimizer(params, toy_settings(), "cpu")
    assert type(optimizer) is torch.optim.AdamW and notes == []

    class FakeAdamW8bit(torch.optim.AdamW):
        pass

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=FakeAdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    optimizer, notes = training.make_optimizer(params, settings, "cuda")
    assert isinstance(optimizer, FakeAdamW8bit) and notes == []
    assert optimizer.defaults["lr"] == settings.learning_rate and optimizer.defaults["weight_decay"] == 1e-2

    # The command line: one "error:" line and status 2, before the video is read or a model is loaded.
    from lib_vidguide.cli import main

    for command in (["tune-a-video", "train"], ["motion-inversion", "train"]):
        status = main(command + [str(tmp_path / "missing.mp4"), "--model", str(tmp_path / "no-model"), "--prompt", "p",
                                 "--out", str(tmp_path / "cli"), "--use-8bit-adam", "--device", "cpu"])
        error = capsys.readouterr().err
        assert status == 2 and error.startswith("error: 8-bit Adam") and error.count("\n") == 1, (command, error)


def test_mixed_precision_choice_and_accelerator_reuse():
    assert training.resolve_mixed_precision("auto", "cpu") == ("no", None)
    precision, note = training.resolve_mixed_precision("fp16", "cpu")
    assert precision == "no" and "float32" in note
    assert training.make_accelerator("no", "cpu").mixed_precision == "no"
    # A long-lived WebUI process may train again with another precision: no "restart your runtime".
    assert training.make_accelerator("bf16", "cpu").mixed_precision == "bf16"
    assert training.make_accelerator("no", "cpu").mixed_precision == "no"


def test_settings_validate():
    with pytest.raises(ValueError):
        TrainingSettings(learning_rate=0)
    with pytest.raises(ValueError):
        TrainingSettings(mixed_precision="fp8")
    with pytest.raises(ValueError):
        TrainingSettings(unknown=1)
    defaults = tav.TuneAVideoSettings()
    assert (defaults.learning_rate, defaults.max_train_steps, defaults.frames, defaults.width, defaults.sample_stride) == (3e-5, 500, 24, 512, 2)
    edit = tav.TuneAVideoEditSettings()
    assert (edit.num_inference_steps, edit.guidance_scale, edit.inversion_steps, edit.inversion_prompt) == (50, 12.5, 50, "")
    assert training.describe_losses([1.0, 1.0, 0.5, 0.5]) == "1.0000 -> 0.5000"
