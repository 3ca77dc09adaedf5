"""Weight decay only where it belongs (dense3d/engine/optim.py), linear warmup before the
configs' schedules (configs/scheduler/*.yaml), resuming in the middle of either, checkpoints of
runs with one parameter group, and checkpoints every N training steps (configs/callbacks)."""
from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import TensorDataset

from dense3d.engine.checkpoint import SafeCheckpointIO, load_checkpoint
from dense3d.engine.module import DenseCaptionDataModule, DenseCaptionModule, RNGStateCallback
from dense3d.engine.schedule import ScheduleFromConfig, scheduler_from_config
from dense3d.engine.train import SOURCE, _instantiate_dict, compose_config
from dense3d.errors import CheckpointError, ConfigError
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.utils.config import instantiate_config
from tests.engine.toy_parts import Indices as _Indices, Net as _Net


class ToyCaptioner(torch.nn.Module):
    """Not a captioner: a linear layer, a norm and a LLaMA-Adapter's prompts and gates."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, 1)
        self.norm = torch.nn.LayerNorm(6)
        self.adapter = LlamaAdapter(hidden_size=6, num_heads=2, num_layers=2, prompt_len=3)

    def forward(self, batch):
        x, y = batch
        h = self.norm(x) + self.adapter.prompts.mean() + self.adapter.gates.sum()
        return {"mse": torch.nn.functional.mse_loss(self.net(h), y)}


def _parts(*overrides):
    cfg = compose_config(list(overrides))
    return instantiate_config(cfg.optim, SOURCE, "optim"), scheduler_from_config(cfg.scheduler), cfg


def _names(module, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in module.model.named_parameters() if id(p) in ids)


def test_weight_decay_skips_biases_norms_and_gates():
    optimizer, _, cfg = _parts()
    module = DenseCaptionModule(ToyCaptioner(), optimizer)
    decayed, kept = module.configure_optimizers().param_groups
    assert _names(module, decayed) == ["adapter.prompts", "net.weight"] and decayed["weight_decay"] == cfg.optim.weight_decay
    assert _names(module, kept) == ["adapter.gates", "net.bias", "norm.bias", "norm.weight"] and kept["weight_decay"] == 0.0
    # off: torch's AdamW, one group, everything decayed (how docs/results.md's runs trained)
    optimizer, _, _ = _parts("optim.no_decay_1d=false", "optim.no_decay=[]")
    (group,) = DenseCaptionModule(ToyCaptioner(), optimizer).configure_optimizers().param_groups
    assert len(group["params"]) == 6 and group["weight_decay"] == 0.01
    # 1-D only: the gates, (layers, heads), are decayed
    optimizer, _, _ = _parts("optim.no_decay=[]")
    module = DenseCaptionModule(ToyCaptioner(), optimizer)
    decayed, kept = module.configure_optimizers().param_groups
    assert _names(module, decayed) == ["adapter.gates", "adapter.prompts", "net.weight"]


def test_bad_no_decay_is_one_line():
    optimizer, _, _ = _parts("optim.no_decay=gates")
    with pytest.raises(ConfigError, match="field 'no_decay': expected a list of parameter-name patterns"):
        DenseCaptionModule(ToyCaptioner(), optimizer)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_linear_warmup_then_the_schedule_step_by_step(schedule):
    _, scheduler, _ = _parts(f"scheduler={schedule}", "scheduler.warmup_steps=3", "optim.lr=1.0",
                             *(["scheduler.T_max=8", "scheduler.eta_min=0.0"] if schedule == "cosine" else []))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler(opt)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm = [1 / 4, 2 / 4, 3 / 4]  # lr * (t + 1) / (W + 1)
    after = [(1 + math.cos(math.pi * t / 5)) / 2 for t in range(5)] if schedule == "cosine" else [1.0] * 5
    assert seen == pytest.approx(warm + after, rel=1e-12, abs=1e-12)


def test_warmup_0_is_the_schedule_alone_and_bad_warmups_are_one_line():
    _, scheduler, _ = _parts("scheduler.T_max=8")
    assert type(scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))) is torch.optim.lr_scheduler.CosineAnnealingLR
    with pytest.raises(ConfigError, match="field 'scheduler.warmup_steps': expected an integer >= 0"):
        _parts("scheduler.warmup_steps=-1")
    _, scheduler, _ = _parts("scheduler.T_max=4", "scheduler.warmup_steps=4")
    with pytest.raises(ConfigError, match="field 'scheduler.warmup_steps': expected fewer than the schedule's 4 steps"):
        scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))


class _Rates(pl.Callback):
    """Each step's learning rates (every group), by global step."""

    def __init__(self):
        self.rates = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates[trainer.global_step] = [g["lr"] for g in trainer.optimizers[0].param_groups]


def _fit(out, max_steps, overrides, resume=False, step_every=0):
    """A toy run, one optimizer step per epoch (8 samples, batch 8): ``max_steps`` steps."""
    optimizer, scheduler, cfg = _parts(*overrides, f"paths.output_dir={out}",
                                       f"callbacks.step_checkpoint.every_n_train_steps={step_every}")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    dm = DenseCaptionDataModule(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, seed=0)
    module = DenseCaptionModule(ToyCaptioner(), optimizer, scheduler)
    rates = _Rates()
    callbacks = [RNGStateCallback(), rates, *_instantiate_dict(cfg.callbacks, "callbacks")]
    callbacks = [cb for cb in callbacks if not isinstance(cb, (pl.callbacks.LearningRateMonitor, pl.callbacks.ProgressBar))]
    if resume:
        callbacks.append(ScheduleFromConfig())
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, plugins=[SafeCheckpointIO()], callbacks=callbacks,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                         use_distributed_sampler=False)
    trainer.fit(module, dm, ckpt_path=str(out / "checkpoints" / "last.ckpt") if resume else None)
    return module, trainer, rates.rates


SPLIT = ["scheduler.T_max=8", "scheduler.warmup_steps=3", "optim.lr=0.05"]


@pytest.mark.parametrize("stop", [2, 5])  # in the warmup, in the cosine
def test_resume_mid_warmup_or_mid_cosine_equals_an_uninterrupted_run(stop, tmp_path):
    whole, trainer, rates = _fit(tmp_path / "whole", 8, SPLIT)
    assert len(trainer.optimizers[0].param_groups) == 2
    _fit(tmp_path / "cut", stop, SPLIT)
    resumed, trainer, rates_resumed = _fit(tmp_path / "cut", 8, SPLIT, resume=True)
    assert trainer.global_step == 8 and sorted(rates_resumed) == list(range(stop, 8))
    for step, lrs in rates_resumed.items():
        assert lrs == rates[step], step  # exactly, every group
    assert rates[0] == [0.05 / 4] * 2 and rates[3] == [0.05] * 2
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_one_group_checkpoint_resumes_split(tmp_path, capsys):
    """A run written with one parameter group (before the split, or with it off) resumed with the
    split: each tensor keeps its Adam moments, the 1-D ones and the gates lose their decay."""
    one = ["optim.no_decay_1d=false", "optim.no_decay=[]", *SPLIT]
    _fit(tmp_path / "run", 4, one)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["optimizer_states"][0]
    assert len(saved["param_groups"]) == 1
    module, trainer, rates = _fit(tmp_path / "run", 5, SPLIT, resume=True)
    decayed, kept = trainer.optimizers[0].param_groups
    assert _names(module, kept) == ["adapter.gates", "net.bias", "norm.bias", "norm.weight"]
    assert kept["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.01
    _, _, whole_rates = _fit(tmp_path / "whole", 5, one)
    assert rates[4] == whole_rates[4] * 2  # the same schedule, now over two groups
    # the moments followed their tensors (saved by position in the model's order): one step on
    state = trainer.optimizers[0].state
    for i, (name, p) in enumerate(module.model.named_parameters()):
        assert float(saved["state"][i]["step"]) == 4 and float(state[p]["step"]) == 5, name
        assert saved["state"][i]["exp_avg"].shape == state[p]["exp_avg"].shape == p.shape, name


def test_step_checkpoints_every_n_steps_beside_last(tmp_path):
    out = tmp_path / "run"
    _fit(out, 5, SPLIT, step_every=2)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["epoch=4-step=5.ckpt", "last.ckpt", "step=2.ckpt", "step=4.ckpt"], names
    assert load_checkpoint(out / "checkpoints" / "step=4.ckpt")["global_step"] == 4
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 5
    _fit(tmp_path / "none", 3, SPLIT)  # the default: none
    assert sorted(p.name for p in (tmp_path / "none" / "checkpoints").iterdir()) == ["epoch=2-step=3.ckpt", "last.ckpt"]


@pytest.mark.parametrize("overrides", [
    ["scheduler=cosine", "scheduler.warmup_steps=2"],
    ["scheduler=constant", "scheduler.warmup_steps=2"],
    ["callbacks.step_checkpoint.every_n_train_steps=100"],
    ["optim.no_decay=[net.*]", "optim.no_decay_1d=false"],
])
def test_new_configs_compose_and_instantiate(overrides, tmp_path):
    optimizer, scheduler, cfg = _parts(*overrides, f"paths.output_dir={tmp_path}")
    opt = optimizer([(n, p) for n, p in ToyCaptioner().named_parameters()])
    sched = scheduler(opt) if scheduler is not None else None
    if sched is not None:
        opt.step()
        sched.step()
    callbacks = _instantiate_dict(cfg.callbacks, "callbacks")
    steps = [cb for cb in callbacks if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb._every_n_train_steps]
    assert len(steps) == (1 if "callbacks" in overrides[0] else 0)


@pytest.mark.parametrize("before,after", [
    ([], ["scheduler.warmup_steps=3"]),
    (["scheduler.warmup_steps=3"], []),
    (["scheduler.warmup_steps=3"], ["scheduler.warmup_steps=4", "scheduler.T_max=10"]),  # the same kind, longer
])
def test_resuming_with_warmup_added_or_removed_follows_the_config(before, after, tmp_path, capsys):
    """The checkpoint's schedule is of the other kind (SequentialLR, or the cosine alone): the
    config's, at the checkpoint's step, as an uninterrupted run of the new config has it (Lightning
    raised KeyError '_schedulers' from inside torch, or loaded the warmup's state into the cosine).
    Of the same kind, the warmup's length and the cosine's inside it follow the config too."""
    _fit(tmp_path / "cut", 2, ["scheduler.T_max=8", "optim.lr=0.05", *before])
    _, trainer, rates = _fit(tmp_path / "cut", 8, ["scheduler.T_max=8", "optim.lr=0.05", *after], resume=True)
    _, _, whole = _fit(tmp_path / "whole", 8, ["scheduler.T_max=8", "optim.lr=0.05", *after])
    assert rates == {step: whole[step] for step in range(2, 8)}
    assert "resuming with the config's learning-rate schedule" in capsys.readouterr().err


def test_resuming_a_split_run_without_the_split_is_one_line(tmp_path):
    _fit(tmp_path / "run", 2, SPLIT)
    with pytest.raises(CheckpointError, match=r"last.ckpt: field 'optimizer_states\[0\].param_groups': expected 1 parameter "
                       r"group\(s\), as the config's optimizer builds .* got 2 groups"):
        _fit(tmp_path / "run", 3, ["optim.no_decay_1d=false", "optim.no_decay=[]", *SPLIT], resume=True)


def test_the_real_configs_train_and_resume_with_warmup_and_split(synthetic_root, tmp_path):
    """perception_indoor's detector through ``dense3d.engine.train.fit``: two parameter groups,
    the warmup's rates, and a resume in the warmup going on with them."""
    from dense3d.engine.train import fit
    from tests.engine.test_run_folders import _args

    out = tmp_path / "run"
    args = ["trainer.max_steps=2", "scheduler.warmup_steps=3", "scheduler.T_max=6", "optim.lr=1e-3"]
    _, _, trainer = fit(compose_config(_args(synthetic_root, out, *args)))
    assert [g["weight_decay"] for g in trainer.optimizers[0].param_groups] == [0.01, 0.0]
    assert trainer.optimizers[0].param_groups[1]["params"] and all(p.ndim <= 1 for p in trainer.optimizers[0].param_groups[1]["params"])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 4)  # after 2 steps: step 2's rate
    cfg = compose_config(_args(synthetic_root, out, *args[1:], "trainer.max_steps=4"))
    _, _, trainer = fit(cfg, ckpt_path="last")
    assert trainer.global_step == 4
    eta = cfg.scheduler.eta_min  # step 4: the cosine's first step of 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(eta + (1e-3 - eta) * (1 + math.cos(math.pi / 3)) / 2)


def _step_orders(out, max_steps, resume, workers, batch_size=4, ckpt="last.ckpt"):
    """The samples of each step of a run of ``max_steps`` (8 samples an epoch), resumed from ``ckpt``
    (last.ckpt: each epoch's end; step=N.ckpt: every step's)."""
    seen = {}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.global_step] = [int(v) for v in batch[0][:, 0]]

    pl.seed_everything(0, workers=True, verbose=False)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, plugins=[SafeCheckpointIO()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[RNGStateCallback(), Record(),
                                    pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True, every_n_epochs=1),
                                    pl.callbacks.ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=1,
                                                                 save_top_k=-1)])
    dm = DenseCaptionDataModule(_Indices(), batch_size=batch_size, num_workers=workers, seed=0)
    module = DenseCaptionModule(_Net(), torch.optim.AdamW)
    trainer.fit(module, dm, ckpt_path=str(out / ckpt) if resume else None)
    return seen, module


@pytest.mark.parametrize("workers", [0, 1])
def test_a_max_steps_run_resumed_at_an_epochs_end_sees_the_uninterrupted_order(workers, tmp_path):
    """trainer.max_steps (every experiment's) stopped at an epoch's end and resumed: Lightning gave
    the sampler an epoch one ahead of the trainer's, so each later epoch drew the next one's order."""
    whole, _ = _step_orders(tmp_path / "whole", 8, False, workers)
    _step_orders(tmp_path / "cut", 4, False, workers)
    resumed, _ = _step_orders(tmp_path / "cut", 8, True, workers)
    assert sorted(resumed) == [4, 5, 6, 7]
    assert {s: whole[s] for s in resumed} == resumed, (whole, resumed)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("step", [3, 4])  # inside the second epoch of 4 steps, at the first epoch's last batch
def test_resuming_a_step_checkpoint_goes_on_with_the_rest_of_its_epoch(step, workers, tmp_path):
    """A checkpoint written inside an epoch (callbacks.step_checkpoint) resumed: the batches after
    it, as in the uninterrupted run (Lightning restarted the epoch's order from its first batch, so
    those batches trained twice and the rest of the epoch never; at an epoch's last batch the next
    epoch drew the finished epoch's order again, with workers)."""
    whole, whole_module = _step_orders(tmp_path / "whole", 8, False, workers, batch_size=2)
    _step_orders(tmp_path / "cut", 8, False, workers, batch_size=2)
    resumed, module = _step_orders(tmp_path / "cut", 8, True, workers, batch_size=2, ckpt=f"step={step}.ckpt")
    assert sorted(resumed) == list(range(step, 8))
    assert {s: whole[s] for s in resumed} == resumed, (whole, resumed)
    for a, b in zip(whole_module.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)
