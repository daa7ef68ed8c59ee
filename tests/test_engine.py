"""The video engine with a transparent renderer: which frame guides which, files, interrupts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image
from videos import moving_pattern, write_clip

from lib_vidguide.engine import RenderedFrame, plan_frames, run_video
from lib_vidguide.settings import GuidanceSettings, VideoSettings
from lib_vidguide.video_io import probe, read_all_frames


class RecordingRenderer:
    """Inverts the frame; records what guided each call and on which thread flows were ready."""

    def __init__(self, fail_at=None):
        self.calls = []
        self.fail_at = fail_at
        self.threads = set()

    def render(self, frame, guide, index):
        if index == self.fail_at:
            raise RuntimeError("renderer broke")
        self.threads.add(threading.current_thread().name)
        self.calls.append((index, None if guide is None else guide.previous_output.copy(), guide))
        return RenderedFrame(255 - frame, None)


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "source.mp4", moving_pattern(6))


def test_frame_one_unguided_then_each_frame_guided_by_the_previous_output(clip, tmp_path):
    renderer = RecordingRenderer()
    result = run_video(clip, tmp_path / "out.mp4", renderer, VideoSettings())
    assert result.frames_written == 6 and not result.interrupted
    assert renderer.calls[0][1] is None
    source = read_all_frames(clip)
    for index in range(1, 6):
        previous_output = renderer.calls[index][1]
        assert np.array_equal(previous_output, 255 - source[index - 1])
        motion = renderer.calls[index][2].motion
        # The texture pans right by 2 px: the current->previous flow points left.
        assert np.median(motion.pair.backward[..., 0]) == pytest.approx(-2.0, abs=0.3)
        assert motion.weight.shape == (64, 64)
    out = read_all_frames(tmp_path / "out.mp4")
    assert len(out) == 6
    assert np.abs(out[2].astype(int) - (255 - source[2])).mean() < 3
    assert renderer.threads == {threading.main_thread().name}


def test_unguided_run_computes_no_flow(clip, tmp_path):
    renderer = RecordingRenderer()
    run_video(clip, tmp_path / "out.mp4", renderer, VideoSettings(guidance=GuidanceSettings(enabled=False)))
    assert all(call[2] is None for call in renderer.calls)


def test_interrupt_keeps_the_finished_frames_and_no_half_written_video(clip, tmp_path):
    renderer = RecordingRenderer()
    stop = {"now": False}

    def on_frame(event):
        stop["now"] = event.index == 2

    frames_dir = tmp_path / "out"
    result = run_video(clip, tmp_path / "out.mp4", renderer, VideoSettings(), frames_dir=frames_dir,
                       on_frame=on_frame, should_stop=lambda: stop["now"])
    assert result.interrupted and result.frames_written == 3
    assert result.output_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source.mp4"]
    kept = sorted(frames_dir.iterdir())
    assert [p.name for p in kept] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    source = read_all_frames(clip)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(kept[2])), 255 - source[2])


def test_a_renderer_failure_leaves_no_output(clip, tmp_path):
    with pytest.raises(RuntimeError, match="renderer broke"):
        run_video(clip, tmp_path / "out.mp4", RecordingRenderer(fail_at=3), VideoSettings())
    assert list(tmp_path.iterdir()) == [clip]


def test_wrong_size_from_the_renderer_is_explained(clip, tmp_path):
    class Shrinking:
        def render(self, frame, guide, index):
            return RenderedFrame(frame[:32], None)

    with pytest.raises(RuntimeError, match="changed the size"):
        run_video(clip, tmp_path / "out.mp4", Shrinking(), VideoSettings())


def test_frame_selection_size_and_fps(clip, tmp_path):
    settings = VideoSettings(start_frame=1, every_nth=2, max_frames=2, width=72, height=64)
    plan = plan_frames(clip, settings)
    assert (plan.start, plan.step, plan.total, plan.size) == (1, 2, 2, (72, 64))
    assert float(plan.fps) == pytest.approx(4.0)
    renderer = RecordingRenderer()
    run_video(clip, tmp_path / "out.mp4", renderer, settings)
    assert [call[0] for call in renderer.calls] == [0, 1]
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frame_count) == (72, 64, 2)
    assert float(info.fps) == pytest.approx(4.0)


def test_start_past_the_end_is_a_clear_error(clip, tmp_path):
    with pytest.raises(ValueError, match="lower the start frame"):
        run_video(clip, tmp_path / "out.mp4", RecordingRenderer(), VideoSettings(start_frame=50))


class StatefulRenderer:
    """Output = frame blended with the warped previous output, plus a latent derived from both:
    any difference in the guidance state (previous output, latent, flows) changes the result."""

    def __init__(self):
        self.guides = []

    def render(self, frame, guide, index):
        import torch

        from lib_vidguide.flow import backward_warp

        self.guides.append(guide)
        image = frame.astype(np.float32)
        if guide is not None:
            warped = backward_warp(guide.previous_output, guide.motion.pair.backward).astype(np.float32)
            bias = float(guide.previous_latent.mean()) if guide.previous_latent is not None else 0.0
            image = 0.5 * image + 0.5 * warped + bias
        latent = torch.full((1, 4, 8, 8), float(image.mean()) / 100.0 + index)
        return RenderedFrame(np.clip(image, 0, 255).astype(np.uint8), latent)


def test_a_resumed_run_gives_the_same_frames_as_an_uninterrupted_one(clip, tmp_path):
    from lib_vidguide.engine import finished_frames, load_resume_state

    # Lossless H.264: lossy x264 itself encodes identical frames slightly differently now and
    # then in a long-lived process (8 distinct decodes in 60 tries measured); at CRF 0 the
    # decoded video is exactly its frames.
    settings = VideoSettings(crf=0)
    full = run_video(clip, tmp_path / "full.mp4", StatefulRenderer(), settings, frames_dir=tmp_path / "full")
    assert full.frames_written == 6 and len(full.warp_error_pairs) == 5

    stop = {"now": False}
    first = run_video(clip, tmp_path / "part.mp4", StatefulRenderer(), settings, frames_dir=tmp_path / "part",
                      on_frame=lambda event: stop.update(now=event.index == 2), should_stop=lambda: stop["now"])
    assert first.interrupted and finished_frames(tmp_path / "part") == 3
    state = load_resume_state(tmp_path / "part")
    assert state.done == 3 and state.previous.latent is not None
    # The previous frame's latent (and the first frame's, for drift control) is all a resume needs.
    assert sorted(p.name for p in (tmp_path / "part" / "latents").iterdir()) == [
        "frame_000001.safetensors", "frame_000002.safetensors", "frame_000003.safetensors"]
    renderer = StatefulRenderer()
    second = run_video(clip, tmp_path / "part.mp4", renderer, settings, frames_dir=tmp_path / "part", resume=state)
    assert not second.interrupted and second.resumed_from == 3 and second.frames_written == 6
    assert [g is not None for g in renderer.guides] == [True, True, True]
    for index in range(6):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "full" / f"frame_{index + 1:06d}.png")),
                              np.asarray(Image.open(tmp_path / "part" / f"frame_{index + 1:06d}.png")))
    assert np.array_equal(np.stack(read_all_frames(tmp_path / "full.mp4")), np.stack(read_all_frames(tmp_path / "part.mp4")))
    assert second.warp_error_pairs == pytest.approx(full.warp_error_pairs[2:])


def test_resuming_a_finished_run_only_rebuilds_the_video(clip, tmp_path):
    from lib_vidguide.engine import load_resume_state

    run_video(clip, None, StatefulRenderer(), VideoSettings(), frames_dir=tmp_path / "frames")
    renderer = StatefulRenderer()
    result = run_video(clip, tmp_path / "out.mp4", renderer, VideoSettings(), frames_dir=tmp_path / "frames",
                       resume=load_resume_state(tmp_path / "frames"))
    assert renderer.guides == [] and result.output_path.exists() and probe(result.output_path).frame_count == 6


class TintingRenderer(RecordingRenderer):
    """Drifts: each frame comes back redder than the last."""

    def render(self, frame, guide, index):
        rendered = super().render(frame, guide, index)
        tinted = rendered.image.astype(int)
        tinted[..., 0] += 12 * index
        return RenderedFrame(np.clip(tinted, 0, 255).astype(np.uint8), None)


def test_first_frame_guide_gets_the_first_output_and_the_flow_from_the_first_frame(clip, tmp_path):
    from lib_vidguide.settings import DriftSettings

    renderer = RecordingRenderer()
    run_video(clip, None, renderer, VideoSettings(drift=DriftSettings(first_frame_guide=True)),
              frames_dir=tmp_path / "frames")
    first_output = np.asarray(Image.open(tmp_path / "frames" / "frame_000001.png"))
    for index in range(1, 6):
        guide = renderer.calls[index][2]
        assert np.array_equal(guide.first.image, first_output)
        # The texture pans 2 px per frame: from frame `index` back to the first, 2*index px.
        assert np.median(guide.motion.anchor.pair.backward[..., 0]) == pytest.approx(-2.0 * index, abs=0.5)


def test_colour_correction_holds_the_first_outputs_colours(clip, tmp_path):
    from lib_vidguide.settings import DriftSettings

    drifts = {}
    for corrected in (False, True):
        frames_dir = tmp_path / str(corrected)
        run_video(clip, None, TintingRenderer(), VideoSettings(drift=DriftSettings(color_correction=corrected)),
                  frames_dir=frames_dir)
        red = [np.asarray(Image.open(frames_dir / f"frame_{i:06d}.png"))[..., 0].mean() for i in range(1, 7)]
        drifts[corrected] = red[-1] - red[0]
    assert drifts[False] > 40.0
    # Matching L, a and b histograms one by one does not keep RGB means exactly: most of the tint goes.
    assert abs(drifts[True]) < 0.2 * drifts[False], drifts


def test_init_frames_from_elsewhere_with_the_sources_flows(clip, tmp_path):
    renderer = RecordingRenderer()
    replacement = np.full((64, 64, 3), 40, np.uint8)
    result = run_video(clip, None, renderer, VideoSettings(), init_frame_for=lambda index: replacement + index)
    assert result.frames_written == 6
    out = renderer.calls  # the renderer inverted what it was given
    assert np.array_equal(out[3][1], 255 - (replacement + 2))


def test_a_frame_cut_short_is_not_kept(clip, tmp_path):
    from lib_vidguide.engine import RenderInterrupted, finished_frames

    class CutShort(RecordingRenderer):
        def render(self, frame, guide, index):
            if index == 2:
                raise RenderInterrupted()
            return super().render(frame, guide, index)

    result = run_video(clip, tmp_path / "out.mp4", CutShort(), VideoSettings(), frames_dir=tmp_path / "frames")
    assert result.interrupted and result.output_path is None
    assert finished_frames(tmp_path / "frames") == 2


@pytest.mark.parametrize("fit, render_size, video_size", [("resize", (64, 64), (64, 64)), ("crop", (64, 64), (64, 64)),
                                                        ("pad", (72, 72), (70, 66))])
def test_frames_are_fitted_to_multiples_of_eight(tmp_path, fit, render_size, video_size):
    clip = write_clip(tmp_path / "odd.mp4", moving_pattern(3, size=(66, 70)))
    renderer = RecordingRenderer()
    result = run_video(clip, tmp_path / "out.mp4", renderer, VideoSettings(fit=fit), frames_dir=tmp_path / "frames")
    assert result.size == render_size
    first_png = np.asarray(Image.open(tmp_path / "frames" / "frame_000001.png"))
    assert first_png.shape[:2] == (render_size[1], render_size[0])
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height) == video_size
    if fit == "pad":
        source = read_all_frames(clip)[0]
        # The picture itself is untouched: the restored output is the (inverted) source pixel for pixel.
        assert np.abs(read_all_frames(tmp_path / "out.mp4")[0].astype(int) - (255 - source)).mean() < 3
