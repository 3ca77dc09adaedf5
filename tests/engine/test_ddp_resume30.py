"""DDP resume: every rank's random state is saved and restored, a checkpoint written inside an
epoch refuses another number of ranks, and fit says how the optimizer grouped the weights."""
import functools
from pathlib import Path

import pytest
import torch

from dense3d.engine.checkpoint import load_checkpoint, save_checkpoint
from dense3d.engine.module import RNGStateCallback, describe_groups
from dense3d.engine.optim import AdamW

from tests.engine.toy_parts import run_toy as _run


def _rng(state: dict) -> dict:
    return next(v for k, v in state["callbacks"].items() if k.startswith("RNGStateCallback"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = torch.load(a / "final.pt"), torch.load(b / "final.pt")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_process_ddp_resume_gives_the_uninterrupted_runs_weights_with_dropout(tmp_path):
    # dropout, and augmentation whose draws depend on each rank's data: the ranks' states part
    _run(tmp_path / "whole", "--ddp", "--augment", "--epochs", 4)
    _run(tmp_path / "resumed", "--ddp", "--augment", "--epochs", 2)
    state = load_checkpoint(tmp_path / "resumed" / "ckpt" / "last.ckpt")
    rng = dict(_rng(state))
    # the same checkpoint in the single-state format written before: every rank restores rank 0's
    old = tmp_path / "old_format"
    for key in ("world_size", "other_ranks"):
        _rng(state).pop(key, None)
    save_checkpoint(state, old / "ckpt" / "last.ckpt")

    _run(tmp_path / "resumed", "--ddp", "--augment", "--epochs", 4, "--resume")
    assert _same_weights(tmp_path / "whole", tmp_path / "resumed")
    assert rng["world_size"] == 2 and len(rng["other_ranks"]) == 1
    assert not torch.equal(rng["torch"], rng["other_ranks"][0]["torch"])  # rank 1's own state is in it

    r = _run(old, "--ddp", "--augment", "--epochs", 4, "--resume")
    lines = [line for line in r.stderr.splitlines() if "random state" in line]
    assert len(lines) == 1 and "rank 1 starts from rank 0's random state" in lines[0], r.stderr[-2000:]
    assert not _same_weights(tmp_path / "whole", old)  # what resuming did before: rank 1 drew rank 0's numbers


@pytest.mark.slow
def test_a_checkpoint_written_inside_an_epoch_refuses_another_number_of_ranks(tmp_path):
    # 32 samples, 2 ranks of batches of 4: 4 steps an epoch; the checkpoint of step 2 is inside epoch 0
    run = ("--ddp", "--augment", "--epochs", 1, "--every-n-steps", 1)
    _run(tmp_path / "whole", *run)
    _run(tmp_path / "part", *run, "--max-steps", 2)
    assert load_checkpoint(tmp_path / "part" / "ckpt" / "last.ckpt")["DenseCaptionDataModule"] == {"world_size": 2}
    r = _run(tmp_path / "part", "--augment", "--epochs", 1, "--every-n-steps", 1, "--resume", check=False)
    assert r.returncode != 0
    error = [line for line in r.stderr.splitlines() if line.startswith("dense3d.errors.CheckpointError")]
    assert error and "DenseCaptionDataModule.world_size" in error[0] and "expected 1 rank(s)" in error[0] \
        and "written by 2 rank(s)" in error[0], r.stderr[-2000:]
    # on as many ranks as wrote it, the rest of the epoch: the uninterrupted run's weights
    _run(tmp_path / "part", *run, "--resume")
    assert _same_weights(tmp_path / "whole", tmp_path / "part")


def test_rng_state_of_the_old_single_state_format_and_of_more_ranks_loads_in_one_process(capsys):
    callback = RNGStateCallback()
    torch.manual_seed(3)
    saved = callback.state_dict()
    assert saved["world_size"] == 1 and saved["other_ranks"] == []
    expected = torch.rand(4)
    old_format = {k: v for k, v in saved.items() if k not in ("world_size", "other_ranks")}
    for state in (old_format, {**saved, "world_size": 2, "other_ranks": [old_format]}):
        torch.manual_seed(5)
        callback.load_state_dict(state)
        assert torch.equal(torch.rand(4), expected)
    # the old format in one process: as before, without a word; 2 ranks' states in one: one line
    assert capsys.readouterr().err.splitlines() == [
        "dense3d train: the checkpoint was written by 2 rank(s), this run has 1 rank(s): rank 0 restores its saved random "
        "state (dropout and augmentation draw other numbers than an uninterrupted run)"]


class _Gated(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)  # weight decayed, bias 1-D
        self.gates = torch.nn.Parameter(torch.zeros(2, 3))  # 2-D, kept by the pattern


def test_the_optimizer_groups_are_described_in_one_line():
    model = _Gated()
    named = list(model.named_parameters())
    factory = functools.partial(AdamW, lr=1e-3, weight_decay=0.05, no_decay=["gates", "*.nothing"])
    line = describe_groups(factory(named), named, factory)
    assert line == "AdamW: 1 tensors decayed (weight_decay 0.05), 2 not (1-D: 1, 'gates': 1, '*.nothing': 0), in 2 group(s)"
    plain = functools.partial(torch.optim.SGD, lr=0.1)
    params = [p for _, p in named]
    assert describe_groups(plain(params), params, plain) == "SGD: 0 tensors decayed, 3 not, in 1 group(s)"
