"""A pipeline of sample transforms, keyed by name (pipelines are dicts in the configs)."""
from __future__ import annotations

from typing import Callable, Mapping

from dense3d.structures import Sample

__all__ = ["Compose"]


class Compose:
    """Apply transforms in the order of ``transforms`` (a dict name -> transform).

    A ``None`` value skips that step, so an experiment config can switch one off with
    ``data.transforms.transforms.flip: null``. ``reads`` / ``writes`` are the unions of the steps'.
    """

    def __init__(self, transforms: Mapping[str, Callable[[Sample], Sample] | None]):
        self.transforms = {str(k): v for k, v in transforms.items() if v is not None}
        self.reads = tuple(dict.fromkeys(r for t in self.transforms.values() for r in getattr(t, "reads", ())))
        self.writes = tuple(dict.fromkeys(w for t in self.transforms.values() for w in getattr(t, "writes", ())))

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms.values():
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.transforms.items())
        return f"Compose({inner})"
