"""The package imports without its extension, and the command line behaves."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dense3d.cli import main


def test_import_without_extension_falls_back_with_one_warning():
    code = (
        "import sys, warnings; sys.modules['dense3d._C'] = None\n"  # makes `from dense3d import _C` fail
        "import dense3d, dense3d.ops as ops, torch\n"
        "assert not ops.ext_available(), 'extension should be missing'\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = ops.resolve_backend('auto', 'anything', torch.zeros(1))\n"
        "    b = ops.resolve_backend('auto', 'anything', torch.zeros(1))\n"
        "assert a == b == 'torch', (a, b)\n"
        "assert len(w) == 1 and 'pure-torch' in str(w[0].message), [str(x.message) for x in w]\n"
        "print(ops.backend_info())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"DENSE3D_NO_EXTENSION": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert "pure-torch references" in r.stdout


def test_extension_is_built_here():
    import dense3d.ops as ops

    assert ops.ext_available(), ops.backend_info()


@pytest.mark.slow
def test_cli_vis_renders_real_samples(samples, tmp_path):
    info = next((samples / "nuscenes").glob("*.pkl"))
    pred = {"ca9a282c9e77460f8360f564131a8af5": [{"box": [10.0, 0.0, -1.0, 4.0, 2.0, 1.6, 0.3], "caption": "a car ahead", "score": 0.9, "label": "car"}]}
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    assert main(["vis", "--info", str(info), "--pred", str(tmp_path / "pred.json"), "--out", str(tmp_path / "nus.png")]) == 0
    for name in ("nus.png", "nus_bev.png", "nus_cam.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert main(["vis", "--points", str(samples / "scannet" / "scene0000_00.bin"), "--out", str(tmp_path / "scan.png")]) == 0
    assert (tmp_path / "scan.png").stat().st_size > 10_000
    # a prediction file without the scene: one-line error, exit 2
    assert main(["vis", "--points", str(samples / "scannet" / "scene0000_00.bin"), "--pred", str(tmp_path / "pred.json"),
                 "--out", str(tmp_path / "x.png")]) == 2


# a tiny random LLM with 2 adapted layers, for demo runs that only check the plumbing
TINY_CAPTIONER = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64",
                  "model.captioner.adapter.num_layers=2"]


@pytest.mark.slow
def test_cli_demo_runs_end_to_end(tmp_path):
    """The main job with a tiny random LLM and 2 training steps: every stage runs and writes
    its outputs (the real demo trains SmolLM2's adapter for the configured steps)."""
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", *TINY_CAPTIONER]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["data", "train", "predict", "evaluate", "report"]
    assert summary["stages"][1]["steps"] == 2
    pred = json.loads((tmp_path / "predictions.json").read_text())
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert set(pred) == set(gt) and len(gt) == 5
    assert all(len(p["box"]) == 7 and isinstance(p["caption"], str) for ps in pred.values() for p in ps)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "CIDEr-F1@0.25" in metrics["tod3cap_corrected"] and "mAP" in metrics["detection"]
    for pic in ("scene.png", "bev.png", "curves.png"):
        assert (tmp_path / pic).stat().st_size > 5000
    assert "![" in (tmp_path / "report.md").read_text()

    # the run loads back through the inference API and the predict command
    import dense3d.api

    run = dense3d.api.load(tmp_path, regions="gt")
    sample = run.dataset("val")[0]
    caps = run.caption(sample)
    assert len(caps) == len(sample.boxes) and all(isinstance(c.text, str) for c in caps)
    assert main(["predict", "--checkpoint", str(tmp_path), "--regions", "gt", "--limit", "2", "--out", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 2
    # config changes on the command line: other scenes (here the train split's) and decoding
    assert main(["predict", "--checkpoint", str(tmp_path), "--regions", "gt", "--limit", "1", "--out", str(tmp_path / "t.json"),
                 "data.val.split=train", "model.captioner.max_new_tokens=2"]) == 0
    other = json.loads((tmp_path / "t.json").read_text())
    assert list(other) == [run.dataset("train")[0].sample_id]
    assert all(len(p["caption"].split()) <= 2 for ps in other.values() for p in ps)
    assert main(["predict", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "u.json"), "data.val.no_such_key=1"]) == 2
    assert not (tmp_path / "u.json").exists()
    # a damaged checkpoint is a one-line error, not a traceback
    weights = tmp_path / "checkpoints" / "last.ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["predict", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "q.json")]) == 2
    assert not (tmp_path / "q.json").exists()


@pytest.mark.slow
def test_probe_tokens_tool_probes_a_trained_run(tmp_path):
    """tools/probe_tokens.py on a 2-step demo run with a target head: every probe fitted and
    scored, and the head's first choices judged, written as JSON."""
    import importlib.util

    head = ["+model.captioner.qformer.neighbour_queries=2", "+model.captioner.qformer.target_order=1"]
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", *TINY_CAPTIONER, *head]) == 0
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("probe_tokens", root / "tools" / "probe_tokens.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "probe.json"
    assert tool.main([str(tmp_path), "data/synthetic/default/outdoor", "--train-scenes", "3", "--val-scenes", "2",
                      "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["probes"]) == {name for name, _, _ in tool.PROBES}
    own = r["probes"]["own colour <- visual tokens"]
    assert own["train"] > 0 and own["val"] > 0 and 0 <= own["accuracy"] <= 100
    assert sum(r["target_ranks"]) == r["probes"]["target colour <- target's BiCA feature"]["val"]
    assert r["target_head"]["boxes"] == sum(r["target_ranks"]) and 0 <= r["target_head"]["right"] <= 100


@pytest.mark.slow
def test_fit_hint_tool_fits_a_new_hint_onto_a_trained_run(tmp_path):
    """tools/fit_hint.py on a 2-step demo run trained without hints: the motion hint, then the
    relation hint (on the pair features) is added, its classifier fitted on the train split's
    boxes, and written with the rest of the run, unchanged, as a new run folder that loads and
    generates with fusion on; the old run is untouched; a run without a hint, a relation hint that
    reads the Q-Former's tokens, an --out in use, and a hint whose map was trained (without
    --refit-trained-map) are one-line errors."""
    import importlib.util

    import torch

    import dense3d.api
    import dense3d.structures.sample
    from dense3d.models.proposals.boxes.detector import head_labels

    run = tmp_path / "run"
    assert main(["demo", "--out", str(run), "--steps", "2", *TINY_CAPTIONER]) == 0
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("fit_hint", root / "tools" / "fit_hint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    words = "+model.captioner.motion_phrases={parked: [parked], moving: [moving]}"  # the tiny LLM's words
    before = {k: v.clone() for k, v in dense3d.api.load(run).model.state_dict().items()}
    config = (run / "config.yaml").read_text()
    out = tmp_path / "fitted"
    assert tool.main([str(run), "--out", str(out), "--steps", "50", "--held-out", "0.3", words,
                      "+model.captioner.motion_fusion=1.0"]) == 0
    summary = json.loads((out / "fit_hint.json").read_text())
    assert summary["rows"]["fitted"] > 0 and summary["rows"]["held_out"] > 0
    assert 0 <= summary["held_out_accuracy"]["after"] <= 100
    fitted = dense3d.api.load(out, regions="gt")
    assert fitted.model.captioner.motion_fusion == 1.0 and fitted.model.captioner.motion_hint is not None
    state = fitted.model.state_dict()
    for k, v in before.items():  # everything but the new hint: the run's own weights
        torch.testing.assert_close(state[k], v)
    assert not (fitted.model.captioner.motion_hint.embed.weight != 0).any()  # its map: still zero
    sample = fitted.dataset("val")[0]
    assert len(fitted.caption(sample)) == len(sample.boxes)
    assert (run / "config.yaml").read_text() == config and dense3d.api.load(run).model.captioner.motion_hint is None
    # a run without a hint, and an --out that holds a run: refused, nothing written
    for args in ([str(run), "--out", str(tmp_path / "none")], [str(run), "--out", str(out), words]):
        r = subprocess.run([sys.executable, str(root / "tools" / "fit_hint.py"), *args], capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("tools/fit_hint.py: "), r.stderr
    assert not (tmp_path / "none").exists()
    assert json.loads((out / "fit_hint.json").read_text()) == summary
    # a run whose map onto the visual tokens was trained: refused unless --refit-trained-map
    trained = dense3d.api.load(out, regions="gt")
    with torch.no_grad():
        trained.model.captioner.motion_hint.embed.bias.fill_(0.1)
    tool.write_run(trained, tmp_path / "trained_map", {})
    r = subprocess.run([sys.executable, str(root / "tools" / "fit_hint.py"), str(tmp_path / "trained_map"), "--out",
                        str(tmp_path / "refit")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "motion_hint.embed" in r.stderr, r.stderr
    assert not (tmp_path / "refit").exists()
    assert tool.main([str(tmp_path / "trained_map"), "--out", str(tmp_path / "refit"), "--steps", "5",
                      "--refit-trained-map"]) == 0
    # the relation hint on the pair features, onto the same run; one that reads the Q-Former's tokens is refused
    rel = ["+model.captioner.relation_phrases={behind: [behind], in_front_of: [in front of]}", "+model.captioner.relation_input=true"]
    r = subprocess.run([sys.executable, str(root / "tools" / "fit_hint.py"), str(run), "--hint", "relation", "--out",
                        str(tmp_path / "tokens"), *rel], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "relation_hint_tokens=true" in r.stderr, r.stderr
    assert not (tmp_path / "tokens").exists()
    out = tmp_path / "fitted_relation"
    assert tool.main([str(run), "--hint", "relation", "--out", str(out), "--steps", "50", "--held-out", "0.3", *rel,
                      "+model.captioner.relation_hint_tokens=false", "+model.captioner.relation_fusion=1.0",
                      "+model.captioner.relation_fusion_after=[a]"]) == 0
    summary = json.loads((out / "fit_hint.json").read_text())
    assert summary["hint"] == "relation" and set(summary["answers"]) == {"behind", "in_front_of", "none"}
    assert summary["rows"]["fitted"] > 0 and 0 <= summary["held_out_accuracy"]["after"] <= 100
    fitted = dense3d.api.load(out, regions="gt")
    head = fitted.model.captioner.relation_head
    assert fitted.model.captioner.relation_fusion == 1.0 and not head.tokens
    state = fitted.model.state_dict()
    for k, v in before.items():
        torch.testing.assert_close(state[k], v)
    assert not (head.embed.weight != 0).any()  # its map: still zero
    with torch.no_grad():  # the relation hint's trained map is refused too
        head.embed.bias.fill_(0.1)
    tool.write_run(fitted, tmp_path / "trained_relation_map", {})
    r = subprocess.run([sys.executable, str(root / "tools" / "fit_hint.py"), str(tmp_path / "trained_relation_map"),
                        "--hint", "relation", "--out", str(tmp_path / "refit_relation")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "relation_head.embed" in r.stderr, r.stderr
    with torch.no_grad():
        head.embed.bias.zero_()
    # what the tool fits on is what the hint reads when captioning the ground-truth boxes
    pair, valid, _, _, _ = tool.relation_rows(fitted, "val", 1)
    boxes = sample.boxes
    regions = dense3d.structures.sample.RegionFeatures(
        "box", torch.zeros(1, len(boxes), 4), boxes.boxes.tensor[None, :, :7].float(), torch.ones(1, len(boxes)),
        head_labels(boxes, fitted.model.box_detector.class_names)[None], torch.ones(1, len(boxes), dtype=torch.bool))
    with torch.no_grad():
        want = head(regions, torch.zeros(1, len(boxes), 4), fitted.model.captioner.qformer)[0][0]  # (R, C)
        got = head.classify("box", pair, valid)  # what the tool fits
    rows = [k for k, refs in enumerate(boxes.captions[: len(boxes)]) for _ in refs]  # one row per reference
    torch.testing.assert_close(got, want[rows])
    assert len(fitted.caption(sample)) == len(sample.boxes)


TOOL_BAD_INPUTS = {  # each script in tools/ given a missing input
    "caption_facts.py": ["/nope", "/nope"],
    "captioner_ceiling.py": ["/nope", "--steps", "1"],
    "fact_costs.py": ["/nope", "/nope"],
    "fit_hint.py": ["/nope", "--out", "{tmp}/x"],
    "merge_synth_sets.py": ["--kind", "outdoor", "{tmp}/merged", "/nope"],
    "paired_scan2cap.py": ["/nope", "/nope", "--out", "{tmp}/x.json"],
    "plot_runs.py": ["run=/nope", "--out", "{tmp}/x.png"],
    "probe_tokens.py": ["/nope", "/nope", "--out", "{tmp}/x.json"],
    "relation_oracle.py": ["/nope", "--out", "{tmp}/x.json"],
    "relation_pair_probe.py": ["/nope", "--out", "{tmp}/x.json"],
    "score_oracle.py": ["/nope.json", "/nope"],
    "test.py": ["tod3cap", "--pred", "/nope.json", "--gt", "/nope.json"],
    "visualize.py": ["--points", "/nope.bin", "--out", "{tmp}/x.png"],
}


@pytest.mark.parametrize("tool", sorted(TOOL_BAD_INPUTS))
def test_tools_report_bad_input_in_one_line(tool, tmp_path):
    root = Path(__file__).resolve().parents[1]
    args = [a.format(tmp=tmp_path) for a in TOOL_BAD_INPUTS[tool]]
    r = subprocess.run([sys.executable, str(root / "tools" / tool), *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"tools/{tool}: ") and "/nope" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written
