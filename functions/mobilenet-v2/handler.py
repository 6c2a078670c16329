"""mobilenet-v2: MobileNetV2 (inverted residual blocks, linear bottlenecks) in plain torch, random init.

`small=True` uses width multiplier 0.25 and one block per stage: same structure, a fraction of the work.
"""

from __future__ import annotations

import torch
from torch import nn

from gpufaas.functions.layers import InvertedResidual, conv_bn

# (expansion t, channels c, repeats n, stride s), as in Sandler et al. 2018, Table 2
CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _ch(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


class MobileNetV2(nn.Module):
    """Stem, seven inverted-residual stages, 1x1 conv to 1280 (x width), pool, linear head."""

    def __init__(self, width: float = 1.0, max_repeats: int = 99, num_classes: int = 1000) -> None:
        super().__init__()
        cin = _ch(32 * width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2)]
        for t, c, n, s in CONFIG:
            cout = _ch(c * width)
            for i in range(min(n, max_repeats)):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _ch(1280 * width)  # NOTE: the paper keeps 1280 for width < 1; scaled down here so `small` stays small
        layers.append(conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        self.out_channels = last

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pool(self.features(image.float()))
        return {"attributes": self.classifier(torch.flatten(x, 1))}


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: MobileNetV2 1.0, or width 0.25 / one block per stage when `small`."""
    model = MobileNetV2(0.25, max_repeats=1) if small else MobileNetV2()
    return model.to(device).eval()
