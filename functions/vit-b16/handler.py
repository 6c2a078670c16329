"""vit-b16: a Vision Transformer B/16 (16x16 patches, 12 pre-norm encoder layers, width 768, 12 heads)
in plain torch, random init; the class token feeds a 1000-way scene head.

`small=True` keeps the structure with width 64, 2 layers and 2 heads.
"""

from __future__ import annotations

import torch
from torch import nn


class ViT(nn.Module):
    """Patch embedding (16x16 conv), class token, learned position embedding, encoder, head on [CLS]."""

    def __init__(self, image: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch(image.float()).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.norm(self.encoder(x))
        return {"scene": self.head(x[:, 0])}


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: ViT-B/16, or a 64-wide, 2-layer twin when `small`."""
    model = ViT(dim=64, depth=2, heads=2) if small else ViT()
    return model.to(device).eval()
