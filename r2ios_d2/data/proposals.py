"""Precomputed proposals: the per-image proposal files, their checks, and proposal pickles.

Proposal files: one ``<proposal_dir>/<image_id>.npz`` per image (``numpy.savez``, read with
``allow_pickle=False``) with

* ``boxes``: float32 (N, 4), XYXY in the original image's pixels (N may be 0);
* ``scores``: float32 (N,), higher = better (selective search: rank-based, descending);
  optional, default: rank-based from the file's order;
* ``image_id`` (str), ``height``, ``width`` (int): the image the boxes belong to, so that a file
  for another image is detected.

:func:`attach_proposals` tells dataset dicts where their proposals are; the mapper
(:mod:`r2ios_d2.data.mapper`) reads them and the loaders (:mod:`r2ios_d2.data.loaders`) pick
each dataset's folder. detectron2's proposal pickles (``DATASETS.PROPOSAL_FILES_TRAIN/TEST``)
are read only with ``DATASETS.ALLOW_PICKLE_PROPOSALS``: unpickling runs arbitrary code, so only
do it for files you made yourself.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

from ..atomic import atomic_open
from .coco import selective_search_command

__all__ = [
    "rank_scores",
    "save_proposal_file",
    "load_proposal_file",
    "validate_proposals",
    "filter_proposals",
    "load_proposal_pickle",
    "write_proposal_pickle",
    "attach_proposals",
]

# A proposal may stick out of its image by this fraction of the image side (plus 2 px) before
# the file is taken to belong to another image (or to use other coordinates).
OUTSIDE_TOLERANCE = 0.1


def rank_scores(n: int) -> np.ndarray:
    """Rank-based scores (n - i) / n for proposals given best first: float32 (n,) in (0, 1]."""
    return ((n - np.arange(n)) / max(n, 1)).astype(np.float32)


def save_proposal_file(
    path: str,
    boxes: np.ndarray,
    scores: Optional[np.ndarray],
    image_id: str,
    height: int,
    width: int,
) -> None:
    """Write one image's proposals atomically (temporary file + ``os.replace``).

    Args:
        path: output ``.npz`` path.
        boxes: (N, 4) XYXY boxes in original image pixels.
        scores: (N,) scores, or None for rank-based scores.
        image_id: the image's id (the file stem of its image).
        height, width: the image's size.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = rank_scores(len(boxes)) if scores is None else np.asarray(scores, np.float32)
    with atomic_open(path, "wb", suffix=".npz") as f:
        np.savez(
            f,
            boxes=boxes,
            scores=scores,
            image_id=np.asarray(str(image_id)),
            height=np.asarray(int(height), np.int64),
            width=np.asarray(int(width), np.int64),
        )


def validate_proposals(
    boxes: Any,
    scores: Any,
    height: Optional[int],
    width: Optional[int],
    source: str,
) -> Tuple[np.ndarray, np.ndarray]:
    """Check proposals and return them as float32 arrays; raise ``ValueError`` naming ``source``.

    Args:
        boxes: (N, 4) XYXY boxes, any float dtype.
        scores: (N,) scores, or None (rank-based).
        height, width: image size, or None to skip the "far outside" check.
        source: file name for error messages.

    Returns:
        boxes float32 (N, 4), scores float32 (N,).
    """
    boxes = np.asarray(boxes)
    if boxes.dtype.kind != "f":
        raise ValueError(f"Proposal boxes in {source} have dtype {boxes.dtype}; expected float32.")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        else:
            raise ValueError(
                f"Proposal boxes in {source} have shape {boxes.shape}; expected (N, 4) XYXY."
            )
    n = boxes.shape[0]
    if scores is None:
        scores = rank_scores(n)
    scores = np.asarray(scores)
    if scores.dtype.kind != "f":
        raise ValueError(f"Proposal scores in {source} have dtype {scores.dtype}; expected float.")
    if scores.shape != (n,):
        raise ValueError(
            f"Proposal scores in {source} have shape {scores.shape}; expected ({n},) to match "
            f"the {n} boxes."
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"Proposals in {source} contain NaN or inf.")
    if n:
        _check_geometry(boxes, height, width, source)
    return boxes.astype(np.float32), scores.astype(np.float32)


def _check_geometry(
    boxes: np.ndarray, height: Optional[int], width: Optional[int], source: str
) -> None:
    """Raise ``ValueError`` for the first inverted box of (N, 4) XYXY ``boxes``, or the first
    far outside a ``width`` x ``height`` image (when both are given)."""
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        bad = int(np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0])
        raise ValueError(
            f"Proposal {bad} in {source} is inverted ({boxes[bad].tolist()}); boxes must be "
            "XYXY with x1 >= x0 and y1 >= y0."
        )
    if height is not None and width is not None:
        tx, ty = OUTSIDE_TOLERANCE * width + 2, OUTSIDE_TOLERANCE * height + 2
        outside = (
            (boxes[:, 0] < -tx)
            | (boxes[:, 1] < -ty)
            | (boxes[:, 2] > width + tx)
            | (boxes[:, 3] > height + ty)
        )
        if outside.any():
            bad = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"Proposal {bad} in {source} ({boxes[bad].tolist()}) lies far outside its "
                f"{width}x{height} image: wrong image or wrong coordinates?"
            )


def load_proposal_file(
    path: str,
    image_id: Optional[str] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate one image's ``.npz`` proposal file (never unpickles).

    Args:
        path: the file.
        image_id, height, width: the image it must belong to (each checked when given).

    Returns:
        boxes float32 (N, 4) XYXY in original pixels, scores float32 (N,).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Proposal file {path} does not exist. Compute proposals with "
            "`python tools/selective_search.py --dataset <name> --out <proposal_dir>`."
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / numpy raise many types for corrupt files
        raise ValueError(f"Cannot read proposal file {path}: {e}") from e
    if "boxes" not in data:
        raise ValueError(f"Proposal file {path} has no 'boxes' array (has {sorted(data)}).")
    if image_id is not None and "image_id" in data and str(data["image_id"]) != str(image_id):
        raise ValueError(
            f"Proposal file {path} is for image {str(data['image_id'])!r}, not {image_id!r}."
        )
    file_hw = (data.get("height"), data.get("width"))
    if height is not None and width is not None and file_hw[0] is not None:
        if (int(file_hw[0]), int(file_hw[1])) != (int(height), int(width)):
            raise ValueError(
                f"Proposal file {path} is for a {int(file_hw[1])}x{int(file_hw[0])} image, but "
                f"image {image_id} is {width}x{height}."
            )
    return validate_proposals(data["boxes"], data.get("scores"), height, width, path)


def filter_proposals(
    boxes: np.ndarray,
    scores: np.ndarray,
    height: int,
    width: int,
    min_size: float = 0.0,
    topk: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Clip to the image, drop degenerate / small boxes and exact duplicates, keep the top k.

    Args:
        boxes: float32 (N, 4) XYXY; scores: float32 (N,).
        height, width: image size the boxes are in.
        min_size: boxes with a side below this (after clipping) are dropped; zero-area boxes
            are always dropped.
        topk: keep at most this many, highest score first (ties: file order).

    Returns:
        boxes float32 (M, 4), scores float32 (M,), sorted by descending score.
    """
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w > 0) & (h > 0) & (w >= min_size) & (h >= min_size)
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    if len(boxes):
        _, first = np.unique(boxes, axis=0, return_index=True)
        first = np.sort(first)
        boxes, scores = boxes[first], scores[first]
    if topk is not None:
        boxes, scores = boxes[:topk], scores[:topk]
    return boxes, scores


# ------------------------------------------------------------------------------- pickles


def write_proposal_pickle(
    path: str, ids: Sequence[str], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray]
) -> None:
    """Write detectron2's proposal-pickle format (atomically).

    Args:
        path: output file.
        ids: image ids; boxes: per image float32 (N_i, 4) XYXY_ABS; scores: per image (N_i,).
    """
    data = {
        "ids": [str(i) for i in ids],
        "boxes": [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes],
        "objectness_logits": [np.asarray(s, np.float32) for s in scores],
        "bbox_mode": BoxMode.XYXY_ABS,
    }
    with atomic_open(path, "wb", suffix=".pkl") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_proposal_pickle(
    path: str, allow_pickle: bool = False
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Read a detectron2 proposal pickle; only with ``allow_pickle`` (it executes code).

    Args:
        path: the pickle (dict with ``ids``, ``boxes``, ``objectness_logits``, ``bbox_mode``).
        allow_pickle: the explicit opt-in (``DATASETS.ALLOW_PICKLE_PROPOSALS``).

    Returns:
        image_id (str) -> (boxes float (N, 4) XYXY_ABS, objectness_logits (N,)), unvalidated.
    """
    if not allow_pickle:
        raise PermissionError(
            f"Refusing to unpickle the proposal file {path}: unpickling can run arbitrary code. "
            "Set DATASETS.ALLOW_PICKLE_PROPOSALS True if you trust it, or convert it to one "
            ".npz per image (DATASETS.PROPOSAL_DIRS_*)."
        )
    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 -- explicit opt-in above
    if not isinstance(data, dict) or not {"ids", "boxes"} <= set(data):
        raise ValueError(f"{path} is not a detectron2 proposal pickle (dict with ids, boxes).")
    mode = BoxMode(data.get("bbox_mode", BoxMode.XYXY_ABS))
    logits = data.get("objectness_logits", [None] * len(data["ids"]))
    out = {}
    for image_id, b, s in zip(data["ids"], data["boxes"], logits):
        b = np.asarray(b)
        if b.size and b.ndim == 2 and b.shape[1] == 4 and b.dtype.kind == "f":
            b = BoxMode.convert(b, mode, BoxMode.XYXY_ABS)
        out[str(image_id)] = (b, s)
    return out


# ------------------------------------------------------------------------- dataset dicts


def attach_proposals(
    dataset_dicts: List[Dict[str, Any]],
    proposal_dir: Optional[str] = None,
    proposal_pickle: Optional[str] = None,
    allow_pickle: bool = False,
    dataset_name: Optional[str] = None,
) -> None:
    """Tell each dataset dict where its proposals are (in place).

    With ``proposal_dir``, sets ``proposal_file = <proposal_dir>/<image_id>.npz`` (read lazily
    by the mapper). With ``proposal_pickle``, loads it (needs ``allow_pickle``) and sets
    detectron2's ``proposal_boxes`` / ``proposal_objectness_logits`` / ``proposal_bbox_mode``
    and ``proposal_source``.

    Args:
        dataset_dicts: dicts with ``image_id``.
        proposal_dir: folder of per-image ``.npz`` files.
        proposal_pickle: detectron2 proposal pickle.
        allow_pickle: opt-in to unpickling ``proposal_pickle``.
        dataset_name: the dataset's name, for the messages (the command that computes its
            proposals).
    """
    if (proposal_dir is None) == (proposal_pickle is None):
        raise ValueError("Give exactly one of proposal_dir and proposal_pickle.")
    if proposal_dir is not None:
        if not os.path.isdir(proposal_dir):
            if dataset_name:
                command = selective_search_command(dataset_name, proposal_dir)
            else:
                command = "python tools/selective_search.py --dataset <name> --out " + proposal_dir
            which = "" if dataset_name is None else f" of dataset {dataset_name!r}"
            raise FileNotFoundError(
                f"Proposal folder {proposal_dir}{which} does not exist. Compute the proposals "
                f"with\n    {command}"
            )
        for d in dataset_dicts:
            d["proposal_file"] = os.path.join(proposal_dir, f"{d['image_id']}.npz")
        return
    table = load_proposal_pickle(proposal_pickle, allow_pickle)
    for d in dataset_dicts:
        key = str(d["image_id"])
        if key not in table:
            which = "" if dataset_name is None else f" of dataset {dataset_name!r}"
            raise KeyError(
                f"Proposal pickle {proposal_pickle} has no proposals for image {key}{which}."
            )
        d["proposal_boxes"], d["proposal_objectness_logits"] = table[key]
        d["proposal_bbox_mode"] = BoxMode.XYXY_ABS
        d["proposal_source"] = f"{proposal_pickle} (image {key})"
