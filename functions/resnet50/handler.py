"""resnet50: ResNet-50 (bottleneck blocks [3, 4, 6, 3]) image classifier in plain torch, random init.

`small=True` (tests, `gpufaas profile --small`) keeps the architecture (stem, four stages of bottleneck
blocks, global pool, 1000-way head) with base width 8 and one block per stage, so a CPU forward pass
at 224x224 takes milliseconds. Weights: the worker loads `weights.pt` from the bundle when present.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), batch norm, residual (projected when shapes change)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        return self.relu(self.body(x) + idt)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), four bottleneck stages, global average pool, linear head."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), base: int = 64, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        layers = []
        cin = base
        for i, n in enumerate(blocks):
            width = base * 2 ** i
            for j in range(n):
                layers.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stages(self.stem(image.float()))
        return {"logits": self.fc(torch.flatten(self.pool(x), 1))}


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: ResNet-50, or its reduced-width twin when `small`."""
    model = ResNet((1, 1, 1, 1), base=8) if small else ResNet()
    return model.to(device).eval()
