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

import argparse
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import add_register_coco_argument, parse_before_imports  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported; the choices
    of ``--matching`` and ``--void-mode`` are checked by :func:`check_choices`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("predictions", help="sds_predictions.json written by SDSEvaluator")
    p.add_argument("--dataset", default=None, help="registered dataset (default: the one saved)")
    p.add_argument("--matching", default="sds", help="sds (default) or voc")
    p.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP")
    p.add_argument("--void-mode", default="union", help="union (default) or ignore")
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
        default=None,
        help="IoU thresholds averaged into AP_vol (default: 0.1 ... 0.9)",
    )
    p.add_argument("--output", default=None, help="write the results as JSON here")
    add_register_coco_argument(p)
    return p


parse_before_imports(__name__, build_parser)

import r2ios_d2  # noqa: E402, F401  (first: registers its parts, filters detectron2's warnings)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from r2ios_d2.atomic import atomic_write_json  # noqa: E402
from r2ios_d2.data.coco import register_coco_from_args  # noqa: E402
from r2ios_d2.evaluation import (  # noqa: E402
    MATCHING_RULES,
    VOID_MODES,
    VOL_THRESHOLDS,
    format_results,
    gt_from_dataset_dicts,
    load_predictions,
    results_table,
    score_predictions,
)


def check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--matching`` and ``--void-mode`` name known rules (else a usage error, exit status 2);
    ``--vol-thresholds`` defaults to :data:`~r2ios_d2.evaluation.VOL_THRESHOLDS`."""
    for flag, value, allowed in (
        ("--matching", args.matching, MATCHING_RULES),
        ("--void-mode", args.void_mode, VOID_MODES),
    ):
        if value not in allowed:
            parser.error(f"argument {flag}: invalid choice: {value!r} (choose from {allowed})")
    if args.vol_thresholds is None:
        args.vol_thresholds = list(VOL_THRESHOLDS)


def main(argv: Optional[List[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_choices(parser, args)
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
