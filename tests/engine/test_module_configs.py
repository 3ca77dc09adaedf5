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

