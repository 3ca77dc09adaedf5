"""Image backbone shared by the camera and video encoders: a torchvision ResNet trunk.

Random init by default; ``weights_path`` loads a local ``state_dict`` (torchvision's ResNet
keys; ``.pth`` or ``.safetensors``). Nothing downloads.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from dense3d.errors import CheckpointError, ConfigError

__all__ = ["ResNetBackbone"]

_RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint (``.safetensors`` or a torch pickle of tensors) as a state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "weights_path", "an existing checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(path, "<file>", "a readable checkpoint", got=f"{type(e).__name__}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(path, "<file>", "a dict of tensors (a state_dict)", got=type(sd).__name__)
    return sd


class ResNetBackbone(nn.Module):
    """ResNet stages 1..4; returns the maps of ``out_indices`` (1-based stage numbers).

    Args:
        depth: 18, 34 or 50.
        out_indices: stages to return, e.g. ``(3, 4)`` for strides 16 and 32.
        weights_path: local torchvision ResNet state_dict, or None for random init.
        frozen_stages: freeze the stem and the first ``frozen_stages`` stages.

    Shapes: (N, 3, H, W) -> [(N, C_i, H / s_i, W / s_i)] with s = 4, 8, 16, 32 for stages 1..4.
    """

    def __init__(self, depth: int = 18, out_indices: tuple[int, ...] = (3, 4), weights_path: str | None = None, frozen_stages: int = 0):
        super().__init__()
        if depth not in _RESNETS:
            raise ConfigError("ResNetBackbone", "depth", "18, 34 or 50", got=depth)
        if not out_indices or any(i not in (1, 2, 3, 4) for i in out_indices):
            raise ConfigError("ResNetBackbone", "out_indices", "stage numbers in 1..4", got=list(out_indices))
        net = _RESNETS[depth](weights=None)
        if weights_path:
            missing, unexpected = net.load_state_dict(load_state_dict_file(weights_path), strict=False)
            if [k for k in missing if not k.startswith("fc.")]:
                raise CheckpointError(weights_path, "state_dict", "torchvision ResNet keys", got=f"missing {missing[:3]}")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        # only the stages up to the last returned one (unused stages would hold dead weights)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4][: max(out_indices)])
        self.out_indices = tuple(out_indices)
        width = 64 if depth < 50 else 256
        self.out_channels = tuple(width * 2 ** (i - 1) for i in self.out_indices)
        self.strides = tuple(2 ** (i + 1) for i in self.out_indices)
        # frozen: no gradients, and batch norms kept in eval mode (their running statistics
        # would otherwise still follow each training batch; mmdet's ResNet does the same)
        # (a count, not a ModuleList: the same modules listed twice would add state_dict keys)
        self.frozen_stages = max(0, int(frozen_stages))
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train()

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.stem, *self.stages[: self.frozen_stages]] if self.frozen_stages > 0 else []

    def train(self, mode: bool = True) -> "ResNetBackbone":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        outs = []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
