"""Readers of the VOC2012 and SBD instance segmentation formats, as detectron2 dataset dicts.

Expected layouts (as the public releases unpack)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationObject/<id>.png   palette PNG: 0 background, 1..N instance, 255 void
    VOC2012/SegmentationClass/<id>.png    palette PNG: 0 background, 1..20 class, 255 void
    VOC2012/ImageSets/Segmentation/{train,val}.txt
    SBD/img/<id>.jpg
    SBD/inst/<id>.mat     GTinst: Segmentation (uint8 instance ids), Boundaries, Categories
    SBD/cls/<id>.mat      GTcls: Segmentation, Boundaries, CategoriesPresent (not needed here)
    SBD/{train,val}.txt, SBD/sds_train.txt, SBD/sds_val.txt

Dataset dicts are detectron2's standard form: ``file_name``, ``image_id`` (the file stem, e.g.
``"2008_000002"``), ``height``, ``width`` and ``annotations``, each with ``bbox`` (the tight box
of the mask, ``BoxMode.XYXY_ABS``), ``category_id`` (0..19), ``segmentation`` (COCO RLE dict,
``counts`` a str) and ``iscrowd`` 0. VOC images also carry ``void_segmentation``: an RLE of
their void (255) pixels, which evaluators may ignore. Use ``INPUT.MASK_FORMAT: bitmask``.

A missing file or an unreadable ``.mat``/PNG is an error naming the file and the expected
layout. Reading is parallel and cached (:mod:`r2ios_d2.data.cache`); the registered splits are
in :mod:`r2ios_d2.data.datasets`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode
from PIL import Image

from ..utils import encode_masks, rle_to_json
from .cache import load_records
from .files import check_image_files

__all__ = [
    "VOC_CLASSES",
    "VOC_COLORS",
    "VOC_LAYOUT",
    "SBD_LAYOUT",
    "voc_palette",
    "masks_to_annotations",
    "load_voc_seg_instances",
    "load_sbd_instances",
]

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (label ``i`` -> RGB), as used by VOC's palette PNGs.

    Args:
        num_colors: number of palette entries.

    Returns:
        uint8 array of shape (num_colors, 3).
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for label in range(num_colors):
        r = g = b = 0
        c = label
        for j in range(8):
            # Bits 0/1/2 of the label go to the high bits of R/G/B, then the next three...
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[label] = (r, g, b)
    return palette


VOC_COLORS: List[Tuple[int, int, int]] = [tuple(int(v) for v in c) for c in voc_palette(21)[1:]]


# ----------------------------------------------------------------------------- helpers


def masks_to_annotations(
    masks: Sequence[np.ndarray], category_ids: Sequence[int]
) -> List[Dict[str, Any]]:
    """Encode binary instance masks as detectron2 annotations with COCO RLE segmentations.

    Args:
        masks: N boolean arrays of shape (H, W), each non-empty.
        category_ids: N contiguous class ids (0-based).

    Returns:
        N annotation dicts: ``bbox`` (tight XYXY_ABS box, pixel edges: a mask covering
        columns x0..x1 gives x0, x1 + 1), ``bbox_mode``, ``category_id``, ``segmentation``
        (RLE dict with str ``counts``), ``iscrowd`` 0.
    """
    if len(masks) == 0:
        return []
    rles = encode_masks(np.stack(masks))
    boxes = mask_util.toBbox(rles)  # (N, 4) XYWH
    annos = []
    for rle, box, cat in zip(rles, boxes, category_ids):
        x, y, w, h = (float(v) for v in box)
        annos.append(
            {
                "bbox": [x, y, x + w, y + h],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": int(cat),
                "segmentation": rle_to_json(rle),
                "iscrowd": 0,
            }
        )
    return annos


def _read_split(split_file: str, layout_hint: str) -> List[str]:
    if not os.path.isfile(split_file):
        raise FileNotFoundError(
            f"Split file {split_file} does not exist. Expected layout:\n{layout_hint}"
        )
    with open(split_file) as f:
        ids = [line.strip().split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"Split file {split_file} lists no images.")
    return ids


def _check_root(root: str, subdirs: Sequence[str], layout_hint: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Dataset root {root} does not exist (set $DETECTRON2_DATASETS to the folder that "
            f"holds it). Expected layout:\n{layout_hint}"
        )
    for sub in subdirs:
        path = os.path.join(root, sub)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"Folder {path} does not exist. Expected layout:\n{layout_hint}"
            )


# ---------------------------------------------------------------------------------- VOC

VOC_LAYOUT = """\
  <root>/JPEGImages/<id>.jpg
  <root>/SegmentationObject/<id>.png   (palette PNG: 0 background, 1..N instances, 255 void)
  <root>/SegmentationClass/<id>.png    (palette PNG: 0 background, 1..K classes, 255 void)
  <root>/ImageSets/Segmentation/<split>.txt"""


def _read_label_png(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation {path} does not exist.")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"expected a palette (P) or grey (L) PNG, got mode {im.mode}")
            return np.array(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"Cannot read label PNG {path}: {e}") from e


def _voc_record(job: Tuple[str, ...]) -> Dict[str, Any]:
    image_id, obj_png, cls_png, num_classes = job[0], job[1], job[2], int(job[3])
    obj = _read_label_png(obj_png)
    cls = _read_label_png(cls_png)
    if obj.shape != cls.shape:
        raise ValueError(f"{obj_png} has shape {obj.shape} but {cls_png} has shape {cls.shape}.")
    masks, cats = [], []
    for inst_id in np.unique(obj):
        if inst_id in (0, 255):
            continue
        mask = obj == inst_id
        labels = cls[mask]
        labels = labels[(labels != 0) & (labels != 255)]
        if labels.size == 0:
            raise ValueError(
                f"Instance {int(inst_id)} of {obj_png} has no class: its pixels in {cls_png} "
                "are all background (0) or void (255)."
            )
        counts = np.bincount(labels, minlength=num_classes + 1)
        label = int(np.argmax(counts))  # majority; ties -> the smaller class id
        if label > num_classes:
            raise ValueError(
                f"Instance {int(inst_id)} of {obj_png} has class {label} in {cls_png}, "
                f"but the dataset has {num_classes} classes."
            )
        masks.append(mask)
        cats.append(label - 1)
    h, w = obj.shape
    rec: Dict[str, Any] = {
        "image_id": image_id,
        "height": int(h),
        "width": int(w),
        "annotations": masks_to_annotations(masks, cats),
    }
    void = obj == 255
    if void.any():
        rec["void_segmentation"] = rle_to_json(encode_masks(void[None])[0])
    return rec


def load_voc_seg_instances(
    root: str,
    split: str,
    num_classes: int = len(VOC_CLASSES),
    cache: Optional[bool] = None,
    num_workers: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Load VOC-style instance segmentation (SegmentationObject + SegmentationClass PNGs).

    An instance's class is the majority SegmentationClass value (ignoring 0 and 255) under its
    pixels; void (255) pixels belong to no instance.

    Args:
        root: the ``VOC2012`` folder (see :data:`VOC_LAYOUT`).
        split: name of ``ImageSets/Segmentation/<split>.txt``.
        num_classes: number of foreground classes (class values 1..num_classes).
        cache: use the on-disk cache (default: ``$R2IOS_DATA_CACHE``, on).
        num_workers: processes (default: ``$R2IOS_DATA_WORKERS`` or all cores).

    Returns:
        detectron2 dataset dicts, one per image in the split, in the split file's order.
    """
    _check_root(root, ["JPEGImages", "SegmentationObject", "SegmentationClass"], VOC_LAYOUT)
    split_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    ids = _read_split(split_file, VOC_LAYOUT)
    image_files = [os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids]
    check_image_files(image_files, f"{root} {split}", ids, split_file)
    files = []
    for i in ids:
        obj = os.path.join(root, "SegmentationObject", f"{i}.png")
        cls = os.path.join(root, "SegmentationClass", f"{i}.png")
        _check_files_exist([obj, cls])
        files.append((i, obj, cls, str(num_classes)))
    key_files = [(f[1], f[2]) for f in files]
    records = load_records(
        f"voc_{num_classes}", root, ids, key_files, _voc_record, files, cache, num_workers
    )
    return _attach_file_names(records, image_files)


def _check_files_exist(paths: Sequence[str]) -> None:
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} does not exist (listed in the split file).")


def _attach_file_names(
    records: List[Dict[str, Any]], image_files: List[str]
) -> List[Dict[str, Any]]:
    dicts = []
    for rec, file_name in zip(records, image_files):
        d = {"file_name": file_name}
        d.update(rec)
        dicts.append(d)
    return dicts


# ---------------------------------------------------------------------------------- SBD

SBD_LAYOUT = """\
  <root>/img/<id>.jpg
  <root>/inst/<id>.mat   (GTinst: Segmentation uint8 instance ids, Boundaries, Categories)
  <root>/cls/<id>.mat    (GTcls: Segmentation, Boundaries, CategoriesPresent)
  <root>/train.txt, <root>/val.txt                 (SBD's official split)
  <root>/sds_train.txt, <root>/sds_val.txt         (SDS split: train_noval.txt / the rest)"""


def _read_gtinst(path: str) -> Tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises many types for corrupt files
        raise ValueError(f"Cannot read SBD instance file {path}: {e}") from e
    gt = mat.get("GTinst")
    if gt is None:
        raise ValueError(f"SBD instance file {path} has no GTinst struct (keys: {list(mat)}).")
    for field in ("Segmentation", "Categories"):
        if not hasattr(gt, field):
            raise ValueError(f"GTinst in {path} has no field {field!r}.")
    seg = np.asarray(gt.Segmentation)
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(
            f"GTinst.Segmentation in {path} must be a 2-D integer array, got "
            f"{seg.dtype} of shape {seg.shape}."
        )
    cats = np.atleast_1d(np.asarray(gt.Categories)).reshape(-1)
    if cats.size and not np.issubdtype(cats.dtype, np.number):
        raise ValueError(f"GTinst.Categories in {path} is not numeric ({cats.dtype}).")
    return seg, cats.astype(np.int64)


def _sbd_record(job: Tuple[str, ...]) -> Dict[str, Any]:
    image_id, inst_mat, num_classes = job[0], job[1], int(job[2])
    seg, cats = _read_gtinst(inst_mat)
    masks, cat_ids = [], []
    for inst_id in np.unique(seg):
        if inst_id == 0 or inst_id == 255:  # background; SBD has no void but be lenient
            continue
        if inst_id > cats.size:
            raise ValueError(
                f"Instance {int(inst_id)} of {inst_mat} has no class: GTinst.Categories lists "
                f"{cats.size} instances."
            )
        label = int(cats[inst_id - 1])
        if not 1 <= label <= num_classes:
            raise ValueError(
                f"Instance {int(inst_id)} of {inst_mat} has class {label}, "
                f"outside 1..{num_classes}."
            )
        masks.append(seg == inst_id)
        cat_ids.append(label - 1)
    h, w = seg.shape
    return {
        "image_id": image_id,
        "height": int(h),
        "width": int(w),
        "annotations": masks_to_annotations(masks, cat_ids),
    }


def load_sbd_instances(
    root: str,
    split_file: str,
    num_classes: int = len(VOC_CLASSES),
    cache: Optional[bool] = None,
    num_workers: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Load SBD instance annotations (``inst/<id>.mat``) for the ids in a split file.

    Args:
        root: the ``SBD`` folder (see :data:`SBD_LAYOUT`).
        split_file: path of the split file, absolute or relative to ``root``.
        num_classes: number of foreground classes (GTinst.Categories values 1..num_classes).
        cache: use the on-disk cache (default: ``$R2IOS_DATA_CACHE``, on).
        num_workers: processes (default: ``$R2IOS_DATA_WORKERS`` or all cores).

    Returns:
        detectron2 dataset dicts, one per image in the split, in the split file's order.
    """
    _check_root(root, ["img", "inst"], SBD_LAYOUT)
    split_path = os.path.join(root, split_file)
    ids = _read_split(split_path, SBD_LAYOUT)
    image_files = [os.path.join(root, "img", f"{i}.jpg") for i in ids]
    mats = [os.path.join(root, "inst", f"{i}.mat") for i in ids]
    check_image_files(image_files, f"{root} {split_file}", ids, split_path)
    _check_files_exist(mats)
    jobs = [(i, m, str(num_classes)) for i, m in zip(ids, mats)]
    records = load_records(
        f"sbd_{num_classes}",
        root,
        ids,
        [(m,) for m in mats],
        _sbd_record,
        jobs,
        cache,
        num_workers,
    )
    return _attach_file_names(records, image_files)
