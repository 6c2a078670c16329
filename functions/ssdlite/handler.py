"""ssdlite: an SSDLite-style detector in plain torch: a MobileNetV2-style backbone, extra feature
layers, and depthwise-separable SSD heads (box regression + class scores per default box) on four
feature maps; the 100 highest-scoring boxes per image are returned (xyxy in [0, 1]) with their scores,
and `image`: the crop of the best box, resized to the input resolution (bilinear `grid_sample`), which
the classifiers after it in the video-analytics workflow look at.

Random init, so boxes are meaningless; the shapes and the work are those of a detector. `small=True`
divides widths by 4 and keeps one block per backbone stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpufaas.functions.layers import InvertedResidual, conv_bn

NUM_CLASSES = 91  # COCO incl. background
TOP_K = 100
BACKBONE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))


def sep_head(cin: int, cout: int) -> nn.Sequential:
    """SSDLite head: 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv to the predictions."""
    return nn.Sequential(conv_bn(cin, cin, 3, 1, groups=cin), nn.Conv2d(cin, cout, 1))


class SSDLite(nn.Module):
    """Backbone to stride 16 and 32, two extra stride-2 layers, SSD heads on all four maps."""

    def __init__(self, div: int = 1, max_repeats: int = 99, anchors: int = 6) -> None:
        super().__init__()
        cin = 32 // div
        blocks: list[nn.Module] = [conv_bn(3, cin, 3, 2)]
        taps = []
        for t, c, n, s in BACKBONE:
            cout = max(8, c // div)
            for i in range(min(n, max_repeats)):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            taps.append(len(blocks))
        self.backbone = nn.ModuleList(blocks)
        self.tap_at = {taps[4] - 1, taps[5] - 1}  # after the 96-channel (stride 16) and 160-channel (stride 32) stages
        chans = [max(8, 96 // div), max(8, 160 // div)]
        extras = []
        for cout in (max(8, 256 // div), max(8, 128 // div)):
            extras.append(nn.Sequential(conv_bn(chans[-1], chans[-1] // 2, 1, 1), conv_bn(chans[-1] // 2, chans[-1] // 2, 3, 2, groups=chans[-1] // 2),
                                        conv_bn(chans[-1] // 2, cout, 1, 1)))
            chans.append(cout)
        self.extras = nn.ModuleList(extras)
        self.anchors = anchors
        self.loc = nn.ModuleList(sep_head(c, anchors * 4) for c in chans)
        self.cls = nn.ModuleList(sep_head(c, anchors * NUM_CLASSES) for c in chans)

    @staticmethod
    def _default_boxes(sizes: list[tuple[int, int]], anchors: int, device: torch.device) -> torch.Tensor:
        """Default boxes (cx, cy, w, h) per feature-map cell: scales grow with depth, six aspect ratios."""
        out = []
        ratios = torch.tensor([1.0, 2.0, 0.5, 3.0, 1 / 3, 1.0], device=device)[:anchors]
        for k, (h, w) in enumerate(sizes):
            scale = 0.2 + 0.7 * k / max(1, len(sizes) - 1)
            ys, xs = torch.meshgrid((torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w, indexing="ij")
            cx = xs.reshape(-1, 1).expand(-1, anchors)
            cy = ys.reshape(-1, 1).expand(-1, anchors)
            bw = (scale * ratios.sqrt()).expand_as(cx)
            bh = (scale / ratios.sqrt()).expand_as(cx)
            out.append(torch.stack([cx, cy, bw, bh], -1).reshape(-1, 4))
        return torch.cat(out)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = image.float()
        feats = []
        for i, blk in enumerate(self.backbone):
            x = blk(x)
            if i in self.tap_at:
                feats.append(x)
        for e in self.extras:
            x = e(x)
            feats.append(x)
        n = image.shape[0]
        locs = torch.cat([h(f).permute(0, 2, 3, 1).reshape(n, -1, 4) for h, f in zip(self.loc, feats)], 1)
        logits = torch.cat([h(f).permute(0, 2, 3, 1).reshape(n, -1, NUM_CLASSES) for h, f in zip(self.cls, feats)], 1)
        prior = self._default_boxes([tuple(f.shape[-2:]) for f in feats], self.anchors, image.device)
        cxcy = prior[:, :2] + 0.1 * locs[..., :2] * prior[:, 2:]
        wh = prior[:, 2:] * torch.exp((0.2 * locs[..., 2:]).clamp(max=4.0))
        boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], -1).clamp(0.0, 1.0)
        scores = logits.softmax(-1)[..., 1:].max(-1).values  # best non-background class per box
        k = min(TOP_K, scores.shape[1])
        top, idx = scores.topk(k, dim=1)
        sel = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        if k < TOP_K:  # tiny inputs have fewer default boxes than TOP_K: pad with empty boxes
            sel = torch.cat([sel, sel.new_zeros(n, TOP_K - k, 4)], 1)
            top = torch.cat([top, top.new_zeros(n, TOP_K - k)], 1)
        return {"boxes": sel, "scores": top, "image": self._crop(image, sel[:, 0]).to(image.dtype)}

    @staticmethod
    def _crop(image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """The region `box` (xyxy in [0, 1], one per image) of each image, resized to the image's size."""
        x0, y0, x1, y1 = box.unbind(-1)
        w = (x1 - x0).clamp(min=1e-3)
        h = (y1 - y0).clamp(min=1e-3)
        zero = torch.zeros_like(w)
        # affine map from the output grid [-1, 1] onto the box in input coordinates [-1, 1]
        theta = torch.stack([torch.stack([w, zero, x0 + x1 - 1], -1), torch.stack([zero, h, y0 + y1 - 1], -1)], 1)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        return F.grid_sample(image.float(), grid, mode="bilinear", align_corners=False)


def build(spec, device: str = "cpu", small: bool = False) -> nn.Module:
    """Called once by the worker at start-up: the full-width detector, or widths / 4 when `small`."""
    model = SSDLite(4, max_repeats=1) if small else SSDLite()
    return model.to(device).eval()
