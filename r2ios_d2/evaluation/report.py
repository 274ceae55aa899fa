"""AP^r results as detectron2-style dicts (in %) and as per-class tables.

Both read the raw output of :func:`r2ios_d2.evaluation.scoring.score_predictions`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

__all__ = ["format_results", "results_table"]


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
