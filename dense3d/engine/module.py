"""The Lightning module and data module around a dense-captioning model.

The model owns its logic; the engine only runs it. A model used here provides:

* ``forward(batch) -> dict[str, Tensor]``: the weighted loss terms of one batch (their sum is
  minimised);
* ``predict(batch) -> list[list[DenseCaption]]``: one list of described regions per sample;
* optionally ``loss_weight(name) -> float``: the weight a loss term carries; terms weighted
  other than 1 are also logged divided by it (``train/target_unweighted``).

One training step, in full: ``losses = model(batch); loss = sum(losses.values());
loss.backward(); optimizer.step()`` (Lightning does the last two, plus gradient accumulation,
clipping, mixed precision and DDP gradient averaging, as the trainer config says).
"""
from __future__ import annotations

import functools
import random
import sys
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dense3d.errors import CheckpointError, ConfigError

__all__ = ["DenseCaptionModule", "DenseCaptionDataModule", "RNGStateCallback", "SampleIndex", "SeededSampler", "SeededSamples",
           "freeze"]


def freeze(model: torch.nn.Module, names: Sequence[str], except_: Sequence[str] = ()) -> list[str]:
    """Freeze the sub-modules of ``model`` named in ``names`` (attribute paths such as
    ``"box_detector"`` or ``"captioner.qformer"``), except the sub-modules in ``except_``
    (e.g. ``"box_detector.region_sampler"``: it feeds only the captioner, so it trains in the
    captioning stage); returns the names frozen. A name that is not a sub-module is a one-line
    ``ConfigError`` listing the model's parts."""
    _check_part_names(model, "frozen", names)
    _check_part_names(model, "trainable", except_)
    done = []
    for name in names:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(False)
        done.append(name)
    for name in except_:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return done


SOURCE = "configs/train.yaml"  # the composed config, for messages


def _check_part_names(model: torch.nn.Module, key: str, names) -> None:
    """``frozen`` / ``trainable``: a list of sub-module paths of ``model``; else a one-line ConfigError
    listing the top-level parts (a typo gave AttributeError from deep inside torch)."""
    parts = sorted(n for n, _ in model.named_children())
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(SOURCE, key, f"a list of sub-modules, e.g. [{parts[0] if parts else 'box_detector'}]", got=names)
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ConfigError(SOURCE, key, f"sub-modules of the model ({', '.join(parts)}, or a dotted path inside one)",
                              got=name) from None


def _check_optimizer(optimizer: Callable, scheduler: Callable | None) -> None:
    """Build the optimizer (and scheduler, one step) on a stand-in parameter: a bad learning rate,
    an argument the optimizer does not take or a zero-length schedule is a one-line ConfigError
    here, before data and model run (Lightning builds them only inside ``fit``)."""
    import warnings

    probe = torch.nn.Parameter(torch.zeros(1))
    try:
        opt = optimizer([probe])
    except (TypeError, ValueError) as e:
        raise ConfigError(SOURCE, "optim", "an optimizer config that takes the model's parameters",
                          got=f"{type(e).__name__}: {e}") from None
    if scheduler is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = scheduler(opt)
            opt.step()
            sched.step()
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError(SOURCE, "scheduler", "a learning-rate schedule over the run's steps",
                          got=f"{type(e).__name__}: {e}") from None


class DenseCaptionModule(pl.LightningModule):
    """Trains and runs a dense-captioning model.

    Args:
        model: the model (see the module docstring for what it provides).
        optimizer: a partial taking the trainable parameters (hydra ``_partial_: true``).
        scheduler: a partial taking the optimizer, or None; stepped every optimizer step.
        frozen: sub-modules frozen during this stage (e.g. ``["box_detector"]`` while captioning).
        trainable: sub-modules inside frozen ones that train all the same (and stay in train
            mode), e.g. ``["box_detector.region_sampler"]``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        frozen: Sequence[str] = (),
        trainable: Sequence[str] = (),
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.frozen = freeze(model, frozen, trainable)
        self.trainable = list(trainable)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(SOURCE, "frozen", "some part of the model that trains", got=list(frozen))
        _check_optimizer(optimizer, scheduler)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (BatchNorm statistics and dropout fixed) while the rest
        trains: a frozen detector then computes exactly what it will compute at test time."""
        super().train(mode)
        for name in self.frozen:
            self.model.get_submodule(name).eval()
        for name in self.trainable:
            self.model.get_submodule(name).train(mode)
        return self

    def on_train_start(self) -> None:
        # Lightning 2 no longer calls .train() when fitting starts (it keeps the modes the
        # modules have, and its evaluation loops restore those): without this the frozen
        # detector ran in train mode and its BatchNorm statistics drifted in every captioning run
        self.train()
        if getattr(self.model, "wants_reward_corpus", False):
            self._hand_reward_corpus()

    def _hand_reward_corpus(self) -> None:
        """SCST with ``scst_document_frequency=train``: the reward's document frequencies from every
        annotated region's references in the training set (read without the sensors)."""
        dataset = getattr(self.trainer.datamodule, "train_set", None) if self.trainer.datamodule is not None else None
        if dataset is None:
            dataset = self.trainer.train_dataloader.dataset
            dataset = dataset.dataset if isinstance(dataset, SeededSamples) else dataset
        if not hasattr(dataset, "reference_captions"):
            raise ConfigError(SOURCE, "model.scst_document_frequency",
                              "'batch' for a training set that cannot list its reference captions", got="train")
        n = self.model.set_reward_corpus(dataset.reference_captions())
        print(f"dense3d train: SCST reward's CIDEr-D document frequencies from the references of {n} training regions",
              file=sys.stderr)

    def on_train_epoch_start(self) -> None:
        # The training sampler's epoch is the trainer's: Lightning hands it its count of processed
        # epochs, which after resuming a run of trainer.max_steps from a checkpoint written at an
        # epoch's end is one ahead (it counts that epoch's end again), so every later epoch of the
        # resumed run drew the order of the epoch after it. The loader reads its sampler when it
        # fetches the epoch's first batch, after this hook (workers: see train_dataloader).
        sampler = getattr(self.trainer.train_dataloader, "sampler", None)
        if isinstance(sampler, SeededSampler):
            sampler.set_epoch(self.current_epoch)

    def forward(self, batch):
        return self.model(batch)

    def _step(self, batch, prefix: str) -> torch.Tensor:
        losses = self.model(batch)
        loss = functools.reduce(torch.add, losses.values())
        logged = {f"{prefix}/{k}": v.detach() for k, v in losses.items()}
        weight = getattr(self.model, "loss_weight", None)  # optional: the weight of each term
        for k, v in losses.items():
            w = float(weight(k)) if weight is not None else 1.0
            if w not in (0.0, 1.0):  # e.g. the target head's 0.5: its loss as itself, comparable across weights
                logged[f"{prefix}/{k}_unweighted"] = v.detach() / w
        for k, v in getattr(self.model, "step_metrics", {}).items():  # e.g. SCST's rewards
            logged[f"{prefix}/{k}"] = v.detach().float()
        self.log_dict(logged, batch_size=len(batch), sync_dist=prefix != "train")
        self.log(f"{prefix}/loss", loss.detach(), prog_bar=True, batch_size=len(batch), sync_dist=prefix != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self.model.predict(batch)

    def optimizer_params(self) -> list:
        """What the optimizer is built over: the trainable parameters, in the model's order, as
        ``(name, parameter)`` pairs for an optimizer that groups them by name (weight decay only
        where it belongs: :mod:`dense3d.engine.optim`), else the parameters alone."""
        from dense3d.engine.optim import optimizer_params

        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return optimizer_params(self.optimizer_factory, named)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a checkpoint whose optimizer holds its parameters in one group (written before
        weight decay was split, or with the split off) under a config that splits them
        (:mod:`dense3d.engine.optim`): its group is split as the config splits the parameters, each
        tensor keeping its Adam moments, each group the config's weight decay (the rest of the
        group's options, the learning rate included, as saved; the schedule then follows the
        config: :class:`dense3d.engine.schedule.ScheduleFromConfig`). Other differences in the
        groups are a one-line CheckpointError (torch's "different number of parameter groups")."""

        states = checkpoint.get("optimizer_states") or []
        if not states:
            return
        params = self.optimizer_params()
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        fresh_groups = self.optimizer_factory(params).param_groups  # the config's groups (no state is made)
        source = (getattr(self.trainer, "ckpt_path", None) if self._trainer is not None else None) or "the resumed checkpoint"
        hint = "resume with optim.no_decay_1d and optim.no_decay as the run had them"
        for i, state in enumerate(states):
            saved = state.get("param_groups", [])
            if len(saved) == len(fresh_groups):
                sizes, fresh_sizes = [len(g["params"]) for g in saved], [len(g["params"]) for g in fresh_groups]
                if sizes != fresh_sizes:  # torch: "a parameter group that doesn't match the size", from deep inside
                    raise CheckpointError(source, f"optimizer_states[{i}].param_groups", f"groups of {fresh_sizes} tensors, as "
                                          f"the config's optimizer builds ({hint})", got=f"groups of {sizes}")
                _name_groups(saved, fresh_groups)
                _check_moment_shapes(state, fresh_groups, params, source, i, hint)
                continue
            if len(saved) != 1 or len(saved[0]["params"]) != len(tensors):
                raise CheckpointError(source, f"optimizer_states[{i}].param_groups",
                                      f"{len(fresh_groups)} parameter group(s), as the config's optimizer builds (resume with "
                                      "optim.no_decay_1d and optim.no_decay as the run had them)", got=f"{len(saved)} groups")
            saved_ids = saved[0]["params"]  # ids of the trainable tensors, in the model's order
            position = {id(p): j for j, p in enumerate(tensors)}
            options = {k: v for k, v in saved[0].items() if k != "params"}
            state["param_groups"] = [{**options, "weight_decay": group["weight_decay"],
                                      "params": [saved_ids[position[id(p)]] for p in group["params"]]}
                                     for group in fresh_groups]
            _name_groups(state["param_groups"], fresh_groups)
            _check_moment_shapes(state, fresh_groups, params, source, i, hint)
        for sched_state in checkpoint.get("lr_schedulers") or []:  # one rate per group (the config's replaces them on resume)
            _widen_rates(sched_state, len(fresh_groups))
        self._config_schedule_kind(checkpoint, params)

    def _config_schedule_kind(self, checkpoint: dict[str, Any], params: list) -> None:
        """A checkpoint whose schedule is of another kind than the config's (``warmup_steps`` set or
        cleared since: ``SequentialLR`` against the schedule alone) gets the config's schedule as an
        uninterrupted run of this config would have it at the checkpoint's step (replayed on a
        stand-in optimizer), said on stderr; Lightning would load one kind's state into the other
        (a KeyError from inside torch, or a schedule left half restored)."""
        import warnings

        saved = checkpoint.get("lr_schedulers") or []
        if self.scheduler_factory is None or len(saved) != 1:
            return
        with warnings.catch_warnings():  # stepping the stand-in's schedule without its optimizer: torch warns
            warnings.simplefilter("ignore")
            stand_in = self.optimizer_factory(params)  # over the run's parameters: no optimizer state is made
            fresh = self.scheduler_factory(stand_in)
            subs = getattr(fresh, "_schedulers", None)
            saved_subs = saved[0].get("_schedulers")
            if (None if subs is None else len(subs)) == (None if saved_subs is None else len(saved_subs)):
                return
            step = int(saved[0].get("last_epoch", 0))
            for _ in range(step):
                fresh.step()
        saved[0] = fresh.state_dict()
        for state in checkpoint.get("optimizer_states") or []:
            for group, new in zip(state.get("param_groups", []), stand_in.param_groups):
                group["lr"], group["initial_lr"] = new["lr"], new["initial_lr"]
        if self._trainer is None or self._trainer.is_global_zero:
            print(f"dense3d train: resuming with the config's learning-rate schedule ({type(fresh).__name__}"
                  f"{' of ' + ', '.join(type(s).__name__ for s in subs) if subs else ''}), not the checkpoint's "
                  f"({'with' if saved_subs is not None else 'without'} warmup): lr at step {step} "
                  f"{stand_in.param_groups[0]['lr']:.4g}", file=sys.stderr)

    def configure_optimizers(self):
        params = self.optimizer_params()
        opt = self.optimizer_factory(params)
        if self._trainer is None or self.trainer.is_global_zero:
            print(f"dense3d optimizer: {describe_groups(opt, params, self.optimizer_factory)}", file=sys.stderr)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}


def describe_groups(optimizer: torch.optim.Optimizer, params: list, factory: Callable | None = None) -> str:
    """One line on the optimizer's parameter groups, e.g. ``AdamW: 812 tensors decayed
    (weight_decay 0.01), 96 not (1-D: 90, '*.gates': 6)``: a ``no_decay`` pattern that matches
    nothing or too much shows at the start of every run. ``params``: what the optimizer was built
    over (``(name, tensor)`` pairs or tensors); ``factory``: its partial, whose ``no_decay_1d`` /
    ``no_decay`` the reasons count (tensors may count under more than one)."""
    import fnmatch

    name = type(optimizer).__name__
    groups = optimizer.param_groups
    decayed = sum(len(g["params"]) for g in groups if g.get("weight_decay", 0) != 0)
    kept = sum(len(g["params"]) for g in groups) - decayed
    rates = sorted({g.get("weight_decay", 0) for g in groups if g.get("weight_decay", 0) != 0})
    decay = f" (weight_decay {', '.join(f'{r:g}' for r in rates)})" if rates else ""
    options = getattr(factory, "keywords", None) or {}
    named = [p for p in params if isinstance(p, tuple)]
    reasons = []
    if named and options.get("no_decay_1d", True) and getattr(getattr(factory, "func", factory), "takes_names", False):
        reasons.append(f"1-D: {sum(1 for _, p in named if p.ndim <= 1)}")
    for pattern in options.get("no_decay") or ():
        reasons.append(f"'{pattern}': {sum(1 for n, _ in named if fnmatch.fnmatchcase(n, pattern))}")
    return (f"{name}: {decayed} tensors decayed{decay}, {kept} not" + (f" ({', '.join(reasons)})" if reasons else "")
            + f", in {len(groups)} group(s)")


def _check_moment_shapes(state: dict[str, Any], groups: list[dict[str, Any]], params: list, source, index: int,
                         hint: str) -> None:
    """Each tensor's saved optimizer state (Adam's moments) has the shape of the tensor torch's
    ``load_state_dict`` will give it (the saved groups' ids matched in order to ``groups``'
    tensors); else a one-line CheckpointError (the groups hold other tensors than when the run was
    written: torch loads them all the same, and the first step fails from deep inside)."""
    names = {id(p[1]): p[0] for p in params if isinstance(p, tuple)}
    saved_ids = [j for g in state.get("param_groups", []) for j in g["params"]]
    tensors = [p for g in groups for p in g["params"]]
    for j, p in zip(saved_ids, tensors):
        for key, value in (state.get("state", {}).get(j) or {}).items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != p.shape:
                raise CheckpointError(source, f"optimizer_states[{index}].state[{j}].{key}", f"the shape of "
                                      f"{names.get(id(p), 'its tensor')}, {tuple(p.shape)} ({hint})", got=tuple(value.shape))


def _name_groups(saved: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> None:
    """The saved parameter groups take the config's group names (torch's ``load_state_dict``
    replaces the optimizer's groups by the saved ones, names included: a checkpoint written
    before the groups had names logged its learning rates as ``lr-AdamW/pg1``, ``pg2`` from the
    resume on)."""
    for group, new in zip(saved, fresh):
        if "name" in new:
            group["name"] = new["name"]
        else:
            group.pop("name", None)


def _widen_rates(state: dict[str, Any], groups: int) -> None:
    """A scheduler's state saved over one parameter group -> over ``groups`` (its per-group
    lists repeated; the schedules inside a ``SequentialLR`` too)."""
    for key in ("base_lrs", "_last_lr"):
        value = state.get(key)
        if isinstance(value, list) and len(value) == 1:
            state[key] = value * groups
    for sub in state.get("_schedulers") or []:
        _widen_rates(sub, groups)


class SampleIndex(int):
    """A sample index that carries the epoch it is drawn for (``SeededSampler`` yields these).

    The epoch has to reach each sample's augmentation (:class:`SeededSamples`) in the DataLoader's
    workers too, which are persistent (``persistent_workers=True``): their copy of the dataset
    never sees ``set_epoch``, and a value shared with them would race with the batches they
    prefetch. An index that carries its epoch is bound to it when the sampler yields it and travels
    to the worker with the batch (pickled), while staying an ``int`` for everything else that reads
    the sampler (lengths, DDP splits, tests comparing indices)."""

    epoch: int

    def __new__(cls, index: int, epoch: int = 0):
        self = super().__new__(cls, index)
        self.epoch = int(epoch)
        return self

    def __reduce__(self):  # to the worker processes, with the epoch
        return (SampleIndex, (int(self), self.epoch))

    def __repr__(self) -> str:
        return f"SampleIndex({int(self)}, epoch={self.epoch})"


class SeededSamples(Dataset):
    """``dataset`` whose samples are loaded, transforms included, under a random state of their
    own: seeded by ``(seed, epoch, index)`` (the epoch from a :class:`SampleIndex`, 0 for a plain
    int). A sample's augmentation is then the same whatever the number of DataLoader workers, the
    worker that loads it, or a resume inside an epoch (whose workers start afresh).

    * ``Compose``'s random steps get explicit per-sample generators
      (:func:`dense3d.data.transforms.sample_key`; their own ``seed`` option stays theirs);
    * anything else that draws from the global generators while loading (a transform or dataset
      that takes no generator) draws from torch's CPU / numpy / ``random`` states seeded for this
      sample, and the process's own states are restored afterwards: with ``num_workers=0`` the
      training process's stream (dropout) is the one it would be without augmentation. (CUDA
      states are neither seeded nor touched: loading runs on the CPU.)
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from dense3d.data.transforms import SampleKey, sample_key

        key = SampleKey(self.seed, int(getattr(i, "epoch", 0)), int(i))
        words = np.random.SeedSequence(key.entropy("global")).generate_state(2, np.uint32)  # (2,) uint32
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):  # the CPU generator only, restored on exit
            # torch.default_generator, not torch.manual_seed: that one reseeds every CUDA generator too
            torch.default_generator.manual_seed(int(words[0]) << 32 | int(words[1]))
            np.random.seed(int(words[0]))
            random.seed(int(words[1]))
            try:
                with sample_key(key):
                    return self.dataset[int(i)]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


class SeededSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``, split across DDP ranks.

    Lightning calls ``set_epoch`` every epoch, so a resumed run sees exactly the order an
    uninterrupted one would. With ``num_replicas > 1`` rank r takes every r-th index of the
    permutation, like ``DistributedSampler``. It yields :class:`SampleIndex` (an ``int`` carrying
    the epoch, for each sample's augmentation: :class:`SeededSamples`). ``pad`` (training): the
    permutation is padded with its first indices so every rank takes as many steps (DDP averages gradients at each one);
    without it (validation, test, prediction) each sample is seen once, by one rank, and ranks
    may hold one sample less (Lightning's ``sync_dist`` mean weighs each rank by its batch
    sizes). Only a set smaller than the number of ranks is padded all the same, so that no rank
    is left without a batch (it would wait on the others' collectives).
    """

    def __init__(self, dataset_len: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0,
                 pad: bool = True):
        self.n, self.seed, self.shuffle, self.pad = dataset_len, seed, shuffle, pad
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self.skip = 0  # this rank's indices to leave out of the next iteration only (a resumed epoch's done part)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self._padded():
            per_rank = -(-self.n // self.num_replicas)
            order += order[: per_rank * self.num_replicas - self.n]  # pad so every rank gets as many
        mine, self.skip = order[self.rank :: self.num_replicas][self.skip :], 0
        return iter([SampleIndex(i, self.epoch) for i in mine])  # the epoch travels with each index

    def _padded(self) -> bool:
        return self.pad or 0 < self.n < self.num_replicas

    def __len__(self) -> int:
        if self._padded():
            return -(-self.n // self.num_replicas)
        return len(range(self.rank, self.n, self.num_replicas))


class DenseCaptionDataModule(pl.LightningDataModule):
    """Wraps built datasets and the collate function into loaders (seeded, DDP-aware)."""

    def __init__(
        self,
        train: Dataset | None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        collate_fn: Callable | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, None)):
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                raise ConfigError("configs/data", name, "an integer" + (f" >= {low}" if low is not None else ""), got=value)
        self.train_set, self.val_set, self.test_set = train, val, test
        self.collate_fn, self.batch_size, self.num_workers, self.seed = collate_fn, batch_size, num_workers, seed
        self.shuffle = shuffle
        self.resumed_world_size: int | None = None  # the ranks the resumed checkpoint was written by (None: unknown)

    def state_dict(self) -> dict[str, Any]:
        """In the checkpoint: the number of ranks it is written by (a resume inside an epoch
        skips the samples each rank has trained: see :meth:`train_dataloader`)."""
        return {"world_size": self.trainer.world_size if self.trainer is not None else 1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed_world_size = int(state["world_size"]) if "world_size" in state else None

    def _loader(self, dataset: Dataset, shuffle: bool, pad: bool = False) -> DataLoader:
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # pad: training only (equal steps per rank); evaluation sees each sample once
        sampler = SeededSampler(len(dataset), self.seed, shuffle, replicas, rank, pad=pad)
        # The loader's own generator: each iterator it makes draws its workers' base seed from it,
        # not from torch's global generator, whose state a checkpoint saves (RNGStateCallback). A
        # resumed run makes an iterator where the uninterrupted run made none (inside an epoch,
        # or once more when Lightning counted the run's steps first), and that draw shifted every
        # later dropout mask and augmentation: the run was not the uninterrupted one.
        generator = torch.Generator().manual_seed(self.seed)
        # each sample loaded under its own random state, seeded by (seed, epoch, index): the same
        # augmentation with any number of workers and after a resume (SeededSamples)
        return DataLoader(SeededSamples(dataset, self.seed), batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self.collate_fn,
                          persistent_workers=self.num_workers > 0, generator=generator)

    def train_dataloader(self):
        loader = self._loader(self.train_set, shuffle=self.shuffle, pad=True)
        # the epoch Lightning will give the sampler (fit_loop restored from a checkpoint by now):
        # with workers the loader takes its first indices when Lightning builds its iterator, before
        # the loop calls set_epoch, and a resumed run reuses that iterator for its first epoch; a
        # resumed run then replayed the previous epoch's order
        loop = getattr(self.trainer, "fit_loop", None) if self.trainer is not None else None
        if loop is not None:
            epoch, batches = loop.epoch_progress.current, loop.epoch_loop.batch_progress
            # a checkpoint written inside an epoch (callbacks.step_checkpoint: at a batch's end),
            # before that epoch's end counted it as processed
            inside = epoch.processed == epoch.started - 1
            if inside and batches.is_last_batch:  # at the epoch's last batch: the next epoch follows
                loader.sampler.set_epoch(epoch.processed + 1)
            else:
                loader.sampler.set_epoch(epoch.processed)
            if inside and not batches.is_last_batch and batches.current.processed > 0:
                self._check_same_ranks(loader.sampler.num_replicas)
                # the rest of that epoch, not its start again: Lightning replays a loader without
                # state_dict from the epoch's first batch (a PossibleUserWarning says so), so the
                # resumed run trained twice on those batches and never on the rest of the epoch
                loader.sampler.skip = batches.current.processed * self.batch_size
        return loader

    def _check_same_ranks(self, world_size: int) -> None:
        """A checkpoint written inside an epoch resumes on as many ranks as wrote it: the samples
        to skip are counted in each rank's batches, and the ranks take other samples of the
        epoch's order when there are more or fewer of them (the resumed epoch would train some
        samples twice and others never); else a one-line CheckpointError."""
        saved = self.resumed_world_size
        if saved is None or saved == world_size:
            return
        source = getattr(self.trainer, "ckpt_path", None) or "the resumed checkpoint"
        raise CheckpointError(source, f"{type(self).__qualname__}.world_size", f"{world_size} rank(s), as this run has, "
                              "for a checkpoint written inside an epoch (resume it on as many ranks as wrote it, or "
                              "resume a checkpoint written at an epoch's end)", got=f"written by {saved} rank(s)")

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False) if self.test_set is not None else []

    def predict_dataloader(self):
        data = self.test_set if self.test_set is not None else self.val_set
        return self._loader(data, shuffle=False)


class RNGStateCallback(pl.Callback):
    """Saves the torch (CPU, and every CUDA device's once CUDA is initialised) / numpy / python
    random states in checkpoints and restores them on resume, so dropout and augmentation draw
    the same numbers as in an uninterrupted run (dropout on a GPU draws from the CUDA
    generators).

    Under DDP every rank's states are saved: Lightning asks every rank for this callback's
    state but writes rank 0's alone, so the states are gathered there (rank 0's at the top, as
    in the format before, with ``"world_size": W`` and ``"other_ranks"``: the states of ranks 1
    to W - 1). Only rank 0's was saved before, and on resume every rank restored it (ranks > 0
    drew other dropout masks and augmentations than in the uninterrupted run). On resume each
    rank restores its own. A checkpoint of another world size, or of the format before, gives
    the ranks it has no state for rank 0's state, said in one line on stderr: a run seeds every
    rank alike (``seed_everything`` with the config's seed), so rank 0's state is what those
    ranks started from, and the resumed run stays reproducible (a fresh seed would be no closer
    to the run that was not interrupted).
    """

    def state_dict(self) -> dict[str, Any]:
        own = _rng_state()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {**own, "world_size": 1, "other_ranks": []}
        world_size = torch.distributed.get_world_size()
        states: list[Any] = [None] * world_size
        # a collective: Lightning calls state_dict on every rank when it writes a checkpoint
        torch.distributed.all_gather_object(states, own)
        return {**states[0], "world_size": world_size, "other_ranks": states[1:]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        world_size = torch.distributed.get_world_size() if distributed else 1
        states = [state, *state.get("other_ranks", [])]  # rank 0's at the top
        if "world_size" in state:
            saved = int(state["world_size"])
            written = f"written by {saved} rank(s)"
        else:  # the format before every rank's state was saved: rank 0's alone
            saved = None
            written = "written with rank 0's random state only"
        if saved != world_size and (saved is not None or world_size > 1) and rank == 0:
            have = min(len(states), world_size)  # ranks 0 .. have - 1 restore the saved state of their number
            if have == world_size:
                rest = ""
            elif have == world_size - 1:
                rest = f"; rank {have} starts from rank 0's random state"
            else:
                rest = f"; ranks {have} to {world_size - 1} start from rank 0's random state"
            own = "rank 0 restores its saved random state" if have == 1 else \
                f"ranks 0 to {have - 1} restore the saved random states of their numbers"
            print(f"dense3d train: the checkpoint was {written}, this run has {world_size} rank(s): {own}{rest} (dropout and "
                  "augmentation draw other numbers than an uninterrupted run)", file=sys.stderr)
        _set_rng_state(states[rank] if rank < len(states) else states[0])


def _rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python random states (tensors and plain containers:
    the checkpoint's trainer state loads with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # (a CPU run does not initialise CUDA here)
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        # one state per device saved; a machine with fewer devices restores those it has
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
