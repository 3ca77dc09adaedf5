"""tools/plot_runs.py: training curves of resumed runs join up, evaluation scores land at their step."""
import importlib.util
import json
from pathlib import Path

import pytest

from dense3d.errors import ConfigError, PredictionFormatError

_spec = importlib.util.spec_from_file_location("plot_runs", Path(__file__).parents[2] / "tools" / "plot_runs.py")
plot_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_runs)


def _run(root: Path, versions: list[list[tuple[int, float]]], evals: dict[str, tuple[int, float]]) -> Path:
    for v, rows in enumerate(versions):
        csv = root / "csv" / f"version_{v}" / "metrics.csv"
        csv.parent.mkdir(parents=True)
        csv.write_text("epoch,step,train/loss,lr-AdamW\n" + "".join(f"0,{s},{x},\n0,{s},,0.001\n" for s, x in rows))
    for name, (step, cider) in evals.items():
        (root / name).mkdir()
        (root / name / "metrics.json").write_text(json.dumps(
            {"step": step, "boxes": {"tod3cap_corrected": {"CIDEr-F1@0.25": cider}}}))
    return root


def test_resumed_run_joins_up_and_scores_sit_at_their_steps(tmp_path, capsys):
    # version_1 resumed at step 20: its value wins the step both versions logged
    a = _run(tmp_path / "a", [[(0, 2.0), (10, 1.5), (20, 1.4)], [(20, 1.3), (30, 1.0)]],
             {"eval_gt40_s10": (10, 50.0), "eval_gt40": (30, 120.0), "eval_pred40": (30, 9.0)})
    curve, points = plot_runs.run_series(a, "train/loss", "eval_gt40*", plot_runs.SCORE)
    assert curve == [(0, 2.0), (10, 1.5), (20, 1.3), (30, 1.0)]
    assert points == [(10, 50.0), (30, 120.0)]  # eval_pred40 is not an eval_gt40* folder
    (a / "eval_gt40_s20").mkdir()  # an undefined score (strict JSON: null) is a gap, not an error
    (a / "eval_gt40_s20" / "metrics.json").write_text(json.dumps({"step": 20, "boxes": {"tod3cap_corrected": {"CIDEr-F1@0.25": None}}}))
    assert plot_runs.run_series(a, "train/loss", "eval_gt40*", plot_runs.SCORE)[1] == [(10, 50.0), (30, 120.0)]
    (a / "eval_gt40_s20" / "metrics.json").unlink()
    (a / "eval_gt40_s20").rmdir()

    b = _run(tmp_path / "b", [[(0, 2.5), (30, 1.2)]], {})
    out = tmp_path / "fig.png"
    assert plot_runs.main(["--out", str(out), f"full={a}", f"BiCA off={b}", "--ref", "0.8 x oracle=399"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "full: train/loss 1.000 at step 30; 50.0 at 10, 120.0 at 30" in printed
    assert "BiCA off: train/loss 1.200 at step 30" in printed


def test_bad_runs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="metrics.csv"):
        plot_runs.run_series(tmp_path, "train/loss", "eval*", plot_runs.SCORE)
    a = _run(tmp_path / "a", [[(0, 2.0)]], {"eval_old": (0, 1.0)})
    with pytest.raises(ConfigError, match="train/nope"):
        plot_runs.run_series(a, "train/nope", "eval*", plot_runs.SCORE)
    with pytest.raises(PredictionFormatError, match="CIDEr-F1@0.5"):
        plot_runs.run_series(a, "train/loss", "eval*", "boxes.tod3cap_corrected.CIDEr-F1@0.5")
    (a / "eval_old" / "metrics.json").write_text(json.dumps({"boxes": {"tod3cap_corrected": {"CIDEr-F1@0.25": 1.0}}}))
    with pytest.raises(PredictionFormatError, match="step"):
        plot_runs.run_series(a, "train/loss", "eval*", plot_runs.SCORE)
    with pytest.raises(ConfigError, match="NAME=RUN_FOLDER"):
        plot_runs.main(["--out", str(tmp_path / "x.png"), str(a)])
    with pytest.raises(ConfigError, match="--ref"):
        plot_runs.main(["--out", str(tmp_path / "x.png"), f"a={a}", "--ref", "oracle"])
    assert not (tmp_path / "x.png").exists()
