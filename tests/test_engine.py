"""The video engine with a transparent renderer: which frame guides which, files, interrupts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
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
    settings = VideoSettings(start_frame=1, every_nth=2, max_frames=2, width=48, height=40)
    plan = plan_frames(clip, settings)
    assert (plan.start, plan.step, plan.total, plan.size) == (1, 2, 2, (48, 40))
    assert float(plan.fps) == pytest.approx(4.0)
    renderer = RecordingRenderer()
    run_video(clip, tmp_path / "out.mp4", renderer, settings)
    assert [call[0] for call in renderer.calls] == [0, 1]
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frame_count) == (48, 40, 2)
    assert float(info.fps) == pytest.approx(4.0)


def test_start_past_the_end_is_a_clear_error(clip, tmp_path):
    with pytest.raises(ValueError, match="lower the start frame"):
        run_video(clip, tmp_path / "out.mp4", RecordingRenderer(), VideoSettings(start_frame=50))
