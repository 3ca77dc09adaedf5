import json

import lightning.pytorch as pl
import pytest
import torch

from dense3d.engine.checkpoint import SafeCheckpointIO, check_config_targets, load_checkpoint, save_checkpoint
from dense3d.errors import CheckpointError, ConfigError


def _ckpt():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {
        "state_dict": lin.state_dict(),
        "optimizer_states": [opt.state_dict()],
        "epoch": 3,
        "global_step": 120,
        "hyper_parameters": {"model": {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 3}},
    }


def test_round_trip(tmp_path):
    ck = _ckpt()
    p = save_checkpoint(ck, tmp_path / "a.ckpt")
    assert sorted(x.name for x in p.iterdir()) == ["meta.json", "model.safetensors", "trainer_state.pt"]
    back = load_checkpoint(p)
    for k, v in ck["state_dict"].items():
        assert torch.equal(back["state_dict"][k], v)
    assert back["epoch"] == 3 and back["global_step"] == 120
    torch.testing.assert_close(
        back["optimizer_states"][0]["state"][0]["exp_avg"], ck["optimizer_states"][0]["state"][0]["exp_avg"]
    )
    assert back["hyper_parameters"]["model"]["in_features"] == 4
    # overwrite in place: still one valid checkpoint, no leftovers
    ck["epoch"] = 4
    save_checkpoint(ck, p)
    assert load_checkpoint(p)["epoch"] == 4
    assert [x.name for x in tmp_path.iterdir()] == ["a.ckpt"]


def test_truncated_and_corrupted_files_are_reported(tmp_path):
    p = save_checkpoint(_ckpt(), tmp_path / "a.ckpt")
    w = p / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and "model.safetensors" in str(e.value)
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (p / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="valid JSON"):
        load_checkpoint(p)


def test_unsafe_trainer_state_is_refused(tmp_path):
    p = save_checkpoint(_ckpt(), tmp_path / "a.ckpt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, p / "trainer_state.pt")
    meta = json.loads((p / "meta.json").read_text())
    from dense3d.engine.checkpoint import _sha256

    meta["files"]["trainer_state.pt"] = {"sha256": _sha256(p / "trainer_state.pt"), "bytes": (p / "trainer_state.pt").stat().st_size}
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="plain containers"):
        load_checkpoint(p)


def test_config_targets_outside_dense3d_and_torch_are_refused(tmp_path):
    check_config_targets({"a": {"_target_": "dense3d.models.X"}, "b": [{"_target_": "torch.nn.ReLU"}]})
    with pytest.raises(ConfigError, match="os.system"):
        check_config_targets({"a": [{"_target_": "os.system", "command": "rm -rf /"}]})
    ck = _ckpt()
    ck["hyper_parameters"] = {"model": {"_target_": "subprocess.call"}}
    p = save_checkpoint(ck, tmp_path / "b.ckpt")
    with pytest.raises(ConfigError):
        load_checkpoint(p)


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_uses_the_safe_format_and_resumes(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    dl = torch.utils.data.DataLoader(data, batch_size=4)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              plugins=[SafeCheckpointIO()], default_root_dir=tmp_path)
    t = pl.Trainer(max_epochs=2, **kw)
    t.fit(_Tiny(), dl)
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts and (ckpts[-1] / "model.safetensors").exists()
    t2 = pl.Trainer(max_epochs=3, **kw)
    m2 = _Tiny()
    t2.fit(m2, dl, ckpt_path=str(ckpts[-1]))
    assert t2.global_step == 12
