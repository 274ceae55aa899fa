"""Saved predictions: the per-image RLE predictions of an evaluation as a JSON file.

:class:`~r2ios_d2.evaluation.sds.SDSEvaluator` writes ``sds_predictions.json`` with
:func:`save_predictions` (atomically), ``tools/evaluate_sds.py`` reads it with
:func:`load_predictions` to re-score it with other options.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Sequence

import numpy as np

from ..atomic import atomic_write_json
from ..utils import rle_to_json

__all__ = ["PREDICTIONS_FORMAT", "PREDICTIONS_FILE", "save_predictions", "load_predictions"]

PREDICTIONS_FORMAT = "r2ios_d2.sds_predictions"
PREDICTIONS_FILE = "sds_predictions.json"


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
                    {"category_id": c, "score": s, "bbox": b, "segmentation": rle_to_json(m)}
                    for c, s, b, m in zip(
                        np.asarray(p["classes"]).astype(np.int64).reshape(-1).tolist(),
                        _finite_or_none(p["scores"]),
                        _finite_or_none(np.asarray(p["boxes"]).reshape(-1, 4)),
                        p["masks"],
                    )
                ],
            }
            for p in predictions
        ],
    }
    atomic_write_json(doc, path, sanitize=False)


def _finite_or_none(values: Any) -> list:
    """An array (any shape) as nested lists of Python floats, None for NaN / inf (strict JSON)."""
    a = np.asarray(values, dtype=np.float64)
    out = a.tolist()
    if not np.isfinite(a).all():
        bad = ~np.isfinite(a)
        if a.ndim == 1:
            out = [None if m else x for x, m in zip(out, bad.tolist())]
        else:
            out = [[None if m else x for x, m in zip(r, mr)] for r, mr in zip(out, bad.tolist())]
    return out


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
