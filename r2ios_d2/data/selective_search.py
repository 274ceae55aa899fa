"""Selective search proposals (OpenCV contrib's ``cv2.ximgproc.segmentation``).

:func:`selective_search` computes one image's boxes (a predictor calls it on the fly);
:func:`compute_proposals` runs it over many images in parallel, resumably, writing one
``<out_dir>/<image_id>.npz`` per image (format: :mod:`r2ios_d2.data.proposals`).
``tools/selective_search.py`` is the command-line front end.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import multiprocessing as mp
import os
import signal
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.structures import BoxMode
from tqdm import tqdm

from ..utils import box_iou
from .proposals import load_proposal_file, rank_scores, save_proposal_file

logger = logging.getLogger(__name__)

__all__ = ["selective_search", "compute_proposals", "proposal_recall", "ImageItem"]

# (image_id, file_name, height or -1, width or -1)
ImageItem = Tuple[str, str, int, int]


def _segmentation_module() -> Any:
    try:
        return cv2.ximgproc.segmentation
    except AttributeError as e:
        raise ImportError(
            "Selective search needs OpenCV's contrib modules: pip install "
            "opencv-contrib-python-headless (and uninstall opencv-python, which lacks ximgproc)."
        ) from e


@functools.cache
def _c_srand() -> Optional[Callable[[int], None]]:
    """The C library's ``srand``, which seeds the ``rand()`` that OpenCV's selective search
    draws its ranking from (the pseudo-random ``rank = rand * level`` of Uijlings et al.):
    unseeded, an image's box order depends on what ran before in the process (which images a
    pool worker got), and two runs train on differently ordered proposals. None (with a
    warning, once) where the C library is not found."""
    try:
        name = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
        if name:
            return ctypes.CDLL(name).srand
    except OSError:
        pass
    logger.warning("C library not found: selective search box order may vary by run")
    return None


def selective_search(
    image_bgr: np.ndarray, mode: str = "fast", max_boxes: int = 2000
) -> Tuple[np.ndarray, np.ndarray]:
    """Selective search proposals of one image (Uijlings et al., IJCV 2013).

    Args:
        image_bgr: uint8 image, (H, W, 3) BGR or (H, W) grey.
        mode: ``"fast"`` or ``"quality"`` (OpenCV's two strategies).
        max_boxes: keep at most this many, in OpenCV's ranking order (the same for the same
            image in every run: its random part is seeded per image).

    Returns:
        boxes: float32 (N, 4) XYXY in the image's pixels, exact duplicates removed.
        scores: float32 (N,) rank-based, descending ((N - i) / N).
    """
    if mode not in ("fast", "quality"):
        raise ValueError(f"mode must be 'fast' or 'quality', got {mode!r}")
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    ss = _segmentation_module().createSelectiveSearchSegmentation()
    srand = _c_srand()
    if srand is not None:  # the same ranking for this image in every run
        srand(0)
    ss.setBaseImage(np.ascontiguousarray(image))
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    rects = np.asarray(ss.process(), np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    if len(boxes):
        _, first = np.unique(boxes, axis=0, return_index=True)
        boxes = boxes[np.sort(first)]
    boxes = boxes[:max_boxes]
    return boxes, rank_scores(len(boxes))


def _is_done(path: str, image_id: str, height: int, width: int) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        load_proposal_file(
            path, image_id, height if height > 0 else None, width if width > 0 else None
        )
        return True
    except (OSError, ValueError):
        return False


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _init_pool_worker() -> None:
    """A worker leaves Ctrl-C and SIGUSR1 to the main process, which stops the pool (SIGTERM
    still ends a worker: the pool stops its workers with it)."""
    _init_worker()
    for name in ("SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def _work(job: Tuple[ImageItem, str, str, int]) -> Tuple[str, int, str]:
    (image_id, file_name, height, width), out_dir, mode, max_boxes = job
    path = os.path.join(out_dir, f"{image_id}.npz")
    image = cv2.imread(file_name, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Cannot read image {file_name}")
    h, w = image.shape[:2]
    if height > 0 and (h, w) != (height, width):
        raise ValueError(f"Image {file_name} is {w}x{h}, but its dataset says {width}x{height}")
    boxes, scores = selective_search(image, mode, max_boxes)
    save_proposal_file(path, boxes, scores, image_id, h, w)
    return image_id, len(boxes), path


def _remove_temporary_files(folder: str) -> None:
    """Delete the atomic writer's leftover ``.tmp-*.npz`` files in ``folder``."""
    for name in os.listdir(folder):
        if name.startswith(".tmp-") and name.endswith(".npz"):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def compute_proposals(
    items: Sequence[ImageItem],
    out_dir: str,
    mode: str = "fast",
    max_boxes: int = 2000,
    workers: int = 1,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Selective search over many images; one ``<out_dir>/<image_id>.npz`` each.

    Resumable: an image whose file exists and is valid for it is skipped (unless
    ``overwrite``). Files are written atomically, so an interrupted run leaves no partial file;
    a full disk raises :class:`~r2ios_d2.atomic.DiskFullError` naming the file.

    Args:
        items: (image_id, file_name, height, width) per image; height/width -1 if unknown.
        out_dir: output folder.
        mode: ``"fast"`` or ``"quality"``.
        max_boxes: at most this many boxes per image.
        workers: processes (each with ``cv2.setNumThreads(1)``).
        overwrite: recompute existing files.

    Returns:
        ``{"computed": n, "skipped": n, "mean_boxes": float (over computed images)}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    todo = [
        it
        for it in items
        if overwrite or not _is_done(os.path.join(out_dir, f"{it[0]}.npz"), it[0], it[2], it[3])
    ]
    skipped = len(items) - len(todo)
    if skipped:
        logger.info(f"Skipping {skipped} images whose proposals exist in {out_dir}")
    jobs = [(it, out_dir, mode, max_boxes) for it in todo]
    counts: List[int] = []
    progress = dict(total=len(jobs), desc=f"selective search ({mode})", unit="img")
    if workers <= 1 or len(jobs) <= 1:
        _init_worker()
        for _, n, _ in tqdm(map(_work, jobs), **progress):
            counts.append(n)
    else:
        # Workers start from a clean server process (forkserver), not from a fork of this
        # process, which may hold other threads' locks (a fork then can hang a worker, and
        # the pool waits on it for ever: seen once in a fresh-clone test run).
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else None)
        if "forkserver" in methods:
            ctx.set_forkserver_preload([__name__])
        try:
            with ctx.Pool(workers, initializer=_init_pool_worker) as pool:
                for _, n, _ in tqdm(pool.imap_unordered(_work, jobs, chunksize=1), **progress):
                    counts.append(n)
        except BaseException:
            # Leaving the pool terminated its workers, possibly mid-write: remove the
            # temporary files they left (never taken for results, but litter).
            _remove_temporary_files(out_dir)
            raise
    return {
        "computed": len(jobs),
        "skipped": skipped,
        "mean_boxes": float(np.mean(counts)) if counts else 0.0,
    }


def proposal_recall(
    dataset_dicts: Sequence[Dict[str, Any]],
    proposal_dir: str,
    thresholds: Sequence[float] = (0.5, 0.7),
    topk: Optional[int] = None,
) -> Dict[str, float]:
    """How well proposals cover the ground-truth boxes.

    Args:
        dataset_dicts: dicts with ``image_id``, ``height``, ``width`` and ``annotations`` (``bbox``
            in their ``bbox_mode``, default XYXY_ABS); crowd annotations are left out.
        proposal_dir: folder of ``<image_id>.npz`` files.
        thresholds: IoU thresholds for recall.
        topk: use only the first k proposals of each image.

    Returns:
        ``recall@<t>`` per threshold, ``mabo`` (mean over GT of the best IoU) and
        ``mean_boxes``.
    """
    best: List[float] = []
    nboxes: List[int] = []
    for d in dataset_dicts:
        path = os.path.join(proposal_dir, f"{d['image_id']}.npz")
        boxes, _ = load_proposal_file(path, d["image_id"], d["height"], d["width"])
        boxes = boxes[:topk]
        nboxes.append(len(boxes))
        gt = [
            BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            for a in d["annotations"]
            if not a.get("iscrowd", 0)
        ]
        gt = np.asarray(gt, np.float64).reshape(-1, 4)
        if not len(gt):
            continue
        if not len(boxes):
            best.extend([0.0] * len(gt))
            continue
        best.extend(box_iou(gt, boxes).max(axis=1).tolist())
    b = np.asarray(best)
    out = {f"recall@{t:g}": float((b >= t).mean()) if b.size else 0.0 for t in thresholds}
    out["mabo"] = float(b.mean()) if b.size else 0.0
    out["mean_boxes"] = float(np.mean(nboxes)) if nboxes else 0.0
    return out
