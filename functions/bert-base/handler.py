"""bert-base: a BERT-style text encoder in plain torch (BERT-base: 12 encoder layers, width 768, 12 heads, GELU, post-norm),
random init: token + position + segment embeddings, the encoder stack, and a tanh pooler on [CLS]
whose 768 values are the 'embedding' output.

`small=True` keeps the structure with width 64, 2 layers and 2 heads (the pooler still emits 768).
"""

from __future__ import annotations

from torch import nn

from gpufaas.functions.layers import BertEncoder


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: the full encoder, or a 64-wide 2-layer twin when `small`."""
    model = BertEncoder("embedding", dim=64, depth=2, heads=2) if small else BertEncoder("embedding", depth=12)
    return model.to(device).eval()
