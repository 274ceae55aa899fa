#!/usr/bin/env python
"""Re-score saved AP^r predictions with other options, without running the model again.

The predictions file is the ``sds_predictions.json`` that ``SDSEvaluator`` writes to its output
directory; the GT comes from the registered dataset (importing ``r2ios_d2`` registers the VOC /
SBD / synthetic datasets; ``--register-coco NAME JSON IMAGE_ROOT`` registers a COCO-format one).

Examples::

    python tools/evaluate_sds.py output/inference/sds_predictions.json
    python tools/evaluate_sds.py preds.json --dataset voc_2012_seg_val --matching voc \\
        --use-07-metric --void-mode ignore --thresholds 0.5 0.75 --output rescored.json
    python tools/evaluate_sds.py output/my_coco/inference/my_val/sds_predictions.json \\
        --register-coco my_val my_coco/val.json my_coco/images
"""

from __future__ import annotations

import r2ios_d2  # noqa: F401  (first: registers its parts, filters detectron2 v0.6's known warnings)

# isort: split
import argparse
import logging
import sys
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from r2ios_d2.atomic import atomic_write_json
from r2ios_d2.data.coco import add_register_coco_argument, register_coco_from_args
from r2ios_d2.evaluation import (
    MATCHING_RULES,
    VOID_MODES,
    VOL_THRESHOLDS,
    format_results,
    gt_from_dataset_dicts,
    load_predictions,
    results_table,
    score_predictions,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("predictions", help="sds_predictions.json written by SDSEvaluator")
    p.add_argument("--dataset", default=None, help="registered dataset (default: the one saved)")
    p.add_argument("--matching", choices=MATCHING_RULES, default="sds")
    p.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP")
    p.add_argument("--void-mode", choices=VOID_MODES, default="union")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.5, 0.6, 0.7],
        help="IoU thresholds to report (default: 0.5 0.6 0.7)",
    )
    p.add_argument(
        "--vol-thresholds",
        type=float,
        nargs="+",
        default=list(VOL_THRESHOLDS),
        help="IoU thresholds averaged into AP_vol (default: 0.1 ... 0.9)",
    )
    p.add_argument("--output", default=None, help="write the results as JSON here")
    add_register_coco_argument(p)
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    register_coco_from_args(args)
    saved = load_predictions(args.predictions)
    dataset = args.dataset or saved["dataset"]
    if not dataset:
        raise SystemExit("no --dataset given and none recorded in the predictions file")
    gt = gt_from_dataset_dicts(DatasetCatalog.get(dataset), dataset)
    class_names = list(MetadataCatalog.get(dataset).thing_classes)  # set once the data is read
    raw = score_predictions(
        saved["predictions"],
        gt,
        len(class_names),
        thresholds=args.thresholds,
        vol_thresholds=args.vol_thresholds,
        matching=args.matching,
        use_07_metric=args.use_07_metric,
        void_mode=args.void_mode,
    )
    results = format_results(raw, class_names, report_thresholds=args.thresholds)
    print(
        f"{dataset}: {len(saved['predictions'])} images, matching={args.matching}, "
        f"{'VOC07 11-point' if args.use_07_metric else 'area under PR envelope'}, "
        f"void_mode={args.void_mode}"
    )
    print("Mask AP^r (%):")
    print(results_table(raw, class_names, report_thresholds=args.thresholds, task="segm"))
    print("Box AP (%):")
    print(results_table(raw, class_names, report_thresholds=args.thresholds, task="bbox"))
    if args.output:
        atomic_write_json(
            {
                "dataset": dataset,
                "predictions": args.predictions,
                "matching": args.matching,
                "use_07_metric": args.use_07_metric,
                "void_mode": args.void_mode,
                "thresholds": args.thresholds,
                "vol_thresholds": args.vol_thresholds,
                "results": results,
            },
            args.output,
            indent=2,
        )
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
