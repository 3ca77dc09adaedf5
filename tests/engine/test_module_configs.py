"""Engine configs and the Lightning module around the model: the demo experiment checkpoints,
debug configs keep out of the experiment's run folder, DDP tolerates parts without gradients,
the data order of resumed runs with workers, the demo report's curves, validation under DDP and
the random states saved in checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dense3d.api as api
from dense3d.cli import main
from dense3d.engine.train import compose_config
from tests.engine.toy_parts import Indices as _Indices, Net as _Net

TINY = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64",
        "model.captioner.adapter.num_layers=2"]


def _demo(synthetic_root, out, *extra):
    return ["train", "experiment=demo", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={out}", "logger=csv",
            "trainer.log_every_n_steps=1", *TINY, *extra]


# -- 3: `dense3d train experiment=demo` checkpoints (README: --resume last, dense3d eval --checkpoint)

@pytest.mark.slow
def test_train_experiment_demo_checkpoints_resumes_and_loads(synthetic_root, tmp_path):
    out = tmp_path / "demo_1"
    assert main(_demo(synthetic_root, out, "trainer.max_steps=1")) == 0
    assert (out / "checkpoints" / "last.ckpt").exists(), sorted(p.name for p in out.rglob("*"))
    assert main(_demo(synthetic_root, out, "trainer.max_steps=2", "--resume", "last")) == 0
    loaded = api.load(out)
    assert loaded.model is not None


def test_the_demo_alone_turns_checkpointing_off():
    """`dense3d demo` saves last.ckpt itself; experiment=demo keeps the default callbacks."""
    from dense3d.engine.demo import DEMO_TRAIN_OVERRIDES

    cfg = compose_config(["experiment=demo"])
    assert cfg.trainer.get("enable_checkpointing", True) is not False and "model_checkpoint" in cfg.callbacks
    demo = compose_config(["experiment=demo", *DEMO_TRAIN_OVERRIDES])
    assert demo.trainer.enable_checkpointing is False and list(demo.callbacks) == ["progress"]


# -- 9: debug configs write to outputs/debug and drop the experiment's callbacks

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("debug", ["fast_dev_run", "overfit"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_configs_keep_out_of_the_experiments_run_folder(experiment, debug):
    plain = compose_config([f"experiment={experiment}"])
    cfg = compose_config([f"experiment={experiment}", f"debug={debug}"])
    assert cfg.task_name == "debug" and Path(cfg.paths.output_dir).name == "debug", (cfg.task_name, cfg.paths.output_dir)
    if plain.task_name != "debug":
        assert cfg.paths.output_dir != plain.paths.output_dir
    assert "model_checkpoint" not in (cfg.callbacks or {}), list(cfg.callbacks)  # no checkpoints of a debug run
    if debug == "fast_dev_run":
        assert not cfg.callbacks and cfg.trainer.fast_dev_run is True
    else:
        assert cfg.trainer.overfit_batches == 2
    if experiment == "demo":  # an explicit callbacks= on the command line still wins
        assert "model_checkpoint" in compose_config([f"experiment={experiment}", f"debug={debug}", "callbacks=default"]).callbacks


# -- 1: trainer=ddp tolerates trainable parameters without a gradient in a step

def _ddp_trainer(*extra):
    """trainer=ddp as composed, on 2 CPU processes (not launched: the strategy only)."""
    from hydra.utils import instantiate

    cfg = compose_config(["experiment=demo", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.sync_batchnorm=false", "trainer.precision=32-true", "logger=csv", *extra])
    return instantiate(cfg.trainer, logger=False)


def _finds_unused(trainer) -> bool:
    import lightning.pytorch as pl

    strategy = trainer.strategy
    return isinstance(strategy, pl.strategies.DDPStrategy) and strategy._ddp_kwargs.get("find_unused_parameters") is True


def test_ddp_strategy_allows_unused_parameters(tmp_path):
    assert _finds_unused(_ddp_trainer(f"paths.output_dir={tmp_path}")), "configs/trainer/ddp.yaml: find_unused_parameters"


def _no_grad_after_one_backward(overrides, synthetic_root, out) -> list[str]:
    from dense3d.engine.train import build

    cfg = compose_config([*overrides, f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={out}", "logger=csv"])
    module, dm, _ = build(cfg)
    module.train()
    batch = next(iter(dm.train_dataloader()))
    sum(module.model(batch).values()).backward()
    return [n for n, p in module.model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("overrides", [
    pytest.param(["experiment=demo", "stage=captioning", *TINY], id="captioning"),
    pytest.param(["experiment=demo", "stage=joint", *TINY], id="joint"),
    pytest.param(["experiment=demo", "stage=scst", *TINY], id="scst"),
    pytest.param(["experiment=perception_events"], id="perception_events", marks=pytest.mark.slow),
])
def test_stages_with_parameters_without_gradients_train_under_ddp(overrides, synthetic_root, tmp_path):
    """Per-kind parts (BiCA's event entries in a box-only model, Q-Former inputs, the event head's
    azimuth head) take no gradient in a step: DDP must find unused parameters or stop at step 2."""
    unused = _no_grad_after_one_backward(overrides, synthetic_root, tmp_path / "run")
    assert unused, "every trainable parameter took a gradient: this case no longer shows why ddp.yaml finds unused ones"
    assert _finds_unused(_ddp_trainer(f"paths.output_dir={tmp_path / 'ddp'}")), unused[:8]


@pytest.mark.slow
def test_two_process_ddp_captioning_stage_runs(synthetic_root, tmp_path):
    """`trainer=ddp` on 2 CPU processes (gloo) through `dense3d train`: past the second step."""
    import os
    import subprocess
    import sys

    args = ["train", "experiment=demo", "stage=captioning", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.sync_batchnorm=false", "trainer.precision=32-true", "trainer.max_steps=3", "logger=csv",
            f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={tmp_path / 'run'}", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dense3d.cli", *args], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "max_steps=3" in r.stderr + r.stdout and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


# -- 2: a resumed run with loader workers sees the uninterrupted run's data order

def _epoch_orders(out: Path, epochs: int, resume: bool, workers: int) -> dict[int, list[int]]:
    import lightning.pytorch as pl

    from dense3d.engine.checkpoint import SafeCheckpointIO
    from dense3d.engine.module import DenseCaptionDataModule, DenseCaptionModule, RNGStateCallback

    seen: dict[int, list[int]] = {}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).extend(int(v) for v in batch[0][:, 0])

    pl.seed_everything(0, workers=True, verbose=False)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, plugins=[SafeCheckpointIO()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[RNGStateCallback(), Record(),
                                    pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True, every_n_epochs=1)])
    dm = DenseCaptionDataModule(_Indices(), batch_size=4, num_workers=workers, seed=0)
    trainer.fit(DenseCaptionModule(_Net(), torch.optim.AdamW), dm, ckpt_path=str(out / "last.ckpt") if resume else None)
    return seen


@pytest.mark.parametrize("workers", [0, 1])
def test_resumed_run_with_workers_sees_the_uninterrupted_order(workers, tmp_path):
    whole = _epoch_orders(tmp_path / "whole", 3, False, workers)
    assert whole[1] != whole[2] and sorted(whole[1]) == list(range(8))
    _epoch_orders(tmp_path / "cut", 1, False, workers)
    resumed = _epoch_orders(tmp_path / "cut", 3, True, workers)
    assert sorted(resumed) == [1, 2]
    assert resumed[1] == whole[1] and resumed[2] == whole[2], (whole, resumed)


# -- 13: the demo's report plots this run's curves, not an earlier demo's

def test_demo_curves_come_from_this_runs_csv_logger(tmp_path):
    import os
    import types

    from lightning.pytorch.loggers import CSVLogger

    from dense3d.engine.demo import _metrics_csv

    for version in (9, 10):  # an earlier demo left csv/version_9; this run logs to csv/version_10
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    os.utime(tmp_path / "csv" / "version_9" / "metrics.csv", (1e9, 1e9))
    this_run = tmp_path / "csv" / "version_10" / "metrics.csv"
    assert sorted(tmp_path.rglob("metrics.csv"))[-1] != this_run  # what the report used to plot
    trainer = types.SimpleNamespace(loggers=[CSVLogger(save_dir=str(tmp_path), name="csv", version=10)])
    assert _metrics_csv(trainer, tmp_path) == this_run
    assert _metrics_csv(types.SimpleNamespace(loggers=[]), tmp_path) == this_run  # no CSV logger: the newest
    os.utime(this_run, (1e9 - 10, 1e9 - 10))
    trainer = types.SimpleNamespace(loggers=[CSVLogger(save_dir=str(tmp_path), name="csv", version=10)])
    assert _metrics_csv(trainer, tmp_path) == this_run  # the logger's, whatever the times
    assert _metrics_csv(types.SimpleNamespace(loggers=[]), tmp_path / "csv" / "version_10" / "none") is None


# -- 12: under DDP, evaluation sees each sample once (training pads so ranks take as many steps)

class _Trainer:
    def __init__(self, world_size, rank):
        self.world_size, self.global_rank = world_size, rank


@pytest.mark.parametrize("loader_fn", ["val_dataloader", "test_dataloader", "predict_dataloader"])
@pytest.mark.parametrize("n, world_size", [(5, 2), (7, 3), (8, 2), (6, 4)])
def test_ddp_evaluation_sees_each_sample_once(loader_fn, n, world_size):
    from dense3d.engine.module import DenseCaptionDataModule, SeededSampler

    data = torch.utils.data.TensorDataset(torch.arange(n).float())
    seen = []
    for rank in range(world_size):
        dm = DenseCaptionDataModule(train=data, val=data, test=data, batch_size=2, seed=0)
        dm.trainer = _Trainer(world_size, rank)
        sampler = getattr(dm, loader_fn)().sampler
        assert len(list(sampler)) == len(sampler)
        seen += list(sampler)
    assert sorted(seen) == list(range(n)), seen  # 5 on 2 ranks: [0, 2, 4] and [1, 3], not [1, 3, 0]
    ranks = []
    for rank in range(world_size):
        sampler = SeededSampler(n, 0, False, world_size, rank, pad=False)
        assert len(list(sampler)) == len(sampler)
        ranks.append(list(sampler))
    assert sorted(i for r in ranks for i in r) == list(range(n)), ranks
    assert all(ranks) and max(map(len, ranks)) - min(map(len, ranks)) <= 1


@pytest.mark.parametrize("n, world_size", [(5, 2), (7, 3), (2, 4)])
def test_ddp_training_ranks_take_as_many_steps(n, world_size):
    from dense3d.engine.module import DenseCaptionDataModule

    data = torch.utils.data.TensorDataset(torch.arange(n).float())
    ranks = []
    for rank in range(world_size):
        dm = DenseCaptionDataModule(train=data, batch_size=2, seed=0)
        dm.trainer = _Trainer(world_size, rank)
        ranks.append(list(dm.train_dataloader().sampler))
    assert len({len(r) for r in ranks}) == 1 and set(i for r in ranks for i in r) == set(range(n))


def test_evaluation_on_fewer_samples_than_ranks_leaves_no_rank_without_a_batch():
    from dense3d.engine.module import SeededSampler

    assert all(len(list(SeededSampler(2, 0, False, 4, rank, pad=False))) == 1 for rank in range(4))


# -- 11: checkpoints hold the CUDA random states too (dropout on a GPU draws from them)

def _through_a_file(state, tmp_path):
    torch.save(state, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=True)  # as SafeCheckpointIO reads trainer_state.pt


def test_rng_state_round_trips_without_cuda(tmp_path, monkeypatch):
    import random

    import numpy as np

    from dense3d.engine.module import RNGStateCallback

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cb = RNGStateCallback()
    state = _through_a_file(cb.state_dict(), tmp_path)
    assert "cuda" not in state
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    cb.load_state_dict(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_cuda_rng_states_are_saved_once_cuda_is_initialised_and_restored(tmp_path, monkeypatch):
    from dense3d.engine.module import RNGStateCallback

    states = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a CPU run on a GPU machine
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s.clone()))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cb = RNGStateCallback()
    assert "cuda" not in cb.state_dict()  # nothing drawn there; reading them would initialise CUDA
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    state = _through_a_file(cb.state_dict(), tmp_path)
    assert [s.tolist() for s in state["cuda"]] == [s.tolist() for s in states]
    cb.load_state_dict(state)
    assert list(restored) == [0] and torch.equal(restored[0], states[0])  # one device here: the states it has
    restored.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU checkpoint resumed on a CPU machine
    cb.load_state_dict(state)
    assert not restored


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_dropout_repeats_exactly_after_restoring(tmp_path):
    from dense3d.engine.module import RNGStateCallback

    torch.cuda.manual_seed_all(0)
    x = torch.ones(4096, device="cuda")
    torch.nn.functional.dropout(x, 0.5)  # CUDA initialised, its generator moved on
    cb = RNGStateCallback()
    state = _through_a_file(cb.state_dict(), tmp_path)
    first = torch.nn.functional.dropout(x, 0.5)
    torch.cuda.manual_seed_all(123)
    cb.load_state_dict(state)
    assert torch.equal(torch.nn.functional.dropout(x, 0.5), first)


def test_motion_hint_from_the_config_adds_a_weighted_motion_term(synthetic_root, tmp_path):
    """``model.captioner.motion_phrases`` (smollm2.yaml's key, added to the tiny captioner here):
    a captioning step on the synthetic outdoor set has the term "motion", ``model.motion_weight``
    times the hint's loss over the captions that state a motion word, and logs its accuracy."""
    from dense3d.engine.train import build

    motions = "{parked:[parked],moving:[moving],walking:[walking],standing:[standing],riding:[riding],placed:[placed]}"
    cfg = compose_config(["experiment=demo", "stage=captioning", *TINY, f"+model.captioner.motion_phrases={motions}",
                          "+model.motion_weight=0.25", f"paths.synthetic_dir={synthetic_root}",
                          f"paths.output_dir={tmp_path}", "logger=csv"])
    module, dm, _ = build(cfg)
    module.train()
    losses = module.model(next(iter(dm.train_dataloader())))
    assert module.model.loss_weight("motion") == 0.25
    assert losses["motion"].requires_grad and losses["motion"].item() > 0
    assert "motion_accuracy" in module.model.step_metrics
    losses["motion"].backward()
    assert module.model.captioner.motion_hint.classifier[0].weight.grad.abs().sum() > 0
