"""Box and mask helpers shared by the data and evaluation packages (NumPy, float64).

* :func:`box_iou`: pairwise IoU of XYXY boxes. detectron2's ``pairwise_iou`` computes the same
  quantity, but its ``Boxes`` cast every box to float32, which moves IoU values near a
  threshold (the AP^r box matching and the proposal statistics compare them with ``>`` and
  ``>=``), so the float64 computation lives here once.
* :func:`encode_masks` / :func:`rle_to_json`: binary masks to COCO RLE (``pycocotools``), and
  an RLE in the JSON form that dataset dicts and prediction files store.

Atomic file writes are in :mod:`r2ios_d2.atomic`.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["RLE", "box_iou", "encode_masks", "rle_to_json"]

RLE = Dict[str, Any]
"""A COCO compressed RLE: ``{"size": [H, W], "counts": bytes | str}``."""


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned boxes (continuous coordinates: area = (x1 - x0) * (y1 - y0)).

    Inverted boxes have area 0; a pair whose union is empty has IoU 0.

    Args:
        boxes1: (R, 4) XYXY boxes (any real dtype; computed in float64).
        boxes2: (G, 4) XYXY boxes.

    Returns:
        (R, G) float64 IoU matrix.
    """
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)


def encode_masks(masks: np.ndarray) -> List[RLE]:
    """Encode binary masks as COCO RLEs.

    Args:
        masks: (R, H, W) array, bool or numeric; numeric masks are cast to uint8 first (so
            they should hold 0 / 1).

    Returns:
        R RLE dicts with ``counts`` as ``bytes``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (R, H, W), got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    u8 = masks.view(np.uint8) if masks.dtype == np.bool_ else masks.astype(np.uint8)
    # pycocotools wants (H, W, R) in Fortran order, i.e. (R, W, H) in C order: one transposing
    # copy of the uint8 view.
    return mask_util.encode(np.ascontiguousarray(u8.transpose(0, 2, 1)).transpose(2, 1, 0))


def rle_to_json(rle: RLE) -> RLE:
    """A compressed RLE with ``str`` counts and ``int`` size, as JSON and dataset dicts hold it.

    Args:
        rle: ``{"size": [H, W], "counts": bytes | str}``.

    Returns:
        ``{"size": [H, W], "counts": str}`` (a new dict).
    """
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}
