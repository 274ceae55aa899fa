"""Dense masks -> COCO RLE, transposing and scanning only the pixels near each detection's box.

A predicted mask pasted into the image (``detector_postprocess``) is zero outside its box, yet a
plain :func:`pycocotools.mask.encode` reads, and first transposes, every pixel of every mask.
:func:`encode_masks_in_boxes` transposes only a window around each box, finds the runs there and
places them in the image; one count of all foreground pixels proves that no pixel lies outside
its window, and a mask that breaks that rule is encoded whole. Either way the result is exactly
pycocotools' encoding of the full-image masks (the same ``counts`` string).

COCO RLE is column-major: pixel (y, x) is at ``x * H + y`` of the flattened image, and the
counts alternate background and foreground run lengths, starting with background (possibly 0)
and ending with the last run (no trailing empty run).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..utils import RLE, encode_masks

__all__ = ["box_windows", "encode_masks_in_boxes"]

# Pixels added around the pixels a box touches. At mask thresholds >= 0.5, detectron2's
# paste_masks_in_image sets only pixels whose centre lies in the box; the margin absorbs the
# rounding of box coordinates and part of the spill of lower thresholds (masks that spill further
# are encoded whole).
_WINDOW_MARGIN = 1


def box_windows(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel windows around XYXY boxes (a 1-pixel margin), clipped to the image.

    Args:
        boxes: (N, 4) XYXY boxes in pixels (any real dtype; a box with a non-finite coordinate
            gets the whole image).
        height, width: image size.

    Returns:
        (N, 4) int64 ``x0, y0, x1, y1``: rows ``y0:y1`` and columns ``x0:x1`` (possibly empty).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(b).all(axis=1)
    b = np.where(finite[:, None], b, np.array([0.0, 0.0, width, height]))
    size = np.array([width, height], dtype=np.float64)
    lo = np.clip(np.floor(b[:, :2]) - _WINDOW_MARGIN, 0, size)
    hi = np.clip(np.ceil(b[:, 2:]) + _WINDOW_MARGIN, lo, size)
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


class _Layout:
    """Where each window goes in the buffer of transposed windows.

    Every column of a window is stored with one extra image row, below the window (or above it
    when the window reaches the bottom of the image), so that a column always ends (or starts)
    with a background pixel and no run crosses from one column into the next. A window of full
    height needs none: its columns follow each other in the image too. One background pixel
    separates the windows of two masks, and one starts the buffer.

    Attributes (all (N,) int64): ``x0``, ``x1``, ``row0`` (image row of the first stored row),
    ``col_len`` (stored rows per column), ``pad`` (index of the extra row in a stored column,
    -1 if none), ``start`` (buffer index of the first stored pixel), ``size`` (stored pixels);
    ``total``: buffer length.
    """

    def __init__(self, windows: np.ndarray, height: int) -> None:
        x0, y0, x1, y1 = windows.T
        empty = (x1 <= x0) | (y1 <= y0)
        below = ~empty & (y1 < height)
        above = ~empty & ~below & (y0 > 0)
        self.x0, self.x1 = x0, x1
        self.row0 = np.where(above, y0 - 1, y0)
        self.col_len = np.where(below | above, y1 - y0 + 1, y1 - y0)
        self.pad = np.where(below, self.col_len - 1, np.where(above, 0, -1))
        self.size = np.where(empty, 0, (x1 - x0) * self.col_len)
        self.start = np.ones(len(x0), dtype=np.int64)
        np.cumsum(self.size[:-1] + 1, out=self.start[1:])
        self.start[1:] += 1
        self.total = int(self.start[-1] + self.size[-1] + 1) if len(x0) else 1

    def pad_indices(self) -> np.ndarray:
        """Buffer indices of all the extra rows: (P,) int64."""
        cols = np.where(self.pad >= 0, self.x1 - self.x0, 0)
        cols = np.where(self.size > 0, cols, 0)
        k = np.repeat(np.arange(len(cols)), cols)
        c = np.arange(len(k)) - np.repeat(np.cumsum(cols) - cols, cols)
        return self.start[k] + c * self.col_len[k] + self.pad[k]

    def to_image(self, k: np.ndarray, index: np.ndarray, height: int) -> np.ndarray:
        """Column-major image positions of the buffer ``index`` (M,) of masks ``k`` (M,)."""
        col, row = np.divmod(index - self.start[k], self.col_len[k])
        return (self.x0[k] + col) * height + self.row0[k] + row


def _fill(masks: np.ndarray, lay: _Layout, buf: np.ndarray) -> None:
    """Copy each window, with its extra row, transposed (column by column) into ``buf``."""
    u8 = masks.view(np.uint8)
    row_major = u8.strides[2] == 1 and u8.strides[1] > 0
    spans = zip(lay.x0.tolist(), lay.x1.tolist(), lay.row0.tolist(), lay.col_len.tolist())
    for k, (s, n, (x0, x1, r0, rows)) in enumerate(
        zip(lay.start.tolist(), lay.size.tolist(), spans)
    ):
        if n == 0:
            continue
        dst = buf[s : s + n].reshape(x1 - x0, rows)
        src = u8[k, r0 : r0 + rows, x0:x1]
        if row_major:  # OpenCV's transpose is about twice as fast as numpy's strided copy
            out = cv2.transpose(src, dst)
            if out is not dst:
                dst[...] = out
        else:
            dst[...] = src.T


def _runs(
    masks: np.ndarray, windows: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Foreground runs of each mask inside its window, in image coordinates.

    Args:
        masks: (N, H, W) bool.
        windows: (N, 4) int64 ``x0, y0, x1, y1`` (:func:`box_windows`).

    Returns:
        ``(k, start, end, fg)``: mask index (M,), start and exclusive end (M,) in the
        column-major flattened image of the M runs, sorted by mask then position; ``fg`` (N,)
        int64 foreground pixels of each mask inside its window.
    """
    n, height, _ = masks.shape
    lay = _Layout(windows, height)
    buf = np.zeros(lay.total, dtype=np.uint8)
    _fill(masks, lay, buf)
    # The extra rows are outside the windows: what they hold is counted as outside (the
    # caller's check), and they must be background for the runs to stay within columns.
    buf[lay.pad_indices()] = 0
    steps = np.flatnonzero(buf[1:] != buf[:-1]) + 1
    starts, ends = steps[0::2], steps[1::2]
    k = np.searchsorted(lay.start, starts, side="right") - 1
    fg = np.bincount(k, weights=ends - starts, minlength=n).astype(np.int64)
    # A run stays in one stored column (or in a full-height window, whose columns follow
    # each other in the image too): its pixels are consecutive in the image as in the buffer.
    first = lay.to_image(k, starts, height)
    return k, first, first + (ends - starts), fg


def _counts(
    k: np.ndarray, start: np.ndarray, end: np.ndarray, n: int, area: int
) -> List[np.ndarray]:
    """pycocotools' uncompressed counts of N masks from their sorted runs: N (C_i,) int64."""
    runs = np.bincount(k, minlength=n)
    # Per mask the bounds 0, s_0, e_0, s_1, e_1, ..., area; the counts are their differences.
    first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(2 * runs + 2, out=first[1:])
    bounds = np.empty(int(first[-1]), dtype=np.int64)
    bounds[first[:-1]] = 0
    bounds[first[1:] - 1] = area
    pos = first[k] + 1 + 2 * (np.arange(len(k)) - (np.cumsum(runs) - runs)[k])
    bounds[pos] = start
    bounds[pos + 1] = end
    diffs = np.diff(bounds)
    # A mask whose last run reaches the end of the image has no final background count.
    last = first[1:] - 2
    stop = np.where((runs > 0) & (diffs[last] == 0), last, last + 1).tolist()
    return [diffs[a:b] for a, b in zip(first[:-1].tolist(), stop)]


def encode_masks_in_boxes(masks: np.ndarray, boxes: Optional[np.ndarray] = None) -> List[RLE]:
    """Encode full-image binary masks as COCO RLEs, reading mostly the pixels near their boxes.

    The result equals ``pycocotools.mask.encode`` of the full masks for any masks and boxes;
    the boxes only decide the speed: a mask with foreground outside its box (+- 1 pixel) is
    encoded from the whole image.

    Args:
        masks: (N, H, W) bool masks (other dtypes: foreground where nonzero), any memory layout.
        boxes: (N, 4) XYXY boxes in pixels, one per mask; None: the whole image.

    Returns:
        N RLE dicts ``{"size": [H, W], "counts": str}``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    if masks.dtype != np.bool_:
        masks = masks != 0
    n, h, w = masks.shape
    if n == 0:
        return []
    if boxes is None:
        boxes = np.tile(np.array([0.0, 0.0, w, h]), (n, 1))
    boxes = np.asarray(boxes).reshape(-1, 4)
    if len(boxes) != n:
        raise ValueError(f"{n} masks but {len(boxes)} boxes")
    k, start, end, fg = _runs(masks, box_windows(boxes, h, w))
    counts = _counts(k, start, end, n, h * w)
    rles = mask_util.frPyObjects([{"size": [h, w], "counts": c} for c in counts], h, w)
    out = [{"size": [h, w], "counts": r["counts"].decode("ascii")} for r in rles]
    if int(fg.sum()) != np.count_nonzero(masks):
        # Some mask has foreground outside its window: encode those whole.
        outside = np.flatnonzero(np.count_nonzero(masks.reshape(n, -1), axis=1) != fg)
        for i, r in zip(outside.tolist(), encode_masks(masks[outside])):
            out[i] = {"size": [h, w], "counts": r["counts"].decode("ascii")}
    return out
