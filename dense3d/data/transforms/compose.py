"""A pipeline of sample transforms, keyed by name (pipelines are dicts in the configs), and the
per-sample random generators its random steps draw from."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import zlib
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from dense3d.structures import Sample

__all__ = ["Compose", "SampleKey", "current_sample_key", "sample_key"]


@dataclasses.dataclass(frozen=True)
class SampleKey:
    """What one sample's augmentation is drawn from: the data seed, the epoch and the sample's
    index. The same key gives the same draws in any process (the training process or any
    DataLoader worker, however many there are, before or after a resume)."""

    seed: int
    epoch: int
    index: int

    def entropy(self, stream: str = "", seed: int | None = None) -> list[int]:
        """Non-negative words for ``np.random.SeedSequence``: ``seed`` (default: the data seed),
        epoch, index and the stream's name (a pipeline step's name: switching one step off does not
        change what the others draw)."""
        words = [self.seed if seed is None else int(seed), self.epoch, self.index, zlib.crc32(stream.encode())]
        return [w % 2**64 for w in words]  # SeedSequence takes non-negative integers

    def generator(self, stream: str = "", seed: int | None = None) -> torch.Generator:
        """A private CPU ``torch.Generator`` for ``stream`` of this sample."""
        word = np.random.SeedSequence(self.entropy(stream, seed)).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(word))


_SAMPLE_KEY: contextvars.ContextVar[SampleKey | None] = contextvars.ContextVar("dense3d_sample_key", default=None)


@contextlib.contextmanager
def sample_key(key: SampleKey) -> Iterator[SampleKey]:
    """Inside this block ``Compose`` hands each random step a generator drawn from ``key``
    (the data module loads every sample inside one: ``dense3d.engine.module.SeededSamples``)."""
    token = _SAMPLE_KEY.set(key)
    try:
        yield key
    finally:
        _SAMPLE_KEY.reset(token)


def current_sample_key() -> SampleKey | None:
    """The key of the sample being loaded, or None outside ``sample_key``."""
    return _SAMPLE_KEY.get()


class Compose:
    """Apply transforms in the order of ``transforms`` (a dict name -> transform).

    A ``None`` value skips that step, so an experiment config can switch one off with
    ``data.transforms.transforms.flip: null``. ``reads`` / ``writes`` are the unions of the steps'.

    Random steps (``draws_random = True``: they take ``generator=``) get, while a sample is loaded
    under ``sample_key`` (the data module does it), their own generator seeded by (data seed,
    epoch, sample index, step name) — or by the step's own ``seed`` in place of the data seed
    when the step has one. Outside ``sample_key`` they draw as they do alone (their own ``seed``'s
    sequence, else torch's global generator).
    """

    def __init__(self, transforms: Mapping[str, Callable[[Sample], Sample] | None]):
        self.transforms = {str(k): v for k, v in transforms.items() if v is not None}
        self.reads = tuple(dict.fromkeys(r for t in self.transforms.values() for r in getattr(t, "reads", ())))
        self.writes = tuple(dict.fromkeys(w for t in self.transforms.values() for w in getattr(t, "writes", ())))

    def __call__(self, sample: Sample) -> Sample:
        key = current_sample_key()
        for name, t in self.transforms.items():
            if key is not None and getattr(t, "draws_random", False):
                sample = t(sample, generator=key.generator(name, getattr(t, "seed", None)))
            else:
                sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.transforms.items())
        return f"Compose({inner})"
