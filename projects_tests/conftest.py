"""Shared test helpers: a tiny R2-IOS config and synthetic images made in memory."""

from typing import Dict, List

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

from r2ios_d2 import add_r2ios_config

# The tests run tiny tensors on a shared 2-core machine: one thread avoids oversubscription,
# which made some steps 10-30x slower.
torch.set_num_threads(1)

# Distinct BGR colours per class, so that a tiny network can tell the classes apart.
_CLASS_COLOURS = ((40, 40, 220), (40, 200, 40), (220, 60, 40))


def tiny_r2ios_cfg(width: float = 1 / 16, num_classes: int = 3) -> CfgNode:
    """A CPU config of the VGG R2-IOS model with tiny widths and precomputed proposals."""
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_r2ios_vgg_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.VGG.WIDTH = width
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "R2IOSROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["det"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "InstanceAwareAEMaskHead"
    cfg.MODEL.R2IOS.AE_HIDDEN_DIM = 64
    return cfg


def _shape_mask(kind: int, box: np.ndarray, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    x0, y0, x1, y1 = box
    if kind == 0:  # rectangle
        return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if kind == 1:  # ellipse
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    # triangle pointing up: below the two slanted edges, above the base
    return (yy < y1) & (np.abs(xx - cx) / rx <= (yy - y0) / (y1 - y0))


def make_synthetic_inputs(
    num_images: int = 4, size: int = 96, seed: int = 0, proposals_per_gt: int = 24
) -> List[Dict]:
    """GeneralizedRCNN inputs: a few coloured overlapping shapes on noise, with masks of the
    visible parts, jittered-GT plus random proposals.

    Returns:
        list of dicts with ``image`` (3, H, W uint8 BGR), ``height``, ``width``,
        ``instances`` (gt_boxes, gt_classes, gt_masks) and ``proposals``
        (proposal_boxes, objectness_logits).
    """
    rng = np.random.RandomState(seed)
    inputs = []
    for _ in range(num_images):
        img = rng.randint(0, 90, size=(size, size, 3)).astype(np.float32)
        masks, classes = [], []
        for _ in range(rng.randint(2, 4)):
            bw, bh = rng.uniform(0.3, 0.55, size=2) * size
            x0, y0 = rng.uniform(0, size - bw), rng.uniform(0, size - bh)
            kind = rng.randint(3)
            m = _shape_mask(kind, np.array([x0, y0, x0 + bw, y0 + bh]), size, size)
            for prev in masks:  # later shapes occlude earlier ones
                prev &= ~m
            masks.append(m)
            classes.append(kind)
            img[m] = np.array(_CLASS_COLOURS[kind]) + rng.randint(-20, 20, size=(m.sum(), 3))
        keep = [i for i, m in enumerate(masks) if m.sum() > 30]
        masks_t = torch.from_numpy(np.stack([masks[i] for i in keep]))
        gt = Instances((size, size))
        gt.gt_masks = BitMasks(masks_t)
        gt.gt_boxes = gt.gt_masks.get_bounding_boxes()
        gt.gt_classes = torch.tensor([classes[i] for i in keep], dtype=torch.long)
        props = []
        for b in gt.gt_boxes.tensor.numpy():
            w, h = b[2] - b[0], b[3] - b[1]
            jitter = rng.uniform(-0.25, 0.25, size=(proposals_per_gt, 4)) * [w, h, w, h]
            props.append(b[None] + jitter)
        xy = rng.uniform(0, size * 0.7, size=(proposals_per_gt * 2, 2))
        wh = rng.uniform(size * 0.1, size * 0.5, size=(proposals_per_gt * 2, 2))
        props.append(np.concatenate([xy, xy + wh], axis=1))
        p = torch.from_numpy(np.concatenate(props)).float()
        boxes = Boxes(p)
        boxes.clip((size, size))
        boxes = boxes[boxes.nonempty(threshold=2.0)]
        proposals = Instances((size, size))
        proposals.proposal_boxes = boxes
        proposals.objectness_logits = torch.zeros(len(boxes))
        image = torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1)
        inputs.append(
            {
                "image": image.contiguous(),
                "height": size,
                "width": size,
                "instances": gt,
                "proposals": proposals,
            }
        )
    return inputs


@pytest.fixture
def synthetic_inputs() -> List[Dict]:
    return make_synthetic_inputs(num_images=2, size=64, seed=1)
