"""Small leftovers of session 31's reviews."""
from __future__ import annotations

from dense3d.cli import main


def test_training_joint_scenes_before_they_exist_names_convert_not_the_demo(tmp_path, capsys):
    """The demo makes the outdoor, indoor and av sets, not the joint scenes: the hint named
    `dense3d demo`, which leaves the joint set missing."""
    root = tmp_path / "nodata"
    assert main(["train", "experiment=captioning_joint", f"paths.synthetic_dir={root}", f"paths.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.endswith(f"got missing; make the synthetic data first: `dense3d convert synth --kind joint --out {root / 'joint'}`"), err
    assert "dense3d demo" not in err
    assert not (tmp_path / "run").exists()
