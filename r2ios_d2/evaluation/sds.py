"""AP^r evaluator (Hariharan et al. SDS metric) as a detectron2 :class:`DatasetEvaluator`.

Usage, like any detectron2 evaluator::

    evaluator = SDSEvaluator("voc_2012_seg_val", output_dir="output/inference")
    results = inference_on_dataset(model, data_loader, evaluator)
    results["segm"]["APr50"], results["segm"]["APr_vol"], results["bbox"]["AP50"]

Predictions are turned into RLEs as soon as they arrive (``process``, reading mostly the pixels
near each box: :mod:`r2ios_d2.evaluation.mask_encoding`), gathered on the main process, scored
against the dataset's own dicts (:mod:`r2ios_d2.evaluation.scoring`), reported
(:mod:`r2ios_d2.evaluation.report`), and saved as JSON for re-scoring with other options by
``tools/evaluate_sds.py`` (:mod:`r2ios_d2.evaluation.prediction_files`). Matching, AP
integration and void handling are those of :mod:`r2ios_d2.evaluation.instance_ap` (see its
docstring).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..atomic import atomic_write_json
from ..utils import RLE
from .instance_ap import MATCHING_RULES
from .mask_encoding import encode_masks_in_boxes
from .mask_iou import VOID_MODES
from .prediction_files import PREDICTIONS_FILE, save_predictions
from .report import format_results, results_table
from .scoring import gt_from_dataset_dicts, score_predictions

__all__ = ["SDSEvaluator"]

logger = logging.getLogger(__name__)


def _masks_to_rles(masks: torch.Tensor, boxes: torch.Tensor, mask_threshold: float) -> List[RLE]:
    """(N, H, W) bool or float masks -> N RLEs with ``str`` counts (float masks: foreground
    where >= threshold). The (N, 4) XYXY ``boxes`` only make it faster: a mask pasted from its
    box is zero outside it, so mostly the pixels near the box are read
    (:func:`~r2ios_d2.evaluation.mask_encoding.encode_masks_in_boxes`)."""
    if masks.dtype != torch.bool:
        masks = masks >= mask_threshold
    return encode_masks_in_boxes(masks.cpu().numpy(), boxes.cpu().numpy())


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees memory).

    A VOC-sized evaluation holds about a million small objects (one RLE dict per detection) and
    builds as many while scoring and saving; each full collection walks all of them again (about
    half of the time of saving 1449 x 100 predictions). Nothing built here forms reference cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
                    "masks": _masks_to_rles(
                        inst.pred_masks, inst.pred_boxes.tensor, self._mask_threshold
                    )
                    if n
                    else [],
                }
            )

    def evaluate(self) -> OrderedDict[str, Dict[str, float]]:
        """Gather, score, log a per-class table, save predictions; empty dict off the main process.

        Returns:
            ``{"segm": {"APr50", "APr60", "APr70", "APr_vol", "APr50-<class>", ...},
            "bbox": {"AP50", "AP60", "AP70", "AP_vol", "AP50-<class>", ...}}`` in %.
        """
        with _cyclic_gc_paused():
            return self._evaluate()

    def _evaluate(self) -> OrderedDict[str, Dict[str, float]]:
        predictions = self._gathered_predictions()
        if predictions is None:
            return OrderedDict()
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
            atomic_write_json(
                {
                    "dataset": self._dataset_name,
                    "matching": self._matching,
                    "use_07_metric": self._use_07_metric,
                    "void_mode": self._void_mode,
                    "results": results,
                },
                os.path.join(self._output_dir, "sds_results.json"),
                indent=2,
            )
        return copy.deepcopy(results)

    def _gathered_predictions(self) -> Optional[List[Dict[str, Any]]]:
        """All processes' predictions on the main process, one per image (None off the main
        process or when there are none)."""
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return None
            predictions = list(itertools.chain(*gathered))
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("[SDSEvaluator] Did not receive valid predictions.")
            return None
        # The same image can reach two workers when the sampler pads the dataset; keep one.
        by_id: Dict[Any, Dict[str, Any]] = {}
        for p in predictions:
            by_id.setdefault(p["image_id"], p)
        return list(by_id.values())
