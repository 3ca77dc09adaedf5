"""Resuming and init_from: the schedule a resumed run follows, the cosine length, weights a
checkpoint holds that init_from would drop, resuming without the init_from run, checkpoints from
another folder, and one-line errors for a run without a logger, `logger=null` and a negative seed."""
from __future__ import annotations

import math
import shutil

import lightning.pytorch as pl
import pytest
import torch

from dense3d.cli import main, parse_args
from dense3d.engine.train import SOURCE, build, compose_config, fit, init_weights
from dense3d.errors import CheckpointError
from dense3d.utils.config import instantiate_config
from tests.engine.test_run_folders import _args, _one_line  # the same runs and one-line checks


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory):
    """A two-step run of the indoor detector (cosine schedule over trainer.max_steps = 2)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *_args(synthetic_root, out, "trainer.max_steps=2")]) == 0
    return out


def test_no_logger_drops_the_lr_monitor_with_a_notice(synthetic_root, tmp_path, capsys):
    cfg = compose_config(_args(synthetic_root, tmp_path / "run", "~logger"))
    assert cfg.callbacks.get("lr_monitor") is not None  # the default callbacks
    _, _, trainer = build(cfg)
    assert not any(isinstance(cb, pl.callbacks.LearningRateMonitor) for cb in trainer.callbacks)
    err = capsys.readouterr().err
    assert "callbacks.lr_monitor" in err and len(err.strip().splitlines()) == 1, err


def test_logger_null_is_one_line_naming_the_override(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(synthetic_root, out, "logger=null")]) == 2
    err = _one_line(capsys, "dense3d train: ConfigError: configs/train.yaml: field 'override logger=null': ")
    assert "~logger" in err
    assert not out.exists()


def test_a_seed_out_of_numpys_range_is_one_line(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(synthetic_root, out, "seed=-1")]) == 2
    _one_line(capsys, "dense3d train: ConfigError: configs/train.yaml: field 'seed': ")
    assert main(["train", *_args(synthetic_root, out, f"seed={2**32}")]) == 2
    _one_line(capsys, "dense3d train: ConfigError: configs/train.yaml: field 'seed': ")
    assert not out.exists()


def test_demo_seed_is_a_non_negative_integer(capsys):
    assert parse_args(["demo", "--seed", "7"]).seed == 7
    with pytest.raises(SystemExit) as e:
        parse_args(["demo", "--seed", "-1"])
    assert e.value.code == 2
    assert ">= 0" in capsys.readouterr().err


def test_init_from_refuses_checkpoint_weights_the_model_lacks(synthetic_root, run, tmp_path):
    model = instantiate_config(compose_config(_args(synthetic_root, tmp_path / "new")).model, SOURCE, "model")
    model.box_detector.region_sampler = torch.nn.Identity()  # a sub-module the other run has, this model not
    n = sum(1 for k in model.state_dict() if k.startswith("box_detector."))
    with pytest.raises(CheckpointError, match=r"field 'state_dict.model.box_detector.region_sampler\..*got \d+ weights under "
                       r"box_detector this model lacks"):
        init_weights(model, run, ["box_detector"])
    # left out on purpose: init_skip names the part the other run has
    assert init_weights(model, run, ["box_detector"], ["box_detector.region_sampler"]) == n


def test_resuming_a_run_started_from_init_from_does_not_need_that_run(synthetic_root, run, tmp_path, capsys):
    out = tmp_path / "captioning"
    shutil.copytree(run, out)  # stands for a run started with init_from=<gone> (its config is not read on resume)
    gone = tmp_path / "gone"
    assert main(["train", *_args(synthetic_root, out, "trainer.max_steps=3", f"init_from={gone}", "init_parts=[box_detector]"),
                 "--resume", "last"]) == 0, capsys.readouterr().err
    assert "init_from" not in capsys.readouterr().out  # nothing loaded: the checkpoint's weights are the run's


def test_resuming_another_folders_checkpoint_into_a_run_folder_is_refused(synthetic_root, run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)  # a folder holding a run of its own
    before = sorted(p.name for p in (other / "checkpoints").iterdir())
    assert main(["train", *_args(synthetic_root, other, "trainer.max_steps=3"), "--resume",
                 str(run / "checkpoints" / "last.ckpt")]) == 2
    err = _one_line(capsys, "dense3d train: ConfigError: configs/train.yaml: field 'paths.output_dir': ")
    assert str(other / "checkpoints") in err, err
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == before


def test_a_cosine_without_t_max_spans_the_run(synthetic_root, tmp_path):
    cfg = compose_config(_args(synthetic_root, tmp_path / "run", "scheduler.T_max=null", "trainer.max_steps=-1",
                               "trainer.max_epochs=1", "+trainer.limit_train_batches=3"))
    _, _, trainer = fit(cfg)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 3 and scheduler.T_max == 3  # the run's steps, not the 1000 of an unrelated default
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(cfg.scheduler.eta_min)  # decayed at the end


@pytest.mark.parametrize("overrides", [
    ["trainer.max_steps=-1", "trainer.max_epochs=5"],  # T_max: ${trainer.max_steps} = -1: the rate alternated every step
    ["scheduler.T_max=0"],
    ["scheduler.T_max=null", "trainer.max_steps=-1", "trainer.max_epochs=-1"],  # a run without an end has no length
])
def test_a_cosine_length_below_one_is_one_line(overrides, synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(synthetic_root, out, "+trainer.limit_train_batches=1", *overrides)]) == 2
    _one_line(capsys, "dense3d train: ConfigError: configs/train.yaml: field 'scheduler.T_max': expected an integer >= 1")
    assert not out.exists()


def test_a_resumed_run_follows_the_configs_schedule(synthetic_root, run, tmp_path, capsys):
    """The run trained 2 steps of a cosine over trainer.max_steps = 2 (at eta_min now); extended to
    4 steps with another learning rate it decays over 4 steps from the new rate. Lightning restored
    the checkpoint's T_max = 2 and base rate, and the rate climbed back to the old peak at step 4."""
    out = tmp_path / "extended"
    shutil.copytree(run, out)
    cfg = compose_config(_args(synthetic_root, out, "trainer.max_steps=4", "optim.lr=1e-3"))
    _, _, trainer = fit(cfg, ckpt_path="last")
    scheduler, group = trainer.lr_scheduler_configs[0].scheduler, trainer.optimizers[0].param_groups[0]
    assert trainer.global_step == 4
    # two parameter groups: the detector's weights, and its biases and norms (no weight decay: configs/optim/adamw.yaml)
    assert scheduler.T_max == 4 and scheduler.base_lrs == [1e-3, 1e-3] and group["initial_lr"] == 1e-3
    assert group["lr"] == pytest.approx(cfg.scheduler.eta_min)  # the end of the new cosine (the old one: back at 2e-3)
    err = [line for line in capsys.readouterr().err.splitlines() if "learning-rate schedule" in line]
    assert len(err) == 1 and "scheduler.T_max 2 -> 4" in err[0] and "scheduler.base_lrs [0.002, 0.002] -> [0.001, 0.001]" in err[0], err
    # right after the resume the rate is the new cosine's at step 2 (the end of a cosine is eta_min
    # whatever the rate was before, so the check above alone would not see a missing replay)
    eta = cfg.scheduler.eta_min
    assert f"-> {eta + (1e-3 - eta) * (1 + math.cos(math.pi * 2 / 4)) / 2:.4g}" in err[0].split("lr at step 2 ")[1].split(",")[0], err
    # resumed again with the schedule it follows now: nothing to say, the rate goes on where it was
    cfg = compose_config(_args(synthetic_root, out, "trainer.max_steps=5", "scheduler.T_max=4", "optim.lr=1e-3"))
    _, _, trainer = fit(cfg, ckpt_path="last")
    assert "learning-rate schedule" not in capsys.readouterr().err
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 4


def test_schedule_replay_keeps_several_groups_and_plateau_as_restored():
    """apply_config_schedule describes one parameter group (the module's); with several, their own
    options are not in the config, and ReduceLROnPlateau follows a metric: both kept as restored."""
    import functools

    from dense3d.engine.schedule import apply_config_schedule

    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3, "weight_decay": 0.01}, {"params": [b], "lr": 1e-4, "weight_decay": 0.0}])
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=8)
    sched = cosine(opt)
    sched.step()
    before = [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups]
    said = apply_config_schedule(sched, functools.partial(torch.optim.AdamW, lr=2e-3), functools.partial(cosine, T_max=4))
    assert said == ["kept the checkpoint's schedule: 2 parameter groups (the config describes one)"]
    assert [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups] == before and sched.T_max == 8
    one = torch.optim.AdamW([a], lr=1e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(one)
    assert apply_config_schedule(plateau, functools.partial(torch.optim.AdamW, lr=2e-3), cosine) == []
    assert one.param_groups[0]["lr"] == 1e-3
