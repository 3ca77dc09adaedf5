"""What every dense3d dataset shares: sensor selection, a lazily built index, transforms."""
from __future__ import annotations

import abc
import copy
import operator
from typing import Callable, Sequence

from torch.utils.data import Dataset

from dense3d.errors import ConfigError, Dense3DError
from dense3d.structures import Sample

__all__ = ["SENSOR_NAMES", "SampleDataset", "SampleIndexError", "select_sensors"]

# The sensor names of configs/sensors/*.yaml.
SENSOR_NAMES = ("lidar", "camera", "audio", "video")


class SampleIndexError(Dense3DError, IndexError):
    """A sample index outside the data set: one line, and still an ``IndexError`` (``for s in
    dataset`` stops on it, as the sequence protocol expects)."""


def select_sensors(sensors: Sequence[str], supported: Sequence[str], source: str) -> tuple[str, ...]:
    """The requested sensors this data set has (a run may ask for more than one data set holds,
    e.g. ``sensors=all``); a name outside ``SENSOR_NAMES`` is a config error."""
    sensors = tuple(str(s) for s in sensors)
    for s in sensors:
        if s not in SENSOR_NAMES:
            raise ConfigError(source, "sensors", f"names among {list(SENSOR_NAMES)}", got=s)
    return tuple(s for s in sensors if s in supported)


class SampleDataset(Dataset, abc.ABC):
    """Base class: subclasses implement ``_build_index() -> list`` and ``_load(entry) -> Sample``.

    The index is built on first use, so a config instantiates without touching the files.
    """

    def __init__(self, transforms: Callable[[Sample], Sample] | None = None):
        self.transforms = transforms
        self._index: list | None = None

    @property
    def index(self) -> list:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    @abc.abstractmethod
    def _build_index(self) -> list:
        """One entry per sample (whatever ``_load`` needs)."""

    @abc.abstractmethod
    def _load(self, entry) -> Sample:
        """Read one sample."""

    def __len__(self) -> int:
        return len(self.index)

    def reference_captions(self) -> list[list[str]]:
        """The reference captions of every annotated region, one list per region (boxes, then
        events, sample by sample), read without the sensors or the transforms: the corpus SCST's
        CIDEr-D reward counts its document frequencies over (``scst_document_frequency=train``)."""
        bare = copy.copy(self)  # shares the built index; its own sensor selection
        if hasattr(bare, "sensors"):
            bare.sensors = ()
        found: list[list[str]] = []
        for entry in bare.index:
            sample = bare._load(entry)
            for regions in (sample.boxes, sample.events):
                if regions is not None and regions.captions is not None:
                    found += [list(c) for c in regions.captions if c]
        return found

    def __getitem__(self, i: int) -> Sample:
        n = len(self.index)
        try:
            k = operator.index(i)  # ints, numpy and 0-d torch integers
        except TypeError:
            raise SampleIndexError(type(self).__name__, "index", f"an integer in 0..{n - 1}", got=repr(i)) from None
        if isinstance(i, bool) or not -n <= k < n:
            raise SampleIndexError(type(self).__name__, "index", f"an integer in 0..{n - 1} (the data set has {n} samples)", got=repr(i))
        sample = self._load(self.index[k])
        return self.transforms(sample) if self.transforms is not None else sample
