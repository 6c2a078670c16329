"""distilbert: a BERT-style text encoder in plain torch (DistilBERT: 6 encoder layers, width 768, 12 heads, GELU, post-norm),
random init: token + position + segment embeddings, the encoder stack, and a tanh pooler on [CLS]
whose 768 values are the 'intent' output. The input tokens are passed on as 'tokens', for the
encoder stage after it in the text pipeline.

`small=True` keeps the structure with width 64, 2 layers and 2 heads (the pooler still emits 768).
"""

from __future__ import annotations

from torch import nn

from gpufaas.functions.layers import BertEncoder


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: the full encoder, or a 64-wide 2-layer twin when `small`."""
    model = BertEncoder("intent", dim=64, depth=2, heads=2, pass_tokens=True) if small else BertEncoder("intent", depth=6, pass_tokens=True)
    return model.to(device).eval()
