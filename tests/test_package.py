"""The package imports without its extension, and the command line behaves."""
import json
import subprocess
import sys

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


def test_cli_unbuilt_commands_exit_nonzero(capsys):
    assert main(["vis"]) == 2
    assert "not built yet" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_runs_end_to_end(tmp_path):
    """The main job with a tiny random LLM and 2 training steps: every stage runs and writes
    its outputs (the real demo trains SmolLM2's adapter for the configured steps)."""
    tiny = ["model/captioner@model.captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64"]
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", *tiny]) == 0
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
