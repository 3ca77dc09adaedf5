"""Bad values on the command line and in configs: one line naming the file / flag and the field,
exit status 2, before any work and without a half-made output (what a probe of every command
found giving tracebacks or wrong results)."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from dense3d.cli import main
from dense3d.errors import CheckpointError, ConfigError, OpInputError
from dense3d.utils.config import instantiate_config
from dense3d.utils.io import check_output_path


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(prefix) and len(err.strip().splitlines()) == 1, err
    return err


def test_instantiate_config_gives_back_our_errors_and_names_the_key():
    voxel = {"_target_": "dense3d.models.encoders.lidar.voxel_encoder.DynamicVoxelEncoder",
             "in_channels": 4, "voxel_size": [-0.1, 0.1, 0.1], "point_range": [0, 0, 0, 1, 1, 1]}
    with pytest.raises(OpInputError, match="voxel_size"):  # hydra wrapped it in a 40-line InstantiationException
        instantiate_config(OmegaConf.create(voxel), "configs/train.yaml", "model")
    bad = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": "abc", "out_features": 2})
    with pytest.raises(ConfigError, match=r"configs/train.yaml: field 'model\.x': expected .*, got TypeError: ") as e:
        instantiate_config(bad, "configs/train.yaml", "model.x")
    assert "\n" not in str(e.value)
    missing = OmegaConf.create({"_target_": "torch.nn.Linear", "in_features": "???", "out_features": 2})
    with pytest.raises(ConfigError, match=r"field 'model': expected .*got MissingMandatoryValue: ") as e:
        instantiate_config(missing, "configs/train.yaml", "model")  # omegaconf's 3-line message before
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, names", [
    ("data.train.sensors=[radar]", "ConfigError: ScanReferDataset: field 'sensors'"),
    ("model.box_detector.lidar_encoder.voxel_encoder.voxel_size=[-0.1,0.1,0.1]", "field 'voxel_size'"),
    ("trainer.max_steps=abc", "configs/train.yaml: field 'trainer.max_steps'"),
    ("trainer.max_steps=0", "field 'trainer.max_steps': expected an integer >= 1 (or -1: until max_epochs), got 0"),  # exit 0, nothing trained
    ("trainer.accumulate_grad_batches=0", "field 'trainer.accumulate_grad_batches': expected an integer >= 1"),  # ZeroDivisionError
    ("frozen=[nope]", "field 'frozen': expected sub-modules of the model (box_detector"),  # AttributeError
    ("init_parts=box_detector", "field 'init_parts': expected a list of sub-module names"),  # split into letters
    ("optim.lr=-1", "field 'optim': expected an optimizer config that takes the model's parameters, got ValueError: Invalid learning rate"),
    ("optim._target_=torch.optim.SGD", "field 'optim': expected an optimizer config that takes the model's parameters, got TypeError"),
    ("scheduler.T_max=0", "field 'scheduler.T_max': expected an integer >= 1"),
    ("seed=abc", "configs/train.yaml: field 'seed'"),
    ("data.batch_size=-1", "field 'batch_size': expected an integer >= 1"),
    ("data.batch_size=abc", "field 'batch_size'"),
    ("model.box_detector.max_regions=-5", "BoxDetector: field 'max_regions': expected an integer >= 1"),
])
def test_train_reports_bad_values_in_one_line_and_writes_nothing(override, names, synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={out}",
            "logger=csv", "trainer.max_steps=1", override]
    assert main(argv) == 2
    err = _one_line(capsys, "dense3d train: ")
    assert names in err, err
    assert not out.exists()


def test_train_on_an_empty_split_is_an_error(synthetic_root, tmp_path, capsys):
    empty = tmp_path / "empty_{split}.json"
    (tmp_path / "empty_train.json").write_text("[]")
    argv = ["train", "experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={tmp_path / 'run'}",
            "logger=csv", f'data.train.scanrefer_file="{empty}"', f"data.train.scans_dir={tmp_path}"]
    assert main(argv) == 2  # Lightning only warned "no training batches" and the run "succeeded"
    assert "field 'data.train': expected a training split with samples" in _one_line(capsys, "dense3d train: ")
    assert not (tmp_path / "run").exists()


def test_train_on_an_empty_validation_split_is_an_error(synthetic_root, tmp_path, capsys):
    (tmp_path / "empty_val.json").write_text("[]")
    argv = ["train", "experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={tmp_path / 'run'}",
            "logger=csv", f'data.val.scanrefer_file="{tmp_path / "empty_{split}.json"}"', f"data.val.scans_dir={tmp_path}"]
    assert main(argv) == 2  # Lightning skipped validation without a word
    assert "field 'data.val': expected a validation split with samples" in _one_line(capsys, "dense3d train: ")
    assert not (tmp_path / "run").exists()


def test_a_runs_empty_split_is_an_error_before_scoring(synthetic_root, tmp_path):
    """`dense3d eval --checkpoint` / `predict` read the split through `DenseCaptionerRun.dataset`:
    an empty one (a wrong annotation file) scored "0 samples" and exited 0."""
    import torch

    from dense3d.api import DenseCaptionerRun
    from dense3d.engine.train import compose_config

    cfg = compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}"])
    assert len(DenseCaptionerRun(torch.nn.Identity(), cfg, config_path=tmp_path / "config.yaml").dataset("val")) > 0
    (tmp_path / "empty_val.json").write_text("[]")
    cfg.data.val.scanrefer_file = str(tmp_path / "empty_{split}.json")
    with pytest.raises(ConfigError, match=r"config.yaml: field 'data.val': expected a data split with samples, got 0 samples"):
        DenseCaptionerRun(torch.nn.Identity(), cfg, config_path=tmp_path / "config.yaml").dataset("val")


@pytest.mark.parametrize("text, got", [("model: [1, 2", "ParserError"), ("seed: 0\n", "missing"), ("model: 5\n", "int")])
def test_a_broken_run_config_is_a_checkpoint_error(text, got, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "last.ckpt").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt" / "model.safetensors").write_bytes(b"")
    (run / "config.yaml").write_text(text)
    assert main(["eval", "--checkpoint", str(run), "--limit", "1"]) == 2
    err = _one_line(capsys, "dense3d eval: CheckpointError: ")
    assert str(run / "config.yaml") in err and got in err, err


def test_check_output_path(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_path(tmp_path / "new" / "a.json", "prog") == tmp_path / "new" / "a.json"
    assert check_output_path(tmp_path, "prog", folder=True) == tmp_path
    with pytest.raises(ConfigError, match=r"prog: field '--out': expected a path for a file \(it is a folder\)"):
        check_output_path(tmp_path, "prog")
    with pytest.raises(ConfigError, match=r"a path for a folder \(it is a file\)"):
        check_output_path(tmp_path / "file", "prog", folder=True)
    with pytest.raises(ConfigError, match="below the file"):
        check_output_path(tmp_path / "file" / "x.png", "prog")


def _box_files(tmp_path):
    box = [1.0, 2.0, 0.5, 2.0, 1.0, 1.0, 0.0]
    pred, gt = tmp_path / "pred.json", tmp_path / "gt.json"
    pred.write_text(json.dumps({"s": [{"box": box, "caption": "a car", "score": 0.9, "label": "car"}]}))
    gt.write_text(json.dumps({"s": [{"box": box, "descriptions": ["a car"], "label": "car"}]}))
    return str(pred), str(gt)


@pytest.mark.parametrize("extra, message", [
    (["--out", "{tmp}"], "ConfigError: dense3d eval: field '--out': expected a path for a file (it is a folder)"),
    (["--iou", "2"], "field '--iou': expected thresholds in (0, 1] for detection"),
])
def test_eval_refuses_bad_options_before_scoring(extra, message, tmp_path, capsys):
    pred, gt = _box_files(tmp_path)
    argv = ["eval", "detection", "--pred", pred, "--gt", gt] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(argv) == 2
    assert message in _one_line(capsys, "dense3d eval: ")


@pytest.mark.parametrize("argv", [
    ["eval", "detection", "--pred", "p.json", "--gt", "g.json", "--iou", "nan"],
    ["eval", "events", "--pred", "p.json", "--gt", "g.json", "--max-proposals", "-1"],
    ["eval", "--checkpoint", "run", "--limit", "-1"],
    ["predict", "--checkpoint", "run", "--limit", "0", "--out", "x.json"],
    ["demo", "--steps", "0"],
])
def test_impossible_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: usage + one error line, status 2
        main(argv)
    assert e.value.code == 2
    assert "expected " in capsys.readouterr().err.strip().splitlines()[-1]


def test_favd_inputs_checked_before_scoring(tmp_path, capsys):
    pred, gt = tmp_path / "pred.json", tmp_path / "gt.json"
    pred.write_text(json.dumps({"v1": "a dog barks."}))
    gt.write_text(json.dumps({"v1": ["a dog barks."]}))
    base = ["eval", "favd", "--pred", str(pred), "--gt", str(gt)]
    assert main(base + ["--text-encoder", str(tmp_path / "nope")]) == 2  # transformers' 80-line "Repo id" error before
    assert "field '--text-encoder': expected a local T5-base folder" in _one_line(capsys, "dense3d eval: ")
    scores = tmp_path / "audio.json"
    scores.write_text('{"v1": NaN}')  # written as NaN into the metrics before
    assert main(base + ["--no-entity", "--audio-scores", str(scores)]) == 2
    assert "field 'v1': expected a finite number (AudioScore), got nan" in _one_line(capsys, "dense3d eval: ")


def test_vis_and_predict_refuse_a_folder_as_out_file(tmp_path, capsys):
    assert main(["vis", "--points", "/nope.bin", "--out", str(tmp_path)]) == 2
    assert "field '--out'" in _one_line(capsys, "dense3d vis: ConfigError")
    assert main(["predict", "--checkpoint", "/nope", "--out", str(tmp_path)]) == 2
    assert "field '--out'" in _one_line(capsys, "dense3d predict: ConfigError")


def test_a_run_data_config_is_checked_before_it_is_built(tmp_path):
    """A checkpoint's config is untrusted: its data split may not name a target outside
    dense3d / torch (the model already could not); a config without data is one line too."""
    import torch

    from dense3d.api import DenseCaptionerRun

    cfg = OmegaConf.create({"data": {"val": {"_target_": "os.system", "command": "echo hi"}}})
    run = DenseCaptionerRun(torch.nn.Identity(), cfg, config_path=tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"config.yaml: field 'data.val._target_': expected a target inside dense3d or torch"):
        run.dataset("val")
    with pytest.raises(CheckpointError, match=r"config.yaml: field 'data.test': expected the run's data config"):
        DenseCaptionerRun(torch.nn.Identity(), OmegaConf.create({"model": {}}), config_path=tmp_path / "config.yaml").dataset("test")
