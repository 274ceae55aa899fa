"""Precomputed proposals: the per-image proposal files, the mapper and the data loaders.

Proposal files: one ``<proposal_dir>/<image_id>.npz`` per image (``numpy.savez``, read with
``allow_pickle=False``) with

* ``boxes``: float32 (N, 4), XYXY in the original image's pixels (N may be 0);
* ``scores``: float32 (N,), higher = better (selective search: rank-based, descending);
  optional, default: rank-based from the file's order;
* ``image_id`` (str), ``height``, ``width`` (int): the image the boxes belong to, so that a file
  for another image is detected.

The folder of a dataset is ``DATASETS.PROPOSAL_DIRS_TRAIN/TEST`` (parallel to
``DATASETS.TRAIN/TEST``), else its metadata's ``proposal_dir``. detectron2's proposal pickles
(``DATASETS.PROPOSAL_FILES_TRAIN/TEST``) are read only with ``DATASETS.ALLOW_PICKLE_PROPOSALS``:
unpickling runs arbitrary code, so only do it for files you made yourself.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.config import CfgNode, configurable
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.structures import BoxMode

from ..atomic import atomic_open
from .coco import selective_search_command

logger = logging.getLogger(__name__)

__all__ = [
    "save_proposal_file",
    "load_proposal_file",
    "validate_proposals",
    "filter_proposals",
    "load_proposal_pickle",
    "write_proposal_pickle",
    "attach_proposals",
    "PrecomputedProposalMapper",
    "build_r2ios_train_loader",
    "r2ios_train_dataset_dicts",
    "get_r2ios_dataset_dicts",
    "build_r2ios_test_loader",
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
    if n and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        bad = int(np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0])
        raise ValueError(
            f"Proposal {bad} in {source} is inverted ({boxes[bad].tolist()}); boxes must be "
            "XYXY with x1 >= x0 and y1 >= y0."
        )
    if n and height is not None and width is not None:
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
    return boxes.astype(np.float32), scores.astype(np.float32)


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


# ------------------------------------------------------------------------------- mapper


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


class PrecomputedProposalMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` that also loads, checks and transforms the proposals.

    For each dataset dict it reads the proposals (from ``proposal_file``, from arrays attached
    by :func:`attach_proposals`, or from ``<proposal_dir>/<image_id>.npz``), validates them
    against the image (:func:`validate_proposals`), drops degenerate, small and duplicate boxes
    and keeps the top k (:func:`filter_proposals`, in original pixels), then lets detectron2
    apply the image's transforms (resize, flip) to them, so that proposals and ground truth
    move together. Output: ``dataset_dict["proposals"]`` = ``Instances`` with
    ``proposal_boxes`` (Boxes) and ``objectness_logits``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        load_proposals: bool = True,
        proposal_min_size: float = 0.0,
        proposal_dir: Optional[str] = None,
        **kwargs: Any,
    ):
        """
        Args:
            is_train: training or inference.
            load_proposals: read proposals (False: behave as ``DatasetMapper``).
            proposal_min_size: drop proposals with a side below this (original pixels).
            proposal_dir: folder used for dicts that carry no proposal information.
            kwargs: ``DatasetMapper`` arguments (augmentations, image_format,
                use_instance_mask, instance_mask_format, precomputed_proposal_topk, ...).
        """
        if load_proposals and kwargs.get("precomputed_proposal_topk") is None:
            kwargs["precomputed_proposal_topk"] = sys.maxsize
        super().__init__(is_train, **kwargs)
        self.load_proposals = load_proposals
        self.proposal_min_size = float(proposal_min_size)
        self.proposal_dir = proposal_dir
        if not load_proposals:
            self.proposal_topk = None

    @classmethod
    def from_config(
        cls, cfg: CfgNode, is_train: bool = True, proposal_dir: Optional[str] = None
    ) -> Dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        # R2-IOS always trains a mask head; masks come as RLE, which needs the bitmask path.
        use_masks = bool(cfg.MODEL.MASK_ON) or "R2IOS" in cfg.MODEL.ROI_HEADS.NAME
        ret["use_instance_mask"] = use_masks
        if use_masks and cfg.INPUT.MASK_FORMAT != "bitmask":
            logger.warning(
                f"INPUT.MASK_FORMAT is {cfg.INPUT.MASK_FORMAT!r}; r2ios_d2 datasets store RLE "
                "masks, so the mapper uses 'bitmask'."
            )
            ret["instance_mask_format"] = "bitmask"
        ret["load_proposals"] = bool(cfg.MODEL.LOAD_PROPOSALS)
        ret["precomputed_proposal_topk"] = (
            cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN
            if is_train
            else cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
        )
        ret["proposal_min_size"] = cfg.DATASETS.PROPOSAL_MIN_SIZE
        ret["proposal_dir"] = proposal_dir
        return ret

    def _read_proposals(self, d: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        h, w = d.get("height"), d.get("width")
        if "proposal_boxes" in d:
            source = d.pop("proposal_source", f"the proposals of image {d.get('image_id')}")
            mode = d.pop("proposal_bbox_mode", BoxMode.XYXY_ABS)
            boxes = np.asarray(d.pop("proposal_boxes"))
            scores = d.pop("proposal_objectness_logits", None)
            if mode != BoxMode.XYXY_ABS and boxes.ndim == 2 and boxes.shape[1] == 4:
                boxes = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
            return validate_proposals(boxes, scores, h, w, source)
        path = d.pop("proposal_file", None)
        if path is None:
            if self.proposal_dir is None:
                raise ValueError(
                    f"Image {d.get('image_id')} has no proposals: build the loader with "
                    "build_r2ios_train_loader/build_r2ios_test_loader, or give proposal_dir."
                )
            path = os.path.join(self.proposal_dir, f"{d['image_id']}.npz")
        return load_proposal_file(path, d.get("image_id"), h, w)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict: one image's dataset dict (not modified).

        Returns:
            detectron2's model input dict: ``image`` (uint8 tensor C, H, W), ``instances``
            (training), ``proposals`` (Instances with ``proposal_boxes``, ``objectness_logits``,
            in the transformed image's pixels), and the dict's other fields.
        """
        d = dict(dataset_dict)
        if self.load_proposals:
            boxes, scores = self._read_proposals(d)
            boxes, scores = filter_proposals(
                boxes, scores, d["height"], d["width"], self.proposal_min_size, self.proposal_topk
            )
            d["proposal_boxes"] = boxes
            d["proposal_objectness_logits"] = scores
            d["proposal_bbox_mode"] = BoxMode.XYXY_ABS
        else:
            for key in ("proposal_file", "proposal_source", "proposal_boxes"):
                d.pop(key, None)
        try:
            return super().__call__(d)
        except OSError as e:
            raise OSError(f"Cannot read image {d.get('file_name')}: {e}") from e


# ------------------------------------------------------------------------------ loaders


def _proposal_sources(
    names: Sequence[str],
    which: str,
    proposal_dirs: Sequence[str] = (),
    proposal_files: Sequence[str] = (),
    allow_pickle: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Where the proposals of each dataset in ``names`` are: ``{name: attach_proposals kwargs}``.

    ``proposal_dirs`` / ``proposal_files`` are parallel to ``names`` (or empty: then each
    dataset's metadata ``proposal_dir``); ``which`` ("TRAIN"/"TEST") only names the config keys
    in error messages.
    """
    names, dirs, files = list(names), list(proposal_dirs), list(proposal_files)
    for key, values in ((f"PROPOSAL_DIRS_{which}", dirs), (f"PROPOSAL_FILES_{which}", files)):
        if values and len(values) != len(names):
            raise ValueError(
                f"DATASETS.{key} has {len(values)} entries but DATASETS.{which} has "
                f"{len(names)}: give one per dataset."
            )
    if dirs and files:
        raise ValueError(f"Set DATASETS.PROPOSAL_DIRS_{which} or PROPOSAL_FILES_{which}, not both.")
    sources: Dict[str, Dict[str, Any]] = {}
    for i, name in enumerate(names):
        if dirs:
            sources[name] = {"proposal_dir": dirs[i]}
        elif files:
            sources[name] = {"proposal_pickle": files[i], "allow_pickle": bool(allow_pickle)}
        else:
            proposal_dir = MetadataCatalog.get(name).get("proposal_dir", None)
            if proposal_dir is None:
                raise ValueError(
                    f"No proposals for dataset {name}: set DATASETS.PROPOSAL_DIRS_{which} or "
                    "the dataset metadata's proposal_dir."
                )
            sources[name] = {"proposal_dir": proposal_dir}
    return sources


def get_r2ios_dataset_dicts(
    names: Union[str, Sequence[str]],
    *,
    is_train: bool = True,
    load_proposals: bool = True,
    proposal_dirs: Sequence[str] = (),
    proposal_files: Sequence[str] = (),
    allow_pickle_proposals: bool = False,
    filter_empty: bool = True,
    num_classes: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """The dataset dicts of registered datasets with their proposals attached (config-free:
    the LazyConfig loaders call it directly, the yacs ones through
    :func:`r2ios_train_dataset_dicts` / :func:`build_r2ios_test_loader`).

    Args:
        names: one or more registered dataset names.
        is_train: training dicts: crowd-only images are dropped (``filter_empty``), the class
            histogram is logged, and the datasets must share ``thing_classes``.
        load_proposals: attach proposals (False: e.g. an RPN model).
        proposal_dirs, proposal_files: per-dataset proposal folders / detectron2 proposal
            pickles, parallel to ``names`` (empty: each dataset's metadata ``proposal_dir``).
        allow_pickle_proposals: opt-in to unpickling ``proposal_files``.
        filter_empty: in training, drop images whose annotations are all crowd.
        num_classes: the model's number of classes; training categories must be below it.

    Raises:
        ValueError: what R2-IOS cannot train or test on, naming the dataset and the fix (see
            :func:`r2ios_d2.data.coco.check_r2ios_training_dicts`): instances without masks,
            no non-crowd instance, categories beyond ``num_classes``, missing proposal files.

    Returns:
        a list of dataset dicts (copies; the catalog's are not modified).
    """
    from .coco import check_proposal_files, check_r2ios_training_dicts

    names = [names] if isinstance(names, str) else list(names)
    which = "TRAIN" if is_train else "TEST"
    sources = (
        _proposal_sources(names, which, proposal_dirs, proposal_files, allow_pickle_proposals)
        if load_proposals
        else {}
    )
    dicts: List[Dict[str, Any]] = []
    for name in names:
        part = [dict(d) for d in DatasetCatalog.get(name)]
        if not part:
            raise ValueError(f"Dataset {name} is empty.")
        if load_proposals:
            attach_proposals(part, dataset_name=name, **sources[name])
        if is_train:
            check_r2ios_training_dicts(part, name, num_classes, check_proposals=load_proposals)
        elif load_proposals:
            check_proposal_files(part, name)
        dicts.extend(part)
    if not is_train:
        return dicts
    if filter_empty:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    classes = [MetadataCatalog.get(n).get("thing_classes", None) for n in names]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"DATASETS.TRAIN {names} have different thing_classes.")
    if classes[0] is not None:
        _log_class_histogram(dicts, classes[0])
    return dicts


def _cfg_test_dicts(cfg: CfgNode, name: str) -> List[Dict[str, Any]]:
    """:func:`get_r2ios_dataset_dicts` of one test dataset with the proposal settings of
    ``cfg`` (its ``DATASETS.PROPOSAL_DIRS_TEST``/``FILES_TEST`` entry if it is listed in
    ``DATASETS.TEST``, else its metadata's ``proposal_dir``)."""
    d = cfg.DATASETS
    listed, dirs, files = list(d.TEST), d.PROPOSAL_DIRS_TEST, d.PROPOSAL_FILES_TEST
    if (dirs or files) and listed:  # check the lengths against the whole list
        _proposal_sources(listed, "TEST", dirs, files, d.ALLOW_PICKLE_PROPOSALS)
    i = listed.index(name) if name in listed else None
    return get_r2ios_dataset_dicts(
        name,
        is_train=False,
        load_proposals=bool(cfg.MODEL.LOAD_PROPOSALS),
        proposal_dirs=[dirs[i]] if dirs and i is not None else (),
        proposal_files=[files[i]] if files and i is not None else (),
        allow_pickle_proposals=bool(d.ALLOW_PICKLE_PROPOSALS),
    )


def _log_class_histogram(dicts: List[Dict[str, Any]], class_names: Sequence[str]) -> None:
    # detectron2 v0.6's print_instances_class_histogram uses np.int, gone in numpy 2.
    cats = [a["category_id"] for d in dicts for a in d.get("annotations", [])]
    counts = np.bincount(np.asarray(cats, np.int64), minlength=len(class_names))
    text = ", ".join(f"{n}: {int(c)}" for n, c in zip(class_names, counts))
    logger.info(f"{len(dicts)} training images, {len(cats)} instances ({text})")


def r2ios_train_dataset_dicts(cfg: CfgNode) -> List[Dict[str, Any]]:
    """The training dicts of ``DATASETS.TRAIN``: proposals attached, crowd-only images filtered
    as ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` says, the class histogram logged.

    Raises:
        ValueError: if the datasets have different ``thing_classes``.
    """
    d = cfg.DATASETS
    return get_r2ios_dataset_dicts(
        list(d.TRAIN),
        is_train=True,
        load_proposals=bool(cfg.MODEL.LOAD_PROPOSALS),
        proposal_dirs=d.PROPOSAL_DIRS_TRAIN,
        proposal_files=d.PROPOSAL_FILES_TRAIN,
        allow_pickle_proposals=bool(d.ALLOW_PICKLE_PROPOSALS),
        filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
    )


def build_r2ios_train_loader(cfg: CfgNode, mapper: Optional[DatasetMapper] = None) -> Any:
    """detectron2's train loader over ``DATASETS.TRAIN`` with :class:`PrecomputedProposalMapper`.

    Args:
        cfg: the config (``MODEL.LOAD_PROPOSALS`` decides whether proposals are read).
        mapper: a mapper to use instead of ``PrecomputedProposalMapper(cfg, True)``.

    Returns:
        an iterable of lists of mapped dicts (``SOLVER.IMS_PER_BATCH`` in total per step).
    """
    dicts = r2ios_train_dataset_dicts(cfg)
    if mapper is None:
        mapper = PrecomputedProposalMapper(cfg, True)
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts)


def build_r2ios_test_loader(
    cfg: CfgNode, dataset_name: str, mapper: Optional[DatasetMapper] = None
) -> Any:
    """detectron2's test loader (batch 1, every image once) with the proposal mapper.

    Args:
        cfg: the config; proposals of ``dataset_name`` come from its entry in
            ``DATASETS.PROPOSAL_DIRS_TEST`` / ``PROPOSAL_FILES_TEST`` if it is in
            ``DATASETS.TEST``, else from its metadata's ``proposal_dir``.
        dataset_name: a registered dataset.
        mapper: a mapper to use instead of ``PrecomputedProposalMapper(cfg, False)``.

    Returns:
        an iterable of one-element lists of mapped dicts.
    """
    dicts = _cfg_test_dicts(cfg, dataset_name)
    if mapper is None:
        mapper = PrecomputedProposalMapper(cfg, False)
    return build_detection_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
