"""The training monitor: real TensorBoard event files read back, resume without duplicated steps, progress."""

from __future__ import annotations

import io
import logging
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from diffwave.training import monitor as monitor_module
from diffwave.training.monitor import Monitor, loss_by_step_buckets


def _read_events(log_dir: Path) -> event_accumulator.EventAccumulator:
    """Everything in the directory, as TensorBoard would show it (0 = keep every event)."""
    size_guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    return event_accumulator.EventAccumulator(str(log_dir), size_guidance=size_guidance).Reload()


def _monitor(log_dir: Path, *, start_step: int = 0, progress_bar: bool = False, log_every: int = 100) -> Monitor:
    return Monitor(log_dir, enabled=True, start_step=start_step, total_steps=20, log_every=log_every,
                   progress_bar=progress_bar)


def _wait_for_next_second() -> None:
    """Event file names start with the creation time in whole seconds, and are read in name order: a
    resumed run is a new process started later, so make the second writer's file sort after the first's."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # NaN cast to int16 warns: it must never reach the writer
def test_scalars_audio_image_and_text_are_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with _monitor(tmp_path) as monitor:
        monitor.scalars(3, {"train/loss": 0.5, "train/lr": 2e-4})
        monitor.scalars(7, {"train/loss": 0.25, "valid/mel_l1": torch.tensor(1.5).item()})
        monitor.audio(7, "valid/audio_0", torch.tensor([0.0, 0.5, 2.0, -3.0, float("nan")]),
                      sample_rate=22050)
        mel = torch.zeros(80, 120)
        mel[0] = 10.0  # all the energy in the lowest mel bin
        monitor.mel_image(7, "valid/mel_0", mel)
        monitor.text(5, "events", "non-finite loss at step 5, step skipped")

    events = _read_events(tmp_path)
    tags = events.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/lr", "valid/mel_l1"}
    assert [(s.step, s.value) for s in events.Scalars("train/loss")] == [(3, 0.5), (7, 0.25)]
    assert [s.value for s in events.Scalars("train/lr")] == [pytest.approx(2e-4)]
    assert [(s.step, s.value) for s in events.Scalars("valid/mel_l1")] == [(7, 1.5)]

    (clip,) = events.Audio("valid/audio_0")
    assert (clip.step, clip.sample_rate, clip.length_frames) == (7, 22050, 5)
    with wave.open(io.BytesIO(clip.encoded_audio_string)) as wav:
        samples = np.frombuffer(wav.readframes(5), dtype="<i2")
    assert samples.tolist() == [0, 16383, 32767, -32767, 0]  # clamped to [-1, 1] and NaN silenced
    assert "clipped" not in capsys.readouterr().out  # by us, not by the writer's print()

    (image_event,) = events.Images("valid/mel_0")
    assert (image_event.step, image_event.height, image_event.width) == (7, 80, 120)
    image = np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)))
    assert image.shape == (80, 120, 3)
    # Viridis runs from dark purple to yellow: the loud lowest bin is the bright bottom row.
    assert image[-1].mean() > 150 and image[0].mean() < 80
    assert (image[-1] == image[-1, 0]).all() and (image[:-1] == image[0, 0]).all()

    (note,) = events.Tensors("events/text_summary")
    assert note.step == 5
    assert note.tensor_proto.string_val[0].decode() == "non-finite loss at step 5, step skipped"


def test_mel_image_is_normalised_per_image(tmp_path: Path):
    mel = torch.linspace(-11.0, 2.0, 80 * 30).reshape(80, 30)
    with _monitor(tmp_path) as monitor:
        monitor.mel_image(1, "mel", mel)
        monitor.mel_image(2, "mel", mel * 100 + 7)
    first, second = (event.encoded_image_string for event in _read_events(tmp_path).Images("mel"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(Image.open(io.BytesIO(second))))


def test_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path: Path):
    with _monitor(tmp_path) as monitor:
        for step in range(1, 11):
            monitor.scalars(step, {"train/loss": float(step)})
    _wait_for_next_second()
    with _monitor(tmp_path, start_step=5) as monitor:  # the checkpoint was taken after step 5
        for step in range(6, 13):
            monitor.scalars(step, {"train/loss": 100.0 + step})

    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    points = _read_events(tmp_path).Scalars("train/loss")
    assert [p.step for p in points] == list(range(1, 13))  # strictly increasing, none twice
    assert [p.value for p in points] == [float(s) for s in range(1, 6)] + [100.0 + s for s in range(6, 13)]


def test_disabled_monitor_creates_no_writer_and_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture):
    def no_writer(*args: object, **kwargs: object) -> None:
        raise AssertionError("a disabled Monitor must not create a SummaryWriter")

    monkeypatch.setattr(monitor_module, "SummaryWriter", no_writer)
    log_dir = tmp_path / "tb"
    caplog.set_level(logging.INFO)
    with Monitor(log_dir, enabled=False, start_step=3, total_steps=20, log_every=1, progress_bar=False) as monitor:
        monitor.scalars(4, {"train/loss": 1.0})
        monitor.audio(4, "a", torch.zeros(8), sample_rate=16000)
        monitor.mel_image(4, "m", torch.zeros(4, 4))
        monitor.text(4, "t", "x")
        monitor.step_done(4, 1.0)
        monitor.flush()
    assert not log_dir.exists()
    assert list(tmp_path.iterdir()) == []
    assert caplog.records == []


def test_plain_progress_logs_every_log_every_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="diffwave.training")
    with _monitor(tmp_path, log_every=5) as monitor:
        for step in range(1, 13):
            monitor.step_done(step, loss=0.01 * step)
    lines = [r.getMessage() for r in caplog.records if r.name == "diffwave.training"]
    assert len(lines) == 2
    assert lines[0].startswith("step 5/20 loss 0.0500 ") and lines[0].endswith(" steps/s")
    assert lines[1].startswith("step 10/20 loss 0.1000 ")
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_progress_bar_replaces_the_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             capsys: pytest.CaptureFixture[str]):
    caplog.set_level(logging.INFO, logger="diffwave.training")
    with _monitor(tmp_path, start_step=4, progress_bar=True, log_every=5) as monitor:
        for step in range(5, 13):
            monitor.step_done(step, loss=0.5)
    assert [r for r in caplog.records if r.name == "diffwave.training"] == []
    assert "12/20" in capsys.readouterr().err


def test_loss_by_step_buckets_means_and_tags():
    t = torch.tensor([0, 9, 10, 25, 49, 48, 3])
    losses = torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 2.0])
    assert loss_by_step_buckets(t, losses, num_steps=50) == {
        "train/loss_by_step/00-09": pytest.approx(2.0),  # 1, 3, 2
        "train/loss_by_step/10-19": pytest.approx(5.0),
        "train/loss_by_step/20-29": pytest.approx(7.0),
        # 30-39 has no example: left out
        "train/loss_by_step/40-49": pytest.approx(3.0),
    }


def test_loss_by_step_buckets_uneven_ranges_and_wide_tags():
    t = torch.arange(200)
    means = loss_by_step_buckets(t, t.float(), num_steps=200, buckets=3)
    assert means == {
        "train/loss_by_step/000-065": pytest.approx(32.5),
        "train/loss_by_step/066-132": pytest.approx(99.0),
        "train/loss_by_step/133-199": pytest.approx(166.0),
    }
    # More buckets than steps: one per step, the empty ranges left out.
    assert loss_by_step_buckets(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]), num_steps=3, buckets=5) == {
        "train/loss_by_step/0-0": 1.0, "train/loss_by_step/1-1": 2.0, "train/loss_by_step/2-2": 3.0}
    with pytest.raises(ValueError, match=r"\[batch\]"):
        loss_by_step_buckets(t, t.float()[:10], num_steps=200)
