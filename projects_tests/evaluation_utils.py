"""Shared test helper: a ground-truth annotation (RLE mask, XYXY box) from a dense mask."""

import numpy as np
from detectron2.structures import BoxMode

from r2ios_d2.evaluation import encode_masks


def gt_annotation(mask: np.ndarray, label: int) -> dict:
    """The dataset-dict annotation of one (H, W) bool mask of class ``label``: its RLE, its
    tight XYXY box in pixels."""
    rle = encode_masks(mask[None])[0]
    ys, xs = np.nonzero(mask)
    return {
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
        "category_id": int(label),
        "bbox": [float(xs.min()), float(ys.min()), xs.max() + 1.0, ys.max() + 1.0],
        "bbox_mode": BoxMode.XYXY_ABS,
    }
