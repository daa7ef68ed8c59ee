"""Jobs on disk: create, run, interrupt, resume, finish with audio, fail cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_audio import FPS, RATE, constant_tone, durations, make_source
from test_engine import StatefulRenderer

from lib_vidguide.jobs import JobError, JobNotFound, JobSettings, JobStore, execute_job
from lib_vidguide.settings import DriftSettings, VideoSettings
from lib_vidguide.video_io import probe, read_all_frames


@pytest.fixture
def source(tmp_path):
    return make_source(tmp_path / "source.mp4", audio=[{"codec": "aac", "signal": constant_tone(RATE * 3, 440.0)}])


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs")


def factory(renderers=None):
    def make(settings, pass_number, denoising):
        renderer = StatefulRenderer()
        if renderers is not None:
            renderers.append((pass_number, denoising, renderer))
        return renderer

    return make


def frames_of(job, folder="frames"):
    return [np.asarray(Image.open(path)) for path in sorted((job.root / folder).glob("frame_*.png"))]


def test_a_job_runs_to_an_output_with_the_sources_audio(store, source):
    job = store.create(source, JobSettings(video=VideoSettings(width=64, height=64, seed=5, max_frames=8)), copy_source=True)
    assert job.manifest.status == "queued" and job.manifest.frames_total == 8 and job.manifest.seed == 5
    assert job.source_path.parent == job.root and job.manifest.source.has_audio
    manifest = execute_job(job, factory())
    assert manifest.status == "done" and manifest.frames_done == 8
    output = probe(manifest.output)
    assert output.frame_count == 8 and output.has_audio
    lengths = durations(job.output_path)
    assert abs(lengths["audio"] - lengths["video"]) <= 1.0 / FPS
    assert len(manifest.warp_error_pairs) == 7 and manifest.warp_error_x1000 > 0
    saved = json.loads((job.root / "manifest.json").read_text())
    assert saved["status"] == "done" and saved["warp_error_x1000"] == manifest.warp_error_x1000
    assert not (job.root / "video-only.mp4").exists()


def test_an_interrupted_job_resumes_to_the_same_frames(store, source):
    settings = JobSettings(video=VideoSettings(width=64, height=64, seed=5, max_frames=8, crf=0))
    reference = store.create(source, settings)
    execute_job(reference, factory())

    job = store.create(source, settings)
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    manifest = execute_job(job, factory(), should_stop=stop_after_three)
    assert manifest.status == "interrupted" and manifest.frames_done == 3 and manifest.output is None
    reloaded = store.get(job.job_id)
    assert reloaded.manifest.frames_done == 3 and reloaded.manifest.status == "interrupted"
    manifest = execute_job(reloaded, factory())
    assert manifest.status == "done"
    for ours, theirs in zip(frames_of(reloaded), frames_of(reference), strict=True):
        assert np.array_equal(ours, theirs)
    assert np.array_equal(np.stack(read_all_frames(reloaded.output_path)), np.stack(read_all_frames(reference.output_path)))
    assert manifest.warp_error_pairs == pytest.approx(store.get(reference.job_id).manifest.warp_error_pairs)


def test_a_changed_source_refuses_to_resume(store, source):
    job = store.create(source, JobSettings(video=VideoSettings(width=64, height=64, max_frames=4)))
    with open(source, "ab") as file:
        file.write(b"\0" * 16)
    with pytest.raises(JobError, match="changed since the job started"):
        execute_job(job, factory())


def test_second_pass_reads_the_first_pass_frames(store, source):
    renderers = []
    settings = JobSettings(video=VideoSettings(width=64, height=64, max_frames=4, drift=DriftSettings(second_pass=True, second_pass_strength=0.2)))
    job = store.create(source, settings)
    manifest = execute_job(job, factory(renderers))
    assert [(number, strength) for number, strength, _ in renderers] == [(1, None), (2, 0.2)]
    assert manifest.frames_done == 4 and manifest.second_pass_done == 4 and manifest.status == "done"
    first, second = frames_of(job), frames_of(job, "frames_pass2")
    assert len(second) == 4 and not np.array_equal(first[2], second[2])
    assert probe(manifest.output).frame_count == 4


def test_a_failing_renderer_marks_the_job_failed(store, source):
    class Broken(StatefulRenderer):
        def render(self, frame, guide, index):
            if index == 2:
                raise RuntimeError("CUDA out of memory")
            return super().render(frame, guide, index)

    job = store.create(source, JobSettings(video=VideoSettings(width=64, height=64, max_frames=4)))
    with pytest.raises(RuntimeError, match="out of memory"):
        execute_job(job, lambda settings, number, strength: Broken())
    manifest = store.get(job.job_id).manifest
    assert manifest.status == "failed" and "out of memory" in manifest.error and manifest.frames_done == 2


def test_store_lists_finds_and_deletes(store, source):
    first = store.create(source, JobSettings(video=VideoSettings(width=64, height=64, max_frames=2)), name="first")
    second = store.create(source, JobSettings(video=VideoSettings(width=64, height=64, max_frames=2)))
    assert {m.job_id for m in store.list()} == {first.job_id, second.job_id}
    assert store.get(first.job_id).manifest.name == "first"
    for bad in ("../etc", "nope", "", "20250101-120000-zzzzzzzz"):
        with pytest.raises(JobNotFound):
            store.get(bad)
    second.manifest.status = "running"
    second.save()
    with pytest.raises(JobError, match="cancel it first"):
        store.delete(second.job_id)
    store.delete(first.job_id)
    assert not first.root.exists() and [m.job_id for m in store.list()] == [second.job_id]


def test_settings_without_frames_are_refused(store, source):
    with pytest.raises(ValueError, match="lower the start frame|no frames"):
        store.create(source, JobSettings(video=VideoSettings(width=64, height=64, start_frame=10_000)))


def test_a_truncated_source_finishes_with_every_decodable_frame_and_says_so(store, tmp_path):
    from videos import moving_pattern, write_clip

    whole = write_clip(tmp_path / "whole.mp4", moving_pattern(24, size=(64, 64)))
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # faststart: the index is at the front and survives
    job = store.create(cut, JobSettings(video=VideoSettings(width=64, height=64)))
    assert job.manifest.frames_total == 24
    manifest = execute_job(job, factory())
    assert manifest.status == "done", manifest.error
    assert 0 < manifest.frames_total < 24 and manifest.frames_done == manifest.frames_total
    assert any("ended after" in note for note in manifest.notes)
    assert probe(manifest.output).frame_count == manifest.frames_total


def test_a_one_pixel_video_is_refused_with_the_fix(store, tmp_path):
    import av

    path = tmp_path / "dot.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=8)
        stream.width = stream.height = 1
        stream.pix_fmt = "rgb24"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((1, 1, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(ValueError, match="renders at least 64x64: set the output width and height"):
        store.create(path, JobSettings())
    job = store.create(path, JobSettings(video=VideoSettings(width=64, height=64)))
    assert execute_job(job, factory()).status == "done"
