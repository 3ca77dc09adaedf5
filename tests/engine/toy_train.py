"""A small training run through the engine, as a script, for the DDP and kill -9 tests.

    python toy_train.py OUT_DIR --epochs 4 [--kill-at-epoch 2] [--resume] [--ddp] [--grads]
                        [--augment] [--max-steps N --every-n-steps K]
"""
import argparse
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

from dense3d.engine.checkpoint import SafeCheckpointIO
from dense3d.engine.module import DenseCaptionDataModule, DenseCaptionModule, RNGStateCallback


class ToyRegressor(torch.nn.Module):
    """Not a captioner: a two-layer net with dropout that follows the engine's model contract."""

    def __init__(self, dropout: float = 0.2, augment: bool = False):
        super().__init__()
        self.augment = augment
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 1))

    def forward(self, batch):
        x, y = batch
        if self.augment and self.training:
            # jitter the samples of positive target only: how many numbers a batch draws depends on
            # its data (as augmenting a scene's boxes does), so the ranks' random states part
            positive = y[:, 0] > 0  # (B,)
            x = x.clone()
            x[positive] += 0.01 * torch.randn(int(positive.sum()), x.shape[1])
        return {"mse": torch.nn.functional.mse_loss(self.net(x), y)}

    def predict(self, batch):
        return self.net(batch[0])


class Kill(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveGrads(pl.Callback):
    def __init__(self, path):
        self.path = path

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == 0 and trainer.global_rank == 0:
            torch.save({k: p.grad.clone() for k, p in pl_module.named_parameters()}, self.path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--kill-at-epoch", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--grads", action="store_true")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--every-n-steps", type=int, default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0, workers=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(32, 1, generator=g))
    dm = DenseCaptionDataModule(data, batch_size=args.batch_size, seed=0)
    module = DenseCaptionModule(ToyRegressor(0.0 if args.grads else 0.2, augment=args.augment), torch.optim.AdamW)
    callbacks = [RNGStateCallback(), pl.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_last=True, **(
        {"every_n_train_steps": args.every_n_steps} if args.every_n_steps else {"every_n_epochs": 1}))]
    if args.kill_at_epoch is not None:
        callbacks.append(Kill(args.kill_at_epoch))
    if args.grads:
        callbacks.append(SaveGrads(out / "grads.pt"))
        dm = DenseCaptionDataModule(data, batch_size=args.batch_size, seed=0, shuffle=False)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=2 if args.ddp else 1,
        strategy=pl.strategies.DDPStrategy(process_group_backend="gloo") if args.ddp else "auto",
        plugins=[SafeCheckpointIO()],
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        use_distributed_sampler=False,  # SeededSampler splits across ranks itself
        max_steps=1 if args.grads else args.max_steps,
    )
    trainer.fit(module, dm, ckpt_path=str(out / "ckpt" / "last.ckpt") if args.resume else None)
    if trainer.global_rank == 0 and not args.grads:
        torch.save(module.model.state_dict(), out / "final.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
