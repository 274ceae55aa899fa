"""Models and inputs of the speed benchmark (``tools/benchmark_speed.py``).

R2-IOS at a VGG-16 channel width and the Mask R-CNN-style baseline on the same backbone,
random proposals, a background bias that makes a chosen fraction of them background at the
first iteration (as a trained detector on selective-search proposals does), a training batch,
and the per-iteration proposal counts the R2-IOS heads report to the ``EventStorage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from ..config import add_r2ios_config

__all__ = [
    "active_per_iteration",
    "baseline_cfg",
    "first_iteration_logits",
    "random_proposals",
    "shift_background_bias",
    "speed_cfg",
    "train_batch",
]

BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "Base-R2IOS-VGG16.yaml"
# The scalar R2IOSROIHeads puts per test iteration t (1-based): proposals it ran on.
ACTIVE_SCALAR = "r2ios/test_active_t{}"


def speed_cfg(
    width: float, device: str, num_classes: int = 20, cpu_linear: Optional[str] = None
) -> CfgNode:
    """The paper's VGG-16 R2-IOS config (``Base-R2IOS-VGG16.yaml``) at a channel width.

    FC_DIM (4096) and the AE bottleneck (512) scale with the width (at least 64), as the
    backbone's channels do. ``cpu_linear`` overrides ``MODEL.R2IOS.CPU_LINEAR``.
    """
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.MODEL.VGG.WIDTH = width
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = max(64, round(4096 * width))
    cfg.MODEL.R2IOS.AE_HIDDEN_DIM = max(64, round(512 * width))
    if cpu_linear:
        cfg.MODEL.R2IOS.CPU_LINEAR = cpu_linear
    return cfg


def baseline_cfg(cfg: CfgNode) -> CfgNode:
    """The Mask R-CNN-style baseline on the same backbone: ``StandardROIHeads`` with the same
    Fast R-CNN box head (RoIPool 7x7, fc6/fc7) on ``det`` and ``MaskRCNNConvUpsampleHead``
    (4 convs of 256 channels x width, RoIAlign 14x14 on ``det``, 28x28 masks)."""
    cfg = cfg.clone()
    width = cfg.MODEL.VGG.WIDTH
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = max(16, round(256 * width))
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
    return cfg


def random_proposals(n: int, h: int, w: int, device: str, seed: int = 1) -> Instances:
    """``n`` random boxes of 8 px to 60 % of the image side, as ``proposal_boxes``."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:, 2].clamp_(max=w)
    boxes[:, 3].clamp_(max=h)
    p = Instances((h, w))
    p.proposal_boxes = Boxes(boxes.to(device))
    p.objectness_logits = torch.zeros(n, device=device)
    return p


def first_iteration_logits(heads, features: Dict[str, torch.Tensor], boxes: Boxes):
    """Class logits (R, K+1) of the first iteration of R2-IOS or of the baseline's box head."""
    box_feats = [features[f] for f in heads.box_in_features]
    if hasattr(heads, "_predict"):  # R2IOSROIHeads
        scored = heads.mask_head.score_maps(features)
        return heads._predict(box_feats, scored, [boxes])[0]
    x = heads.box_head(heads.box_pooler(box_feats, [boxes]))
    return heads.box_predictor(x)[0]


@torch.no_grad()
def shift_background_bias(
    heads, features: Dict[str, torch.Tensor], boxes: Boxes, bg_fraction: float
) -> float:
    """Lower/raise the background logit bias of ``heads`` (R2-IOS or the baseline) so that
    ``bg_fraction`` of ``boxes`` have background as their arg-max class at the first
    iteration; returns the fraction reached."""
    logits = first_iteration_logits(heads, features, boxes)
    margin = logits[:, -1] - logits[:, :-1].max(dim=1).values
    heads.box_predictor.cls_score.bias[-1] -= margin.quantile(1 - bg_fraction)
    logits = first_iteration_logits(heads, features, boxes)
    return (logits.argmax(1) == logits.shape[1] - 1).float().mean().item()


def active_per_iteration(storage: EventStorage) -> List[int]:
    """The number of proposals each R2-IOS test iteration ran on, as the heads put them into
    ``storage`` (``r2ios/test_active_t<t>``, the latest value of each); empty for other heads.
    Use a fresh storage per forward pass."""
    latest = storage.latest()
    counts, t = [], 1
    while ACTIVE_SCALAR.format(t) in latest:
        counts.append(int(latest[ACTIVE_SCALAR.format(t)][0]))
        t += 1
    return counts


def _gt_instances(h: int, w: int, num_classes: int, g: torch.Generator) -> Instances:
    """4 random GT instances with box-filling ellipse masks."""
    xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = 24 + torch.rand(4, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
    gt = torch.cat([xy, xy + wh], 1)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = []
    for x0, y0, x1, y1 in gt.tolist():
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        masks.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(gt)
    inst.gt_classes = torch.randint(0, num_classes, (4,), generator=g)
    inst.gt_masks = BitMasks(torch.stack(masks))
    return inst


def train_batch(
    h: int, w: int, n_images: int, n_props: int, num_classes: int, device: str
) -> List[dict]:
    """Images with 4 random GT instances (box-filling ellipse masks) and ``n_props`` proposals
    of which a quarter jitter the GT boxes, so the sampler finds foreground RoIs."""
    g = torch.Generator().manual_seed(2)
    batch = []
    for _ in range(n_images):
        inst = _gt_instances(h, w, num_classes, g)
        gt = inst.gt_boxes.tensor
        props = random_proposals(n_props, h, w, "cpu", seed=3)
        n_fg = n_props // 4
        jitter = gt[torch.randint(0, 4, (n_fg,), generator=g)]
        jitter = jitter + (torch.rand(n_fg, 4, generator=g) - 0.5) * 0.2 * (
            jitter[:, 2:] - jitter[:, :2]
        ).repeat(1, 2)
        props.proposal_boxes.tensor[:n_fg] = jitter
        props.proposal_boxes.clip((h, w))
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        batch.append(
            {"image": image.to(device), "instances": inst.to(device), "proposals": props.to(device)}
        )
    return batch
