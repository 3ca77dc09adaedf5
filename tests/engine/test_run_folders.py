"""Run folders: a second run into a folder holding a run, resuming with another model or other
frozen parts, a run failing before its first step, and loading a run whose config no longer
fits its weights (what a probe found leaving the old weights in use, or torch's many-line errors)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import dense3d.api as api
from dense3d.cli import main
from dense3d.engine.demo import DEMO_MARKER, _replacing_earlier_demo_run
from dense3d.engine.train import compose_config, fit, saved_config_yaml
from dense3d.errors import CheckpointError, ConfigError


def _args(synthetic_root, out, *extra):
    return ["experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={out}", "logger=csv",
            "trainer.max_steps=1", *extra]


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *_args(synthetic_root, out)]) == 0
    return out


def _one_line(capsys, prefix):
    err = capsys.readouterr().err
    assert err.startswith(prefix) and len(err.strip().splitlines()) == 1, err
    return err


def test_a_second_run_into_a_run_folder_is_refused_and_the_newest_last_checkpoint_is_loaded(synthetic_root, run, capsys):
    config = (run / "config.yaml").read_text()
    assert main(["train", *_args(synthetic_root, run)]) == 2  # Lightning wrote last-v1.ckpt beside last.ckpt; eval kept the old
    err = _one_line(capsys, "dense3d train: ConfigError: configs/train.yaml: field 'paths.output_dir': ")
    assert "checkpoints" in err and "--resume" in err
    assert (run / "config.yaml").read_text() == config
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]
    # folders written before this check: the newest last*.ckpt is the run's
    newer = run / "checkpoints" / "last-v1.ckpt"
    newer.symlink_to((run / "checkpoints" / "last.ckpt").resolve(), target_is_directory=True)
    try:
        old = time.time() - 100
        os.utime(run / "checkpoints" / "last.ckpt", (old, old))
        assert api.find_run(run)[1] == newer
    finally:
        newer.unlink()


def test_resuming_with_other_frozen_parts_or_another_model_is_one_line(synthetic_root, run, tmp_path, capsys):
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = tmp_path / "resumed"
    assert main(["train", *_args(synthetic_root, out, "trainer.max_steps=2", "frozen=[box_detector.box_head]"), "--resume", ckpt]) == 2
    err = _one_line(capsys, "dense3d train: CheckpointError: ")
    assert "field 'optimizer_states[0]'" in err and "frozen / trainable" in err, err  # Lightning: "parameter group that doesn't match"
    assert main(["train", *_args(synthetic_root, out, "trainer.max_steps=2", "model.box_detector.region_sampler.out_channels=128"),
                 "--resume", ckpt]) == 2
    err = _one_line(capsys, "dense3d train: CheckpointError: ")
    assert "field 'state_dict.model.box_detector.region_sampler" in err and "shape" in err, err
    assert not out.exists()


def test_loading_a_run_with_overrides_that_change_a_weights_shape_is_one_line(run, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"field 'state_dict.model.box_detector.region_sampler.*expected shape \(128"):
        api.load(run, overrides=["model.box_detector.region_sampler.out_channels=128"])
    assert main(["eval", "--checkpoint", str(run), "--limit", "1", "--out", str(tmp_path / "e"),
                 "model.box_detector.region_sampler.out_channels=128"]) == 2
    _one_line(capsys, "dense3d eval: CheckpointError: ")
    assert not (tmp_path / "e").exists()


class _FailsAtTheFirstStep(pl.Callback):
    """Fails before the first step; meanwhile "another process" wrote a file into the folder."""

    def __init__(self, others_file: Path | None = None):
        self.others_file = others_file

    def on_train_batch_start(self, *args):
        if self.others_file is not None:
            self.others_file.parent.mkdir(parents=True, exist_ok=True)
            self.others_file.write_text("not this run's")
        raise RuntimeError("boom")


def test_a_run_failing_before_its_first_step_leaves_the_folder_as_it_was(synthetic_root, tmp_path):
    new = tmp_path / "new"
    with pytest.raises(RuntimeError, match="boom"):
        fit(compose_config(_args(synthetic_root, new)), callbacks=[_FailsAtTheFirstStep()])
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    (old / "config.yaml").write_text("task_name: earlier\n")
    with pytest.raises(RuntimeError, match="boom"):  # e.g. a dense3d eval writing there meanwhile
        fit(compose_config(_args(synthetic_root, old)), callbacks=[_FailsAtTheFirstStep(old / "eval_val" / "metrics.json")])
    assert sorted(p.name for p in old.iterdir()) == ["config.yaml", "eval_val", "notes.txt"]
    assert (old / "config.yaml").read_text() == "task_name: earlier\n"
    assert (old / "eval_val" / "metrics.json").read_text() == "not this run's"


def test_the_demo_replaces_its_own_earlier_run_only(tmp_path):
    demo = tmp_path / "demo"
    (demo / "checkpoints" / "last.ckpt").mkdir(parents=True)
    (demo / "config.yaml").write_text("task_name: demo\n")
    (demo / DEMO_MARKER).write_text("")
    with pytest.raises(RuntimeError):
        with _replacing_earlier_demo_run(demo):
            assert not (demo / "checkpoints").exists()  # fit sees no earlier run
            raise RuntimeError("the new run failed")
    assert (demo / "checkpoints" / "last.ckpt").is_dir()  # the earlier run is back
    with _replacing_earlier_demo_run(demo):
        (demo / "checkpoints" / "new.ckpt").mkdir(parents=True)
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER, "checkpoints", "config.yaml"]
    assert [p.name for p in (demo / "checkpoints").iterdir()] == ["new.ckpt"]
    other = tmp_path / "other"  # `dense3d train experiment=demo` into the demo's folder: not the demo's run
    (other / "checkpoints" / "last.ckpt").mkdir(parents=True)
    (other / "config.yaml").write_text("task_name: demo\n")
    with _replacing_earlier_demo_run(other):  # left for fit to refuse
        assert (other / "checkpoints" / "last.ckpt").is_dir()


def test_api_arguments_are_checked(run, synthetic_root):
    with pytest.raises(ConfigError, match="field 'regions': expected 'proposals' or 'gt', got bogus"):
        api.load(run, regions="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="field 'map_location'"):
            api.load(run, map_location="cuda")
    with pytest.raises(ConfigError, match="field 'path'"):
        api.load(None)
    loaded = api.load(run)
    with pytest.raises(ConfigError, match="field 'batch_size': expected an integer >= 1, got 0"):
        loaded.caption_many([], batch_size=0)
    with pytest.raises(ConfigError, match=r"field 'samples\[0\]': expected a dense3d Sample"):
        loaded.caption("x")
    with pytest.raises(ConfigError, match="field 'split'"):
        loaded.dataset(None)
    with pytest.raises(ConfigError, match="field 'captions': expected one list of captions per sample id"):
        api.prediction_records(["a", "b"], [[]])
    with pytest.raises(ConfigError, match="distinct sample ids"):
        api.prediction_records(["a", "a"], [[], []])
    with pytest.raises(ConfigError, match="not one string"):
        api.prediction_records("ab", [[], []])


def test_a_training_split_is_read_as_evaluation_reads_it(run):
    """`dense3d eval --split train`, `dense3d predict --split train` and tools/probe_tokens.py read
    the split through the run's `dataset`, which built data.train with its augmentation: the
    indoor rooms flipped, rotated, scaled and shuffled anew on every read. Now the training
    files go through the validation pipeline: the same sample twice is the same sample."""
    loaded = api.load(run)
    config = loaded.config.data
    assert config.train.transforms.transforms.flip is not None  # the run trained with augmentation
    train = loaded.dataset("train")
    first, again = train[0], train[0]
    assert torch.equal(first.points.points, again.points.points)
    assert torch.equal(first.boxes.boxes.tensor, again.boxes.boxes.tensor)
    val = loaded.dataset("val")
    assert len(train) != len(val)  # still the training split's files
    assert first.sample_id not in {val[i].sample_id for i in range(len(val))}


def test_inference_data_config_takes_the_pipeline_from_val_at_any_depth():
    from omegaconf import OmegaConf

    train = OmegaConf.create({"split": "train", "info_file": "mine_{split}.pkl", "box_filter": "num_lidar_pts",
                              "transforms": {"scale": {"r": 1}}, "scenes": {"split": "train", "transforms": {"flip": 1}}})
    val = OmegaConf.create({"split": "val", "info_file": "theirs_{split}.pkl", "transforms": {"scale": None},
                            "scenes": {"split": "val", "transforms": {"flip": None}}})
    node = OmegaConf.to_container(api.inference_data_config(train, val))
    assert node == {"split": "train", "info_file": "mine_{split}.pkl", "transforms": {"scale": None},
                    "scenes": {"split": "train", "transforms": {"flip": None}}}
    assert api.inference_data_config(train, None) is train  # no evaluation pipeline to take


def test_frozen_parts_at_random_initialisation_are_announced(synthetic_root, tmp_path, capsys):
    assert main(["train", *_args(synthetic_root, tmp_path / "r", "frozen=[box_detector.box_head]")]) == 0
    err = capsys.readouterr().err
    assert "warning: frozen ['box_detector.box_head'] not loaded from another run" in err


@pytest.mark.slow
def test_tools_train_one_line_errors_and_one_folder_per_multirun_job(synthetic_root, tmp_path):
    """tools/train.py (hydra.main): bad input is one line and status 2; a sweep's jobs train into
    outputs/<task_name>/<job number> (all into one folder, the second would be refused), and a
    job with bad input does not stop the others."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "tools" / "train.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = ["experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}", "logger=csv"]
    r = subprocess.run([sys.executable, str(script), *base, f"paths.output_dir={tmp_path / 'one'}", "trainer.max_steps=0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("tools/train.py: ConfigError: "), r.stderr
    assert len([l for l in r.stderr.splitlines() if "Error" in l]) == 1, r.stderr
    r = subprocess.run([sys.executable, str(script), "-m", *base, f"paths.output_dir={tmp_path / 'sweep'}", "trainer.max_steps=0,1,1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode != 0  # hydra reports the failed job after running the others
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["1", "2", "multirun.yaml"]
    assert all((tmp_path / "sweep" / j / "checkpoints" / "last.ckpt").is_dir() for j in ("1", "2"))
    # hydra writes nothing of its own (no outputs/<date>/<time>/.hydra, multirun/<date>, train.log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    # the same sweep again is refused in one line before hydra overwrites the first one's multirun.yaml
    record = (tmp_path / "sweep" / "multirun.yaml").read_text()
    r = subprocess.run([sys.executable, str(script), "-m", *base, f"paths.output_dir={tmp_path / 'sweep'}",
                        "trainer.max_steps=2,3"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("tools/train.py: ConfigError: ") and "earlier sweep" in r.stderr, r.stderr
    assert (tmp_path / "sweep" / "multirun.yaml").read_text() == record


def test_a_sweep_into_an_earlier_sweeps_folder_is_refused_in_one_line(tmp_path, capsys):
    from omegaconf import OmegaConf

    from dense3d.engine.sweep import RefuseEarlierSweep

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    RefuseEarlierSweep().on_multirun_start(config=cfg)  # no folder yet
    (tmp_path / "sweep" / "0").mkdir(parents=True)  # a job that failed before its first step
    (tmp_path / "sweep" / "checkpoints").mkdir()  # not a job folder: a run trained into the folder itself
    (tmp_path / "sweep" / "checkpoints" / "last.ckpt").mkdir()
    RefuseEarlierSweep().on_multirun_start(config=cfg)
    (tmp_path / "sweep" / "1" / "checkpoints" / "last.ckpt").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        RefuseEarlierSweep().on_multirun_start(config=cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"tools/train.py: ConfigError: {tmp_path / 'sweep' / 'multirun.yaml'}: field 'paths.output_dir'")
    assert str(tmp_path / "sweep" / "1" / "checkpoints" / "last.ckpt") in err


def _multirun_config(*overrides):
    """The config hydra composes for ``tools/train.py -m OVERRIDES`` (Hydra.multirun), with
    hydra initialised as @hydra.main leaves it when it calls on_multirun_start."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    return GlobalHydra.instance().hydra.compose_config("train", list(overrides), run_mode=RunMode.MULTIRUN)


def test_a_sweep_over_task_name_is_refused_before_its_shared_multirun_yaml_is_overwritten(tmp_path, capsys):
    """``-m task_name=a,b`` writes multirun.yaml to outputs/train (hydra composes the sweep's
    config without the swept values) and trains into outputs/a/0 and outputs/b/1: a rerun, or
    another sweep over task names, is refused before hydra overwrites that record."""
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from dense3d.engine.sweep import RefuseEarlierSweep, sweep_job_dirs
    from dense3d.engine.train import CONFIG_DIR

    root = f"paths.root_dir={tmp_path}"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = _multirun_config("task_name=a,b", root)
        assert cfg.hydra.sweep.dir == f"{tmp_path}/outputs/train"  # where hydra writes multirun.yaml
        assert sweep_job_dirs(cfg) == [tmp_path / "outputs" / "a" / "0", tmp_path / "outputs" / "b" / "1"]
        RefuseEarlierSweep().on_multirun_start(config=cfg)  # nothing there yet
        # the first sweep: hydra's record, and the runs of its jobs
        record = tmp_path / "outputs" / "train" / "multirun.yaml"
        record.parent.mkdir(parents=True)
        OmegaConf.save(cfg, record)
        RefuseEarlierSweep().on_multirun_start(config=cfg)  # its jobs failed before their first step
        (tmp_path / "outputs" / "b" / "1" / "checkpoints" / "last.ckpt").mkdir(parents=True)
        for again in (cfg, _multirun_config("task_name=c,d", root)):  # a rerun; another sweep over task names
            with pytest.raises(SystemExit) as e:
                RefuseEarlierSweep().on_multirun_start(config=again)
            err = capsys.readouterr().err
            assert e.value.code == 2 and err.count("\n") == 1, err
            assert err.startswith(f"tools/train.py: ConfigError: {record}: field 'paths.output_dir'") and "earlier sweep" in err, err
            assert str(tmp_path / "outputs" / "b" / "1" / "checkpoints" / "last.ckpt") in err
        # without a record there, a sweep whose own job folder holds a run is still refused
        record.unlink()
        RefuseEarlierSweep().on_multirun_start(config=_multirun_config("task_name=b,a", root))  # outputs/b/0, outputs/a/1
        with pytest.raises(SystemExit):
            RefuseEarlierSweep().on_multirun_start(config=cfg)  # outputs/b/1 holds a run
        assert not record.exists()


def test_resume_last_takes_the_run_folders_newest_last_checkpoint_and_reads_it_once(synthetic_root, tmp_path, monkeypatch):
    from dense3d.engine import checkpoint

    out = tmp_path / "r"
    assert main(["train", *_args(synthetic_root, out)]) == 0
    reads, read = [], checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path, **kw: reads.append(path) or read(path, **kw))
    monkeypatch.setattr("dense3d.engine.train.load_checkpoint", checkpoint.load_checkpoint, raising=False)
    assert main(["train", *_args(synthetic_root, out, "trainer.max_steps=2"), "--resume", "last"]) == 0
    # fit checks the checkpoint fits the model, then hands it to Lightning's resume: one read, one hash
    assert len(reads) == 1, reads
    monkeypatch.undo()
    assert api.load(out).step == 2


def test_weighted_loss_terms_are_also_logged_unweighted(synthetic_root, tmp_path):
    import csv

    out = tmp_path / "w"
    assert main(["train", *_args(synthetic_root, out, "trainer.max_steps=2", "trainer.log_every_n_steps=1", "+model.detection_weight=2.0")]) == 0
    rows = [r for r in csv.DictReader(open(next(out.rglob("metrics.csv")))) if r.get("train/det_heatmap")]
    assert rows
    for r in rows:
        assert float(r["train/det_heatmap_unweighted"]) == pytest.approx(float(r["train/det_heatmap"]) / 2, rel=1e-5)
    assert not any(k.startswith("train/loss_unweighted") for k in rows[0])


def test_the_run_s_checkpoint_is_the_one_of_the_most_steps(tmp_path):
    """callbacks.step_checkpoint writes step=N.ckpt between the epoch's last.ckpt: after a crash
    late in an epoch `--resume last` and `dense3d eval` took last.ckpt, up to an epoch older than
    the newest step checkpoint. meta.json records the global step; the most steps win, last*.ckpt
    among as many; folders written before it keep the newest last*.ckpt."""
    from dense3d.engine.checkpoint import save_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    ck = run / "checkpoints"
    for name, step in [("step=8.ckpt", 8), ("epoch=0-step=6.ckpt", 6), ("last.ckpt", 6), ("step=4.ckpt", 4)]:
        save_checkpoint({"state_dict": {}, "global_step": step}, ck / name)  # last.ckpt written after step=8
    assert api.find_run(run)[1] == ck / "step=8.ckpt"
    save_checkpoint({"state_dict": {}, "global_step": 8}, ck / "last.ckpt")  # an epoch ending at step 8
    assert api.find_run(run)[1] == ck / "last.ckpt"
    # written before meta.json recorded the step: the newest last*.ckpt, as before
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text("model: {}\n")
    for name in ["last.ckpt", "epoch=1-step=9.ckpt"]:
        save_checkpoint({"state_dict": {}}, old / "checkpoints" / name)
    assert api.find_run(old)[1] == old / "checkpoints" / "last.ckpt"


def test_a_run_trained_on_relative_paths_reads_its_data_from_another_folder(synthetic_root, tmp_path, monkeypatch):
    """`dense3d train ... paths.synthetic_dir=data/synthetic/big` (relative, as docs/results.md
    writes it) saved those relative paths in config.yaml, so `dense3d eval --checkpoint RUN` (and
    dense3d.api.load) run from any other folder said the data was missing. The saved config now
    holds the `paths` group absolute; the run itself read the same files."""
    relative = os.path.relpath(synthetic_root, Path.cwd())
    assert not os.path.isabs(relative)
    out = tmp_path / "run"
    assert main(["train", *_args(relative, out)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sample = api.load(out).dataset("val")[0]
    assert sample.points is not None and len(sample.boxes) > 0
    saved = (out / "config.yaml").read_text()
    assert f"synthetic_dir: {synthetic_root}\n" in saved and f" {relative}/" not in saved


def test_data_files_given_relative_outside_the_paths_group_are_saved_absolute(synthetic_root, tmp_path, monkeypatch):
    """`data.train.info_file=data_extra/...` (docs/results.md's outdoor runs) was saved as given,
    relative; the saved config holds the data group's `*_file` / `*_dir` / `*_root` absolute too."""
    relative = os.path.relpath(synthetic_root, Path.cwd())
    out = tmp_path / "run"
    files = [f'data.val.scanrefer_file="{relative}/indoor/ScanRefer_filtered_{{split}}.json"',
             f"data.val.scans_dir={relative}/indoor/scans"]
    assert main(["train", *_args(synthetic_root, out, *files)]) == 0
    saved = (out / "config.yaml").read_text()
    assert f"scans_dir: {synthetic_root}/indoor/scans\n" in saved
    assert f"scanrefer_file: {synthetic_root}/indoor/ScanRefer_filtered_{{split}}.json\n" in saved
    assert f" {relative}/" not in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert len(api.load(out).dataset("val")[0].boxes) > 0


def test_the_run_started_from_or_resumed_is_saved_absolute(synthetic_root, tmp_path):
    """`init_from=outputs/perception_outdoor` was saved as given: from another folder the saved
    config named no run. `ckpt_path=last` (this run's own newest checkpoint) stays as it is."""
    out = tmp_path / "run"
    saved = saved_config_yaml(compose_config(_args(synthetic_root, out, "init_from=outputs/detector",
                                                   "init_parts=[box_detector]", "ckpt_path=last")))
    assert f"init_from: {os.path.abspath('outputs/detector')}\n" in saved
    assert "ckpt_path: last\n" in saved
    saved = saved_config_yaml(compose_config(_args(synthetic_root, out, 'ckpt_path="runs/a/checkpoints/step=4.ckpt"')))
    assert f"ckpt_path: {os.path.abspath('runs/a/checkpoints/step=4.ckpt')}\n" in saved
    assert "init_from: null\n" in saved


def test_training_flushes_denormal_floats_to_zero_and_puts_the_mode_back(synthetic_root, tmp_path):
    """CPU arithmetic on denormal floats is many times slower; an outdoor captioning run's steps
    went from 1.4 to 2.1 s over 2,400 steps, 2.34 s against 1.86 s with the same weights flushed
    (docs/results.md, session 34). `flush_denormal: true` (configs/train.yaml) sets it for the run;
    fit() gives the caller back the mode it had, after a run and after a run that failed."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32

    class Probe(pl.Callback):  # the mode in the middle of the run's training step
        seen: list[bool] = []

        def on_train_batch_end(self, *args):
            Probe.seen.append((tiny * 1.0).item() == 0.0)

    def train(out, *extra):
        cfg = compose_config(_args(synthetic_root, out, *extra))
        return fit(cfg, callbacks=[Probe()], enable_checkpointing=False)

    try:
        torch.set_flush_denormal(False)  # an earlier training test in this process may have set it
        assert (tiny * 1.0).item() != 0.0
        train(tmp_path / "off", "flush_denormal=false")
        train(tmp_path / "on")
        assert Probe.seen == [False, True]
        assert (tiny * 1.0).item() != 0.0  # the caller's mode again
        torch.set_flush_denormal(True)  # flush_denormal=false leaves the caller's mode as it is: flushing here
        train(tmp_path / "off2", "flush_denormal=false")
        assert Probe.seen[-1] is True and (tiny * 1.0).item() == 0.0
        torch.set_flush_denormal(False)
        with pytest.raises(ConfigError):  # a run failing at its first step: the mode put back too
            train(tmp_path / "bad", "trainer.max_steps=1", "optim.lr=-1")
        assert (tiny * 1.0).item() != 0.0
    finally:
        torch.set_flush_denormal(False)
