"""Ground truth from dataset dicts and the scoring of per-image predictions against it.

Shared by :class:`~r2ios_d2.evaluation.sds.SDSEvaluator` and ``tools/evaluate_sds.py``: the GT is
indexed by ``image_id`` (:func:`gt_from_dataset_dicts`, crowd regions joining the void pixels),
and :func:`score_predictions` gives mask AP^r and box AP with the conventions of
:mod:`r2ios_d2.evaluation.instance_ap`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from ..utils import box_iou, rle_to_json
from .instance_ap import (
    MATCHING_RULES,
    VOL_THRESHOLDS,
    evaluate_from_ious,
    threshold_sets,
)
from .mask_iou import VOID_MODES, mask_iou_rle

__all__ = ["gt_from_dataset_dicts", "score_predictions"]

logger = logging.getLogger(__name__)


def _to_rle(segm: Any, height: int, width: int) -> Dict[str, Any]:
    """A COCO segmentation (compressed / uncompressed RLE dict, or polygons) as compressed RLE
    with ``str`` counts."""
    if isinstance(segm, dict):
        if tuple(int(v) for v in segm["size"]) != (height, width):
            raise ValueError(f"RLE of size {list(segm['size'])} in a {height}x{width} image")
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return rle_to_json(segm)
    if isinstance(segm, list):  # polygons
        rles = mask_util.frPyObjects(segm, height, width)
        return rle_to_json(mask_util.merge(rles))
    raise ValueError(f"unsupported segmentation type {type(segm)}")


def _gt_mask(segm: Any, rec: Dict[str, Any], index: int, dataset_name: str) -> Dict[str, Any]:
    where = f"annotation {index} of image {rec['image_id']!r} ({rec.get('file_name', '?')})"
    if dataset_name:
        where += f" in dataset {dataset_name!r}"
    if not segm:
        raise ValueError(
            f"{where} has no 'segmentation': AP^r needs a GT mask (polygons or RLE) per instance."
        )
    try:
        return _to_rle(segm, int(rec["height"]), int(rec["width"]))
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"{where}: unreadable 'segmentation' ({e}).") from e


def gt_from_dataset_dicts(
    dataset_dicts: Sequence[Dict[str, Any]], dataset_name: str = ""
) -> Dict[Any, Dict[str, Any]]:
    """Index the GT of detectron2 dataset dicts by ``image_id``.

    Crowd annotations (``iscrowd`` 1, as in COCO-format datasets) are no instances: their pixels
    join the image's void region, like VOC's 255 pixels (see ``void_mode``).

    Args:
        dataset_dicts: records with ``image_id``, ``height``, ``width``, ``annotations`` (each with
            ``segmentation`` as polygons, compressed RLE (``str`` or ``bytes`` counts) or
            uncompressed RLE, ``category_id`` (contiguous, 0-based), ``bbox``, ``bbox_mode`` and
            optionally ``iscrowd``), and optionally ``void_segmentation`` (RLE of the void
            pixels, as the VOC loader writes it).
        dataset_name: the dataset's name, for error messages.

    Returns:
        ``{image_id: {"height", "width", "masks": G RLEs, "labels": (G,) int64,
        "boxes": (G, 4) float64 XYXY, "void": RLE or None}}``.

    Raises:
        ValueError: an instance without a mask or with an unreadable one (naming the image).
    """
    out: Dict[Any, Dict[str, Any]] = {}
    for rec in dataset_dicts:
        h, w = int(rec["height"]), int(rec["width"])
        anns, crowd = [], []
        for i, a in enumerate(rec.get("annotations", [])):
            if not a.get("iscrowd", 0):
                anns.append((i, a))
            elif a.get("segmentation"):
                crowd.append(_gt_mask(a["segmentation"], rec, i, dataset_name))
        boxes = [
            BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            for _, a in anns
        ]
        void = rec.get("void_segmentation")
        void_rles = ([] if void is None else [_to_rle(void, h, w)]) + crowd
        if len(void_rles) > 1:
            void_rles = [rle_to_json(mask_util.merge(void_rles, intersect=False))]
        out[rec["image_id"]] = {
            "height": h,
            "width": w,
            "masks": [_gt_mask(a.get("segmentation"), rec, i, dataset_name) for i, a in anns],
            "labels": np.array([a["category_id"] for _, a in anns], dtype=np.int64),
            "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
            "void": void_rles[0] if void_rles else None,
        }
    return out


def score_predictions(
    predictions: Sequence[Dict[str, Any]],
    gt: Dict[Any, Dict[str, Any]],
    num_classes: int,
    *,
    thresholds: Sequence[float] = (),
    vol_thresholds: Sequence[float] = VOL_THRESHOLDS,
    matching: str = "sds",
    use_07_metric: bool = False,
    void_mode: str = "union",
) -> Dict[str, Dict[str, Any]]:
    """Mask and box AP of per-image predictions against indexed GT.

    Only images present in ``predictions`` are scored (as detectron2's COCOEvaluator does), so a
    partial inference run scores the images it saw.

    Args:
        predictions: per image ``{"image_id", "height", "width", "scores": (R,), "classes": (R,),
            "boxes": (R, 4) XYXY, "masks": R RLEs}`` (lists or arrays).
        gt: output of :func:`gt_from_dataset_dicts`.
        num_classes: K.
        thresholds: extra IoU thresholds to report besides ``vol_thresholds``.
        vol_thresholds: thresholds averaged into AP_vol.
        matching, use_07_metric, void_mode: see :mod:`r2ios_d2.evaluation.instance_ap`.

    Returns:
        ``{"segm": raw, "bbox": raw}``, each raw dict with ``"thresholds"`` (T,), ``"ap"`` (T, K),
        ``"map"`` (T,), ``"ap_vol"`` (K,), ``"map_vol"``, ``"n_pos"`` (K,), ``"vol_thresholds"``.
    """
    if matching not in MATCHING_RULES:
        raise ValueError(f"matching must be one of {MATCHING_RULES}, got {matching!r}")
    if void_mode not in VOID_MODES:
        raise ValueError(f"void_mode must be one of {VOID_MODES}, got {void_mode!r}")
    vol, thr = threshold_sets(vol_thresholds, thresholds)
    mask_ious, box_ious, p_labels, p_scores, g_labels = _per_image_ious(predictions, gt, void_mode)
    out: Dict[str, Dict[str, Any]] = {}
    for name, ious in (("segm", mask_ious), ("bbox", box_ious)):
        res = evaluate_from_ious(
            ious,
            p_labels,
            p_scores,
            g_labels,
            thresholds=thr,
            matching=matching,
            use_07_metric=use_07_metric,
            num_classes=num_classes,
            vol_thresholds=vol,
        )
        ap_vol, map_vol = res["ap_vol"], res["map_vol"]
        out[name] = {
            "thresholds": res["thresholds"],
            "vol_thresholds": np.asarray(vol),
            "ap": res["ap"],
            "map": res["map"],
            "ap_vol": ap_vol,
            "map_vol": map_vol,
            "n_pos": res["n_pos"],
        }
    return out


def _per_image_ious(
    predictions: Sequence[Dict[str, Any]], gt: Dict[Any, Dict[str, Any]], void_mode: str
) -> Tuple[List[np.ndarray], ...]:
    """Per predicted image that is in ``gt`` (arguments as :func:`score_predictions`'s): the
    (R, G) mask and box IoU matrices, (R,) predicted classes and scores, (G,) GT classes.

    Returns:
        five lists, one entry per scored image: mask IoUs, box IoUs, predicted labels, predicted
        scores, GT labels.

    Raises:
        ValueError: an image predicted twice, or a mask not of its image's size.
    """
    mask_ious, box_ious, p_labels, p_scores, g_labels = [], [], [], [], []
    seen = set()
    for p in predictions:
        img_id = p["image_id"]
        if img_id in seen:
            raise ValueError(f"image_id {img_id!r} appears twice in the predictions")
        seen.add(img_id)
        if img_id not in gt:
            logger.warning(
                "Prediction for image_id %r, which is not in the dataset; ignored.", img_id
            )
            continue
        g = gt[img_id]
        masks = list(p["masks"])
        size = [g["height"], g["width"]]
        for m in masks:
            s = m["size"]
            if not (type(s) is list and s == size) and tuple(s) != tuple(size):
                raise ValueError(
                    f"image {img_id!r}: predicted mask size {tuple(m['size'])} != image size "
                    f"{(g['height'], g['width'])}; masks must be pasted at the original size "
                    "(detector_postprocess)"
                )
        labels = np.asarray(p["classes"], dtype=np.int64).reshape(-1)
        # Matching never pairs two classes: the other pairs' mask IoU is not needed.
        mask_ious.append(
            mask_iou_rle(
                masks,
                g["masks"],
                g["void"],
                void_mode,
                pred_labels=labels,
                gt_labels=g["labels"],
            )
        )
        box_ious.append(box_iou(np.asarray(p["boxes"], dtype=np.float64), g["boxes"]))
        p_labels.append(labels)
        p_scores.append(np.asarray(p["scores"], dtype=np.float64).reshape(-1))
        g_labels.append(g["labels"])
    return mask_ious, box_ious, p_labels, p_scores, g_labels
