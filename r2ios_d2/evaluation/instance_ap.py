"""Functional core of the AP^r (region AP) metric of Hariharan et al., "Simultaneous Detection
and Segmentation" (ECCV 2014), as reported by R2-IOS, MNC and FCIS on PASCAL VOC / SBD.

Everything here is pure (no detectron2 state): lists with one entry per image of predicted masks,
labels and scores, and of ground-truth masks and labels. Masks are handled as COCO run-length
encodings (RLE, :mod:`pycocotools.mask`) so that no dense (R, H, W) array has to be kept; the dense
entry point :func:`eval_instance_segmentation_voc` encodes and calls the RLE one.

Conventions (shared by every function of this module):

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
import pycocotools.mask as mask_util

__all__ = [
    "MATCHING_RULES",
    "VOID_MODES",
    "VOL_THRESHOLDS",
    "average_precision",
    "box_iou",
    "encode_masks",
    "eval_instance_segmentation_voc",
    "eval_instance_segmentation_voc_rle",
    "evaluate_all",
    "evaluate_from_ious",
    "mask_iou_rle",
    "match_image",
]

RLE = Dict[str, Any]
"""A COCO compressed RLE: ``{"size": [H, W], "counts": bytes | str}``."""

MATCHING_RULES = ("sds", "voc")
VOID_MODES = ("union", "ignore")
VOL_THRESHOLDS: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""The nine thresholds 0.1, 0.2, ..., 0.9 over which AP^r_vol is averaged (Hariharan et al.)."""


# --------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------
def encode_masks(masks: np.ndarray) -> List[RLE]:
    """Encode binary masks as COCO RLEs.

    Args:
        masks: (R, H, W) array; nonzero pixels are foreground.

    Returns:
        R RLE dicts with ``counts`` as ``bytes``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (R, H, W), got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants (H, W, R) uint8 in Fortran order.
    return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def _rle_subtract(rles: Sequence[RLE], void: RLE) -> List[RLE]:
    """``rle AND NOT void`` for each rle (dense round trip; only used when they overlap)."""
    keep = mask_util.decode(void) == 0
    out = []
    for r in rles:
        m = mask_util.decode(r).astype(bool) & keep
        out.append(mask_util.encode(np.asfortranarray(m.astype(np.uint8))))
    return out


def mask_iou_rle(
    pred_rles: Sequence[RLE],
    gt_rles: Sequence[RLE],
    void_rle: Optional[RLE] = None,
    void_mode: str = "union",
) -> np.ndarray:
    """Mask IoU between the predictions and the GT instances of one image.

    Args:
        pred_rles: R RLEs of size (H, W).
        gt_rles: G RLEs of size (H, W).
        void_rle: optional RLE of the void pixels of the image.
        void_mode: ``"union"``: void pixels are background (they count in the union when
            predicted); ``"ignore"``: they are removed from both intersection and union.

    Returns:
        (R, G) float64 IoU matrix.
    """
    if void_mode not in VOID_MODES:
        raise ValueError(f"void_mode must be one of {VOID_MODES}, got {void_mode!r}")
    r, g = len(pred_rles), len(gt_rles)
    if r == 0 or g == 0:
        return np.zeros((r, g), dtype=np.float64)
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


def box_iou(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned boxes (continuous coordinates: area = (x1 - x0) * (y1 - y0)).

    Args:
        pred_boxes: (R, 4) XYXY boxes.
        gt_boxes: (G, 4) XYXY boxes.

    Returns:
        (R, G) float64 IoU matrix.
    """
    a = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)


# --------------------------------------------------------------------------------------------
# Matching and AP
# --------------------------------------------------------------------------------------------
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
        best = np.argmax(iou, axis=1)
        best_iou = iou[np.arange(r), best]
        best_o, best_iou_o = best[order], best_iou[order]
        for t in range(n_t):
            idx = np.flatnonzero(best_iou_o >= thr[t])
            # The first qualifying detection (in score order) of each GT takes it; the rest are
            # duplicates.
            _, first = np.unique(best_o[idx], return_index=True)
            tp[t, order[idx[first]]] = True
        return tp

    # "sds": greedy, each detection takes the best still-unmatched GT of its class.
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
    return tp


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
    return {
        "thresholds": thr,
        "ap": ap,
        "map": _nanmean(ap, axis=1),
        "n_pos": n_pos,
        "precision": precisions,
        "recall": recalls,
    }


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
def _check_lengths(*lists: Sequence[Any]) -> None:
    n = len(lists[0])
    if any(len(x) != n for x in lists):
        raise ValueError(f"all inputs must have one entry per image, got {[len(x) for x in lists]}")


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
        matching: ``"sds"`` or ``"voc"`` (module docstring).
        use_07_metric: VOC2007 11-point AP.
        num_classes: K; default 1 + the largest label seen.
        gt_void_rles: per image, an RLE of the void pixels or None.
        void_mode: ``"union"`` or ``"ignore"`` (module docstring).

    Returns:
        dict with ``"thresholds"`` (T,) sorted union of both threshold sets, ``"ap"`` (T, K),
        ``"map"`` (T,), ``"ap_vol"`` (K,) mean of ``ap`` over ``vol_thresholds`` (NaN for classes
        without GT), ``"map_vol"`` (float), ``"n_pos"`` (K,).
    """
    _check_lengths(pred_rles, pred_labels, pred_scores, gt_rles, gt_labels)
    if gt_void_rles is None:
        gt_void_rles = [None] * len(pred_rles)
    _check_lengths(pred_rles, gt_void_rles)
    vol = sorted({round(float(t), 6) for t in vol_thresholds})
    thr = sorted(set(vol) | {round(float(t), 6) for t in (thresholds or ())})
    for t in thr:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"IoU thresholds must lie in [0, 1], got {t}")
    ious = [mask_iou_rle(p, g, v, void_mode) for p, g, v in zip(pred_rles, gt_rles, gt_void_rles)]
    res = evaluate_from_ious(
        ious,
        pred_labels,
        pred_scores,
        gt_labels,
        thresholds=thr,
        matching=matching,
        use_07_metric=use_07_metric,
        num_classes=num_classes,
    )
    vol_rows = [thr.index(t) for t in vol]
    ap_vol = res["ap"][vol_rows].mean(axis=0)  # NaN exactly for classes without GT
    return {
        "thresholds": res["thresholds"],
        "ap": res["ap"],
        "map": res["map"],
        "ap_vol": ap_vol,
        "map_vol": float(_nanmean(ap_vol)),
        "n_pos": res["n_pos"],
    }


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
    if gt_void_rles is None:
        gt_void_rles = [None] * len(pred_rles)
    ious = [mask_iou_rle(p, g, v, void_mode) for p, g, v in zip(pred_rles, gt_rles, gt_void_rles)]
    res = evaluate_from_ious(
        ious,
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
        matching: ``"sds"`` (default) or ``"voc"`` (module docstring).
        num_classes: K; default 1 + the largest label seen (as chainercv).
        gt_void_masks: per image, an (H, W) bool mask of void pixels, or None.
        void_mode: ``"union"`` (default) or ``"ignore"`` (module docstring).

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
