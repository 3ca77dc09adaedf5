"""Each sample's augmentation is drawn from (data seed, epoch, sample index): the same with any
number of DataLoader workers and after a resume inside an epoch, and the training process's own
random stream (dropout) is left as it would be without augmentation."""
from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from dense3d.data.datasets.base import SampleDataset
from dense3d.data.transforms import Compose, GlobalFlip, GlobalRotate, GlobalScale, PointShuffle
from dense3d.engine.module import DenseCaptionDataModule, DenseCaptionModule, RNGStateCallback, SampleIndex, SeededSamples
from dense3d.structures import BoxAnnotations, Boxes3D, PointCloud, Sample

N_SAMPLES, N_POINTS, N_BOXES = 8, 32, 3


class GlobalJitter:
    """A transform that takes no generator: it draws from torch's and numpy's global generators."""

    def __call__(self, sample: Sample) -> Sample:
        pts = sample.points.points.clone()
        pts[:, :3] += 0.01 * torch.randn(len(pts), 3) + float(np.random.uniform(-0.01, 0.01))
        return Sample(sample.sample_id, points=PointCloud(pts), boxes=sample.boxes, meta=sample.meta)


def _augment() -> Compose:
    return Compose({"rotate": GlobalRotate((-3.0, 3.0)), "scale": GlobalScale((0.8, 1.2)), "flip": GlobalFlip(0.5, 0.5),
                    "shuffle": PointShuffle(), "jitter": GlobalJitter()})


class Scenes(SampleDataset):
    """Small synthetic scenes (fixed points and boxes per index) through the real transforms."""

    def _build_index(self) -> list:
        return list(range(N_SAMPLES))

    def _load(self, entry) -> Sample:
        g = torch.Generator().manual_seed(100 + entry)
        pts = torch.randn(N_POINTS, 3, generator=g) * 5  # (N, 3)
        boxes = torch.cat([torch.randn(N_BOXES, 3, generator=g) * 5, torch.rand(N_BOXES, 3, generator=g) + 0.5,
                           torch.rand(N_BOXES, 1, generator=g)], 1)  # (K, 7)
        ann = BoxAnnotations(Boxes3D(boxes), torch.zeros(N_BOXES, dtype=torch.long), ("thing",))
        return Sample(str(entry), points=PointCloud(pts), boxes=ann)


def collate(samples: list[Sample]):
    """(indices (B,), points (B, N, 3), boxes (B, K, 7))"""
    return (torch.tensor([int(s.sample_id) for s in samples]), torch.stack([s.points.points for s in samples]),
            torch.stack([s.boxes.boxes.tensor for s in samples]))


def _epoch(dm: DenseCaptionDataModule, epoch: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return {int(i): (p, b) for idx, pts, boxes in loader for i, p, b in zip(idx, pts, boxes)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)


def test_the_same_seed_epoch_and_index_give_the_same_augmentation_with_0_1_2_workers():
    raw = {i: (s.points.points, s.boxes.boxes.tensor) for i, s in enumerate(Scenes())}
    runs = {w: [_epoch(DenseCaptionDataModule(Scenes(_augment()), collate_fn=collate, batch_size=3, num_workers=w, seed=5), e)
                for e in (0, 1)] for w in (0, 1, 2)}
    for e in (0, 1):
        assert _same(runs[0][e], runs[1][e]) and _same(runs[0][e], runs[2][e]), f"epoch {e}: workers change the augmentation"
        # the loader's sample is the wrapper's for that (seed, epoch, index), in this process
        alone = SeededSamples(Scenes(_augment()), 5)
        for i in range(N_SAMPLES):
            s = alone[SampleIndex(i, e)]
            assert torch.equal(s.points.points, runs[0][e][i][0]) and torch.equal(s.boxes.boxes.tensor, runs[0][e][i][1])
    assert not any(torch.equal(raw[i][1], runs[0][0][i][1]) for i in raw)  # augmented
    # another epoch, another augmentation of every sample; another data seed, another augmentation
    assert not any(torch.equal(runs[0][0][i][1], runs[0][1][i][1]) for i in raw)
    other = _epoch(DenseCaptionDataModule(Scenes(_augment()), collate_fn=collate, batch_size=3, seed=6), 0)
    assert not any(torch.equal(runs[0][0][i][1], other[i][1]) for i in raw)


def test_a_transforms_own_seed_replaces_the_data_seed():
    def boxes(seed, data_seed):
        t = Compose({"rotate": GlobalRotate((-3.0, 3.0), seed=seed)})
        return SeededSamples(Scenes(t), data_seed)[SampleIndex(2, 1)].boxes.boxes.tensor

    assert torch.equal(boxes(7, 0), boxes(7, 1))  # the step's seed, not the data module's
    assert not torch.equal(boxes(7, 0), boxes(8, 0)) and not torch.equal(boxes(None, 0), boxes(None, 1))


def test_fetching_augmented_batches_leaves_the_training_processs_random_streams_alone():
    def draws(transforms):
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        dm = DenseCaptionDataModule(Scenes(transforms), collate_fn=collate, batch_size=4, num_workers=0, seed=0)
        next(iter(dm.train_dataloader()))
        mask = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)  # the dropout after the batch
        return mask, np.random.random(), random.random()

    plain, augmented = draws(None), draws(_augment())
    assert torch.equal(plain[0], augmented[0]) and plain[1:] == augmented[1:]


# -- a resume inside an epoch, with workers

class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))

    def forward(self, batch):
        _, pts, boxes = batch
        return {"mse": torch.nn.functional.mse_loss(self.net(pts.mean(1)), boxes[:, :, :1].mean(1))}

    def predict(self, batch):
        return self.net(batch[1].mean(1))


class Record(pl.Callback):
    def __init__(self):
        self.batches: dict[int, tuple] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches[trainer.global_step] = tuple(t.clone() for t in batch)


def _fit(out, max_steps, resume=None):
    pl.seed_everything(0, workers=True, verbose=False)
    dm = DenseCaptionDataModule(Scenes(_augment()), collate_fn=collate, batch_size=2, num_workers=2, seed=0)
    record = Record()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, callbacks=[RNGStateCallback(), ckpt, record],
                         logger=False, enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(DenseCaptionModule(Regressor(), torch.optim.AdamW), dm, ckpt_path=resume)
    return record.batches


@pytest.mark.filterwarnings("ignore")
def test_a_resume_inside_an_epoch_with_workers_sees_the_uninterrupted_runs_batches(tmp_path):
    whole = _fit(tmp_path / "whole", 7)  # 4 batches an epoch: step 3 is inside epoch 0
    resumed = _fit(tmp_path / "resumed", 7, resume=str(tmp_path / "whole" / "step=3.ckpt"))
    assert sorted(resumed) == [3, 4, 5, 6]
    for step in resumed:
        assert all(torch.equal(a, b) for a, b in zip(whole[step], resumed[step])), f"step {step}"
