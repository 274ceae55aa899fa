"""AP^r evaluation (Hariharan et al. SDS metric): a functional core and a detectron2 evaluator."""

from .instance_ap import (
    MATCHING_RULES,
    VOID_MODES,
    VOL_THRESHOLDS,
    average_precision,
    box_iou,
    encode_masks,
    eval_instance_segmentation_voc,
    eval_instance_segmentation_voc_rle,
    evaluate_all,
    evaluate_from_ious,
    mask_iou_rle,
    match_image,
)
from .sds import (
    SDSEvaluator,
    format_results,
    gt_from_dataset_dicts,
    load_predictions,
    results_table,
    save_predictions,
    score_predictions,
)

__all__ = [
    "MATCHING_RULES",
    "VOID_MODES",
    "VOL_THRESHOLDS",
    "SDSEvaluator",
    "average_precision",
    "box_iou",
    "encode_masks",
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
