"""`fast_dev_run` of every experiment config on the CPU (one training batch, through `dense3d train`)."""
from pathlib import Path

import pytest

from dense3d.cli import main
from dense3d.data.synthetic import generate_default

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "experiment").glob("*.yaml"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = Path("data/synthetic/default")  # the demo's set; generated once when missing
    generate_default(root)
    return root.resolve()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run(experiment, synthetic_root, tmp_path):
    assert main(["train", f"experiment={experiment}", "debug=fast_dev_run", f"paths.synthetic_dir={synthetic_root}",
                 f"paths.output_dir={tmp_path}", "logger=csv"]) == 0
    assert (tmp_path / "config.yaml").exists()
