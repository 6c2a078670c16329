"""distilbert: a BERT-style text encoder in plain torch (DistilBERT: 6 encoder layers, width 768, 12 heads, GELU, post-norm),
random init: token + position + segment embeddings, the encoder stack, and a tanh pooler on [CLS]
whose 768 values are the 'intent' output. The input tokens are passed on as 'tokens', for the
encoder stage after it in the text pipeline.

`small=True` keeps the structure with width 64, 2 layers and 2 heads (the pooler still emits 768).
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 30522
MAX_POS = 512


class BertEncoder(nn.Module):
    """Embeddings (+ LayerNorm), post-norm Transformer encoder layers, pooler (dense + tanh) on [CLS]."""

    def __init__(self, dim: int = 768, depth: int = 6, heads: int = 12, out_dim: int = 768) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(MAX_POS, dim)
        self.seg = nn.Embedding(2, dim)
        self.ln = nn.LayerNorm(dim, eps=1e-12)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.pooler = nn.Sequential(nn.Linear(dim, out_dim), nn.Tanh())

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = tokens.long().clamp(0, VOCAB - 1)
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.ln(self.tok(ids) + self.pos(pos) + self.seg(torch.zeros_like(ids)))
        x = self.encoder(x, src_key_padding_mask=tokens == 0)  # token id 0 is [PAD]
        return {"intent": self.pooler(x[:, 0]), "tokens": tokens}


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: the full encoder, or a 64-wide 2-layer twin when `small`."""
    model = BertEncoder(dim=64, depth=2, heads=2) if small else BertEncoder()
    return model.to(device).eval()
