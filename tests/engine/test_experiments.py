"""`fast_dev_run` of every experiment config on the CPU (one training batch, through `dense3d train`)."""
from pathlib import Path

import pytest

from dense3d.cli import main
from tests.mmdet3d_guard import need_mmdet3d

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "experiment").glob("*.yaml"))


def _experiments():
    """Each experiment, with what it needs here: those on the mmdet3d bridge (named so) need
    mmdet3d, and read the synthetic outdoor set in place of TOD3Cap (not in the checkout)."""
    return [pytest.param(e, ["data=demo_outdoor"], marks=pytest.mark.mmdet3d) if "mmdet3d" in e else pytest.param(e, [])
            for e in EXPERIMENTS]


@pytest.mark.slow
@pytest.mark.parametrize("experiment, extra", _experiments())
def test_fast_dev_run(experiment, extra, synthetic_root, tmp_path):
    if "mmdet3d" in experiment:
        need_mmdet3d()
    if "joint" in experiment:  # the demo's set has no joint scenes: three of them (tests/data/test_joint_scenes31.py)
        from dense3d.data.synthetic import SynthConfig, generate

        synthetic_root = tmp_path / "synthetic"
        generate(SynthConfig(kind="joint", scenes=3), synthetic_root / "joint")
    assert main(["train", f"experiment={experiment}", "debug=fast_dev_run", f"paths.synthetic_dir={synthetic_root}",
                 f"paths.output_dir={tmp_path}", "logger=csv", *extra]) == 0
    assert (tmp_path / "config.yaml").exists()


TINY = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64",
        "model.captioner.adapter.num_layers=2"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["detection", "captioning", "joint", "scst"])
def test_training_stages_train_what_they_say(stage, synthetic_root, tmp_path):
    """Each stage's frozen parts stay bit-identical over a step, BatchNorm statistics included;
    the others change."""
    import torch

    from dense3d.engine.train import compose_config

    cfg = compose_config(["experiment=demo", f"stage={stage}", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={tmp_path}",
                          "trainer.max_steps=1", "logger=csv", *TINY])
    from dense3d.engine.train import build

    module, dm, trainer = build(cfg)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in module.model.named_buffers()}  # BatchNorm statistics
    trainer.fit(module, dm)
    names = {n for n, p in module.model.named_parameters() if n in before and not torch.equal(before[n], p)}
    names |= {n for n, b in module.model.named_buffers() if n in buffers and not torch.equal(buffers[n], b)}
    changed = {n.split(".")[0] for n in names}
    under = lambda n, parts: any(n.startswith(part + ".") for part in parts)  # noqa: E731
    wrong = {n for n in names if under(n, cfg.frozen) and not under(n, cfg.trainable)}
    assert not wrong, f"{stage}: frozen parts changed: {sorted(wrong)[:5]}"
    assert changed, f"{stage}: nothing trained"
    for part in cfg.trainable:  # trainable parts inside frozen ones do train
        assert any(under(n, [part]) for n in names), f"{stage}: {part} did not train"
    if stage == "detection":
        assert changed == {"box_detector"}
    else:
        assert "captioner" in changed
    if "box_detector" in cfg.frozen:  # no detection loss for a frozen detector (its region sampler trains)
        assert not any("det_" in k for k in trainer.callback_metrics), list(trainer.callback_metrics)
    if stage == "scst":  # the rewards SCST raises are logged beside its loss
        for k in ("train/scst_reward_sample", "train/scst_reward_greedy"):
            assert k in trainer.callback_metrics and trainer.callback_metrics[k] >= 0, list(trainer.callback_metrics)


@pytest.mark.parametrize("override, names", [
    ("data.train.info_file=a/{split}.pkl", "override data.train.info_file=a/{split}.pkl"),  # braces need quotes
    ("experiment=nope", "experiment/nope"),
    ("trainer.nope=1", "trainer.nope"),
])
def test_train_reports_bad_overrides_in_one_line(override, names, capsys):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dense3d train: ConfigError: configs/train.yaml") and names in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("key", ["init_parts", "init_skip"])
def test_init_parts_without_init_from_is_an_error(key, capsys, tmp_path):
    """Without init_from there is nothing to load the parts from: an error, not a silent no-op.
    (In a folder of its own: `make demo` leaves a run in the demo's outputs/demo.)"""
    assert main(["train", "experiment=demo", f"{key}=[box_detector]", f"paths.output_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dense3d train: ConfigError: configs/train.yaml: field '{key}'") and "init_from" in err, err
    assert len(err.splitlines()) == 1


def test_quoted_override_with_braces_composes():
    from dense3d.engine.train import compose_config

    cfg = compose_config(["experiment=captioning_outdoor", 'data.train.info_file="a/nuscenes_infos_{split}.pkl"'])
    assert cfg.data.train.info_file == "a/nuscenes_infos_{split}.pkl"


def test_train_overrides_may_follow_an_option():
    from dense3d.cli import parse_args

    args = parse_args(["train", "experiment=demo", "--resume", "outputs/run/checkpoints/last.ckpt", "seed=3", "model.captioner.bica=null"])
    assert args.overrides == ["experiment=demo", "seed=3", "model.captioner.bica=null"]
    assert args.resume == "outputs/run/checkpoints/last.ckpt"
    assert parse_args(["demo", "--steps", "5", "seed=1"]).overrides == ["seed=1"]
    with pytest.raises(SystemExit):  # an unknown option is still refused
        parse_args(["train", "experiment=demo", "--nope", "x"])
