"""aggregator: a small MLP head that fuses whatever float features its upstream stages produced into
a 16-way decision. The video workflow's fan-in hands it {logits, attributes, scene}; the text pipeline
hands it {embedding}: every float tensor is flattened, the tensors are concatenated in name order, and
adaptive average pooling maps the result to a fixed 1024 features before the MLP.

function.yaml sets `inputs_any_float: true`, so the worker accepts any set of float tensors instead of
checking `inputs` (which then only describes the synthetic input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 1024


class Aggregator(nn.Module):
    """Flatten + concat + adaptive pool to 1024, then Linear-ReLU-Linear to 16 logits."""

    def __init__(self, hidden: int = 256, num_out: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(FEATURES), nn.Linear(FEATURES, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_out))

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if not inputs:
            raise ValueError("aggregator needs at least one float tensor input")
        n = next(iter(inputs.values())).shape[0]
        x = torch.cat([inputs[k].float().reshape(n, -1) for k in sorted(inputs)], 1)
        x = F.adaptive_avg_pool1d(x.unsqueeze(1), FEATURES).squeeze(1)
        return {"decision": self.mlp(x)}


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up (`small` changes nothing: the head is already small)."""
    return Aggregator().to(device).eval()
