"""Evaluating a trained run (`dense3d eval --checkpoint`), starting a stage from another run's
weights (`init_from`), and frozen parts staying in eval mode."""
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from dense3d.cli import main
from dense3d.data.synthetic import generate_default
from dense3d.engine.evaluate import direction_errors
from dense3d.engine.module import DenseCaptionModule
from dense3d.engine.train import compose_config, init_weights
from dense3d.errors import CheckpointError, ConfigError


def test_direction_errors_hand_made():
    gt = {"v": {"timestamps": [[0.0, 2.0], [5.0, 6.0], [8.0, 9.0]], "labels": ["horn", "bell", "siren"],
                "azimuth": [math.radians(10.0), math.radians(-170.0), 0.0]}}
    pred = {"v": [
        {"timestamp": [0.1, 2.0], "label": "horn", "azimuth": math.radians(350.0)},  # tIoU 0.95, error 20 deg (wraps)
        {"timestamp": [5.0, 6.2], "label": "horn", "azimuth": math.radians(175.0)},  # tIoU 0.83, error 15 deg, wrong class
        {"timestamp": [8.8, 9.9], "label": "siren", "azimuth": 0.0},                 # tIoU 0.09: not matched
    ]}
    errors, right, total = direction_errors(pred, gt)
    assert total == 3 and right == 1
    assert sorted(round(e, 6) for e in errors) == [15.0, 20.0]


@pytest.fixture(scope="module")
def indoor_run(tmp_path_factory):
    root = Path("data/synthetic/default")
    generate_default(root)
    out = tmp_path_factory.mktemp("indoor_run")
    assert main(["train", "experiment=perception_indoor", f"paths.synthetic_dir={root.resolve()}", f"paths.output_dir={out}",
                 "trainer.max_steps=2", "trainer.log_every_n_steps=1", "callbacks=default"]) == 0
    return out, root.resolve()


@pytest.mark.slow
def test_eval_checkpoint_writes_predictions_and_metrics(indoor_run, tmp_path, capsys):
    run, _ = indoor_run
    assert main(["eval", "--checkpoint", str(run), "--split", "val", "--limit", "2", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["samples"] == 2
    assert metrics["step"] == 2 and Path(metrics["checkpoint"]).name == "last.ckpt"  # which weights were scored
    assert set(metrics["boxes"]["detection"]) >= {"mAP@0.25", "mAP@0.5"}
    gt = json.loads((tmp_path / "ground_truth_boxes.json").read_text())
    pred = json.loads((tmp_path / "predictions_boxes.json").read_text())
    assert len(gt) == 2 and set(pred) == set(gt)
    assert all(len(objs) > 0 for objs in gt.values())
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_eval_checkpoint_overrides_change_the_built_model(indoor_run, tmp_path, capsys):
    """`dense3d eval --checkpoint RUN KEY=VALUE`: the run's config changed before the model is
    built (decoding / decoding thresholds); a key the config lacks is a one-line ConfigError."""
    run, _ = indoor_run
    out = tmp_path / "high_threshold"
    assert main(["eval", "--checkpoint", str(run), "--limit", "2", "--out", str(out),
                 "model.box_detector.box_head.score_threshold=1.1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overrides"] == ["model.box_detector.box_head.score_threshold=1.1"]
    pred = json.loads((out / "predictions_boxes.json").read_text())
    assert len(pred) == 2 and all(objs == [] for objs in pred.values())  # no score reaches 1.1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--limit", "1", "--out", str(tmp_path / "bad"),
                 "model.box_detector.box_head.score_treshold=0.5"]) != 0
    err = capsys.readouterr().err.strip()
    assert "ConfigError" in err and "score_treshold" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
    # +KEY=VALUE adds a constructor argument the config leaves at its default
    assert main(["eval", "--checkpoint", str(run), "--limit", "1", "--out", str(tmp_path / "added"),
                 "+model.box_detector.box_head.score_threshold=1.1"]) == 0


@pytest.mark.slow
def test_init_from_loads_the_named_parts_only(indoor_run, capsys):
    run, root = indoor_run
    cfg = compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={root}"])
    torch.manual_seed(123)
    fresh = instantiate(cfg.model)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    capsys.readouterr()
    n = init_weights(fresh, run, ["box_detector.lidar_encoder"])
    assert n > 0
    # the run's other weights are named as left at their initialisation; none when all are loaded
    assert capsys.readouterr().out.strip().endswith("not loaded, at their initialisation (not in init_parts): box_detector")
    init_weights(instantiate(cfg.model), run, ["box_detector"])
    assert "not loaded" not in capsys.readouterr().out
    from dense3d.api import load
    trained = load(run).model.state_dict()
    for k, v in fresh.state_dict().items():
        if k.startswith("box_detector.lidar_encoder."):
            assert torch.equal(v, trained[k]), k
        else:
            assert torch.equal(v, before[k]), k
    with pytest.raises(ConfigError, match="init_parts"):
        init_weights(fresh, run, ["no_such_part"])
    with pytest.raises(ConfigError, match="init_parts.*no_such_part"):  # a typo beside a real part
        init_weights(fresh, run, ["box_detector", "no_such_part"])
    other = instantiate(compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={root}",
                                        "model.box_detector.box_head.head_channels=32"]).model)
    with pytest.raises(CheckpointError, match=r"expected shape .*init_from must be a run of the same sub-modules"):
        init_weights(other, run, ["box_detector.box_head"])
    # init_skip: a part the other run has a different shape of stays at its initialisation
    before = {k: v.clone() for k, v in other.state_dict().items()}
    n_skip = init_weights(other, run, ["box_detector"], skip=["box_detector.box_head"])
    assert 0 < n_skip < sum(k.startswith("box_detector.") for k in trained)
    for k, v in other.state_dict().items():
        if k.startswith("box_detector.box_head."):
            assert torch.equal(v, before[k]), k
        elif k.startswith("box_detector.lidar_encoder."):
            assert torch.equal(v, trained[k]), k
    with pytest.raises(ConfigError, match="init_skip"):
        init_weights(other, run, ["box_detector"], skip=["box_detector.no_such_part"])
    with pytest.raises(ConfigError, match="not all of"):  # a skip that leaves a part nothing to load
        init_weights(other, run, ["box_detector.box_head", "box_detector.lidar_encoder"], skip=["box_detector.box_head"])


def test_frozen_parts_stay_in_eval_mode():
    model = torch.nn.ModuleDict({"detector": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)),
                                 "captioner": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))})
    module = DenseCaptionModule(model, optimizer=lambda p: torch.optim.SGD(p, 0.1), frozen=["detector"])
    module.train()
    assert not any(m.training for m in model["detector"].modules())
    assert all(m.training for m in model["captioner"].modules())
    module.eval()
    assert not any(m.training for m in model.modules())


def test_trainable_parts_inside_frozen_ones_train():
    """`trainable: [box_detector.region_sampler]` (the captioning stage): the rest of the frozen
    detector keeps requires_grad False and eval mode, the named part trains in train mode."""
    model = torch.nn.ModuleDict({"detector": torch.nn.ModuleDict({
        "backbone": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)),
        "sampler": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))})})
    module = DenseCaptionModule(model, optimizer=lambda p: torch.optim.SGD(p, 0.1), frozen=["detector"],
                                trainable=["detector.sampler"])
    module.train()
    assert not any(p.requires_grad for p in model["detector"]["backbone"].parameters())
    assert all(p.requires_grad for p in model["detector"]["sampler"].parameters())
    assert not any(m.training for m in model["detector"]["backbone"].modules())
    assert all(m.training for m in model["detector"]["sampler"].modules())
    module.eval()
    assert not any(m.training for m in model.modules())


def test_class_embedding_and_appearance_enter_the_box_features():
    """`DenseCaptioner(class_embedding=True, image_regions=...)` (the demo model) adds a class
    vector per label and each box's camera appearance; padding and unknown labels get neither."""
    from dense3d.structures import RegionFeatures

    root = Path("data/synthetic/default")
    generate_default(root)
    cfg = compose_config(["experiment=demo", f"paths.synthetic_dir={root.resolve()}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert model.class_embedding is not None and model.image_regions is not None
    model.image_regions = None  # class vectors alone first
    B, R, D = 1, 3, model.class_embedding.embedding_dim
    r = RegionFeatures("box", torch.zeros(B, R, D), torch.zeros(B, R, 7), torch.ones(B, R),
                       torch.tensor([[0, 3, -1]]), torch.tensor([[True, True, False]]))
    out = model._with_appearance(None, r)
    torch.testing.assert_close(out.features[0, 0], model.class_embedding.weight[0])
    torch.testing.assert_close(out.features[0, 1], model.class_embedding.weight[3])
    assert torch.all(out.features[0, 2] == 0)
    # each source is layer-normalised before the sum: the scale of the BEV features does not
    # decide how much of the class vector is left
    f = torch.randn(B, R, D)
    big, small = (model._with_appearance(None, RegionFeatures("box", f * k, r.geometry, r.scores, r.labels, r.mask))
                  for k in (100.0, 1.0))
    torch.testing.assert_close(big.features, small.features, rtol=1e-4, atol=1e-4)
    assert torch.all(big.features[0, 2] == 0)


def test_room_layout_gives_the_box_regions_their_wall_gaps():
    """`qformer.room_layout=true`: the model measures each box's gaps to the walls of its own
    sample's room (the extent of its points); a batch without points is a one-line error."""
    from dense3d.structures import RegionFeatures
    from dense3d.structures.sample import Batch

    root = Path("data/synthetic/default")
    generate_default(root)
    cfg = compose_config(["experiment=demo", f"paths.synthetic_dir={root.resolve()}",
                          "model.captioner.qformer.room_layout=true"])
    model = instantiate(cfg.model)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 8, 41), torch.linspace(0, 5, 26), indexing="ij"), -1).reshape(-1, 2)
    points = torch.cat([torch.cat([torch.full((len(grid), 1), float(b)), grid * (1 + b), torch.zeros(len(grid), 1)], 1)
                        for b in range(2)])  # sample 0: an 8 x 5 m room, sample 1: 16 x 10 m
    geo = torch.tensor([[1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.0]]).expand(2, 1, 7)
    r = RegionFeatures("box", torch.zeros(2, 1, model.class_embedding.embedding_dim), geo, torch.ones(2, 1),
                       torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool))
    out = model._with_appearance(Batch(samples=[None, None], points=points), r)
    torch.testing.assert_close(out.extra["wall_gaps"], torch.tensor([[[0.5, 6.5, 0.5, 3.5]], [[0.5, 14.5, 0.5, 8.5]]]),
                               atol=0.05, rtol=0)
    with pytest.raises(ConfigError, match="without points"):
        model._with_appearance(Batch(samples=[None, None]), r)


def test_eval_limit_is_checked_in_one_line_and_a_limit_above_the_split_evaluates_all(tmp_path, monkeypatch, capsys):
    """evaluate_run's ``limit``: 0, negatives, bools, floats and strings are a one-line ConfigError
    naming ``limit`` and showing the value as given ('2', not 2); numpy's integers are integers;
    a limit above the split's size evaluates every sample and says so (stderr, metrics.json)."""
    from types import SimpleNamespace

    import numpy as np

    import dense3d.api as api
    from dense3d.engine.evaluate import evaluate_run

    for bad, shown in ((0, "0"), (-1, "-1"), (True, "True"), (2.0, "2.0"), ("2", "'2'"), (np.float64(2), "np.float64(2.0)")):
        with pytest.raises(ConfigError) as e:
            evaluate_run(tmp_path / "no_run", limit=bad)
        msg = str(e.value)
        assert msg.startswith("evaluate_run: field 'limit': expected an integer >= 1") and msg.endswith(f"got {shown}"), msg
        assert "\n" not in msg

    # a run whose model detects nothing, on a split of 3 samples: what evaluate_run reads of it
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(api, "find_run", lambda run: (tmp_path / "run" / "config.yaml", tmp_path / "run"))
    loaded = SimpleNamespace(dataset=lambda split: ["s0", "s1", "s2"], model=SimpleNamespace(), checkpoint="last.ckpt", step=1,
                             caption_many=lambda samples, batch_size, progress: [[] for _ in samples])
    monkeypatch.setattr(api, "load", lambda run, regions, overrides: loaded)
    metrics = evaluate_run(tmp_path / "run", limit=np.int64(2), out_dir=tmp_path / "two")
    assert metrics["samples"] == 2 and metrics["limit"] == 2 and type(metrics["limit"]) is int
    capsys.readouterr()
    metrics = evaluate_run(tmp_path / "run", limit=10, out_dir=tmp_path / "all")
    assert metrics["samples"] == 3 and metrics["limit"] == 10
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["limit"] == 10
    err = capsys.readouterr().err
    assert "limit=10 is more than the 3 samples of split 'val': evaluating all of them" in err, err
