"""AP^r evaluator (Hariharan et al. SDS metric) as a detectron2 :class:`DatasetEvaluator`.

Usage, like any detectron2 evaluator::

    evaluator = SDSEvaluator("voc_2012_seg_val", output_dir="output/inference")
    results = inference_on_dataset(model, data_loader, evaluator)
    results["segm"]["APr50"], results["segm"]["APr_vol"], results["bbox"]["AP50"]

Predictions are turned into RLEs as soon as they arrive (``process``), gathered on the main
process, scored against the dataset's own dicts, and saved as JSON for re-scoring with other
options by ``tools/evaluate_sds.py``. Matching, AP integration and void handling are those of
:mod:`r2ios_d2.evaluation.instance_ap` (see its docstring).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from tabulate import tabulate

from ..atomic import atomic_open
from .instance_ap import (
    MATCHING_RULES,
    VOID_MODES,
    VOL_THRESHOLDS,
    box_iou,
    evaluate_from_ious,
    mask_iou_rle,
)

__all__ = [
    "PREDICTIONS_FORMAT",
    "SDSEvaluator",
    "format_results",
    "gt_from_dataset_dicts",
    "load_predictions",
    "results_table",
    "save_predictions",
    "score_predictions",
]

logger = logging.getLogger(__name__)

PREDICTIONS_FORMAT = "r2ios_d2.sds_predictions"
PREDICTIONS_FILE = "sds_predictions.json"


# --------------------------------------------------------------------------------------------
# RLE helpers
# --------------------------------------------------------------------------------------------
def _rle_to_json(rle: Dict[str, Any]) -> Dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _to_rle(segm: Any, height: int, width: int) -> Dict[str, Any]:
    """A COCO segmentation (compressed / uncompressed RLE dict, or polygons) as compressed RLE
    with ``str`` counts."""
    if isinstance(segm, dict):
        if tuple(int(v) for v in segm["size"]) != (height, width):
            raise ValueError(f"RLE of size {list(segm['size'])} in a {height}x{width} image")
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return _rle_to_json(segm)
    if isinstance(segm, list):  # polygons
        rles = mask_util.frPyObjects(segm, height, width)
        return _rle_to_json(mask_util.merge(rles))
    raise ValueError(f"unsupported segmentation type {type(segm)}")


def _masks_to_rles(masks: torch.Tensor, mask_threshold: float) -> List[Dict[str, Any]]:
    """(N, H, W) bool or float masks → N RLEs (float masks: foreground where >= threshold)."""
    if masks.dtype != torch.bool:
        masks = masks >= mask_threshold
    if masks.shape[0] == 0:
        return []
    # pycocotools wants (H, W, N) in Fortran order, i.e. (N, W, H) in C order: one transposing
    # copy of the uint8 view (no bool -> uint8 conversion pass).
    u8 = masks.cpu().numpy().view(np.uint8)
    arr = np.ascontiguousarray(u8.transpose(0, 2, 1)).transpose(2, 1, 0)
    return [_rle_to_json(r) for r in mask_util.encode(arr)]


# --------------------------------------------------------------------------------------------
# Ground truth and scoring (shared by SDSEvaluator and tools/evaluate_sds.py)
# --------------------------------------------------------------------------------------------
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
            void_rles = [_rle_to_json(mask_util.merge(void_rles, intersect=False))]
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
    vol = sorted({round(float(t), 6) for t in vol_thresholds})
    thr = sorted(set(vol) | {round(float(t), 6) for t in thresholds})

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
        for m in masks:
            if tuple(m["size"]) != (g["height"], g["width"]):
                raise ValueError(
                    f"image {img_id!r}: predicted mask size {tuple(m['size'])} != image size "
                    f"{(g['height'], g['width'])}; masks must be pasted at the original size "
                    "(detector_postprocess)"
                )
        mask_ious.append(mask_iou_rle(masks, g["masks"], g["void"], void_mode))
        box_ious.append(box_iou(np.asarray(p["boxes"], dtype=np.float64), g["boxes"]))
        p_labels.append(np.asarray(p["classes"], dtype=np.int64).reshape(-1))
        p_scores.append(np.asarray(p["scores"], dtype=np.float64).reshape(-1))
        g_labels.append(g["labels"])

    vol_rows = [thr.index(t) for t in vol]
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
        )
        ap_vol = res["ap"][vol_rows].mean(axis=0)
        with np.errstate(all="ignore"):
            map_vol = float(np.nanmean(ap_vol)) if np.isfinite(ap_vol).any() else float("nan")
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


def _thr_key(t: float) -> str:
    return f"{round(t * 100):d}" if abs(t * 100 - round(t * 100)) < 1e-6 else f"{t * 100:g}"


def _reported_thresholds(
    r: Dict[str, Any], report_thresholds: Optional[Sequence[float]]
) -> Tuple[List[float], List[float]]:
    """(all evaluated thresholds, the ones to report): by default 0.5/0.6/0.7 and any threshold
    evaluated outside the AP_vol set."""
    thr = [float(t) for t in r["thresholds"]]
    if report_thresholds is not None:
        return thr, [round(float(t), 6) for t in report_thresholds]
    vol = {float(t) for t in r["vol_thresholds"]}
    return thr, [t for t in (0.5, 0.6, 0.7) if t in thr] + [t for t in thr if t not in vol]


def format_results(
    raw: Dict[str, Dict[str, Any]],
    class_names: Sequence[str],
    report_thresholds: Optional[Sequence[float]] = None,
) -> OrderedDict[str, Dict[str, float]]:
    """detectron2-style results, in %.

    Args:
        raw: output of :func:`score_predictions`.
        class_names: K class names.
        report_thresholds: thresholds reported as ``APr<100 t>`` (default 0.5, 0.6, 0.7 plus any
            non-vol thresholds in ``raw``).

    Returns:
        ``{"segm": {"APr50", "APr60", "APr70", "APr_vol", "APr50-<class>", ...},
        "bbox": {"AP50", "AP60", "AP70", "AP_vol", "AP50-<class>", ...}}``. Classes without GT
        are NaN.
    """
    results: OrderedDict[str, Dict[str, float]] = OrderedDict()
    for task, prefix in (("segm", "APr"), ("bbox", "AP")):
        r = raw[task]
        thr, rep = _reported_thresholds(r, report_thresholds)
        d: Dict[str, float] = {}
        for t in rep:
            d[f"{prefix}{_thr_key(t)}"] = 100.0 * float(r["map"][thr.index(t)])
        d[f"{prefix}_vol"] = 100.0 * float(r["map_vol"])
        for k, name in enumerate(class_names):
            for t in rep:
                d[f"{prefix}{_thr_key(t)}-{name}"] = 100.0 * float(r["ap"][thr.index(t), k])
            d[f"{prefix}_vol-{name}"] = 100.0 * float(r["ap_vol"][k])
        results[task] = d
    return results


def results_table(
    raw: Dict[str, Dict[str, Any]],
    class_names: Sequence[str],
    report_thresholds: Optional[Sequence[float]] = None,
    task: str = "segm",
) -> str:
    """Per-class table: rows are classes and the mean; columns AP per threshold, AP_vol, #GT."""
    r = raw[task]
    thr, rep = _reported_thresholds(r, report_thresholds)
    prefix = "APr" if task == "segm" else "AP"
    headers = ["class", *[f"{prefix}{_thr_key(t)}" for t in rep], f"{prefix}_vol", "#GT"]
    rows = []
    for k, name in enumerate(class_names):
        rows.append(
            [name]
            + [100.0 * r["ap"][thr.index(t), k] for t in rep]
            + [100.0 * r["ap_vol"][k], int(r["n_pos"][k])]
        )
    rows.append(
        ["mean"]
        + [100.0 * r["map"][thr.index(t)] for t in rep]
        + [100.0 * r["map_vol"], int(np.sum(r["n_pos"]))]
    )
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f", numalign="left")


# --------------------------------------------------------------------------------------------
# Saved predictions (JSON; written atomically)
# --------------------------------------------------------------------------------------------
def _json_safe(obj: Any) -> Any:
    """NaN / inf → None, so that the files are strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json_atomic(
    path: str, obj: Any, indent: Optional[int] = None, sanitize: bool = True
) -> None:
    """Write strict JSON to a temp file in the same folder, then ``os.replace`` it onto ``path``.

    ``sanitize`` turns NaN / inf into null (skip it for large objects known to be finite).
    """
    with atomic_open(path, "w", suffix=".json") as f:
        f.write(json.dumps(_json_safe(obj) if sanitize else obj, indent=indent, allow_nan=False))


def save_predictions(
    predictions: Sequence[Dict[str, Any]], path: str, dataset_name: str = ""
) -> None:
    """Write per-image predictions (RLE masks) as JSON, atomically (temp file + ``os.replace``).

    The file holds ``{"format", "version", "dataset", "predictions": [{"image_id", "height",
    "width", "instances": [{"category_id", "score", "bbox" (XYXY_ABS), "segmentation" (RLE)}]}]}``.
    """
    doc = {
        "format": PREDICTIONS_FORMAT,
        "version": 1,
        "dataset": dataset_name,
        "predictions": [
            {
                "image_id": p["image_id"],
                "height": int(p["height"]),
                "width": int(p["width"]),
                "instances": [
                    {
                        "category_id": int(c),
                        "score": float(s) if np.isfinite(s) else None,
                        "bbox": [float(x) if np.isfinite(x) else None for x in b],
                        "segmentation": _rle_to_json(m),
                    }
                    for c, s, b, m in zip(p["classes"], p["scores"], p["boxes"], p["masks"])
                ],
            }
            for p in predictions
        ],
    }
    write_json_atomic(path, doc, sanitize=False)


def load_predictions(path: str) -> Dict[str, Any]:
    """Read a file written by :func:`save_predictions`.

    Returns:
        ``{"dataset": str, "predictions": [per-image dict as accepted by score_predictions]}``.
    """
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{path} is not an {PREDICTIONS_FORMAT} file")
    preds = []
    for p in doc["predictions"]:
        inst = p["instances"]
        preds.append(
            {
                "image_id": p["image_id"],
                "height": p["height"],
                "width": p["width"],
                "scores": np.array([i["score"] for i in inst], dtype=np.float64),
                "classes": np.array([i["category_id"] for i in inst], dtype=np.int64),
                "boxes": np.array([i["bbox"] for i in inst], dtype=np.float64).reshape(-1, 4),
                "masks": [i["segmentation"] for i in inst],
            }
        )
    return {"dataset": doc.get("dataset", ""), "predictions": preds}


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------
class SDSEvaluator(DatasetEvaluator):
    """AP^r (mask) and box AP at IoU 0.5 / 0.6 / 0.7 and averaged over 0.1..0.9, per class.

    Matching, AP integration and void handling are explained in
    :mod:`r2ios_d2.evaluation.instance_ap`. In short, defaults follow Hariharan et al.'s SDS code:
    greedy matching to the best unmatched GT with IoU > threshold, area under the monotone PR
    envelope, and void pixels (VOC's 255, given per record as an optional
    ``void_segmentation``) counted in the union (``void_mode="union"``); ``void_mode="ignore"``
    drops them from intersection and union.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        matching: str = "sds",
        use_07_metric: bool = False,
        void_mode: str = "union",
        mask_threshold: float = 0.5,
    ) -> None:
        """
        Args:
            dataset_name: a name registered in DatasetCatalog / MetadataCatalog; its dicts carry
                the GT (``annotations`` with RLE ``segmentation``, ``category_id``, ``bbox``;
                optional ``void_segmentation``), its metadata ``thing_classes``.
            output_dir: where ``sds_predictions.json`` and ``sds_results.json`` go (None: nowhere).
            distributed: gather the predictions of all processes on the main process.
            matching: ``"sds"`` or ``"voc"``.
            use_07_metric: VOC2007 11-point AP instead of the area under the PR envelope.
            void_mode: ``"union"`` or ``"ignore"``.
            mask_threshold: threshold for float ``pred_masks`` (foreground where >=); bool masks
                are used as they are.
        """
        if matching not in MATCHING_RULES:
            raise ValueError(f"matching must be one of {MATCHING_RULES}, got {matching!r}")
        if void_mode not in VOID_MODES:
            raise ValueError(f"void_mode must be one of {VOID_MODES}, got {void_mode!r}")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._matching = matching
        self._use_07_metric = use_07_metric
        self._void_mode = void_mode
        self._mask_threshold = mask_threshold
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("thing_classes", None):
            # COCO-format datasets set thing_classes when their json is first read.
            DatasetCatalog.get(dataset_name)
        self._class_names: List[str] = list(meta.thing_classes)
        self._predictions: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Store each output as RLE masks + scores / classes / boxes (numpy, CPU).

        Args:
            inputs: dataset dicts given to the model (``image_id``, ``height``, ``width``).
            outputs: model outputs; ``instances`` after ``detector_postprocess``: ``pred_masks``
                (N, H, W) bool or float at the original image size, ``scores`` (N,),
                ``pred_classes`` (N,), ``pred_boxes`` (N, 4).
        """
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            h, w = inst.image_size
            if len(inst) and not inst.has("pred_masks"):
                raise ValueError("SDSEvaluator needs instances with pred_masks")
            n = len(inst)
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "height": int(inp.get("height", h)),
                    "width": int(inp.get("width", w)),
                    "scores": inst.scores.numpy().astype(np.float64) if n else np.zeros(0),
                    "classes": inst.pred_classes.numpy().astype(np.int64)
                    if n
                    else np.zeros(0, np.int64),
                    "boxes": inst.pred_boxes.tensor.numpy().astype(np.float64)
                    if n
                    else np.zeros((0, 4)),
                    "masks": _masks_to_rles(inst.pred_masks, self._mask_threshold) if n else [],
                }
            )

    def evaluate(self) -> OrderedDict[str, Dict[str, float]]:
        """Gather, score, log a per-class table, save predictions; empty dict off the main process.

        Returns:
            ``{"segm": {"APr50", "APr60", "APr70", "APr_vol", "APr50-<class>", ...},
            "bbox": {"AP50", "AP60", "AP70", "AP_vol", "AP50-<class>", ...}}`` in %.
        """
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            predictions = list(itertools.chain(*gathered))
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("[SDSEvaluator] Did not receive valid predictions.")
            return OrderedDict()
        # The same image can reach two workers when the sampler pads the dataset; keep one.
        by_id: Dict[Any, Dict[str, Any]] = {}
        for p in predictions:
            by_id.setdefault(p["image_id"], p)
        predictions = list(by_id.values())

        if self._output_dir:
            save_predictions(
                predictions,
                os.path.join(self._output_dir, PREDICTIONS_FILE),
                self._dataset_name,
            )

        gt = gt_from_dataset_dicts(DatasetCatalog.get(self._dataset_name), self._dataset_name)
        raw = score_predictions(
            predictions,
            gt,
            len(self._class_names),
            matching=self._matching,
            use_07_metric=self._use_07_metric,
            void_mode=self._void_mode,
        )
        logger.info(
            "AP^r on %s (%d images, matching=%s, %s, void_mode=%s):\n%s",
            self._dataset_name,
            len(predictions),
            self._matching,
            "VOC07 11-point" if self._use_07_metric else "area under PR envelope",
            self._void_mode,
            results_table(raw, self._class_names, task="segm"),
        )
        logger.info("Box AP:\n%s", results_table(raw, self._class_names, task="bbox"))
        results = format_results(raw, self._class_names)
        if self._output_dir:
            write_json_atomic(
                os.path.join(self._output_dir, "sds_results.json"),
                {
                    "dataset": self._dataset_name,
                    "matching": self._matching,
                    "use_07_metric": self._use_07_metric,
                    "void_mode": self._void_mode,
                    "results": results,
                },
                indent=2,
            )
        return copy.deepcopy(results)
