"""preprocess: resize a raw uint8 RGB frame to 224x224 and normalise it (ImageNet mean/std), as float16.

Handler contract (see platform/bundle.py): `build(spec, device="cpu", small=False)` returns a torch
module whose forward takes the spec's inputs as batched keyword tensors and returns a dict of the
spec's outputs. No weights: this stage is arithmetic only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Preprocess(nn.Module):
    """uint8 [B, 3, H, W] -> float16 [B, 3, 224, 224]: bilinear resize, scale to [0, 1], normalise."""

    def __init__(self, size: int = 224) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        x = frame.float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return {"image": x.half()}


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up; `small` changes nothing here (no parameters)."""
    return Preprocess().to(device).eval()
