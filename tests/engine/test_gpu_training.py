"""The demo recipe trains on a GPU through Lightning (`trainer=gpu`: bf16-mixed), tiny decoder,
then captions a validation batch there (detected boxes and ground-truth boxes)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from dense3d.data.synthetic import DEFAULT_SCENES, generate
from dense3d.data.synthetic.common import SynthConfig
from dense3d.engine.train import compose_config, fit

pytestmark = pytest.mark.cuda

# the tiny random Llama in place of SmolLM2, sized to the demo model (tests/engine/test_experiments.py)
TINY = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64",
        "model.captioner.adapter.num_layers=2"]


@pytest.fixture(scope="module")
def outdoor_root() -> Path:
    """The demo's synthetic outdoor set (the demo trains on it alone); generated when missing."""
    root = Path("data/synthetic/default")
    if not (root / "outdoor" / "meta.json").exists():
        generate(SynthConfig(kind="outdoor", scenes=DEFAULT_SCENES["outdoor"], seed=0), root / "outdoor")
    return root.resolve()


def test_demo_recipe_trains_on_a_gpu_in_bf16_mixed(outdoor_root, tmp_path):
    steps = 40
    cfg = compose_config(["experiment=demo", "trainer=gpu", f"paths.synthetic_dir={outdoor_root}", f"paths.output_dir={tmp_path}",
                          f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1", "logger=csv", *TINY])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    module, datamodule, trainer = fit(cfg)
    assert trainer.global_step == steps and trainer.strategy.root_device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in module.model.parameters())  # mixed: weights stay float32
    rows = [r for f in tmp_path.rglob("metrics.csv") for r in csv.DictReader(f.open())]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= steps // 2 and all(math.isfinite(v) for v in losses), losses
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)

    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader())).to("cuda")
    model = module.model.cuda().eval()  # Lightning hands the model back on the CPU after fit
    with torch.autocast("cuda", dtype=torch.bfloat16):  # what bf16-mixed prediction runs under
        detected = model.predict(batch)
        on_gt = model.predict(batch, regions="gt")
    assert len(detected) == len(on_gt) == len(batch)
    texts = [c.text for s in on_gt for c in s]
    assert len(texts) == sum(len(s.boxes) for s in batch.samples) and any(texts), texts
