"""Training progress in a log: plain lines on stderr (Lightning's rich bar drew nothing until the
run ended when stderr was a file), a rich bar on a terminal, nothing under DENSE3D_PROGRESS=0."""
from __future__ import annotations

import re
import sys

import pytest
from lightning.pytorch.callbacks import RichProgressBar

from dense3d.cli import main
from dense3d.engine.progress import LineProgressBar, training_progress_bar
from dense3d.errors import ConfigError


def _train(synthetic_root, out, *extra):
    return main(["train", "experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={out}",
                 "logger=csv", *extra])


def test_a_training_run_logged_to_a_file_prints_lines_with_step_loss_and_time_left(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DENSE3D_PROGRESS", raising=False)
    assert _train(synthetic_root, tmp_path / "r", "trainer.max_steps=3", "callbacks.progress.interval_s=0") == 0
    err = capsys.readouterr().err
    steps = re.findall(r"^train: step (\d+)/3 \(epoch \d+\), train/loss [-\d.e+]+, [\d.]+ s/step(, about \d+ s left)?$", err, re.M)
    assert [int(s) for s, _ in steps] == [1, 2, 3], err
    assert [bool(left) for _, left in steps] == [True, True, False]  # no time left at the last step
    assert re.search(r"^train: 3 steps in \d+ s \([\d.]+ s/step\)$", err, re.M), err


def test_lines_come_at_most_once_per_interval_with_the_last_step_and_validation_always_shown(synthetic_root, tmp_path, capsys,
                                                                                             monkeypatch):
    monkeypatch.delenv("DENSE3D_PROGRESS", raising=False)
    # one epoch is 6 steps: validation (one batch) after step 6
    assert _train(synthetic_root, tmp_path / "r", "trainer.max_steps=6", "trainer.limit_val_batches=1",
                  "callbacks.progress.interval_s=3600") == 0
    err = capsys.readouterr().err
    assert re.findall(r"^train: step (\d+)/6", err, re.M) == ["1", "6"], err
    assert re.search(r"^val: step 6, (val/\w+ [-\d.e+]+, )*val/loss [-\d.e+]+", err, re.M), err


def test_the_total_is_the_steps_the_run_will_take_when_epochs_end_it_first(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DENSE3D_PROGRESS", raising=False)
    # one epoch of 6 steps ends the run before max_steps
    assert _train(synthetic_root, tmp_path / "r", "trainer.max_epochs=1", "trainer.max_steps=100", "callbacks.progress.interval_s=3600") == 0
    err = capsys.readouterr().err
    assert re.findall(r"^train: step (\d+)/6 ", err, re.M) == ["1", "6"], err


def test_progress_off_prints_no_lines(synthetic_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DENSE3D_PROGRESS", "0")
    assert _train(synthetic_root, tmp_path / "r", "trainer.max_steps=1", "callbacks.progress.interval_s=0") == 0
    assert "train: " not in capsys.readouterr().err


def test_the_bar_follows_dense3d_progress_and_the_terminal(monkeypatch):
    monkeypatch.setenv("DENSE3D_PROGRESS", "log")
    assert isinstance(training_progress_bar(), LineProgressBar) and training_progress_bar().is_enabled
    monkeypatch.setenv("DENSE3D_PROGRESS", "off")
    assert training_progress_bar().is_disabled
    monkeypatch.delenv("DENSE3D_PROGRESS")
    monkeypatch.setattr(sys, "stderr", type("Tty", (), {"isatty": lambda self: True, "write": lambda self, s: None})())
    assert isinstance(training_progress_bar(), RichProgressBar)
    with pytest.raises(ConfigError, match="interval_s"):
        LineProgressBar(-1)


def test_lightnings_advert_is_dropped_and_its_other_messages_pass(synthetic_root, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        assert _train(synthetic_root, tmp_path / "r", "trainer.max_steps=1") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("GPU available") for m in messages), messages
    assert not any("litlogger" in m for m in messages), messages
