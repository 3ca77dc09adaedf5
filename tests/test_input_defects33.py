"""User-facing input defects left by earlier sessions (session 33): ``tools/train.py -m --cfg job``
printing hydra's traceback, a run whose model reads none of its data set's sensors failing at the
first training batch, and `init_parts=all`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ 1. -m --cfg job
def test_tools_train_refuses_two_hydra_commands_in_one_line(tmp_path):
    """Hydra 1.3 runs one command at a time (-m, --cfg, --info, -r, -sc) and raised a ValueError
    for ``-m --cfg job`` that @hydra.main printed as a 6-line traceback (status 1). Now one line
    naming the flags and how to see one sweep job's config, status 2, nothing written."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "-m", "--cfg", "job", "seed=0,1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("tools/train.py: ConfigError: tools/train.py: field '--cfg': expected one of hydra's commands "
                               "(-m, --cfg, --info, -r, -sc) at a time; a sweep job's config: --cfg job with that job's overrides"), lines
    assert lines[0].endswith("got -m/--multirun --cfg job"), lines
    assert not any(tmp_path.iterdir())


def test_check_hydra_commands_refuses_pairs_and_a_lone_resolve():
    from dense3d.engine.train import check_hydra_commands
    from dense3d.errors import ConfigError

    for ok in (["-m", "seed=0,1"], ["--cfg", "job", "--resolve", "seed=0"], ["-c", "all"], ["--info"], ["-r", "seed=1"],
               ["--cfg"], ["--version"]):  # argparse exits for these: left to hydra, which prints them
        check_hydra_commands(ok)
    with pytest.raises(ConfigError, match=r"field '--info': .* got --cfg job --info all$"):
        check_hydra_commands(["--cfg", "job", "--info"])
    with pytest.raises(ConfigError, match=r"field '--cfg': .* got -m/--multirun --cfg hydra$"):
        check_hydra_commands(["--multirun", "-c", "hydra"])
    with pytest.raises(ConfigError, match=r"field '--resolve': expected --cfg job\|hydra\|all with it"):
        check_hydra_commands(["--resolve", "seed=1"])


# ------------------------------------------------------------------ 2. sensors the data set lacks
@pytest.fixture(scope="module")
def indoor_root(tmp_path_factory):
    """A few synthetic indoor rooms (coloured points, no cameras, no audio): ``paths.synthetic_dir=root``."""
    from dense3d.data.synthetic import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(kind="indoor", scenes=10, seed=0), root / "indoor")
    return root


@pytest.mark.parametrize("override, field, message", [
    ("sensors=audio_video", "sensors", "expected sensors naming lidar (sensors=all / lidar / lidar_camera): the model's box "
     "detector reads lidar; data.train (ScanReferDataset) has lidar, got sensors.names ['audio', 'video']"),
    ("model=av_events", "data", "expected a data set with audio or video for the model's event detector (or a model for "
     "lidar), got data.train (ScanReferDataset), which has lidar"),
])
def test_a_run_without_the_sensors_its_model_reads_is_refused_before_training(indoor_root, tmp_path, capsys, override, field, message):
    """The data sets read sensors.names ∩ the sensors they have and dropped the rest without a
    word: experiment=perception_indoor sensors=audio_video (or an audio model on the LiDAR-only
    rooms) built the data, the model and the trainer, printed the model summary and failed at the
    first training batch ("Batch: field 'points/images': expected the sensors of this detector,
    got neither"). Now one line naming the config field and what the data set has, before the
    trainer is set up; nothing written."""
    from dense3d.cli import main

    out = tmp_path / "run"
    status = main(["train", "experiment=perception_indoor", override, "trainer.max_steps=1",
                   f"paths.synthetic_dir={indoor_root}", f"paths.output_dir={out}"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.err.strip() == f"dense3d train: ConfigError: configs/train.yaml: field '{field}': {message}"
    assert "Trainable params" not in captured.out + captured.err and not out.exists()


def test_more_sensors_than_the_data_set_has_still_train(indoor_root):
    """sensors=lidar_camera on the indoor rooms with their LiDAR model: the camera is not in the
    data set, the LiDAR the model reads is: builds (and trains: the model reads what it has)."""
    from dense3d.engine.train import build, compose_config

    cfg = compose_config(["experiment=perception_indoor", "sensors=lidar_camera", f"paths.synthetic_dir={indoor_root}",
                          "logger=[]", "callbacks=[]"])
    module, datamodule, _ = build(cfg)
    assert datamodule.train_set.sensors == ("lidar",)


def test_joint_scenes_read_their_sensors_from_both_halves():
    """The joint set's scenes (LiDAR, cameras) and recordings (audio, fixed by its config): with
    sensors=lidar both detectors have a sensor; with sensors=audio_video the box detector has none
    (the data set has the LiDAR and cameras, the run's sensors.names left them out)."""
    from dense3d.engine.train import check_sensors, compose_config
    from dense3d.errors import ConfigError
    from dense3d.utils.config import instantiate_config

    overrides = ["experiment=captioning_joint", "model.captioner=null", "init_from=null", "init_parts=[]", "init_skip=[]",
                 "paths.synthetic_dir=/nonexistent"]  # the data sets read their files on first use, not here
    cfg = compose_config(overrides + ["sensors=lidar"])
    model = instantiate_config(cfg.model, "test", "model")
    check_sensors(model, instantiate_config(cfg.data, "test", "data"), cfg)
    cfg = compose_config(overrides + ["sensors=audio_video"])
    with pytest.raises(ConfigError, match=r"field 'sensors': expected sensors naming lidar or camera \(sensors=all / lidar / "
                                          r"lidar_camera\): the model's box detector reads lidar, camera; data.train "
                                          r"\(TOD3CapDataset \+ DenseEventsDataset\) has lidar, camera, audio, video, "
                                          r"got sensors.names \['audio', 'video'\]$"):
        check_sensors(model, instantiate_config(cfg.data, "test", "data"), cfg)


# ------------------------------------------------------------------ 4. init_parts=all
@pytest.fixture(scope="module")
def run_with_point_regions(indoor_root, tmp_path_factory):
    """A 2-step run of the indoor detector with one more top-level module, point_regions (no
    captioner reads it: it keeps its initialisation, but the checkpoint holds it)."""
    from dense3d.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "experiment=perception_indoor", f"paths.synthetic_dir={indoor_root}", f"paths.output_dir={out}",
                 "trainer.max_steps=2", "callbacks=default", "+model.point_regions={_target_: "
                 "dense3d.models.proposals.boxes.point_features.PointRegionEncoder, out_channels: 256, colour_scale: 255.0}"]) == 0
    return out


def _indoor_model(indoor_root):
    from dense3d.engine.train import SOURCE, compose_config
    from dense3d.utils.config import instantiate_config

    return instantiate_config(compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={indoor_root}"]).model,
                              SOURCE, "model")


def test_init_parts_all_loads_every_module_the_run_and_the_model_share(indoor_root, run_with_point_regions, capsys):
    """There was no way to load all of a run's modules without listing them (the SCST recipe named
    six). init_parts=[all]: every top-level module both have (box_detector here); this model's
    module the run lacks (extra) keeps its initialisation and the run's module this model lacks
    (point_regions) is not loaded, both named in the line printed."""
    import torch

    from dense3d.api import load
    from dense3d.engine.train import init_weights
    from dense3d.errors import CheckpointError, ConfigError

    run = run_with_point_regions
    torch.manual_seed(1)
    model = _indoor_model(indoor_root)
    model.extra = torch.nn.Linear(2, 2)  # a top-level module the run has none of
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = load(run).model.state_dict()
    capsys.readouterr()
    n = init_weights(model, run, ["all"])
    assert n == sum(k.startswith("box_detector.") for k in trained) > 0
    out = capsys.readouterr().out.strip()
    assert out.endswith(f"tensors of box_detector; at their initialisation (not in the run): extra; "
                        f"the run's modules this model has none of, not loaded: point_norm, point_regions, region_norm"), out
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k] if k.startswith("box_detector.") else before[k]), k
    with pytest.raises(ConfigError, match=r"field 'init_parts': expected \[all\] alone, or the names of sub-modules, "
                                          r"got \['all', 'box_detector'\]$"):
        init_weights(model, run, ["all", "box_detector"])
    with pytest.raises(ConfigError, match=r"field 'init_parts': expected a run that shares a module with this model \(other\) "
                                          r"for init_parts=\[all\], got .*, whose modules are box_detector, point_norm, point_regions, region_norm$"):
        init_weights(torch.nn.ModuleDict({"other": torch.nn.Linear(2, 2)}), run, ["all"])
    # inside a shared module, the run's weights this model lacks are refused as with a list of names
    model.box_detector.region_sampler = torch.nn.Identity()
    with pytest.raises(CheckpointError, match=r"field 'state_dict.model.box_detector.region_sampler\..*got \d+ weights under "
                                              r"box_detector this model lacks"):
        init_weights(model, run, ["all"])
    assert init_weights(model, run, ["all"], ["box_detector.region_sampler"]) < n


@pytest.mark.parametrize("spelling", ["init_parts=all", "init_parts=[all]"])
def test_dense3d_train_takes_init_parts_all(indoor_root, run_with_point_regions, tmp_path, capsys, spelling):
    """On the command line, init_parts=all (a bare string, else refused as 'a list of sub-module
    names') or [all]; a frozen part it loads is not warned about as left at its initialisation."""
    import torch

    from dense3d.api import load
    from dense3d.engine.train import build, compose_config

    cfg = compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={indoor_root}", f"paths.output_dir={tmp_path}",
                          f"init_from={run_with_point_regions}", spelling, "frozen=[box_detector.lidar_encoder]", "logger=[]", "callbacks=[]"])
    module, _, _ = build(cfg)
    captured = capsys.readouterr()
    assert "not loaded from another run" not in captured.err, captured.err
    assert "tensors of box_detector; the run's modules this model has none of, not loaded: point_norm, point_regions, region_norm" in captured.out
    trained = load(run_with_point_regions).model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in module.model.state_dict().items())
