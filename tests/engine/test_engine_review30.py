"""A second look at the training engine's resume paths, parameter groups and step checkpoints
(dense3d/engine/{optim,schedule,module,report}.py, configs/{optim,scheduler,callbacks})."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from dense3d.engine.checkpoint import SafeCheckpointIO
from dense3d.engine.module import DenseCaptionDataModule, DenseCaptionModule, RNGStateCallback
from dense3d.engine.schedule import ScheduleFromConfig, scheduler_from_config
from dense3d.engine.train import compose_config
from tests.engine.test_optim_schedule30 import _Indices, _Net


def _epochs_run(out, resume, workers, ckpt=None, net=_Net):
    """Three epochs of 4 steps (8 samples, batch 2) under trainer.max_epochs with the default
    cosine (T_max null: the run's length, warmup 1), a checkpoint at every step; the samples of
    each step, and the module."""
    seen = {}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.global_step] = [int(v) for v in batch[0][:, 0]]

    pl.seed_everything(0, workers=True, verbose=False)
    scheduler = scheduler_from_config(compose_config(["scheduler.warmup_steps=1"]).scheduler)
    module = DenseCaptionModule(net(), torch.optim.AdamW, scheduler)
    callbacks = [RNGStateCallback(), Record(), pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True, every_n_epochs=1),
                 pl.callbacks.ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=1, save_top_k=-1)]
    if resume:
        callbacks.append(ScheduleFromConfig())
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, plugins=[SafeCheckpointIO()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=callbacks)
    scheduler.attach(trainer)  # as dense3d.engine.train.build does
    dm = DenseCaptionDataModule(_Indices(), batch_size=2, num_workers=workers, seed=0)
    trainer.fit(module, dm, ckpt_path=str(out / ckpt) if resume else None)
    return seen, module


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("step", [3, 4])  # inside the first epoch, at its last batch
def test_a_max_epochs_run_with_the_run_length_cosine_resumes_its_epoch(step, workers, tmp_path):
    """trainer.max_epochs (train.yaml's default) with T_max null: Lightning loads the training
    data to count the run's steps when it builds the schedule, before it restores the loops, and
    kept that loader, so a step checkpoint resumed restarted its epoch from the first batch and,
    at an epoch's end with workers, the next epoch drew epoch 0's order."""
    whole, whole_module = _epochs_run(tmp_path / "whole", False, workers)
    _epochs_run(tmp_path / "cut", False, workers)
    resumed, module = _epochs_run(tmp_path / "cut", True, workers, ckpt=f"step={step}.ckpt")
    assert sorted(resumed) == list(range(step, 12))
    assert {s: whole[s] for s in resumed} == resumed, (whole, resumed)
    for a, b in zip(whole_module.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)


class _DropoutNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

    def forward(self, batch):
        return {"mse": torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])}


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("step", [5, 4])  # inside the second epoch, at the first one's last batch
def test_a_resumed_run_draws_the_uninterrupted_runs_dropout(step, workers, tmp_path):
    """Every iterator a DataLoader makes drew its workers' base seed from torch's global generator:
    a run resumed inside an epoch makes one the uninterrupted run did not (and a run of
    trainer.max_epochs with T_max null one more, to count its steps), so each later dropout mask
    differed from the uninterrupted run's (with RNGStateCallback restoring that generator)."""
    whole, whole_module = _epochs_run(tmp_path / "whole", False, workers, net=_DropoutNet)
    _epochs_run(tmp_path / "cut", False, workers, net=_DropoutNet)
    resumed, module = _epochs_run(tmp_path / "cut", True, workers, ckpt=f"step={step}.ckpt", net=_DropoutNet)
    assert {s: whole[s] for s in resumed} == resumed, (whole, resumed)
    for a, b in zip(whole_module.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)


def _logged_run(out, max_steps, overrides, resume=False, unnamed=False):
    """The toy captioner of test_optim_schedule30 (two parameter groups) for ``max_steps`` steps,
    learning rates logged by the config's LearningRateMonitor into a CSVLogger; the columns of
    metrics.csv. ``unnamed``: the optimizer's groups without names, as checkpoints written
    before the groups had them."""
    import csv

    from dense3d.engine.train import _instantiate_dict
    from tests.engine.test_optim_schedule30 import ToyCaptioner, _parts

    optimizer, scheduler, cfg = _parts("scheduler.T_max=8", "scheduler.warmup_steps=2", f"paths.output_dir={out}", *overrides)
    if unnamed:
        def optimizer(params, _factory=optimizer):
            opt = _factory(params)
            for group in opt.param_groups:
                group.pop("name", None)
            return opt
        optimizer.takes_names = True  # handed (name, parameter) pairs, as the config's AdamW
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    dm = DenseCaptionDataModule(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, seed=0)
    module = DenseCaptionModule(ToyCaptioner(), optimizer, scheduler)
    callbacks = [RNGStateCallback(), *_instantiate_dict(cfg.callbacks, "callbacks")]
    callbacks = [cb for cb in callbacks if not isinstance(cb, pl.callbacks.ProgressBar)]
    if resume:
        callbacks.append(ScheduleFromConfig())
    logger = pl.loggers.CSVLogger(out, name="csv")
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, plugins=[SafeCheckpointIO()], callbacks=callbacks,
                         logger=logger, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(module, dm, ckpt_path=str(out / "checkpoints" / "last.ckpt") if resume else None)
    with open(logger.log_dir + "/metrics.csv", newline="") as f:
        return trainer, next(csv.reader(f))


def test_the_two_groups_log_their_rates_by_name(tmp_path):
    trainer, columns = _logged_run(tmp_path / "run", 2, [])
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["decay", "no_decay"]
    assert {"lr-AdamW/decay", "lr-AdamW/no_decay"} <= set(columns) and not any("/pg" in c for c in columns), columns
    # one group (the split off): lr-AdamW, as before
    _, columns = _logged_run(tmp_path / "one", 2, ["optim.no_decay_1d=false", "optim.no_decay=[]"])
    assert [c for c in columns if c.startswith("lr-")] == ["lr-AdamW"]


@pytest.mark.parametrize("before", ["unnamed", "one group"])
def test_a_resumed_run_logs_the_same_names(before, tmp_path, capsys):
    """A checkpoint whose groups have no names (written before they had them, or one group split
    on load): torch's load_state_dict took the saved groups, without names, and the resumed run
    logged lr-AdamW/pg1 and pg2 where the run had logged (or would log) decay and no_decay."""
    out = tmp_path / "run"
    if before == "unnamed":
        _logged_run(out, 2, [], unnamed=True)
    else:
        _logged_run(out, 2, ["optim.no_decay_1d=false", "optim.no_decay=[]"])
    trainer, columns = _logged_run(out, 4, [], resume=True)
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["decay", "no_decay"]
    assert {"lr-AdamW/decay", "lr-AdamW/no_decay"} <= set(columns) and not any("/pg" in c for c in columns), columns
    assert "name None" not in capsys.readouterr().err  # not reported as a change of the schedule


def test_the_curves_draw_one_learning_rate_per_distinct_schedule(tmp_path):
    """Two groups on one schedule logged two equal curves (lr-AdamW/pg1, pg2): one panel, named
    after both; rates that differ keep their panels."""
    from PIL import Image

    from dense3d.engine.report import merge_equal_rates, plot_curves

    rates = [(s, 1e-3 * (s + 1) / 4) for s in range(4)]
    loss = [(s, 1.0 / (s + 1)) for s in range(4)]
    series = {"train/loss": loss, "lr-AdamW/pg1": rates, "lr-AdamW/pg2": list(rates)}
    assert merge_equal_rates(series) == {"train/loss": loss, "lr-AdamW (pg1, pg2)": rates}
    other = [(s, 1e-4) for s in range(4)]
    assert merge_equal_rates({**series, "lr-AdamW/pg2": other}) == {"train/loss": loss, "lr-AdamW/pg1": rates,
                                                                    "lr-AdamW/pg2": other}
    assert merge_equal_rates({"lr-AdamW": rates}) == {"lr-AdamW": rates}
    # two panels side by side (4.5 inches each at 100 dpi), not three
    width = Image.open(plot_curves(series, tmp_path / "curves.png")).size[0]
    assert width == 900, width


@pytest.mark.parametrize("after", [
    ["optim.no_decay=[]"],  # the gates move to the decayed group: groups of 3 and 3 tensors, not 2 and 4
    ["optim.no_decay=[net.weight]", "optim.no_decay_1d=false"],  # 1 and 5
])
def test_resuming_with_other_groups_of_as_many_is_one_line(after, tmp_path):
    """The split changed on resume (optim.no_decay, optim.no_decay_1d) but still two groups: torch
    raised 'loaded state dict contains a parameter group that doesn't match the size of
    optimizer's group' from inside Lightning's restore."""
    from dense3d.errors import CheckpointError
    from tests.engine.test_optim_schedule30 import SPLIT, _fit

    _fit(tmp_path / "run", 2, SPLIT)
    with pytest.raises(CheckpointError, match=r"last.ckpt: field 'optimizer_states\[0\].param_groups': expected groups of "
                       r"\[\d, \d\] tensors, as the config's optimizer builds \(resume with optim.no_decay_1d and "
                       r"optim.no_decay as the run had them\), got groups of \[2, 4\]"):
        _fit(tmp_path / "run", 3, [*SPLIT, *after], resume=True)


def test_saved_moments_of_another_shape_are_one_line(tmp_path):
    """Groups of as many tensors as the config's, holding others (a 1-D tensor and a gate swapped
    between them): the moments would be loaded onto tensors of another shape."""
    from dense3d.errors import CheckpointError
    from tests.engine.test_optim_schedule30 import SPLIT, _fit

    _fit(tmp_path / "run", 2, SPLIT)  # decayed: prompts, net.weight; not: gates, net.bias, norm.*
    with pytest.raises(CheckpointError, match=r"field 'optimizer_states\[0\].state\[\d\].exp_avg': expected the shape of "
                       r"adapter.gates, \(2, 2\) .*got \(2, 3, 6\)"):
        # decayed: gates, net.weight; not: prompts, net.bias, norm.* (2 and 4 tensors, as saved)
        _fit(tmp_path / "run", 3, [*SPLIT, "optim.no_decay=[*.prompts]"], resume=True)


def test_a_smoke_test_of_a_config_with_warmup_and_the_run_length_cosine(tmp_path):
    """debug=fast_dev_run (one step) with scheduler.warmup_steps and T_max null: the run's length,
    1 step, refused the warmup ('expected fewer than the schedule's 1 steps'), so the smoke test
    of a config failed where the run itself would train."""
    from dense3d.engine.train import SOURCE
    from dense3d.utils.config import instantiate_config

    cfg = compose_config(["debug=fast_dev_run", "scheduler.warmup_steps=5", f"paths.output_dir={tmp_path}"])
    assert cfg.scheduler.T_max is None and cfg.trainer.fast_dev_run
    scheduler = scheduler_from_config(cfg.scheduler)
    module = DenseCaptionModule(_Net(), instantiate_config(cfg.optim, SOURCE, "optim"), scheduler)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    scheduler.attach(trainer)
    trainer.fit(module, DenseCaptionDataModule(_Indices(), batch_size=2, seed=0))
    assert trainer.global_step == 1


def test_a_split_one_group_checkpoint_gives_each_tensor_its_own_moments(tmp_path):
    """The one-group checkpoint's moments, saved by position in the model's order, land on the
    tensors of the same names in the two groups (values, not only shapes)."""
    import copy

    from dense3d.engine.checkpoint import load_checkpoint
    from tests.engine.test_optim_schedule30 import SPLIT, ToyCaptioner, _fit, _parts

    whole, _, _ = _fit(tmp_path / "run", 3, ["optim.no_decay_1d=false", "optim.no_decay=[]", *SPLIT])
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    saved = copy.deepcopy(checkpoint["optimizer_states"][0])
    names = [n for n, p in whole.model.named_parameters() if p.requires_grad]
    optimizer, scheduler, _ = _parts(*SPLIT)
    module = DenseCaptionModule(ToyCaptioner(), optimizer, scheduler)
    module.on_load_checkpoint(checkpoint)
    opt = module.configure_optimizers()["optimizer"]
    opt.load_state_dict(checkpoint["optimizer_states"][0])
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]
    params = dict(module.model.named_parameters())
    for i, name in enumerate(names):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[params[name]][key], saved["state"][i][key]), (name, key)


@pytest.mark.parametrize("rank", [0, 1])
def test_seeded_sampler_skip_on_two_ranks_leaves_out_this_ranks_batches(rank):
    """DDP, 2 ranks, 11 samples (padded to 12): a rank resumed after 2 batches of 2 goes on with
    its own fifth index, and the epoch after it is whole again."""
    from dense3d.engine.module import SeededSampler

    whole = SeededSampler(11, seed=3, num_replicas=2, rank=rank)
    whole.set_epoch(1)
    order = list(whole)
    assert len(order) == 6
    resumed = SeededSampler(11, seed=3, num_replicas=2, rank=rank)
    resumed.set_epoch(1)
    resumed.skip = 2 * 2
    assert list(resumed) == order[4:]
    assert list(resumed) == order  # once only
