"""Mask IoU between the predictions and the GT instances of one image, on COCO RLEs.

Void pixels (VOC's 255 label) belong to no instance: ``void_mode="union"`` (default, as the SDS,
MNC and FCIS evaluation code) treats them as background, so predicted pixels on void count in
the union; ``void_mode="ignore"`` removes them from both intersection and union. See
:mod:`r2ios_d2.evaluation.instance_ap` for the conventions of the metric.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

from ..utils import RLE, encode_masks

__all__ = ["VOID_MODES", "mask_iou_rle"]

VOID_MODES = ("union", "ignore")


def _rle_subtract(rles: Sequence[RLE], void: RLE) -> List[RLE]:
    """``rle AND NOT void`` for each rle (dense round trip; only used when they overlap)."""
    keep = mask_util.decode(void) == 0
    return [encode_masks((mask_util.decode(r).astype(bool) & keep)[None])[0] for r in rles]


def mask_iou_rle(
    pred_rles: Sequence[RLE],
    gt_rles: Sequence[RLE],
    void_rle: Optional[RLE] = None,
    void_mode: str = "union",
    *,
    pred_labels: Optional[np.ndarray] = None,
    gt_labels: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Mask IoU between the predictions and the GT instances of one image.

    Args:
        pred_rles: R RLEs of size (H, W).
        gt_rles: G RLEs of size (H, W).
        void_rle: optional RLE of the void pixels of the image.
        void_mode: ``"union"``: void pixels are background (they count in the union when
            predicted); ``"ignore"``: they are removed from both intersection and union.
        pred_labels, gt_labels: optional (R,) and (G,) classes (both or neither); given, only
            the pairs of the same class are computed and the others are 0 (matching never pairs
            two classes, so AP does not change, and most pairs are skipped).

    Returns:
        (R, G) float64 IoU matrix.
    """
    if void_mode not in VOID_MODES:
        raise ValueError(f"void_mode must be one of {VOID_MODES}, got {void_mode!r}")
    r, g = len(pred_rles), len(gt_rles)
    if r == 0 or g == 0:
        return np.zeros((r, g), dtype=np.float64)
    if (pred_labels is None) != (gt_labels is None):
        raise ValueError("give both pred_labels and gt_labels, or neither")
    if pred_labels is not None:
        return _same_class_iou(pred_rles, gt_rles, void_rle, void_mode, pred_labels, gt_labels)
    iou = np.asarray(mask_util.iou(list(pred_rles), list(gt_rles), [0] * g), dtype=np.float64)
    if void_mode == "union" or void_rle is None:
        return iou.reshape(r, g)
    # "ignore": IoU' = |P∩G∖V| / |(P∪G)∖V|. Strip void from GT first (void belongs to no
    # instance, so this is normally a no-op), then I' = |P∩G'| and
    # U' = |P| - |P∩V| + |G'| - I'. I is recovered exactly from IoU = I / (|P| + |G| - I).
    gt_void = np.array(
        [mask_util.area(mask_util.merge([x, void_rle], intersect=True)) for x in gt_rles]
    )
    if gt_void.any():
        gt_rles = _rle_subtract(gt_rles, void_rle)
        iou = np.asarray(mask_util.iou(list(pred_rles), list(gt_rles), [0] * g), dtype=np.float64)
    iou = iou.reshape(r, g)
    area_p = mask_util.area(list(pred_rles)).astype(np.float64)
    area_g = mask_util.area(list(gt_rles)).astype(np.float64)
    pred_void = np.array(
        [mask_util.area(mask_util.merge([x, void_rle], intersect=True)) for x in pred_rles],
        dtype=np.float64,
    )
    inter = np.rint(iou * (area_p[:, None] + area_g[None, :]) / (1.0 + iou))
    union = (area_p - pred_void)[:, None] + area_g[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)
    return out


def _same_class_iou(
    pred_rles: Sequence[RLE],
    gt_rles: Sequence[RLE],
    void_rle: Optional[RLE],
    void_mode: str,
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
) -> np.ndarray:
    """:func:`mask_iou_rle` of the same-class pairs; (R, G), 0 for the other pairs.

    Only the predictions of a class that has GT instances are compared, in one call. Every
    pair's IoU is the one of the full matrix: pycocotools scores pairs independently, and
    removing void from a GT instance that has none changes nothing.
    """
    pred_labels = np.asarray(pred_labels).reshape(-1)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    if len(pred_labels) != len(pred_rles) or len(gt_labels) != len(gt_rles):
        raise ValueError("one label per mask expected")
    out = np.zeros((len(pred_rles), len(gt_rles)), dtype=np.float64)
    same = pred_labels[:, None] == gt_labels[None, :]
    rows = np.flatnonzero(same.any(axis=1))
    if len(rows):
        iou = mask_iou_rle([pred_rles[i] for i in rows.tolist()], gt_rles, void_rle, void_mode)
        out[rows] = np.where(same[rows], iou, 0.0)
    return out
