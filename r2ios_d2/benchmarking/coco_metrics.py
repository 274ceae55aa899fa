"""COCO's mask and box AP of a predictions file, from pycocotools (no detectron2 ``_C``).

detectron2's ``COCOEvaluator`` writes ``coco_instances_results.json`` (its predictions in
COCO's result format) beside ``sds_results.json``; :func:`coco_ap_from_files` scores that file
against a COCO json, so that a benchmark running evaluations as subprocesses reads COCO AP from
files rather than from logs.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Dict, Optional, Union

__all__ = ["coco_ap_from_files"]

# COCOeval.stats indices -> names (in %).
_STATS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5}


def coco_ap_from_files(
    gt_json: Union[str, Path], results_json: Union[str, Path]
) -> Dict[str, Optional[Dict[str, float]]]:
    """COCO AP (0.5:0.95), AP50, AP75 and AP by size of masks and boxes, in %.

    Args:
        gt_json: the ground truth, a COCO instances json (the one the dataset was registered
            with: for a category subset, the derived json).
        results_json: predictions in COCO's result format (``image_id``, ``category_id``,
            ``bbox`` XYWH, ``score``, ``segmentation`` RLE), e.g. ``COCOEvaluator``'s
            ``coco_instances_results.json``.

    Returns:
        ``{"segm": {"AP": ..., "AP50": ..., ...}, "bbox": {...}}``; all zeros when there are
        no predictions; a task is None when the predictions lack its field.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads(Path(results_json).read_text())
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(str(gt_json))
    out: Dict[str, Optional[Dict[str, float]]] = {}
    for task, field in (("segm", "segmentation"), ("bbox", "bbox")):
        if not results:
            out[task] = {k: 0.0 for k in _STATS}
            continue
        if any(field not in r for r in results):
            out[task] = None
            continue
        # loadRes derives boxes from masks for "segm": keep each task's own field only.
        rows = [{k: v for k, v in r.items() if k != "bbox" or task == "bbox"} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(rows)
            ev = COCOeval(gt, dt, task)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[task] = {k: max(0.0, float(ev.stats[i])) * 100 for k, i in _STATS.items()}
    return out
