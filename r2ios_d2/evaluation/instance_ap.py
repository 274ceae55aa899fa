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
from bisect import bisect_left
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
    if matching == "voc":
        _match_voc(iou, order, thr, tp)
    else:
        _match_sds([(iou, order)], thr, tp)
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


def _match_sds(
    images: Sequence[Tuple[np.ndarray, np.ndarray]], thr: np.ndarray, tp: np.ndarray
) -> None:
    """``"sds"`` matching of several images into ``tp`` (T, D), in place: greedy, each detection
    in score order takes the best still-unmatched GT of its class.

    Detections that can match nowhere are skipped. A GT instance that only detections without
    another candidate can take (the common case) goes, at each threshold, to the first of them
    above it (:func:`_match_alone`, all images at once); the others go through
    :func:`_match_greedy`.

    Args:
        images: per image, (R_i, G_i) IoU with -inf between different classes, and (R_i,) its
            detections by decreasing score; their D = sum R_i detections are the columns of
            ``tp``, image after image.
        thr: (T,) thresholds.
        tp: (T, D) bool, set in place.
    """
    if thr.shape[0] == 0:
        return
    nan_thr = bool(np.isnan(thr).any())
    thr_min = thr.min()
    alone: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    det0 = gt0 = 0
    for iou, order in images:
        r, g = iou.shape
        if r and g:
            row_max = iou.max(axis=1)
            if nan_thr or np.isnan(row_max).any():
                _match_sds_per_threshold(iou, order, thr, tp[:, det0 : det0 + r])
            else:
                rows = order[row_max[order] > thr_min]  # the others are FPs everywhere
                sub = iou[rows]
                # A GT instance at or below every threshold for a detection is never its match.
                cand = sub > thr_min
                shared = cand.sum(axis=1) > 1
                if shared.any():
                    crowded = (cand & shared[:, None]).any(axis=0)
                    greedy = (cand & crowded[None, :]).any(axis=1)
                    sub_g = np.where(cand[greedy], sub[greedy], -np.inf)
                    _match_greedy(sub_g, rows[greedy] + det0, thr, tp)
                    rows, sub = rows[~greedy], sub[~greedy]
                gt = sub.argmax(axis=1)
                alone.append((rows + det0, gt + gt0, sub[np.arange(len(gt)), gt]))
        det0 += r
        gt0 += g
    if alone:
        _match_alone(*(np.concatenate(x) for x in zip(*alone)), thr, tp)


def _match_alone(
    rows: np.ndarray, gt: np.ndarray, iou: np.ndarray, thr: np.ndarray, tp: np.ndarray
) -> None:
    """SDS matching of detections with a single candidate GT instance each, which no other
    detection shares with a second candidate: at each threshold, the first of its detections
    (in score order) above the threshold takes it.

    Args:
        rows: (P,) columns of ``tp`` of the detections, in score order within each GT instance;
        gt: (P,) their GT instance (any id); iou: (P,) their IoU with it; thr: (T,);
        tp: (T, D), set in place.
    """
    by_gt = np.argsort(gt, kind="stable")
    rows, gt, iou = rows[by_gt], gt[by_gt], iou[by_gt]
    above = iou[None, :] > thr[:, None]  # (T, P)
    seen = np.zeros((above.shape[0], above.shape[1] + 1), dtype=np.int64)
    np.cumsum(above, axis=1, out=seen[:, 1:])
    new_gt = np.ones(len(gt), dtype=bool)
    new_gt[1:] = gt[1:] != gt[:-1]
    first_of_gt = np.maximum.accumulate(np.where(new_gt, np.arange(len(gt)), 0))
    # The first detection above the threshold of its GT instance: one seen since it started.
    t_idx, p_idx = np.nonzero(above & (seen[:, 1:] - seen[:, first_of_gt] == 1))
    tp[t_idx, rows[p_idx]] = True


def _match_greedy(sub: np.ndarray, rows: np.ndarray, thr: np.ndarray, tp: np.ndarray) -> None:
    """SDS matching of detections in score order, each taking its best unmatched GT instance.

    The thresholds that have matched the same GT instances so far behave alike, and they form
    runs of the sorted thresholds (a detection whose best unmatched IoU is v splits a run into
    the thresholds below v, where it matches, and the others), so each detection visits a few
    runs instead of every threshold.

    Args:
        sub: (S, G) IoU, -inf where the GT instance is no candidate; rows: (S,) their columns
        of ``tp``, in score order; thr: (T,); tp: (T, D), set in place.
    """
    t_order = np.argsort(thr, kind="stable")
    thr_sorted = thr[t_order].tolist()
    # Each row's GT instances by decreasing IoU, the lower index first among equals (argmax's
    # rule); the others (-inf) are dropped.
    gts = np.argsort(-sub, axis=1, kind="stable")
    vals = np.take_along_axis(sub, gts, axis=1)
    n_cand = np.count_nonzero(vals > -np.inf, axis=1).tolist()
    cands = [list(zip(g[:m], v[:m])) for g, v, m in zip(gts.tolist(), vals.tolist(), n_cand)]
    runs = [(0, len(thr_sorted), 0)]  # (first, end) in sorted thresholds, matched GT bitmask
    hits = []
    for i, cand in enumerate(cands):
        split = []
        for lo, hi, matched in runs:
            for j, v in cand:
                if not (matched >> j) & 1:
                    k = bisect_left(thr_sorted, v, lo, hi)  # thresholds lo..k-1 are below v
                    if k > lo:
                        hits.append((i, lo, k))
                        split.append((lo, k, matched | (1 << j)))
                    if k < hi:
                        split.append((k, hi, matched))
                    break
            else:  # every GT instance of its class is matched at these thresholds: a FP
                split.append((lo, hi, matched))
        runs = split
    for i, lo, k in hits:
        tp[t_order[lo:k], rows[i]] = True


def _match_sds_per_threshold(
    iou: np.ndarray, order: np.ndarray, thr: np.ndarray, tp: np.ndarray
) -> None:
    """:func:`_match_sds` one detection at a time, all thresholds at once: the plain form of the
    rule, used when an IoU or a threshold is NaN (a detection with a NaN IoU never matches)."""
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
    """:func:`match_image`'s labelling of every image, the SDS rule for all images at once
    (arguments as :func:`evaluate_from_ious`'s, ``thr`` (T,) float64).

    Returns:
        ``tp`` (T, D) bool, ``scores`` (D,) float64 and ``labels`` (D,) int64 of the D
        detections of all images in input order, and ``n_pos`` (K,) GT instances per class.
    """
    if matching not in MATCHING_RULES:
        raise ValueError(f"matching must be one of {MATCHING_RULES}, got {matching!r}")
    n_t = thr.shape[0]
    images = []
    for iou, pl, ps, gl in zip(ious, pred_labels, pred_scores, gt_labels):
        pl = np.asarray(pl, dtype=np.int64).reshape(-1)
        ps = np.asarray(ps, dtype=np.float64).reshape(-1)
        gl = np.asarray(gl, dtype=np.int64).reshape(-1)
        if len(pl) != len(ps):
            raise ValueError(f"{len(pl)} labels but {len(ps)} scores")
        iou = np.asarray(iou, dtype=np.float64).reshape(len(pl), len(gl))
        images.append((iou, pl, ps, gl))
    labels = np.concatenate([im[1] for im in images]) if images else np.zeros(0, np.int64)
    scores = np.concatenate([im[2] for im in images]) if images else np.zeros(0)
    gts = np.concatenate([im[3] for im in images]) if images else np.zeros(0, np.int64)
    for lab in (labels, gts):
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes})")
    n_pos = np.bincount(gts, minlength=num_classes)
    tp = np.zeros((n_t, len(labels)), dtype=bool)
    masked = []  # per image: IoU with -inf between classes, detections by score
    for iou, pl, ps, gl in images:
        iou = np.where(pl[:, None] == gl[None, :], iou, -np.inf)
        masked.append((iou, np.argsort(-ps, kind="stable")))
    if matching == "voc":
        start = 0
        for iou, order in masked:
            if iou.size:
                _match_voc(iou, order, thr, tp[:, start : start + iou.shape[0]])
            start += iou.shape[0]
    else:
        _match_sds(masked, thr, tp)
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
        ap[:, k] = _average_precisions(prec, rec, use_07_metric)
        for t in range(n_t):
            precisions[t][k] = prec[t]
            recalls[t][k] = rec[t]
    return ap, precisions, recalls


def _average_precisions(
    precision: np.ndarray, recall: np.ndarray, use_07_metric: bool
) -> np.ndarray:
    """:func:`average_precision` of T curves at once, (T, N) each -> (T,) float64, with the
    same floating-point operations per curve (hence the same values)."""
    n_t = precision.shape[0]
    if use_07_metric:
        ap = np.zeros(n_t)
        for t in np.linspace(0.0, 1.0, 11):
            best = np.where(recall >= t, precision, -np.inf).max(axis=1, initial=-np.inf)
            ap += np.where(best > -np.inf, best, 0.0) / 11.0
        return ap
    zeros = np.zeros((n_t, 1))
    mrec = np.concatenate((zeros, recall, zeros + 1.0), axis=1)
    mpre = np.concatenate((zeros, precision, zeros), axis=1)
    mpre = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
    gain = (mrec[:, 1:] - mrec[:, :-1]) * mpre[:, 1:]
    step = mrec[:, 1:] != mrec[:, :-1]
    # One sum per curve over its steps only, as average_precision adds them.
    return np.array([float(np.sum(g[s])) for g, s in zip(gain, step)])


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
