"""Pure tensor steps of the R2-IOS recursion, shared by training and inference.

Rows are proposals of several images concatenated in image order; ``image_idx`` (R,) says
which image a row belongs to and ``hw`` (R, 2) that image's (H, W) in network-input pixels.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F

__all__ = [
    "BestIteration",
    "IterationTrace",
    "class_boxes",
    "clip_boxes",
    "decode_class_boxes",
    "flatten_proposals",
    "gate_iterations",
    "refine_boxes",
    "refined_from_class_boxes",
    "reframe_masks",
    "split_by_image",
]

# Refined boxes with a side below this many pixels are rejected (the box stays where it was).
MIN_BOX_SIDE = 1.0


def clip_boxes(boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
    """Clip (R, 4) XYXY boxes to per-row image sizes ``hw`` (R, 2) = (H, W)."""
    h, w = hw[:, 0].to(boxes.dtype), hw[:, 1].to(boxes.dtype)
    zero = torch.zeros_like(w)
    return torch.stack(
        [
            torch.minimum(torch.maximum(boxes[:, 0], zero), w),
            torch.minimum(torch.maximum(boxes[:, 1], zero), h),
            torch.minimum(torch.maximum(boxes[:, 2], zero), w),
            torch.minimum(torch.maximum(boxes[:, 3], zero), h),
        ],
        dim=1,
    )


def split_by_image(boxes: torch.Tensor, image_idx: torch.Tensor, num_images: int) -> List[Boxes]:
    """Per-image ``Boxes`` of image-ordered rows (``image_idx`` non-decreasing)."""
    counts = torch.bincount(image_idx, minlength=num_images).tolist()
    return [Boxes(b) for b in boxes.split(counts)]


def flatten_proposals(
    proposals: List[Instances], field: str
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenated boxes (R, 4), per-row image index (R,) and per-row (H, W) (R, 2) of the
    ``field`` boxes of per-image ``Instances``."""
    boxes = cat([getattr(p, field).tensor for p in proposals], dim=0)
    device = boxes.device
    image_idx = torch.cat(
        [torch.full((len(p),), i, dtype=torch.long, device=device) for i, p in enumerate(proposals)]
    )
    sizes = torch.tensor([p.image_size for p in proposals], device=device).view(-1, 2)
    return boxes, image_idx, sizes[image_idx]


def decode_class_boxes(
    transform: Box2BoxTransform, deltas: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Apply the deltas (R, 4K or 4) of the given classes (R,) in [0, K) to boxes (R, 4)."""
    if deltas.shape[1] > 4:  # class-specific regression
        deltas = deltas.view(len(deltas), deltas.shape[1] // 4, 4)
        deltas = deltas[torch.arange(len(deltas)), classes]
    return transform.apply_deltas(deltas, boxes)


def refine_boxes(
    transform: Box2BoxTransform,
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    classes: torch.Tensor,
    hw: torch.Tensor,
) -> torch.Tensor:
    """``l_t = decode(l_{t-1}, o_{t,c})`` clipped to the image; a box that would collapse
    (a side under ``MIN_BOX_SIDE`` px, e.g. moved off the image by a wild early prediction)
    keeps ``l_{t-1}``, as its targets and pooling would be undefined.

    Args:
        transform: the predictor's box transform.
        deltas: (R, 4K or 4) predicted deltas; boxes: (R, 4) ``l_{t-1}``;
        classes: (R,) in [0, K); hw: (R, 2) image (H, W) of each row.

    Returns:
        (R, 4) ``l_t``.
    """
    new = clip_boxes(decode_class_boxes(transform, deltas, boxes, classes), hw)
    ok = ((new[:, 2:] - new[:, :2]) >= MIN_BOX_SIDE).all(dim=1, keepdim=True)
    return torch.where(ok, new, boxes)


def class_boxes(
    transform: Box2BoxTransform,
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    hw: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """(B, K, 4) clipped boxes of every foreground class (class-agnostic regression: the same
    box K times) from deltas (B, 4K or 4) applied to boxes (B, 4) in images ``hw`` (B, 2)."""
    n, n_reg = len(boxes), deltas.shape[1] // 4  # explicit: B may be 0
    decoded = transform.apply_deltas(deltas, boxes)
    clipped = clip_boxes(decoded.reshape(-1, 4), hw.repeat_interleave(n_reg, 0))
    return clipped.view(n, n_reg, 4).expand(-1, num_classes, -1)


def refined_from_class_boxes(
    boxes_per_class: torch.Tensor,
    boxes: torch.Tensor,
    classes: torch.Tensor,
    moving: torch.Tensor,
) -> torch.Tensor:
    """:func:`refine_boxes` from the clipped boxes of every class (:func:`class_boxes`), for
    inference with per-class outputs, which decodes them anyway: ``l_t`` is the box of the
    predicted class where the row moves (``moving``) and the box keeps both sides of at
    least ``MIN_BOX_SIDE``; ``l_{t-1}`` elsewhere. The same decoding and clipping as
    :func:`refine_boxes` (equal up to float rounding: a vectorised ``exp`` and its scalar
    remainder may differ in the last bit), and each row's ``l_t`` is exactly its class's
    entry of ``boxes_per_class``.

    Args:
        boxes_per_class: (R, K, 4) clipped boxes of every foreground class.
        boxes: (R, 4) ``l_{t-1}``.
        classes: (R,) predicted classes in [0, K] (K = background: the row does not move).
        moving: (R,) bool, the rows that move (predicted foreground).

    Returns:
        (R, 4) ``l_t``.
    """
    k = boxes_per_class.shape[1]
    rows = torch.arange(len(boxes), device=boxes.device)
    picked = boxes_per_class[rows, classes.clamp(max=k - 1)]
    ok = moving & ((picked[:, 2:] - picked[:, :2]) >= MIN_BOX_SIDE).all(dim=1)
    return torch.where(ok[:, None], picked, boxes)


def gate_iterations(class_logits: List[torch.Tensor], gt_classes: torch.Tensor) -> torch.Tensor:
    """The reversible gate in training: ``t' = argmax_t p_{t,g}`` (first on ties).

    Args:
        class_logits: per iteration, (F, K+1) logits of the same F foreground rows.
        gt_classes: (F,) their ground-truth classes.

    Returns:
        (F,) 0-based ``t'``.
    """
    rows = torch.arange(len(gt_classes), device=gt_classes.device)
    p_gt = torch.stack([F.softmax(x, dim=1)[rows, gt_classes] for x in class_logits])
    return p_gt.argmax(dim=0)


def reframe_masks(
    masks: torch.Tensor, src_boxes: torch.Tensor, dst_boxes: torch.Tensor
) -> torch.Tensor:
    """Resample box-relative masks from the frame of ``src_boxes`` into that of ``dst_boxes``.

    Pixel (i, j) of an M x M mask covers the cell ``[j, j+1) x [i, i+1)`` of the box divided
    into M x M cells, as in detectron2's ``paste_masks_in_image``. Values are sampled
    bilinearly at the destination cell centres; outside the source box they are 0.

    Args:
        masks: (N, M, M) masks (e.g. probabilities) in the frame of ``src_boxes``.
        src_boxes: (N, 4) XYXY boxes the masks were predicted in.
        dst_boxes: (N, 4) XYXY boxes to express them in.

    Returns:
        (N, M, M) masks in the frame of ``dst_boxes``.
    """
    n, m = masks.shape[0], masks.shape[-1]
    if n == 0:
        return masks.clone()
    src = src_boxes.to(masks.dtype)
    dst = dst_boxes.to(masks.dtype)
    centres = (torch.arange(m, device=masks.device, dtype=masks.dtype) + 0.5) / m  # (M,)
    grids = []
    for lo, hi in ((0, 2), (1, 3)):  # x, then y
        pos = dst[:, lo, None] + centres[None] * (dst[:, hi] - dst[:, lo])[:, None]  # (N, M)
        # Degenerate source boxes would divide by zero; such masks sample (almost) nothing.
        size = (src[:, hi] - src[:, lo]).clamp(min=1e-6)[:, None]
        grids.append((pos - src[:, lo, None]) / size * 2.0 - 1.0)
    gx, gy = grids
    grid = torch.stack([gx[:, None, :].expand(n, m, m), gy[:, :, None].expand(n, m, m)], dim=-1)
    out = F.grid_sample(
        masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[:, 0]


class BestIteration:
    """Per proposal, the outputs of the iteration the reversible gate keeps (inference).

    Fields, each with R rows: ``gate`` (gate score, -inf before any iteration), ``t`` (0-based
    iteration), ``cls`` (K = background), ``score``, ``box`` (``l_t``), ``frame`` (``l_{t-1}``,
    the box the mask was predicted in), ``mask`` (M, M foreground probabilities; None without
    ``keep_masks``) and, for per-class outputs, ``probs`` (K+1) and ``class_boxes`` (K, 4).
    """

    def __init__(
        self,
        boxes: torch.Tensor,
        num_classes: int,
        mask_size: int,
        per_class: bool,
        keep_masks: bool = True,
    ):
        r, k, m, device = len(boxes), num_classes, mask_size, boxes.device
        self.num_classes = num_classes
        self.gate = torch.full((r,), -math.inf, device=device)
        self.t = torch.zeros(r, dtype=torch.long, device=device)
        self.cls = torch.full((r,), k, dtype=torch.long, device=device)
        self.score = torch.zeros(r, device=device)
        self.box = boxes.clone()
        self.frame = boxes.clone()
        self.mask = torch.zeros(r, m, m, device=device) if keep_masks else None
        self.per_class = per_class
        if per_class:
            self.probs = torch.zeros(r, k + 1, device=device)
            self.class_boxes = boxes[:, None].repeat(1, k, 1)

    def update(self, active: torch.Tensor, better: torch.Tensor, t: int, **values: torch.Tensor):
        """Set iteration ``t``'s outputs of the rows ``active[better]``.

        Args:
            active: (A,) the row indices the iteration ran on.
            better: (A,) bool: which of them improved.
            t: 0-based iteration.
            values: (A, ...) tensors named as the fields (``gate``, ``cls``, ``score``,
                ``box``, ``frame``, ``mask``, and ``probs`` / ``class_boxes`` if per class).
        """
        if bool(better.all()):  # e.g. the first iteration: written without a gather
            rows, pick = active, None
        else:
            pick = torch.nonzero(better).squeeze(1)
            rows = active[pick]
        self.t[rows] = t
        for name, value in values.items():
            getattr(self, name)[rows] = value if pick is None else value[pick]


class IterationTrace:
    """The outputs of every iteration of every proposal (inference, ``TEST_RECORD_TRACE``):
    ``boxes`` (R, T, 4) ``l_t``, ``scores`` (R, T) gate scores, ``classes`` (R, T) and
    ``masks`` (R, T, M, M) foreground probabilities in the frame of ``l_{t-1}``."""

    def __init__(self, num_rows: int, num_iterations: int, mask_size: int, device: torch.device):
        r, t, m = num_rows, num_iterations, mask_size
        self.fields = {
            "boxes": torch.zeros(r, t, 4, device=device),
            "scores": torch.zeros(r, t, device=device),
            "classes": torch.zeros(r, t, dtype=torch.long, device=device),
            "masks": torch.zeros(r, t, m, m, device=device),
        }
        self.last_t = torch.zeros(r, dtype=torch.long, device=device)

    def record(self, active: torch.Tensor, t: int, **values: torch.Tensor) -> None:
        """Store iteration ``t``'s outputs (one row per ``active`` row) under their names."""
        for name, value in values.items():
            self.fields[name][active, t] = value
        self.last_t[active] = t

    def filled(self) -> dict:
        """The fields, with the iterations a proposal skipped (it left the loop as
        background) filled with exact copies of its last one."""
        for t in range(1, self.fields["boxes"].shape[1]):
            stale = self.last_t < t
            for value in self.fields.values():
                value[stale, t] = value[stale, t - 1]
        return self.fields
