"""AP^r from masks: the entry points of the metric (RLE or dense masks in, AP out).

:func:`evaluate_all` gives AP^r at every threshold and AP^r_vol in one pass;
:func:`eval_instance_segmentation_voc` (dense masks, chainercv's call) and
:func:`eval_instance_segmentation_voc_rle` give AP^r at one threshold. Conventions:
:mod:`r2ios_d2.evaluation.instance_ap`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..utils import RLE, encode_masks
from .instance_ap import VOL_THRESHOLDS, evaluate_from_ious, threshold_sets
from .mask_iou import mask_iou_rle

__all__ = ["evaluate_all", "eval_instance_segmentation_voc", "eval_instance_segmentation_voc_rle"]


def _check_lengths(*lists: Sequence[Any]) -> None:
    n = len(lists[0])
    if any(len(x) != n for x in lists):
        raise ValueError(f"all inputs must have one entry per image, got {[len(x) for x in lists]}")


def _mask_ious(
    pred_rles: Sequence[Sequence[RLE]],
    gt_rles: Sequence[Sequence[RLE]],
    gt_void_rles: Optional[Sequence[Optional[RLE]]],
    void_mode: str,
) -> List[np.ndarray]:
    """Per image, the (R_i, G_i) mask IoU matrix (:func:`mask_iou_rle`)."""
    if gt_void_rles is None:
        gt_void_rles = [None] * len(pred_rles)
    return [mask_iou_rle(p, g, v, void_mode) for p, g, v in zip(pred_rles, gt_rles, gt_void_rles)]


def evaluate_all(
    pred_rles: Sequence[Sequence[RLE]],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_rles: Sequence[Sequence[RLE]],
    gt_labels: Sequence[np.ndarray],
    *,
    thresholds: Optional[Sequence[float]] = None,
    vol_thresholds: Sequence[float] = VOL_THRESHOLDS,
    matching: str = "sds",
    use_07_metric: bool = False,
    num_classes: Optional[int] = None,
    gt_void_rles: Optional[Sequence[Optional[RLE]]] = None,
    void_mode: str = "union",
) -> Dict[str, Any]:
    """AP^r at every threshold and AP^r_vol, per class, in one pass over per-image IoU matrices.

    Args:
        pred_rles: per image, R_i RLEs of the predicted masks (image size).
        pred_labels: per image, (R_i,) int classes.
        pred_scores: per image, (R_i,) scores.
        gt_rles: per image, G_i RLEs of the GT instances.
        gt_labels: per image, (G_i,) int classes.
        thresholds: extra IoU thresholds to report, besides ``vol_thresholds``.
        vol_thresholds: thresholds averaged into AP^r_vol (default 0.1, ..., 0.9, which include
            0.5, 0.6 and 0.7).
        matching: ``"sds"`` or ``"voc"`` (:mod:`r2ios_d2.evaluation.instance_ap`).
        use_07_metric: VOC2007 11-point AP.
        num_classes: K; default 1 + the largest label seen.
        gt_void_rles: per image, an RLE of the void pixels or None.
        void_mode: ``"union"`` or ``"ignore"`` (:mod:`r2ios_d2.evaluation.instance_ap`).

    Returns:
        dict with ``"thresholds"`` (T,) sorted union of both threshold sets, ``"ap"`` (T, K),
        ``"map"`` (T,), ``"ap_vol"`` (K,) mean of ``ap`` over ``vol_thresholds`` (NaN for classes
        without GT), ``"map_vol"`` (float), ``"n_pos"`` (K,).
    """
    _check_lengths(pred_rles, pred_labels, pred_scores, gt_rles, gt_labels)
    if gt_void_rles is not None:
        _check_lengths(pred_rles, gt_void_rles)
    vol, thr = threshold_sets(vol_thresholds, thresholds or ())
    for t in thr:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"IoU thresholds must lie in [0, 1], got {t}")
    res = evaluate_from_ious(
        _mask_ious(pred_rles, gt_rles, gt_void_rles, void_mode),
        pred_labels,
        pred_scores,
        gt_labels,
        thresholds=thr,
        matching=matching,
        use_07_metric=use_07_metric,
        num_classes=num_classes,
        vol_thresholds=vol,
    )
    return {k: res[k] for k in ("thresholds", "ap", "map", "ap_vol", "map_vol", "n_pos")}


def eval_instance_segmentation_voc_rle(
    pred_rles: Sequence[Sequence[RLE]],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_rles: Sequence[Sequence[RLE]],
    gt_labels: Sequence[np.ndarray],
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    *,
    matching: str = "sds",
    num_classes: Optional[int] = None,
    gt_void_rles: Optional[Sequence[Optional[RLE]]] = None,
    void_mode: str = "union",
) -> Dict[str, Any]:
    """AP^r at one IoU threshold, masks given as RLEs (see :func:`eval_instance_segmentation_voc`).

    Returns:
        ``{"ap": (K,) array, NaN for classes without GT, "map": float NaN-mean of "ap"}``.
    """
    _check_lengths(pred_rles, pred_labels, pred_scores, gt_rles, gt_labels)
    res = evaluate_from_ious(
        _mask_ious(pred_rles, gt_rles, gt_void_rles, void_mode),
        pred_labels,
        pred_scores,
        gt_labels,
        thresholds=[iou_thresh],
        matching=matching,
        use_07_metric=use_07_metric,
        num_classes=num_classes,
    )
    return {"ap": res["ap"][0], "map": float(res["map"][0])}


def eval_instance_segmentation_voc(
    pred_masks: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    *,
    matching: str = "sds",
    num_classes: Optional[int] = None,
    gt_void_masks: Optional[Sequence[Optional[np.ndarray]]] = None,
    void_mode: str = "union",
) -> Dict[str, Any]:
    """AP^r of instance segmentation, PASCAL VOC style (same call and result as chainercv's
    function of this name, plus keyword options).

    Args:
        pred_masks: per image, (R_i, H, W) bool predicted masks.
        pred_labels: per image, (R_i,) int classes in [0, K).
        pred_scores: per image, (R_i,) scores.
        gt_masks: per image, (G_i, H, W) bool GT instance masks.
        gt_labels: per image, (G_i,) int classes in [0, K).
        iou_thresh: IoU threshold (strict ``>`` with ``matching="sds"``, ``>=`` with ``"voc"``).
        use_07_metric: VOC2007 11-point AP; default: area under the monotone PR envelope.
        matching: ``"sds"`` (default) or ``"voc"`` (:mod:`r2ios_d2.evaluation.instance_ap`).
        num_classes: K; default 1 + the largest label seen (as chainercv).
        gt_void_masks: per image, an (H, W) bool mask of void pixels, or None.
        void_mode: ``"union"`` (default) or ``"ignore"`` (:mod:`r2ios_d2.evaluation.instance_ap`).

    Returns:
        ``{"ap": (K,) array, NaN for classes without GT, "map": float NaN-mean of "ap"}``.
    """
    _check_lengths(pred_masks, pred_labels, pred_scores, gt_masks, gt_labels)
    void_rles = None
    if gt_void_masks is not None:
        void_rles = [
            None if v is None else encode_masks(np.asarray(v)[None])[0] for v in gt_void_masks
        ]
    return eval_instance_segmentation_voc_rle(
        [encode_masks(m) for m in pred_masks],
        pred_labels,
        pred_scores,
        [encode_masks(m) for m in gt_masks],
        gt_labels,
        iou_thresh,
        use_07_metric,
        matching=matching,
        num_classes=num_classes,
        gt_void_rles=void_rles,
        void_mode=void_mode,
    )
