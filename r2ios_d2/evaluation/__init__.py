"""AP^r evaluation (Hariharan et al. SDS metric): a functional core and a detectron2 evaluator.

Modules, one concern each: ``instance_ap`` (matching and AP from IoU matrices; the conventions),
``mask_encoding`` (dense masks to RLE, reading mostly the pixels near their boxes), ``mask_iou``
(mask IoU on RLEs, void handling), ``mask_ap`` (the entry points from masks), ``scoring`` (GT
from dataset dicts, scoring of per-image predictions), ``report`` (results dicts and tables),
``prediction_files`` (saved predictions) and ``sds`` (``SDSEvaluator``). Box IoU and plain mask
RLE encoding are :mod:`r2ios_d2.utils`'.
"""

from ..utils import box_iou, encode_masks
from .instance_ap import (
    MATCHING_RULES,
    VOL_THRESHOLDS,
    average_precision,
    evaluate_from_ious,
    match_image,
)
from .mask_ap import (
    eval_instance_segmentation_voc,
    eval_instance_segmentation_voc_rle,
    evaluate_all,
)
from .mask_encoding import encode_masks_in_boxes
from .mask_iou import VOID_MODES, mask_iou_rle
from .prediction_files import load_predictions, save_predictions
from .report import format_results, results_table
from .scoring import gt_from_dataset_dicts, score_predictions
from .sds import SDSEvaluator

__all__ = [
    "MATCHING_RULES",
    "VOID_MODES",
    "VOL_THRESHOLDS",
    "SDSEvaluator",
    "average_precision",
    "box_iou",
    "encode_masks",
    "encode_masks_in_boxes",
    "eval_instance_segmentation_voc",
    "eval_instance_segmentation_voc_rle",
    "evaluate_all",
    "evaluate_from_ious",
    "format_results",
    "gt_from_dataset_dicts",
    "load_predictions",
    "mask_iou_rle",
    "match_image",
    "results_table",
    "save_predictions",
    "score_predictions",
]
