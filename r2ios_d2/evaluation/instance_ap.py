"""Functional core of the AP^r (region AP) metric of Hariharan et al., "Simultaneous Detection
and Segmentation" (ECCV 2014), as reported by R2-IOS, MNC and FCIS on PASCAL VOC / SBD.

Everything here is pure (no detectron2 state): lists with one entry per image of predicted masks,
labels and scores, and of ground-truth masks and labels. This module matches detections to GT
instances and integrates AP from per-image IoU matrices (:func:`evaluate_from_ious`); the mask IoU
is :mod:`r2ios_d2.evaluation.mask_iou`, and the entry points from masks (:func:`evaluate_all`,
:func:`eval_instance_segmentation_voc`) are :mod:`r2ios_d2.evaluation.mask_ap`. Masks are COCO
run-length encodings (RLE, :mod:`pycocotools.mask`) so that no dense (R, H, W) array is kept.

Conventions (shared by every function of the evaluation package):

* **Labels** are foreground class indices ``0 .. K-1`` (no background index).
* **IoU** is computed over the whole image, once per image, as a (R, G) matrix between the R
  predictions and the G ground-truth instances of that image; pairs of different classes never
  match. The same matrices serve every IoU threshold.
* **Matching**, per class, in order of descending score:

  - ``"sds"`` (default, Hariharan et al.'s SDS code): each detection takes the best *still
    unmatched* GT instance of its class; it is a true positive when that IoU is **strictly greater**
    than the threshold (and the GT becomes matched), a false positive otherwise.
  - ``"voc"`` (MNC / FCIS ``voc_eval_sds``, chainercv): each detection looks at its best GT by IoU
    over *all* GT instances of its class; a true positive when that IoU is **at least** the
    threshold and the GT is still unmatched, a false positive (duplicate) when it is already
    matched or when the IoU is below the threshold.

  Among GT instances with equal IoU the one with the lower index wins.
* **Ties in score** are broken by input order, everywhere: a stable sort by descending score of the
  detections in the order image 0, 1, ... and, within an image, the order of its arrays. This
  decides both which of two tied detections claims a GT instance and the order of the PR curve.
* **AP**: the area under the monotone (non-increasing) envelope of the precision/recall curve
  (VOC2010+, default), or the VOC2007 11-point interpolation (``use_07_metric=True``).
* A class without GT instances gets AP = NaN (also when it has detections); ``map`` is the NaN-mean.
  A class with GT instances but no detections gets AP = 0.
* **Void pixels** (VOC's 255 label) belong to no instance. ``void_mode="union"`` (default, as the
  SDS, MNC and FCIS evaluation code): they are ordinary background, so predicted pixels on void
  count in the union. ``void_mode="ignore"``: void pixels are removed from both the intersection
  and the union (from predictions and GT alike).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MATCHING_RULES",
    "VOL_THRESHOLDS",
    "average_precision",
    "evaluate_from_ious",
    "match_image",
    "threshold_sets",
    "vol_average",
]

MATCHING_RULES = ("sds", "voc")
VOL_THRESHOLDS: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""The nine thresholds 0.1, 0.2, ..., 0.9 over which AP^r_vol is averaged (Hariharan et al.)."""


def match_image(
    ious: np.ndarray,
    pred_labels: np.ndarray,
    pred_scores: np.ndarray,
    gt_labels: np.ndarray,
    thresholds: Sequence[float],
    matching: str = "sds",
) -> np.ndarray:
    """Label the detections of one image as true / false positives at several IoU thresholds.

    Args:
        ious: (R, G) IoU between the R detections and the G GT instances.
        pred_labels: (R,) int class of each detection.
        pred_scores: (R,) score of each detection.
        gt_labels: (G,) int class of each GT instance.
        thresholds: T IoU thresholds.
        matching: ``"sds"`` or ``"voc"`` (see the module docstring).

    Returns:
        (T, R) bool, ``tp[t, i]``: detection i (in input order) is a true positive at threshold t.
    """
    if matching not in MATCHING_RULES:
        raise ValueError(f"matching must be one of {MATCHING_RULES}, got {matching!r}")
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    n_t = thr.shape[0]
    r = len(pred_labels)
    tp = np.zeros((n_t, r), dtype=bool)
    if r == 0 or len(gt_labels) == 0:
        return tp
    pred_labels = np.asarray(pred_labels).reshape(-1)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    # Pairs of different classes can never match: -inf makes every argmax stay within the class.
    iou = np.where(
        pred_labels[:, None] == gt_labels[None, :], np.asarray(ious, dtype=np.float64), -np.inf
    )
    order = np.argsort(-np.asarray(pred_scores, dtype=np.float64), kind="stable")
    match = _match_voc if matching == "voc" else _match_sds
    match(iou, order, thr, tp)
    return tp


def _match_voc(iou: np.ndarray, order: np.ndarray, thr: np.ndarray, tp: np.ndarray) -> None:
    """``"voc"`` matching of one image into ``tp`` (T, R), in place: each detection looks at its
    best GT; the first qualifying one in score ``order`` takes it.

    Args:
        iou: (R, G) IoU, -inf between different classes; order: (R,) detections by score;
        thr: (T,) thresholds.
    """
    r = iou.shape[0]
    best = np.argmax(iou, axis=1)
    best_iou = iou[np.arange(r), best]
    best_o, best_iou_o = best[order], best_iou[order]
    for t in range(thr.shape[0]):
        idx = np.flatnonzero(best_iou_o >= thr[t])
        # The first qualifying detection (in score order) of each GT takes it; the rest are
        # duplicates.
        _, first = np.unique(best_o[idx], return_index=True)
        tp[t, order[idx[first]]] = True


def _match_sds(iou: np.ndarray, order: np.ndarray, thr: np.ndarray, tp: np.ndarray) -> None:
    """``"sds"`` matching of one image into ``tp`` (T, R), in place: greedy, each detection in
    score ``order`` takes the best still-unmatched GT of its class (arguments as
    :func:`_match_voc`'s)."""
    n_t = thr.shape[0]
    row_max = iou.max(axis=1)
    thr_min = thr.min()
    covered = np.zeros((n_t, iou.shape[1]), dtype=bool)
    t_idx = np.arange(n_t)
    for i in order:
        if not row_max[i] > thr_min:  # cannot be a TP at any threshold
            continue
        cand = np.where(covered, -np.inf, iou[i][None, :])
        j = np.argmax(cand, axis=1)
        hit = cand[t_idx, j] > thr
        tp[hit, i] = True
        covered[t_idx[hit], j[hit]] = True


def average_precision(
    precision: np.ndarray, recall: np.ndarray, use_07_metric: bool = False
) -> float:
    """AP from a precision/recall curve.

    Args:
        precision: (N,) precision after each detection in ranked order.
        recall: (N,) recall after each detection in ranked order (non-decreasing).
        use_07_metric: VOC2007 11-point interpolation (mean over recall 0, 0.1, ..., 1 of the best
            precision at recall >= r, 0 if none); otherwise the exact area under the monotone
            precision envelope.

    Returns:
        AP in [0, 1].
    """
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            sel = recall >= t
            ap += (precision[sel].max() if sel.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _nanmean(x: np.ndarray, axis: Optional[int] = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _infer_num_classes(pred_labels: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray]) -> int:
    m = -1
    for lab in list(pred_labels) + list(gt_labels):
        lab = np.asarray(lab)
        if lab.size:
            m = max(m, int(lab.max()))
    return m + 1


def evaluate_from_ious(
    ious: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = VOL_THRESHOLDS,
    matching: str = "sds",
    use_07_metric: bool = False,
    num_classes: Optional[int] = None,
    vol_thresholds: Optional[Sequence[float]] = None,
) -> Dict[str, np.ndarray]:
    """Per-class AP at several IoU thresholds from precomputed per-image IoU matrices.

    Works for any IoU (mask or box).

    Args:
        ious: per image, (R_i, G_i) IoU matrix.
        pred_labels: per image, (R_i,) int classes.
        pred_scores: per image, (R_i,) scores.
        gt_labels: per image, (G_i,) int classes.
        thresholds: T IoU thresholds.
        matching: ``"sds"`` or ``"voc"``.
        use_07_metric: VOC2007 11-point AP instead of the area under the envelope.
        num_classes: K; default: 1 + the largest label seen.
        vol_thresholds: if given (a subset of ``thresholds``), also ``"ap_vol"`` (K,) and
            ``"map_vol"``, the mean AP over them (:func:`vol_average`).

    Returns:
        dict with ``"thresholds"`` (T,), ``"ap"`` (T, K) with NaN for classes without GT,
        ``"map"`` (T,) NaN-mean over classes, ``"n_pos"`` (K,) number of GT instances per class,
        ``"precision"`` / ``"recall"``: lists (per threshold) of lists (per class) of (N_k,)
        arrays, None for classes without GT.
    """
    n_img = len(ious)
    if not (len(pred_labels) == len(pred_scores) == len(gt_labels) == n_img):
        raise ValueError("all inputs must have one entry per image")
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if num_classes is None:
        num_classes = _infer_num_classes(pred_labels, gt_labels)
    tp, scores, labels, n_pos = _match_all(
        ious, pred_labels, pred_scores, gt_labels, thr, matching, num_classes
    )
    ap, precisions, recalls = _pr_curves(tp, scores, labels, n_pos, use_07_metric)
    res = {
        "thresholds": thr,
        "ap": ap,
        "map": _nanmean(ap, axis=1),
        "n_pos": n_pos,
        "precision": precisions,
        "recall": recalls,
    }
    if vol_thresholds is not None:
        res["ap_vol"], res["map_vol"] = vol_average(ap, thresholds, vol_thresholds)
    return res


def _match_all(
    ious: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    thr: np.ndarray,
    matching: str,
    num_classes: int,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`match_image` on every image (arguments as :func:`evaluate_from_ious`'s, ``thr``
    (T,) float64).

    Returns:
        ``tp`` (T, D) bool, ``scores`` (D,) float64 and ``labels`` (D,) int64 of the D
        detections of all images in input order, and ``n_pos`` (K,) GT instances per class.
    """
    n_t = thr.shape[0]
    all_tp, all_scores, all_labels = [], [], []
    n_pos = np.zeros(num_classes, dtype=np.int64)
    for iou, pl, ps, gl in zip(ious, pred_labels, pred_scores, gt_labels):
        pl = np.asarray(pl, dtype=np.int64).reshape(-1)
        ps = np.asarray(ps, dtype=np.float64).reshape(-1)
        gl = np.asarray(gl, dtype=np.int64).reshape(-1)
        if len(pl) != len(ps):
            raise ValueError(f"{len(pl)} labels but {len(ps)} scores")
        iou = np.asarray(iou, dtype=np.float64).reshape(len(pl), len(gl))
        if (pl.size and (pl.min() < 0 or pl.max() >= num_classes)) or (
            gl.size and (gl.min() < 0 or gl.max() >= num_classes)
        ):
            raise ValueError(f"labels must lie in [0, {num_classes})")
        n_pos += np.bincount(gl, minlength=num_classes)
        all_tp.append(match_image(iou, pl, ps, gl, thr, matching))
        all_scores.append(ps)
        all_labels.append(pl)
    tp = np.concatenate(all_tp, axis=1) if all_tp else np.zeros((n_t, 0), dtype=bool)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, dtype=np.int64)
    return tp, scores, labels, n_pos


def _pr_curves(
    tp: np.ndarray, scores: np.ndarray, labels: np.ndarray, n_pos: np.ndarray, use_07_metric: bool
) -> Tuple[np.ndarray, List[List[Optional[np.ndarray]]], List[List[Optional[np.ndarray]]]]:
    """Per-class precision / recall curves and AP from the output of :func:`_match_all`.

    Returns:
        ``ap`` (T, K), NaN for classes without GT; ``precision`` and ``recall``: per threshold,
        per class, the (N_k,) curve or None for classes without GT.
    """
    n_t, num_classes = tp.shape[0], n_pos.shape[0]
    ap = np.full((n_t, num_classes), np.nan)
    precisions: List[List[Optional[np.ndarray]]] = [[None] * num_classes for _ in range(n_t)]
    recalls: List[List[Optional[np.ndarray]]] = [[None] * num_classes for _ in range(n_t)]
    for k in range(num_classes):
        if n_pos[k] == 0:
            continue
        sel = np.flatnonzero(labels == k)
        # Stable: equal scores keep input order (image order, then order within the image).
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        tp_k = tp[:, sel]
        ctp = np.cumsum(tp_k, axis=1)
        cfp = np.cumsum(~tp_k, axis=1)
        prec = ctp / np.maximum(ctp + cfp, 1)
        rec = ctp / n_pos[k]
        for t in range(n_t):
            precisions[t][k] = prec[t]
            recalls[t][k] = rec[t]
            ap[t, k] = average_precision(prec[t], rec[t], use_07_metric)
    return ap, precisions, recalls


def threshold_sets(
    vol_thresholds: Sequence[float], thresholds: Sequence[float] = ()
) -> Tuple[List[float], List[float]]:
    """The thresholds to evaluate: ``(vol, thr)``, the AP_vol thresholds and the sorted union
    of both sets, each rounded to 6 decimals and without repeats."""
    vol = sorted({round(float(t), 6) for t in vol_thresholds})
    thr = sorted(set(vol) | {round(float(t), 6) for t in thresholds})
    return vol, thr


def vol_average(
    ap: np.ndarray, thr: Sequence[float], vol: Sequence[float]
) -> Tuple[np.ndarray, float]:
    """AP_vol: the mean of ``ap`` (T, K) over the rows of the thresholds ``vol`` (a subset of
    ``thr``, the T evaluated thresholds).

    Returns:
        ``ap_vol`` (K,), NaN exactly for classes without GT, and its NaN-mean (NaN if all NaN).
    """
    ap_vol = ap[[list(thr).index(t) for t in vol]].mean(axis=0)
    return ap_vol, float(_nanmean(ap_vol))
