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


def _epochs_run(out, resume, workers, ckpt=None):
    """Two epochs of 4 steps (8 samples, batch 2) under trainer.max_epochs with the default
    cosine (T_max null: the run's length, warmup 1), a checkpoint at every step; the samples of
    each step, and the module."""
    seen = {}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.global_step] = [int(v) for v in batch[0][:, 0]]

    pl.seed_everything(0, workers=True, verbose=False)
    scheduler = scheduler_from_config(compose_config(["scheduler.warmup_steps=1"]).scheduler)
    module = DenseCaptionModule(_Net(), torch.optim.AdamW, scheduler)
    callbacks = [RNGStateCallback(), Record(), pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True, every_n_epochs=1),
                 pl.callbacks.ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=1, save_top_k=-1)]
    if resume:
        callbacks.append(ScheduleFromConfig())
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, plugins=[SafeCheckpointIO()], logger=False,
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
    assert sorted(resumed) == list(range(step, 8))
    assert {s: whole[s] for s in resumed} == resumed, (whole, resumed)
    for a, b in zip(whole_module.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)
