"""Engine mechanics: DDP averages gradients like one process on the combined batch, and a
run killed with SIGKILL resumes to exactly the weights of an uninterrupted run."""
import pytest
import torch

from tests.engine.toy_parts import run_toy as _run


@pytest.mark.slow
def test_kill_dash_nine_then_resume_matches_uninterrupted_run(tmp_path):
    _run(tmp_path / "a", "--epochs", 4)
    r = _run(tmp_path / "b", "--epochs", 4, "--kill-at-epoch", 2, check=False)
    assert r.returncode == -9, "the run should have been killed"
    assert not (tmp_path / "b" / "final.pt").exists()
    assert (tmp_path / "b" / "ckpt" / "last.ckpt" / "model.safetensors").exists()
    _run(tmp_path / "b", "--epochs", 4, "--resume")
    a = torch.load(tmp_path / "a" / "final.pt")
    b = torch.load(tmp_path / "b" / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_process_ddp_gradients_equal_one_process_on_combined_batch(tmp_path):
    _run(tmp_path / "ddp", "--ddp", "--grads", "--batch-size", 4)
    _run(tmp_path / "one", "--grads", "--batch-size", 8)
    g2 = torch.load(tmp_path / "ddp" / "grads.pt")
    g1 = torch.load(tmp_path / "one" / "grads.pt")
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-5, atol=1e-6)
