"""Time spans of audible (or visual) events, in seconds."""
from __future__ import annotations

from typing import Sequence

import torch

from dense3d.errors import EventError

__all__ = ["Events"]


class Events:
    """A batch of N time spans, ``tensor`` of shape (N, 2) = ``(t0, t1)`` in seconds.

    Args:
        tensor: anything ``torch.as_tensor`` accepts with shape (N, 2); empty gives N = 0.
        source: where the spans came from, for error messages.
        duration: if given, spans must lie inside ``[0, duration]``.

    Raises:
        EventError: wrong shape, non-finite times, ``t1 < t0``, negative times or times past
            ``duration``.
    """

    def __init__(self, tensor, source: str = "Events(tensor)", duration: float | None = None):
        t = torch.as_tensor(tensor)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.numel() == 0:
            t = t.reshape(0, 2)
        if t.dim() != 2 or t.shape[1] != 2:
            raise EventError(source, "timestamps", "shape (N, 2) [t0, t1]", got=f"shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).any(1).nonzero()[0, 0])
            raise EventError(source, f"timestamps[{bad}]", "finite seconds", got=t[bad].tolist())
        if bool((t[:, 1] < t[:, 0]).any()):
            bad = int((t[:, 1] < t[:, 0]).nonzero()[0, 0])
            raise EventError(source, f"timestamps[{bad}]", "t1 >= t0", got=t[bad].tolist())
        if bool((t[:, 0] < 0).any()):
            bad = int((t[:, 0] < 0).nonzero()[0, 0])
            raise EventError(source, f"timestamps[{bad}]", "t0 >= 0", got=t[bad].tolist())
        if duration is not None and bool((t[:, 1] > duration + 1e-6).any()):
            bad = int((t[:, 1] > duration + 1e-6).nonzero()[0, 0])
            raise EventError(source, f"timestamps[{bad}]", f"t1 <= duration {duration}", got=t[bad].tolist())
        self.tensor = t
        self.duration = duration

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> "Events":
        t = self.tensor[item]
        if t.dim() == 1:
            t = t.unsqueeze(0)  # (2,) -> (1, 2)
        obj = Events.__new__(Events)
        obj.tensor, obj.duration = t, self.duration
        return obj

    def __repr__(self) -> str:
        return f"Events(n={len(self)}, duration={self.duration})"

    @classmethod
    def cat(cls, events: Sequence["Events"]) -> "Events":
        if not events:
            return cls(torch.zeros(0, 2))
        return cls(torch.cat([e.tensor for e in events], 0), duration=events[0].duration)

    @property
    def t0(self) -> torch.Tensor:
        return self.tensor[:, 0]

    @property
    def t1(self) -> torch.Tensor:
        return self.tensor[:, 1]

    @property
    def centers(self) -> torch.Tensor:
        """(N,) mid-points."""
        return self.tensor.mean(1)

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) durations ``t1 - t0``."""
        return self.tensor[:, 1] - self.tensor[:, 0]

    def to_center_length(self) -> torch.Tensor:
        """(N, 2) ``(centre, length)``: the parametrisation event heads regress."""
        return torch.stack([self.centers, self.lengths], 1)

    @classmethod
    def from_center_length(cls, cl: torch.Tensor, duration: float | None = None) -> "Events":
        """From (N, 2) ``(centre, length)``; clamps to ``[0, duration]`` when a duration is given."""
        t0 = cl[:, 0] - cl[:, 1].clamp(min=0) / 2
        t1 = cl[:, 0] + cl[:, 1].clamp(min=0) / 2
        t = torch.stack([t0, t1], 1).clamp(min=0)  # (N, 2)
        if duration is not None:
            t = t.clamp(max=duration)
        return cls(t, duration=duration)

    def pairwise_iou(self, other: "Events") -> torch.Tensor:
        """(N, M) temporal IoU ``|A ∩ B| / |A ∪ B|`` (plain IoU; the ActivityNet evaluator's
        variant lives in ``dense3d.eval``)."""
        a, b = self.tensor[:, None, :], other.tensor[None, :, :]  # (N, 1, 2), (1, M, 2)
        inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
        union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
        return inter / union.clamp(min=1e-8)
