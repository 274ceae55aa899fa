"""Inference outputs of R2-IOS: detections from the gate's iterations, class-wise NMS (box or
mask IoU), the per-iteration trace fields."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.structures import Boxes, Instances

from .recursion import BestIteration, reframe_masks

__all__ = [
    "TRACE_FIELDS",
    "TRACE_OUTPUT_FIELDS",
    "TracedBoxes",
    "attach_trace",
    "bind_trace",
    "candidate_masks",
    "class_wise_nms",
    "per_class_candidates",
    "proposal_candidates",
]

# Mask-IoU NMS compares masks pasted on a grid whose longer side is at most this many pixels
# (the masks themselves are only MASK_SIZE wide, so a finer grid adds little).
_MASK_NMS_MAX_SIDE = 320

# The per-iteration fields the heads add to their outputs with MODEL.R2IOS.TEST_RECORD_TRACE:
# trace_<name> for each name (N, T, ...), plus trace_proposals (N, 4) and gate_iteration (N,).
TRACE_FIELDS = ("boxes", "scores", "classes", "masks")
# All the Instances fields of the trace.
TRACE_OUTPUT_FIELDS = (
    *(f"trace_{name}" for name in TRACE_FIELDS),
    "trace_proposals",
    "gate_iteration",
)


def _instances(
    image_size: Tuple[int, int],
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
) -> Instances:
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(boxes)
    inst.scores = scores
    inst.pred_classes = classes
    return inst


def proposal_candidates(
    best: BestIteration, rows: torch.Tensor, image_size: Tuple[int, int], score_thresh: float
) -> Tuple[Instances, torch.Tensor]:
    """One candidate per non-background proposal of ``rows`` (the paper's output).

    Args:
        best: the gate's iteration of every proposal.
        rows: (R_i,) the rows of one image.
        image_size: (H, W) of that image (network input).
        score_thresh: minimum score.

    Returns:
        the candidates (``pred_boxes``, ``scores``, ``pred_classes``; their masks:
        :func:`candidate_masks`) and their (N,) rows.
    """
    keep = rows[(best.cls[rows] < best.num_classes) & (best.score[rows] > score_thresh)]
    return _instances(image_size, best.box[keep], best.score[keep], best.cls[keep]), keep


def per_class_candidates(
    best: BestIteration, rows: torch.Tensor, image_size: Tuple[int, int], score_thresh: float
) -> Tuple[Instances, torch.Tensor]:
    """Fast R-CNN style: every (proposal, foreground class) of ``rows`` above the score
    threshold, from the gate's iteration, with the class-specific box. Arguments and
    outputs as :func:`proposal_candidates` (a row may give several candidates)."""
    probs = best.probs[rows, : best.num_classes]
    r, k = torch.nonzero(probs > score_thresh, as_tuple=True)
    src = rows[r]
    return _instances(image_size, best.class_boxes[src, k], probs[r, k], k), src


def candidate_masks(
    best: BestIteration, src: torch.Tensor, boxes: torch.Tensor, reframe: bool
) -> torch.Tensor:
    """The masks of candidates: ``v_{t'}`` of their rows ``src`` (N,), with ``reframe``
    resampled from the box each was predicted in (``l_{t'-1}``) into the candidate's box
    ``boxes`` (N, 4). Computed per candidate, so only for the ones NMS keeps (or, for mask
    NMS, before it).

    Returns:
        (N, 1, M, M) foreground probabilities in the frame of ``boxes`` (or of ``l_{t'-1}``
        without ``reframe``).
    """
    masks = best.mask[src]
    if reframe:
        masks = reframe_masks(masks, best.frame[src], boxes)
    return masks[:, None]


def _mask_nms(inst: Instances, thresh: float, mask_threshold: float) -> torch.Tensor:
    """Greedy class-wise NMS on mask IoU; returns kept indices by decreasing score."""
    h, w = inst.image_size
    scale = min(1.0, _MASK_NMS_MAX_SIDE / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    order = inst.scores.argsort(descending=True)
    masks = (
        paste_masks_in_image(
            inst.pred_masks[order, 0],
            inst.pred_boxes.tensor[order] * scale,
            size,
            threshold=mask_threshold,
        )
        .flatten(1)
        .float()
    )
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / (area[:, None] + area[None] - inter).clamp(min=1.0)
    classes = inst.pred_classes[order]
    iou = iou * (classes[:, None] == classes[None]).to(iou.dtype)
    suppress = iou > thresh
    removed = torch.zeros(len(order), dtype=torch.bool, device=order.device)
    keep = []
    for a in range(len(order)):  # greedy NMS is sequential by definition
        if removed[a]:
            continue
        keep.append(a)
        removed |= suppress[a]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def class_wise_nms(
    inst: Instances, nms_type: str, thresh: float, topk: int, mask_threshold: float = 0.5
) -> Tuple[Instances, torch.Tensor]:
    """Class-wise NMS on box (``nms_type`` "box") or mask ("mask") IoU above ``thresh``,
    then the ``topk`` best (all if negative), sorted by decreasing score.

    Args:
        inst: candidates with ``pred_boxes``, ``scores``, ``pred_classes`` and, for mask
            NMS, ``pred_masks`` (N, 1, M, M) probabilities in the frame of ``pred_boxes``.
        mask_threshold: binarisation threshold of the masks for mask IoU.

    Returns:
        the kept candidates and their (N',) indices in ``inst``.
    """
    if len(inst) == 0:
        return inst, torch.zeros(0, dtype=torch.long, device=inst.scores.device)
    if nms_type == "box":
        keep = batched_nms(inst.pred_boxes.tensor, inst.scores, inst.pred_classes, thresh)
    else:
        keep = _mask_nms(inst, thresh, mask_threshold)
    if topk >= 0:
        keep = keep[:topk]
    return inst[keep], keep


def attach_trace(
    inst: Instances,
    src: torch.Tensor,
    trace: Dict[str, torch.Tensor],
    proposals: torch.Tensor,
    gate_iteration: torch.Tensor,
) -> None:
    """Add the per-iteration trace of the candidates' rows ``src`` to ``inst`` (in place):
    ``trace_<name>`` for each :data:`TRACE_FIELDS` name, ``trace_proposals`` (``l_0``) and
    ``gate_iteration`` (0-based ``t'``)."""
    for name in TRACE_FIELDS:
        inst.set(f"trace_{name}", trace[name][src])
    inst.trace_proposals = proposals[src]
    inst.gate_iteration = gate_iteration[src]


class TracedBoxes(Boxes):
    """``pred_boxes`` of outputs that carry a trace: scaling them (as detectron2's
    ``detector_postprocess`` does to map detections to the original image) scales the
    ``trace_boxes`` (N, T, 4) and ``trace_proposals`` (N, 4) of the same ``Instances`` too,
    so the trace is always in the frame of ``pred_boxes`` and no consumer rescales it."""

    def __init__(self, tensor: torch.Tensor, followers: Sequence[torch.Tensor]) -> None:
        super().__init__(tensor)
        self._followers = list(followers)

    def scale(self, scale_x: float, scale_y: float) -> None:
        super().scale(scale_x, scale_y)
        for boxes in self._followers:
            boxes[..., 0::2] *= scale_x
            boxes[..., 1::2] *= scale_y


def bind_trace(inst: Instances) -> Instances:
    """Make ``inst.pred_boxes`` carry its trace boxes along (:class:`TracedBoxes`); call it
    on the final outputs (indexing ``Boxes`` makes plain ones)."""
    if inst.has("trace_boxes"):
        inst.pred_boxes = TracedBoxes(
            inst.pred_boxes.tensor, [inst.trace_boxes, inst.trace_proposals]
        )
    return inst
