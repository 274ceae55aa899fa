"""Regression test: the mask head must learn object shapes, not a mean-shape prior.

A tiny R2-IOS is trained for a few dozen iterations on two small images with a five-pointed
star and a ring (a shape with a hole). Afterwards the mask loss of the last recursive
iteration must be clearly below ln 2 (the loss of an undecided mask), the star's predicted
mask must follow its points and the ring's hole must be predicted background. A head that only
learns the average shape (an ellipse in every box, as the paper-literal recipe did from
scratch) fails all three.
"""

import math

import cv2
import numpy as np
import torch
from conftest import tiny_r2ios_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

SIZE = 96


def _star(cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    a = angle + np.arange(10) * np.pi / 5
    rr = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
    pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
    m = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _ring(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    d = np.hypot(xx - cx, yy - cy)
    return (d <= r) & (d >= 0.5 * r)


def _image(seed: int):
    """One image: a star (class 0) and a ring (class 1) on noise, jittered-box proposals."""
    rng = np.random.RandomState(seed)
    img = rng.randint(0, 80, size=(SIZE, SIZE, 3)).astype(np.float32)
    star = _star(28 + 4 * seed, 30, 20, rng.uniform(0, np.pi))
    ring = _ring(66, 64 - 4 * seed, 19)
    star &= ~ring
    img[star] = (40, 200, 230)
    img[ring] = (200, 60, 160)
    masks = torch.from_numpy(np.stack([star, ring]))
    gt = Instances((SIZE, SIZE))
    gt.gt_masks = BitMasks(masks)
    gt.gt_boxes = gt.gt_masks.get_bounding_boxes()
    gt.gt_classes = torch.tensor([0, 1])
    props = []
    for b in gt.gt_boxes.tensor.numpy():
        w, h = b[2] - b[0], b[3] - b[1]
        props.append(b[None] + rng.uniform(-0.15, 0.15, size=(16, 4)) * [w, h, w, h])
    props.append(np.concatenate([rng.uniform(0, 60, (16, 2)), rng.uniform(0, 60, (16, 2))], 1))
    p = torch.from_numpy(np.concatenate(props)).float()
    p[:, 2:] = torch.maximum(p[:, 2:], p[:, :2] + 8)
    proposals = Instances((SIZE, SIZE))
    proposals.proposal_boxes = Boxes(p)
    proposals.proposal_boxes.clip((SIZE, SIZE))
    proposals.objectness_logits = torch.zeros(len(p))
    image = torch.from_numpy(img.astype(np.uint8)).permute(2, 0, 1).contiguous()
    return {"image": image, "height": SIZE, "width": SIZE, "instances": gt, "proposals": proposals}


def _train(cfg, inputs, iterations: int):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    T = cfg.MODEL.R2IOS.NUM_ITERATIONS
    with EventStorage() as storage:
        for it in range(iterations):
            storage.iter = it
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            last = storage.latest()[f"r2ios/loss_mask_t{T}"][0]
    return model, last


def _predicted_masks(model, inputs):
    """Foreground probabilities of the mask head in the GT boxes, pasted into the image."""
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        gt = [x["instances"] for x in inputs]
        boxes = [g.gt_boxes for g in gt]
        scored = model.roi_heads.mask_head.score_maps(features)
        probs = model.roi_heads.mask_head.foreground_probs(model.roi_heads.mask_head(scored, boxes))
    out, k = [], 0
    for g in gt:
        for box in g.gt_boxes.tensor:
            x0, y0, x1, y1 = [int(round(float(c))) for c in box]
            m = torch.nn.functional.interpolate(
                probs[k][None, None], size=(y1 - y0, x1 - x0), mode="bilinear"
            )[0, 0]
            full = torch.zeros(SIZE, SIZE)
            full[y0:y1, x0:x1] = m
            out.append(full)
            k += 1
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_mask_head_learns_star_points_and_ring_holes():
    cfg = tiny_r2ios_cfg(width=1 / 8, num_classes=2)
    cfg.MODEL.VGG.NORM = "GN"
    cfg.MODEL.R2IOS.MASK_SIZE = 28
    cfg.MODEL.R2IOS.NUM_ITERATIONS = 2
    cfg.MODEL.R2IOS.TEST_NUM_ITERATIONS = 2
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.01
    inputs = [_image(0), _image(1)]
    model, mask_loss = _train(cfg, inputs, iterations=60)
    # Measured: 0.07 with the default recipe; 0.30 with the paper-literal one (raw v with full
    # gradient into the seg-aware feature, no loss on C), whose star masks lose their points.
    assert mask_loss < 0.25 * math.log(2), f"mask loss {mask_loss:.3f} (ln 2 = 0.693)"

    pred = _predicted_masks(model, inputs)
    gts = [m.numpy() for x in inputs for m in x["instances"].gt_masks.tensor]
    for i in range(0, len(gts), 2):
        star, ring = gts[i], gts[i + 1]
        star_iou = _iou(pred[i].numpy() > 0.5, star)
        ring_iou = _iou(pred[i + 1].numpy() > 0.5, ring)
        # The convex hull of the star: its points are what a blob prior gets wrong.
        hull = cv2.fillPoly(
            np.zeros((SIZE, SIZE), np.uint8),
            [cv2.convexHull(np.argwhere(star)[:, ::-1].astype(np.int32))],
            1,
        ).astype(bool)
        gaps = hull & ~star
        hole = _ring_hole(ring)
        # Measured: star 0.95, ring 0.97-0.98 (paper-literal recipe: star 0.62-0.69).
        assert star_iou > 0.8, f"star mask IoU {star_iou:.2f}"
        assert ring_iou > 0.8, f"ring mask IoU {ring_iou:.2f}"
        assert pred[i].numpy()[gaps].mean() < 0.5, "the star's gaps are predicted foreground"
        assert pred[i + 1].numpy()[hole].mean() < 0.3, "the ring's hole is predicted foreground"


def _ring_hole(ring: np.ndarray) -> np.ndarray:
    filled = ring.astype(np.uint8).copy()
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    hole = filled.astype(bool) & ~ring
    return cv2.erode(hole.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
