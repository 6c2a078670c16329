"""Building blocks shared by the shipped handlers (plain torch, random init): MobileNetV2's inverted
residual block (mobilenet-v2, ssdlite) and a BERT-style encoder (bert-base, distilbert).

Who imports it: the handlers in `functions/*/handler.py`, as `gpufaas.functions.layers`; every backend's
worker runs with gpufaas importable, so a bundle may use it like any installed library.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 30522  # BERT's WordPiece vocabulary (Devlin et al. 2019)
MAX_POS = 512


def conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    """k x k convolution (same padding, no bias), BatchNorm, and ReLU6 when `act`."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear
    projection; residual when stride 1 and same width."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hid = cin * t
        layers = [] if t == 1 else [conv_bn(cin, hid, 1, 1)]
        layers += [conv_bn(hid, hid, 3, stride, groups=hid), conv_bn(hid, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.res else self.body(x)


class BertEncoder(nn.Module):
    """Embeddings (token + position + segment, LayerNorm), post-norm Transformer encoder layers (GELU),
    and a pooler (dense + tanh) on [CLS], whose values are returned under `output`; with `pass_tokens`
    the input tokens are returned too, as 'tokens' (for a stage after it)."""

    def __init__(self, output: str, dim: int = 768, depth: int = 12, heads: int = 12, out_dim: int = 768,
                 pass_tokens: bool = False) -> None:
        super().__init__()
        self.output = output
        self.pass_tokens = pass_tokens
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
        out = {self.output: self.pooler(x[:, 0])}
        if self.pass_tokens:
            out["tokens"] = tokens
        return out
