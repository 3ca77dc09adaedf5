"""Review of the configs and of the ways a run is launched (torchrun, Lightning's launcher,
sweeps): what a user of lightning-hydra-template would try, on tiny synthetic data."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dense3d.cli import main
from dense3d.engine.train import build, compose_config
from dense3d.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
# the demo model with a tiny captioner (no SmolLM2): a step in a few seconds
TINY = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64",
        "model.captioner.adapter.num_layers=2"]
# trainer=ddp on the CPU (configs/README.md, "Many GPUs, many nodes")
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.sync_batchnorm=false"]


@pytest.fixture(scope="module")
def synthetic_root() -> Path:
    """The demo's synthetic set, data/synthetic/default (made as tests/engine/conftest.py makes it
    when it is not there; these tests read only its outdoor scenes)."""
    root = REPO / "data" / "synthetic" / "default"
    if not (root / "outdoor" / "nuscenes_infos_train.pkl").is_file():
        from dense3d.data.synthetic import generate_default

        generate_default(root)
    return root.resolve()


def _torchrun(args: list[str], cwd: Path, nproc: int = 2, monitor_interval: float = 0.1) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` of ``dense3d train``. torchrun stops the other processes when one
    fails, on its next look (every ``monitor_interval`` seconds, torch's default 0.1 s)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torch's torchrun is not installed beside this python"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DENSE3D_PROGRESS="0")
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(nproc), "--monitor-interval", str(monitor_interval),
                           "-m", "dense3d.cli", "train", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


# -- torchrun with a one-process trainer trained N independent copies into one folder

@pytest.mark.slow  # two processes importing torch on 2 cores: about 20-25 s
def test_torchrun_with_a_one_process_trainer_is_refused_in_one_line(synthetic_root, tmp_path):
    """`torchrun --nproc_per_node 2 ... train` with the default trainer (trainer=cpu, devices: 1)
    ran the whole run twice, each process on its own (both rank 0 to Lightning), both writing the
    same run folder. Now each process stops before training with one line naming the trainer."""
    out = tmp_path / "run"
    # each process reaches the check on its own: 10 s between torchrun's looks, so the first to fail
    # does not get the other stopped before its line (on 2 busy cores they can be seconds apart)
    r = _torchrun(["experiment=demo", "debug=fast_dev_run", "trainer.accelerator=cpu", f"paths.synthetic_dir={synthetic_root}",
                   f"paths.output_dir={out}", *TINY], cwd=tmp_path, monitor_interval=10)
    assert r.returncode != 0, "two independent runs trained: " + r.stdout[-2000:]
    ours = [line for line in r.stderr.splitlines() if line.startswith("dense3d train:")]
    assert len(ours) == 2, r.stderr[-3000:]  # one line per process
    assert all("field 'trainer'" in line and "WORLD_SIZE=2" in line and "trainer=ddp" in line for line in ours), ours
    assert "Traceback" not in "\n".join(line for line in r.stderr.splitlines() if "[rank" in line)
    assert not out.exists()


@pytest.mark.slow  # two processes importing torch on 2 cores: about 20-25 s
def test_the_documented_torchrun_command_trains_two_ranks_into_one_run_folder(synthetic_root, tmp_path):
    """configs/README.md's CPU check of trainer=ddp under torchrun (gloo), with a step and a
    checkpoint in place of fast_dev_run: two ranks in one process group, one run folder (one
    config.yaml, one checkpoints/, one csv version), nothing written beside it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = _torchrun(["experiment=demo", "trainer.max_steps=1", *DDP_CPU, "logger=csv", f"paths.synthetic_dir={synthetic_root}",
                   "task_name=ddp_check", *TINY], cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "Starting with 2 processes" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]
    assert sorted(p.name for p in cwd.iterdir()) == ["outputs"]  # relative paths: the folder torchrun ran in
    run = cwd / "outputs" / "ddp_check"
    assert sorted(p.name for p in (cwd / "outputs").iterdir()) == ["ddp_check"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "csv"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]
    assert OmegaConf.load(run / "config.yaml").trainer.strategy == "ddp_find_unused_parameters_true"


def test_sync_batchnorm_on_the_cpu_is_one_line(synthetic_root, tmp_path):
    """trainer=ddp sets sync_batchnorm, which torch's DDP refuses on the CPU ("SyncBatchNorm layers
    only work with GPU modules", a traceback from inside Lightning's setup, in every process).
    Now build() refuses it in one line naming trainer.sync_batchnorm, before any process starts."""
    cfg = compose_config(["experiment=demo", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.precision=32-true", f"paths.synthetic_dir={synthetic_root}",
                          f"paths.output_dir={tmp_path / 'run'}", *TINY])
    with pytest.raises(ConfigError, match=r"field 'trainer.sync_batchnorm'.*trainer.sync_batchnorm=false") as e:
        build(cfg)
    assert len(str(e.value).splitlines()) == 1


# -- configs: keys no code reads

def _read_anywhere(dotted: str) -> bool:
    """``dotted`` (e.g. ``paths.log_dir``) appears in a config (an interpolation) or in the code."""
    texts = [p.read_text() for p in CONFIG_DIR.rglob("*.yaml")]
    texts += [p.read_text() for p in (REPO / "dense3d").rglob("*.py")] + [p.read_text() for p in (REPO / "tools").glob("*.py")]
    return any(re.search(rf"\b{re.escape(dotted)}\b", t) for t in texts)


def test_every_paths_key_is_read():
    """configs/paths/default.yaml had ``log_dir: ${paths.output_dir}/logs``, which nothing read (the
    loggers write under paths.output_dir): paths.log_dir=/scratch/logs changed nothing, silently.
    Every key of paths is now used by a config or the code."""
    keys = list(OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml"))
    unread = [k for k in keys if not _read_anywhere(f"paths.{k}")]
    assert not unread, f"configs/paths/default.yaml keys nothing reads: {unread}"
    with pytest.raises(ConfigError, match="paths.log_dir"):  # an override of it is a one-line error now
        compose_config(["experiment=demo", "paths.log_dir=/tmp/logs"])


# -- sweeps: dense3d train runs one job

@pytest.mark.parametrize("flag", ["-m", "--multirun"])
def test_a_sweep_flag_to_dense3d_train_names_tools_train(flag, capsys):
    """Hydra's own error for ``seed=0,1`` says "add --multirun to your command line", and
    `dense3d train -m` was argparse's two-line usage error ("unrecognized arguments: -m"). Now one
    line saying where sweeps run: tools/train.py -m (one folder per job, each with its config)."""
    assert main(["train", flag, "experiment=demo", "seed=0,1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "tools/train.py -m" in err and err.startswith("dense3d train: ConfigError"), err


# -- data=<a data set> is not a data module

@pytest.mark.parametrize("data", ["synthetic_outdoor", "tod3cap"])
def test_a_data_set_config_as_the_data_module_is_one_line(data, synthetic_root, tmp_path, capsys):
    """configs/data/ holds data modules (demo_outdoor, indoor_rooms, av_clips, tod3cap_splits) and
    single data sets (synthetic_outdoor, tod3cap, scanrefer, ...). `dense3d train experiment=demo
    data=synthetic_outdoor` handed the data set to trainer.fit as a loader of single samples: a
    TypeError traceback from inside the LiDAR encoder ("object of type 'Sample' has no len()"), or
    for a real set its missing files first. Now one line naming data and the options that are modules."""
    out = tmp_path / "run"
    assert main(["train", "experiment=demo", f"data={data}", "debug=fast_dev_run", f"paths.synthetic_dir={synthetic_root}",
                 f"paths.output_dir={out}", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'data': expected a data module (data=av_clips / demo_outdoor / indoor_rooms" in err[0], err
    assert "got a single data set (TOD3CapDataset)" in err[0] and not out.exists()


# -- a misspelt option of a group: one line from tools/train.py too

@pytest.mark.parametrize("argv", [["experiment=demo_typo"], ["-m", "experiment=demo,demo_typo"], ["trainer=gpux"]],
                         ids=["run", "sweep", "trainer"])
def test_tools_train_with_a_misspelt_group_option_is_one_line(argv, tmp_path):
    """hydra's own report of `python tools/train.py experiment=demo_typo` was 16 lines ("Could not
    find 'experiment/demo_typo'", the options one per line, the search path, HYDRA_FULL_ERROR),
    exit status 1. Now one line naming the override and the group's files, status 2 (as for
    logger=null), before hydra starts; `dense3d train` says the same."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *argv, f"paths.output_dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    group, option = ("trainer", "gpux") if "trainer=gpux" in argv else ("experiment", "demo_typo")
    assert lines[0].startswith(f"tools/train.py: ConfigError: configs/train.yaml: field 'override {argv[-1]}'"), lines
    assert f"no configs/{group}/{option}.yaml" in lines[0] and ("demo, perception" in lines[0] or "cpu, ddp, gpu" in lines[0])
    assert not (tmp_path / "run").exists()


def test_an_option_of_an_added_config_folder_is_left_to_hydra(tmp_path):
    """`-cd DIR` / hydra.searchpath add options that configs/ lacks: not refused by the check."""
    from dense3d.engine.train import check_group_choices

    check_group_choices(["-cd", str(tmp_path), "experiment=mine"])
    check_group_choices(["hydra.searchpath=[file:///elsewhere]", "experiment=mine"])
    with pytest.raises(ConfigError, match="no configs/experiment/mine.yaml"):
        check_group_choices(["experiment=mine"])


# -- configs/local/default.yaml: machine-local overrides

def test_local_overrides_apply_from_the_root(tmp_path):
    """configs/README.md: machine-specific overrides go in configs/local/default.yaml (git-ignored).
    train.yaml mounted it as `optional local: default`, in the package `local`, so a file written
    as the README suggests (`paths: {data_dir: /data}`) composed to cfg.local.paths.data_dir, which
    nothing reads: silently ignored. Now it is mounted at the root (local@_global_), last."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("local"))
    (configs / "local").mkdir()
    (configs / "local" / "default.yaml").write_text("paths:\n  data_dir: /mydata\ntrainer:\n  max_epochs: 3\n")
    cfg = compose_config(["experiment=perception_indoor", "debug=fast_dev_run"], config_dir=configs)
    assert cfg.paths.data_dir == "/mydata" and cfg.trainer.max_epochs == 3 and "local" not in cfg
    # a file with hydra's own header for this keeps working
    (configs / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  data_dir: /mydata2\n")
    assert compose_config(["experiment=demo"], config_dir=configs).paths.data_dir == "/mydata2"


@pytest.mark.slow  # two processes importing torch on 2 cores: about 25 s
def test_plain_ddp_on_a_model_with_unused_parameters_is_one_line(synthetic_root, tmp_path):
    """`trainer.devices=2` without trainer=ddp (as lightning-hydra-template users start many GPUs)
    is Lightning's plain "ddp": the demo model has trainable parts without a gradient in a step, so
    torch's DDP stopped the second step with a 40-line RuntimeError traceback in every rank. Now each
    rank says in one line that trainer=ddp (ddp_find_unused_parameters_true) is needed."""
    r = _torchrun(["experiment=demo", "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.devices=2",
                   f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={tmp_path / 'run'}", *TINY], cwd=tmp_path)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("dense3d train:")]
    assert len(ours) == 2 and all("field 'trainer.strategy'" in line and "trainer=ddp" in line for line in ours), r.stderr[-3000:]
    assert not [line for line in r.stderr.splitlines() if line.startswith("[rank")], r.stderr[-3000:]  # no rank's traceback


@pytest.mark.parametrize("override", ["trainer.strategy=ddp_find_unused_parameters_true", "trainer.num_nodes=2"])
def test_the_trainer_launch_settings_override_without_a_plus(override):
    """trainer/cpu.yaml (and gpu.yaml, built on it) had no strategy and no num_nodes: the fix the
    plain-ddp error names, trainer.strategy=ddp_find_unused_parameters_true, and trainer.num_nodes=2
    were refused ("Could not override 'trainer.strategy'. To append to your config use +...").
    They are Lightning's defaults written out now, so they override like any trainer key."""
    for trainer in ("cpu", "gpu"):
        cfg = compose_config(["experiment=demo", f"trainer={trainer}", override])
        key, value = override.split("=")
        assert str(OmegaConf.select(cfg, key)) == value
    plain = compose_config(["experiment=demo"]).trainer
    assert plain.strategy == "auto" and plain.num_nodes == 1  # Lightning's own defaults: single runs unchanged


@pytest.mark.parametrize("argv", [["trainr.max_steps=1"], ["-m", "trainr.max_steps=1,2"]], ids=["run", "sweep"])
def test_tools_train_with_a_misspelt_key_is_one_line(argv, tmp_path):
    """`python tools/train.py experiment=demo trainr.max_steps=1` was hydra's six lines ("Could not
    override 'trainr.max_steps'", "To append ...", "Key 'trainr' is not in struct", full_key,
    object_type, HYDRA_FULL_ERROR), exit status 1; in a sweep too. Now one line, status 2, as
    `dense3d train` says it (the command line composes first, each sweep at its first value)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "experiment=demo", *argv,
                        f"paths.output_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("tools/train.py: ConfigError: configs/train.yaml") and "Could not override 'trainr.max_steps'" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_command_line_check_leaves_hydra_flags_and_sweeps_alone():
    """What tools/train.py's command line may hold besides overrides composes (or is skipped):
    flags and their values, sweeps (range, choice), hydra's own keys as Lightning's DDP launcher
    adds them to its child processes."""
    from dense3d.engine.train import check_group_choices

    check_group_choices(["-m", "experiment=demo,perception_indoor", "seed=range(0,3)", "--cfg", "job", "-p", "trainer"])
    check_group_choices(["experiment=demo", 'hydra.run.dir="/tmp/x"', "hydra.job.name=train_ddp_process_1",
                         "hydra.output_subdir=null", "hydra/job_logging=stdout"])
    check_group_choices(["-cn", "other", "anything.else=1"])  # another root config: left to hydra
    with pytest.raises(ConfigError, match="Could not override 'trainr.max_steps'"):
        check_group_choices(["-m", "trainr.max_steps=1,2"])
