"""A researcher's inference path on a trained run: ``dense3d predict`` / ``dense3d eval --checkpoint``
write prediction files that the protocol evaluators (``dense3d eval PROTOCOL --pred F --gt G``) and
``dense3d vis`` read as they are; ``dense3d.api.load`` / ``caption`` on real samples, devices,
overrides; the "make the synthetic data first" hint when a run's data is gone."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

import dense3d.api as api
from dense3d.cli import main
from dense3d.errors import CheckpointError, ConfigError
from tests.models.real_samples import nuscenes_sample, scannet_sample


def _train(synthetic_root, out, experiment):
    assert main(["train", f"experiment={experiment}", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={out}",
                 "logger=csv", "trainer.max_steps=1"]) == 0
    return out


@pytest.fixture(scope="module")
def indoor_run(synthetic_root, tmp_path_factory):
    return _train(synthetic_root, tmp_path_factory.mktemp("runs") / "indoor", "perception_indoor")


@pytest.fixture(scope="module")
def events_run(synthetic_root, tmp_path_factory):
    return _train(synthetic_root, tmp_path_factory.mktemp("runs") / "events", "perception_events")


def _one_line(capsys, prefix):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("captioning ", "describing "))]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def test_eval_checkpoint_event_predictions_are_read_by_eval_events(events_run, tmp_path, capsys):
    """predictions_events.json was {clip: [...]}: `dense3d eval events` refused it ("no 'results' key")."""
    out = tmp_path / "e"
    assert main(["eval", "--checkpoint", str(events_run), "--limit", "2", "--out", str(out)]) == 0
    pred = json.loads((out / "predictions_events.json").read_text())
    assert set(pred) == {"results"} and len(pred["results"]) == 2
    capsys.readouterr()
    assert main(["eval", "events", "--pred", str(out / "predictions_events.json"), "--gt", str(out / "ground_truth_events.json")]) == 0
    # and what `dense3d predict` writes for the same run, against the same ground truth
    assert main(["predict", "--checkpoint", str(events_run), "--limit", "2", "--out", str(tmp_path / "p.json")]) == 0
    assert main(["eval", "events", "--pred", str(tmp_path / "p.json"), "--gt", str(out / "ground_truth_events.json")]) == 0
    gt = json.loads((out / "ground_truth_events.json").read_text())
    clip = next(iter(gt))
    spans = json.loads((tmp_path / "p.json").read_text())["events"]["results"][clip]
    assert all(0.0 <= t0 <= t1 <= 60.0 for t0, t1 in (s["timestamp"] for s in spans))  # seconds, as the ground truth


def test_predictions_of_an_events_model_that_found_no_event_are_read_by_eval_events(tmp_path, capsys):
    """An events run that found nothing wrote {clip: []} (the 3D box format): `dense3d eval events` refused it."""
    rec = api.prediction_records(["a", "b"], [[], []], event_model=True)
    assert rec == {"boxes": {"a": [], "b": []}, "events": {"results": {"a": [], "b": []}}}
    assert api.prediction_records(["a"], [[]]) == {"a": []}  # a box model: the 3D format as before
    (tmp_path / "p.json").write_text(json.dumps(rec))
    (tmp_path / "gt.json").write_text(json.dumps({"a": {"timestamps": [[0.0, 1.0]], "sentences": ["a dog barks."]}}))
    assert main(["eval", "events", "--pred", str(tmp_path / "p.json"), "--gt", str(tmp_path / "gt.json")]) == 0


def test_indoor_predictions_go_to_scan2cap_and_vis_unchanged_and_predict_overwrites_atomically(indoor_run, synthetic_root, tmp_path, capsys):
    pred = tmp_path / "p.json"
    assert main(["predict", "--checkpoint", str(indoor_run), "--limit", "2", "--out", str(pred)]) == 0
    first = json.loads(pred.read_text())
    assert main(["predict", "--checkpoint", str(indoor_run), "--limit", "2", "--out", str(pred)]) == 0  # overwritten whole
    assert json.loads(pred.read_text()) == first and sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]  # no temp file left
    assert main(["eval", "--checkpoint", str(indoor_run), "--limit", "2", "--out", str(tmp_path / "e")]) == 0
    gt = tmp_path / "e" / "ground_truth_boxes.json"
    assert set(json.loads(gt.read_text())) == set(first)  # the same scene ids
    assert all(len(r["box"]) == 7 for rows in first.values() for r in rows)
    for protocol in ("scan2cap", "scanrefer"):
        assert main(["eval", protocol, "--pred", str(pred), "--gt", str(gt)]) == 0
    # dense3d vis on the scan the indoor set reads (ScanRefer's aligned_vert.npy was refused as "not a multiple of 24 bytes")
    scene = sorted(first)[0]
    capsys.readouterr()
    assert main(["vis", "--points", str(synthetic_root / "indoor" / "scans" / f"{scene}_aligned_vert.npy"), "--pred", str(pred),
                 "--out", str(tmp_path / "v" / "scene.png")]) == 0
    assert (tmp_path / "v" / "scene.png").stat().st_size > 0 and (tmp_path / "v" / "scene_bev.png").exists()


def test_caption_on_real_samples_built_by_hand(indoor_run, synthetic_root, tmp_path_factory, samples):
    run = api.load(indoor_run, map_location=torch.device("cpu"))
    caps = run.caption(scannet_sample(samples))
    assert caps and all(c.kind == "box" and len(c.region) == 7 for c in caps)
    outdoor = api.load(_train(synthetic_root, tmp_path_factory.mktemp("runs") / "outdoor", "perception_outdoor"))
    caps = outdoor.caption(nuscenes_sample(samples))
    assert caps and all(c.kind == "box" for c in caps)
    # regions='gt' on a sample without ground truth: was a TypeError from inside the model
    with pytest.raises(ConfigError, match=r"sample 'scannet'\.boxes.*regions='gt'"):
        api.load(indoor_run, regions="gt").caption(scannet_sample(samples))


def test_load_map_location_that_cannot_hold_the_weights_is_a_config_error(indoor_run):
    with pytest.raises(ConfigError, match="field 'map_location'"):
        api.load(indoor_run, map_location="meta")  # was a CheckpointError blaming the safetensors file
    with pytest.raises(ConfigError, match="field 'map_location'"):
        api.load(indoor_run, map_location="cuda:99")


def test_load_overrides_one_string_a_non_string_and_a_typo(indoor_run):
    # one override as a str was read letter by letter ("field 's'")
    assert api.load(indoor_run, overrides="seed=0").step == api.load(indoor_run).step
    with pytest.raises(ConfigError, match="field 'overrides'"):
        api.load(indoor_run, overrides=[3])
    with pytest.raises(ConfigError, match=r"config.yaml: field 'model.captioner.num_beam'"):
        api.load(indoor_run, overrides=["model.captioner.num_beam=3"])


def test_load_new_parts_may_be_missing_and_nothing_else(indoor_run):
    """``new_parts``: a part the overrides add (tools/fit_hint.py) may be missing from the
    checkpoint, and only that part; one prefix may be a str."""
    added = "+model.class_embedding=true"  # a learned vector per class: weights the checkpoint lacks
    with pytest.raises(CheckpointError, match="missing"):
        api.load(indoor_run, overrides=[added])
    run = api.load(indoor_run, overrides=[added], new_parts=["class_embedding.", "region_norm."])
    assert run.model.class_embedding is not None and run.step == api.load(indoor_run).step
    # the weights a prefix does not cover are still missing
    with pytest.raises(CheckpointError, match=r"missing \(e.g. \['class_embedding"):
        api.load(indoor_run, overrides=[added], new_parts="region_norm.")
    with pytest.raises(CheckpointError, match="3 missing"):  # a str is one prefix: read letter by letter, "c" and "r" cover both
        api.load(indoor_run, overrides=[added], new_parts="cr")
    with pytest.raises(ConfigError, match="field 'new_parts'"):
        api.load(indoor_run, new_parts=[3])


def test_predict_and_eval_say_how_to_make_missing_synthetic_data(indoor_run, tmp_path, capsys):
    moved = tmp_path / "run"
    shutil.copytree(indoor_run, moved)
    cfg = moved / "config.yaml"
    text = cfg.read_text()
    root = str(OmegaConf.load(cfg).paths.synthetic_dir)  # the config holds absolute data paths below it
    cfg.write_text(text.replace(root, str(tmp_path / "no_data")))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(moved), "--out", str(tmp_path / "p.json")]) == 2
    line = _one_line(capsys, "dense3d predict: AnnotationError: ")
    assert "ScanRefer_filtered_val.json" in line and "make the synthetic data first" in line and "--kind indoor" in line
    assert main(["eval", "--checkpoint", str(moved), "--out", str(tmp_path / "e")]) == 2
    line = _one_line(capsys, "dense3d eval: AnnotationError: ")
    assert "make the synthetic data first" in line
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "e").exists()


def test_eval_favd_on_dense_event_files_says_which_protocol_reads_them(tmp_path, capsys):
    """predict's output of an events run failed on field 'boxes' ("expected a paragraph string")."""
    pred, gt = tmp_path / "p.json", tmp_path / "gt.json"
    pred.write_text(json.dumps(api.prediction_records(["a"], [[]], event_model=True)))
    gt.write_text(json.dumps({"a": {"timestamps": [[0.0, 1.0]], "sentences": ["a dog barks."]}}))
    (tmp_path / "para.json").write_text(json.dumps({"a": "a dog barks."}))
    assert main(["eval", "favd", "--pred", str(pred), "--gt", str(gt)]) == 2
    line = _one_line(capsys, f"dense3d eval: PredictionFormatError: {pred}: field 'events': ")
    assert "`dense3d eval events`" in line
    assert main(["eval", "favd", "--pred", str(tmp_path / "para.json"), "--gt", str(gt)]) == 2
    line = _one_line(capsys, f"dense3d eval: PredictionFormatError: {gt}: field '(top level)': ")
    assert "dense event ground truth" in line


def test_predict_on_an_unknown_split_names_the_split_not_missing_synthetic_data(indoor_run, tmp_path, capsys):
    """--split vall read ScanRefer_filtered_vall.json, missing, and said "make the synthetic data first"."""
    assert main(["predict", "--checkpoint", str(indoor_run), "--split", "vall", "--out", str(tmp_path / "p.json")]) == 2
    line = _one_line(capsys, "dense3d predict: ConfigError: ")
    assert "config.yaml: field 'split'" in line and "(test, train, val), got vall" in line and "synthetic" not in line
    assert not (tmp_path / "p.json").exists()


def test_eval_checkpoint_into_a_folder_of_another_runs_evaluation_leaves_only_this_runs_files(indoor_run, events_run, tmp_path):
    """The indoor run's predictions_boxes.json stayed beside the events run's files, as if the events run had written it."""
    out = tmp_path / "e"
    assert main(["eval", "--checkpoint", str(indoor_run), "--limit", "1", "--out", str(out)]) == 0
    assert main(["eval", "--checkpoint", str(events_run), "--limit", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == [
        "ground_truth_events.json", "metrics.json", "predictions_events.json"]


def test_caption_of_a_sample_without_sensors_names_the_sample(indoor_run, samples):
    """The error said 'Batch: field points/images', not which of the caller's samples had no data."""
    from dense3d.structures import Sample

    run = api.load(indoor_run)
    with pytest.raises(ConfigError, match=r"^samples\[2:3\] \('empty'\): field 'points/images'"):
        run.caption_many([scannet_sample(samples), scannet_sample(samples), Sample("empty")])
    with pytest.raises(Exception, match=r"samples\[0:1\] \('nuscenes'\): field 'points\[0\]': expected 6 columns"):
        run.caption(nuscenes_sample(samples))  # an outdoor sample (x, y, z, intensity, ring) for an indoor run


@pytest.mark.cuda
def test_a_run_loaded_on_the_gpu_captions_samples_read_on_the_cpu(indoor_run, samples):
    """caption() passed the CPU batch to a model on map_location="cuda" (a device mismatch inside the encoder)."""
    sample = scannet_sample(samples)
    on_cpu = api.load(indoor_run).caption(sample)
    on_gpu = api.load(indoor_run, map_location="cuda").caption(sample)
    assert len(on_gpu) == len(on_cpu)
    assert torch.allclose(torch.tensor([c.region for c in on_gpu]), torch.tensor([c.region for c in on_cpu]), atol=1e-3)


def test_eval_checkpoint_with_ground_truth_regions_on_an_events_run_scores_the_gt_spans(events_run, tmp_path, capsys):
    """`eval --checkpoint RUN --regions gt` on an events run: it stopped at its first clip with
    'sample ...boxes: expected ground-truth boxes' (the check for box runs), then was refused
    with one line (ground-truth regions were boxes only); now every ground-truth event is
    described on its own span (DenseCaptioner.predict), in the proposals' file formats, and a
    clip without event annotations is one line naming it."""
    out = tmp_path / "gt"
    assert main(["eval", "--checkpoint", str(events_run), "--regions", "gt", "--limit", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regions"] == "gt" and metrics["events"]["gt_events"] > 0
    pred = json.loads((out / "predictions_events.json").read_text())["results"]
    gt = json.loads((out / "ground_truth_events.json").read_text())
    assert set(pred) == set(gt)
    for clip, g in gt.items():  # one record per ground-truth event, on its span
        assert [t for r in pred[clip] for t in r["timestamp"]] == pytest.approx([t for span in g["timestamps"] for t in span])
    run = api.load(events_run, regions="gt")
    sample = run.dataset("val")[0]
    sample.events = None
    with pytest.raises(ConfigError, match=r"sample '.*'\.events': expected ground-truth events to caption"):
        run.caption(sample)
