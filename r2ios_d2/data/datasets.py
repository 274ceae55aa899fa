"""VOC2012 instance segmentation, SBD and the SDS split as detectron2 datasets.

Registered names (roots under ``$DETECTRON2_DATASETS``, default ``./datasets``):

=====================  ==========  ============================================================
name                   images      source
=====================  ==========  ============================================================
``voc_2012_seg_train`` 1464        ``VOC2012/ImageSets/Segmentation/train.txt``
``voc_2012_seg_val``   1449        ``VOC2012/ImageSets/Segmentation/val.txt``
``sbd_train``          8498        ``SBD/train.txt``
``sbd_val``            2857        ``SBD/val.txt``
``voc_sds_train``      5623        ``SBD/sds_train.txt`` (SBD's ``train_noval.txt``)
``voc_sds_val``        5732        ``SBD/sds_val.txt`` (the other SBD images)
=====================  ==========  ============================================================

Expected layouts (as the public releases unpack)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationObject/<id>.png   palette PNG: 0 background, 1..N instance, 255 void
    VOC2012/SegmentationClass/<id>.png    palette PNG: 0 background, 1..20 class, 255 void
    VOC2012/ImageSets/Segmentation/{train,val}.txt
    SBD/img/<id>.jpg
    SBD/inst/<id>.mat     GTinst: Segmentation (uint8 instance ids), Boundaries, Categories
    SBD/cls/<id>.mat      GTcls: Segmentation, Boundaries, CategoriesPresent (not needed here)
    SBD/{train,val}.txt, SBD/sds_train.txt, SBD/sds_val.txt

The VOC tarball unpacks to ``VOCdevkit/VOC2012`` and SBD's to ``benchmark_RELEASE/dataset``:
link (or move) them to ``VOC2012`` and ``SBD``. The SDS split files are not part of the SBD
release: ``sds_train.txt`` is SBD's
``train_noval.txt`` (5623 ids) and ``sds_val.txt`` is every other SBD id (5732), e.g.
``cat train.txt val.txt | sort | comm -23 - <(sort train_noval.txt) > sds_val.txt``.

Dataset dicts are detectron2's standard form: ``file_name``, ``image_id`` (the file stem, e.g.
``"2008_000002"``), ``height``, ``width`` and ``annotations``, each with ``bbox`` (the tight box
of the mask, ``BoxMode.XYXY_ABS``), ``category_id`` (0..19), ``segmentation`` (COCO RLE dict,
``counts`` a str) and ``iscrowd`` 0. VOC images also carry ``void_segmentation``: an RLE of
their void (255) pixels, which evaluators may ignore. Use ``INPUT.MASK_FORMAT: bitmask``.

Metadata: ``thing_classes``, ``thing_colors``, ``evaluator_type = "sds"``, ``dataset_root``,
``split_file``, ``dataset_format`` (``"voc"`` / ``"sbd"``), ``void_masks`` (whether dicts carry
``void_segmentation``) and ``proposal_dir``: the default folder of per-image proposal files,
``<root>/proposals/selective_search/<image_id>.npz`` (see :mod:`r2ios_d2.data.proposals`).

Loading reads thousands of small files, so it runs in a process pool (``R2IOS_DATA_WORKERS``,
default: all cores) and caches the result as gzipped JSON keyed by the split's file list,
sizes and mtimes (``R2IOS_DATA_CACHE=0`` disables it; ``R2IOS_CACHE_DIR`` moves it; default
``<root>/.r2ios_cache``, or ``~/.cache/r2ios_d2`` where the root is read-only).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import multiprocessing as mp
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_open

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "VOC_COLORS",
    "voc_palette",
    "masks_to_annotations",
    "load_voc_seg_instances",
    "load_sbd_instances",
    "register_voc_seg",
    "register_sbd",
    "register_all_voc_sbd",
    "datasets_root",
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

# Bumped whenever the dicts a loader produces change, so that stale caches are not used.
_LOADER_VERSION = 1
# Below this many images a process pool costs more than it saves.
_MIN_IMAGES_FOR_POOL = 256


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


def datasets_root() -> str:
    """detectron2's dataset root: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


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
    stacked = np.asfortranarray(np.stack(masks, axis=2).astype(np.uint8))
    rles = mask_util.encode(stacked)
    boxes = mask_util.toBbox(rles)  # (N, 4) XYWH
    annos = []
    for rle, box, cat in zip(rles, boxes, category_ids):
        x, y, w, h = (float(v) for v in box)
        annos.append(
            {
                "bbox": [x, y, x + w, y + h],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": int(cat),
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": _str(rle)},
                "iscrowd": 0,
            }
        )
    return annos


def _str(rle: Dict[str, Any]) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


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


def _num_workers() -> int:
    env = os.getenv("R2IOS_DATA_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


def _map_files(
    fn: Callable[[Tuple[str, ...]], Dict[str, Any]],
    jobs: List[Tuple[str, ...]],
    desc: str,
    num_workers: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Run ``fn`` over ``jobs`` in order, in a process pool when there are many."""
    workers = _num_workers() if num_workers is None else max(1, num_workers)
    progress = dict(total=len(jobs), desc=desc, unit="img", disable=len(jobs) < 200)
    if workers == 1 or len(jobs) < _MIN_IMAGES_FOR_POOL:
        return [fn(job) for job in tqdm(jobs, **progress)]
    # The workers only run numpy/scipy/PIL code, so forking is safe and avoids re-importing
    # torch in every worker; elsewhere fall back to the platform default.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    chunksize = max(1, min(64, len(jobs) // (workers * 8)))
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **progress))


# ------------------------------------------------------------------------------ caching


def _cache_dir(root: str) -> str:
    env = os.getenv("R2IOS_CACHE_DIR")
    if env:
        return os.path.expanduser(env)
    local = os.path.join(root, ".r2ios_cache")
    if os.access(root, os.W_OK):
        return local
    return os.path.join(os.path.expanduser("~"), ".cache", "r2ios_d2")


def _cache_key(kind: str, root: str, ids: Sequence[str], files: Sequence[Sequence[str]]) -> str:
    h = hashlib.sha1()
    h.update(f"{kind}|{_LOADER_VERSION}|{os.path.realpath(root)}|".encode())
    for image_id, paths in zip(ids, files):
        h.update(image_id.encode())
        for path in paths:
            st = os.stat(path)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()[:20]


def _cache_enabled(cache: Optional[bool]) -> bool:
    if cache is not None:
        return cache
    return os.getenv("R2IOS_DATA_CACHE", "1") not in ("0", "false", "False", "")


def _load_cache(path: str) -> Optional[List[Dict[str, Any]]]:
    try:
        with gzip.open(path, "rt") as f:
            records = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as e:
        logger.warning(f"Ignoring unreadable dataset cache {path}: {e}")
        return None
    for rec in records:
        for anno in rec["annotations"]:
            anno["bbox_mode"] = BoxMode(anno["bbox_mode"])
    return records


def _write_cache(path: str, records: List[Dict[str, Any]]) -> None:
    try:
        with atomic_open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as f:
            f.write(json.dumps(records, default=_json_default).encode())
    except OSError as e:
        logger.warning(f"Could not write dataset cache {path}: {e}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BoxMode):
        return int(obj.value)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _load_records(
    kind: str,
    root: str,
    ids: List[str],
    key_files: List[Tuple[str, ...]],
    fn: Callable[[Tuple[str, ...]], Dict[str, Any]],
    jobs: List[Tuple[str, ...]],
    cache: Optional[bool],
    num_workers: Optional[int],
) -> List[Dict[str, Any]]:
    """Per-image records (``image_id``, ``height``, ``width``, ``annotations``, ...) of
    ``fn(job)`` for each job, cached under a key made of ``key_files``' sizes and mtimes."""
    use_cache = _cache_enabled(cache)
    if use_cache:
        key = _cache_key(kind, root, ids, key_files)
        path = os.path.join(_cache_dir(root), f"{kind}_{key}.json.gz")
        records = _load_cache(path)
        if records is not None and [r["image_id"] for r in records] == list(ids):
            logger.info(f"Loaded {len(records)} {kind} records from cache {path}")
            return records
    records = _map_files(fn, jobs, desc=f"Loading {kind} annotations", num_workers=num_workers)
    if use_cache:
        _write_cache(path, records)
    return records


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
        rle = mask_util.encode(np.asfortranarray(void.astype(np.uint8)))
        rec["void_segmentation"] = {"size": [int(h), int(w)], "counts": _str(rle)}
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
    _check_files_exist(image_files)
    files = []
    for i in ids:
        obj = os.path.join(root, "SegmentationObject", f"{i}.png")
        cls = os.path.join(root, "SegmentationClass", f"{i}.png")
        _check_files_exist([obj, cls])
        files.append((i, obj, cls, str(num_classes)))
    key_files = [(f[1], f[2]) for f in files]
    records = _load_records(
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
    ids = _read_split(os.path.join(root, split_file), SBD_LAYOUT)
    image_files = [os.path.join(root, "img", f"{i}.jpg") for i in ids]
    mats = [os.path.join(root, "inst", f"{i}.mat") for i in ids]
    _check_files_exist(image_files)
    _check_files_exist(mats)
    jobs = [(i, m, str(num_classes)) for i, m in zip(ids, mats)]
    records = _load_records(
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


# ----------------------------------------------------------------------------- register


def _set_metadata(
    name: str,
    root: str,
    split_file: str,
    fmt: str,
    thing_classes: Sequence[str],
    thing_colors: Optional[Sequence[Tuple[int, int, int]]],
    proposal_dir: Optional[str],
) -> None:
    if thing_colors is None:
        thing_colors = [tuple(int(v) for v in c) for c in voc_palette(len(thing_classes) + 1)[1:]]
    MetadataCatalog.get(name).set(
        thing_classes=list(thing_classes),
        thing_colors=[tuple(c) for c in thing_colors],
        evaluator_type="sds",
        dataset_root=root,
        split_file=split_file,
        dataset_format=fmt,
        void_masks=fmt == "voc",
        proposal_dir=proposal_dir or os.path.join(root, "proposals", "selective_search"),
    )


def register_voc_seg(
    name: str,
    root: str,
    split: str,
    thing_classes: Sequence[str] = VOC_CLASSES,
    thing_colors: Optional[Sequence[Tuple[int, int, int]]] = None,
    proposal_dir: Optional[str] = None,
    before_load: Optional[Callable[[], None]] = None,
) -> None:
    """Register a VOC-layout instance segmentation split (lazy: nothing is read now).

    Args:
        name: dataset name for ``DatasetCatalog`` / ``MetadataCatalog``.
        root: the ``VOC2012``-style folder.
        split: ``ImageSets/Segmentation/<split>.txt``.
        thing_classes: class names for class values 1..K.
        thing_colors: RGB colour per class (default: the VOC colour map).
        proposal_dir: default proposal folder (default ``<root>/proposals/selective_search``).
        before_load: called before each load (e.g. to check that a generated dataset exists).
    """
    num_classes = len(thing_classes)

    def load() -> List[Dict[str, Any]]:
        if before_load is not None:
            before_load()
        return load_voc_seg_instances(root, split, num_classes=num_classes)

    DatasetCatalog.register(name, load)
    split_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    _set_metadata(name, root, split_file, "voc", thing_classes, thing_colors, proposal_dir)


def register_sbd(
    name: str,
    root: str,
    split_file: str,
    thing_classes: Sequence[str] = VOC_CLASSES,
    thing_colors: Optional[Sequence[Tuple[int, int, int]]] = None,
    proposal_dir: Optional[str] = None,
    before_load: Optional[Callable[[], None]] = None,
) -> None:
    """Register an SBD-layout split (lazy: nothing is read now).

    Args:
        name: dataset name for ``DatasetCatalog`` / ``MetadataCatalog``.
        root: the ``SBD``-style folder.
        split_file: split file, relative to ``root`` (e.g. ``"train.txt"``) or absolute.
        thing_classes: class names for GTinst.Categories values 1..K.
        thing_colors: RGB colour per class (default: the VOC colour map).
        proposal_dir: default proposal folder (default ``<root>/proposals/selective_search``).
        before_load: called before each load (e.g. to check that a generated dataset exists).
    """
    num_classes = len(thing_classes)

    def load() -> List[Dict[str, Any]]:
        if before_load is not None:
            before_load()
        return load_sbd_instances(root, split_file, num_classes=num_classes)

    DatasetCatalog.register(name, load)
    path = os.path.join(root, split_file)
    _set_metadata(name, root, path, "sbd", thing_classes, thing_colors, proposal_dir)


def register_all_voc_sbd(root: Optional[str] = None) -> None:
    """Register the VOC2012, SBD and SDS splits under ``root`` (default: :func:`datasets_root`).

    Args:
        root: folder holding ``VOC2012/`` and ``SBD/``.
    """
    root = datasets_root() if root is None else root
    voc = os.path.join(root, "VOC2012")
    sbd = os.path.join(root, "SBD")
    for split in ("train", "val"):
        register_voc_seg(f"voc_2012_seg_{split}", voc, split)
        register_sbd(f"sbd_{split}", sbd, f"{split}.txt")
        register_sbd(f"voc_sds_{split}", sbd, f"sds_{split}.txt")


register_all_voc_sbd()
