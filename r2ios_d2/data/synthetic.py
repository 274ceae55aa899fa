"""A synthetic instance segmentation dataset written in the real SBD and VOC2012 formats.

Real VOC/SBD data and ImageNet weights cannot be downloaded everywhere, so the demo, tests and
benchmarks use this dataset. It is written twice, as the public releases are laid out, and read
back through exactly the real loaders of :mod:`r2ios_d2.data.voc_sbd`::

    <root>/SBD/img/<id>.jpg  inst/<id>.mat  cls/<id>.mat  train.txt  val.txt
    <root>/VOC2012/JPEGImages/<id>.jpg  SegmentationObject/<id>.png  SegmentationClass/<id>.png
    <root>/VOC2012/ImageSets/Segmentation/{train,val}.txt
    <root>/r2ios_synthetic.json        marker: generation args + difficulty statistics
    <root>/proposals/selective_search/ default proposal folder of all four splits

Registered as ``r2ios_synthetic_train`` / ``r2ios_synthetic_val`` (SBD tree) and
``r2ios_synthetic_voc_train`` / ``r2ios_synthetic_voc_val`` (VOC tree, with 2-pixel void (255)
bands on every instance boundary as VOC has; the VOC instances are the SBD instances minus
those bands), at ``$DETECTRON2_DATASETS/r2ios_synthetic``. Generate it with::

    python -m r2ios_d2.data.synthetic --root datasets/r2ios_synthetic --num-train 160 \\
        --num-val 60 --seed 0

What makes it a fair test of R2-IOS's claims:

* five classes (:data:`SYNTHETIC_CLASSES`) that differ by shape and texture, not only colour
  (colours are jittered; ``tile`` is striped and ``leaf`` checkered, so that selective search
  splits them; ``ring`` has a hole);
* scale variation (object sides from ~12 % to ~50 % of the image side);
* background clutter: gradients, noise, distractor blobs, lines and textured patches that are
  not objects;
* groups of 2-4 overlapping instances of the same class, painted in a random depth order, so
  a loose box holds several same-class instances and its dominant one is ambiguous;
* thin foreground occluders ("poles") that cut objects into pieces, so their selective-search
  boxes are poor and box refinement matters.

Difficulty statistics of the default dataset (``--num-train 160 --num-val 60 --seed 0``), as
:func:`difficulty_statistics` computes them (train / val; images 144-192 x 160-208 px):

* mean instances per image: 5.49 / 5.70 (878 / 342 instances)
* fraction of instances whose box intersects the box of a same-class instance: 0.745 / 0.772
* mean max box IoU with a same-class instance (over instances with one in the image):
  0.199 / 0.180; fraction of instances with such an IoU > 0.3: 0.207 / 0.146
* occluded-pixel fraction (hidden part of the full shapes): 0.216 / 0.187
* box side sqrt(area): 9 to 112 px, median 33 px
* selective search (fast, ~220 boxes per image) on val: recall 0.76 at IoU 0.5, 0.48 at
  IoU 0.7, mean best overlap 0.67, so the initial boxes are poor and refinement matters

(regenerate with ``python -m r2ios_d2.data.synthetic --root DIR --stats``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils import box_iou
from .datasets import datasets_root, register_sbd, register_voc_seg
from .synthetic_render import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, render_image
from .synthetic_writers import make_layout, write_image, write_split_files
from .voc_sbd import masks_to_annotations

logger = logging.getLogger(__name__)

# The synthetic dataset's public names (rendering and the format writers are in
# synthetic_render.py and synthetic_writers.py).
__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "generate_synthetic_dataset",
    "render_image",
    "difficulty_statistics",
    "log_difficulty_statistics",
    "register_synthetic",
    "prepare_synthetic_benchmark",
    "synthetic_root",
]

MARKER = "r2ios_synthetic.json"
_VERSION = 1


def synthetic_root() -> str:
    """Default root of the synthetic dataset: ``$DETECTRON2_DATASETS/r2ios_synthetic``."""
    return os.path.join(datasets_root(), "r2ios_synthetic")


def prepare_synthetic_benchmark(
    num_train: int = 160, num_val: int = 60, seed: int = 0, workers: Optional[int] = None
) -> str:
    """Everything the demo and the benchmarks train on: the synthetic dataset at
    :func:`synthetic_root` (written if missing) and selective-search proposals for its
    ``r2ios_synthetic_train`` / ``_val`` splits in their ``proposal_dir`` (resumable: finished
    images are skipped).

    Returns:
        the dataset root.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .selective_search import compute_proposals

    root = synthetic_root()
    generate_synthetic_dataset(root, num_train=num_train, num_val=num_val, seed=seed)
    for split in ("train", "val"):
        name = f"r2ios_synthetic_{split}"
        items = [
            (str(d["image_id"]), d["file_name"], d["height"], d["width"])
            for d in DatasetCatalog.get(name)
        ]
        stats = compute_proposals(
            items, MetadataCatalog.get(name).proposal_dir, workers=workers or os.cpu_count() or 1
        )
        logger.info("selective search for %s: %s", name, stats)
    return root


# ------------------------------------------------------------------------------ writing


def _split_records(
    out: str, split: str, num: int, seed: int, sizes: Tuple[int, int, int, int]
) -> List[Dict[str, Any]]:
    """Render and write the ``num`` images of ``split``; their dataset dicts (plus
    ``amodal_areas``), without ``file_name``."""
    split_code = {"train": 0, "val": 1}[split]
    hmin, hmax, wmin, wmax = sizes
    records = []
    for i in range(num):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_code, i]))
        h, w = int(rng.integers(hmin, hmax + 1)), int(rng.integers(wmin, wmax + 1))
        image, inst_map, classes, amodal = render_image(rng, h, w)
        image_id = f"{split}_{i:06d}"
        write_image(out, image_id, image, inst_map, classes)
        masks = [inst_map == k + 1 for k in range(len(classes))]
        records.append(
            {
                "image_id": image_id,
                "height": h,
                "width": w,
                "annotations": masks_to_annotations(masks, classes),
                "amodal_areas": amodal,
            }
        )
    write_split_files(out, split, [r["image_id"] for r in records])
    return records


def _read_marker(root: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate_synthetic_dataset(
    root: Optional[str] = None,
    num_train: int = 160,
    num_val: int = 60,
    seed: int = 0,
    min_size: Tuple[int, int] = (144, 160),
    max_size: Tuple[int, int] = (192, 208),
) -> Dict[str, Any]:
    """Write the synthetic dataset to ``root`` unless an identical one is already there.

    The dataset is written to a temporary folder beside ``root`` and renamed into place, with
    the marker file (the generation args and statistics) written last; a folder with a marker
    for other args is replaced, a non-empty folder without a marker is an error.

    Args:
        root: output folder (default :func:`synthetic_root`).
        num_train, num_val: number of images of each split.
        seed: random seed; the files are a deterministic function of all args.
        min_size, max_size: (height, width) range of the images.

    Returns:
        the marker's content: ``{"version", "args", "classes", "stats": {split: stats}}``.
    """
    root = synthetic_root() if root is None else root
    args = {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "min_size": [int(v) for v in min_size],
        "max_size": [int(v) for v in max_size],
    }
    marker = _read_marker(root)
    if marker is not None and marker.get("args") == args and marker.get("version") == _VERSION:
        logger.info(f"Reusing the synthetic dataset at {root}")
        return marker
    if os.path.isdir(root) and os.listdir(root) and marker is None:
        raise FileExistsError(
            f"{root} exists, is not empty and holds no {MARKER}: not overwriting it with the "
            "synthetic dataset. Choose another --root or remove it."
        )
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        content = _write_dataset(tmp, root, args)
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split in ("train", "val"):
        log_difficulty_statistics(content["stats"][split], f"synthetic {split}")
    return content


def _write_dataset(tmp: str, root: str, args: Dict[str, Any]) -> Dict[str, Any]:
    """Write both splits and, last, the marker into the empty folder ``tmp`` (``root`` is only
    named in the log); the marker's content."""
    make_layout(tmp)
    sizes = (args["min_size"][0], args["max_size"][0], args["min_size"][1], args["max_size"][1])
    stats = {}
    for split, num in (("train", args["num_train"]), ("val", args["num_val"])):
        logger.info(f"Writing {num} synthetic {split} images to {root}")
        records = _split_records(tmp, split, num, args["seed"], sizes)
        stats[split] = difficulty_statistics(
            records, amodal_areas={r["image_id"]: r["amodal_areas"] for r in records}
        )
    content = {
        "version": _VERSION,
        "args": args,
        "classes": list(SYNTHETIC_CLASSES),
        "stats": stats,
    }
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(content, f, indent=2)
    return content


def _swap_into_place(tmp: str, root: str) -> None:
    old = None
    if os.path.isdir(root):
        if os.listdir(root):
            old = f"{root}.old-{os.getpid()}"
            os.replace(root, old)
        else:
            os.rmdir(root)
    try:
        os.replace(tmp, root)
    except OSError:
        # Another process finished first: keep its copy.
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- statistics


def difficulty_statistics(
    dataset_dicts: Sequence[Dict[str, Any]],
    amodal_areas: Optional[Dict[str, Sequence[int]]] = None,
) -> Dict[str, float]:
    """How hard a dataset is for instance segmentation from boxes.

    Args:
        dataset_dicts: detectron2 dataset dicts (XYXY_ABS ``bbox``, RLE ``segmentation``).
        amodal_areas: image_id -> full-shape pixel count of each instance, if known (the
            synthetic generator knows it), for the occluded-pixel fraction.

    Returns:
        ``num_images``, ``num_instances``, ``mean_instances_per_image``,
        ``frac_same_class_overlap`` (instances whose box intersects the box of another
        instance of the same class), ``mean_max_same_class_iou`` (mean over those instances
        with a same-class partner in the image of the largest box IoU with one),
        ``frac_same_class_iou_gt_0.3``, ``median_box_side`` / ``min_box_side`` /
        ``max_box_side`` (sqrt of box area, pixels) and, with ``amodal_areas``,
        ``occluded_pixel_fraction`` (hidden pixels / full-shape pixels).
    """
    import pycocotools.mask as mask_util

    n_inst = overlap = 0
    max_ious: List[float] = []
    sides: List[float] = []
    hidden = total = 0
    for d in dataset_dicts:
        annos = d["annotations"]
        n_inst += len(annos)
        if not annos:
            continue
        boxes = np.asarray([a["bbox"] for a in annos], np.float64).reshape(-1, 4)
        sides.extend(np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).tolist())
        image_ious, image_overlap = _same_class_overlaps(boxes, [a["category_id"] for a in annos])
        max_ious.extend(image_ious)
        overlap += image_overlap
        if amodal_areas is not None:
            vis = mask_util.area([a["segmentation"] for a in annos])
            full = np.asarray(amodal_areas[d["image_id"]], np.float64)
            hidden += float(np.clip(full - vis, 0, None).sum())
            total += float(full.sum())
    n_img = len(dataset_dicts)
    stats = {
        "num_images": float(n_img),
        "num_instances": float(n_inst),
        "mean_instances_per_image": n_inst / max(n_img, 1),
        "frac_same_class_overlap": overlap / max(n_inst, 1),
        "mean_max_same_class_iou": float(np.mean(max_ious)) if max_ious else 0.0,
        "frac_same_class_iou_gt_0.3": sum(m > 0.3 for m in max_ious) / max(n_inst, 1),
        "min_box_side": float(np.min(sides)) if sides else 0.0,
        "median_box_side": float(np.median(sides)) if sides else 0.0,
        "max_box_side": float(np.max(sides)) if sides else 0.0,
    }
    if amodal_areas is not None:
        stats["occluded_pixel_fraction"] = hidden / max(total, 1.0)
    return stats


def _same_class_overlaps(boxes: np.ndarray, categories: Sequence[int]) -> Tuple[List[float], int]:
    """Same-class box overlap in one image.

    Args:
        boxes: (N, 4) float64 XYXY boxes of the image's instances.
        categories: N class ids.

    Returns:
        for each instance with a same-class partner, the largest box IoU with one (in instance
        order); and how many of them overlap a partner's box (IoU > 0: a positive-area
        intersection).
    """
    cats = np.asarray(categories)
    ious = box_iou(boxes, boxes)
    same = (cats[:, None] == cats[None]) & ~np.eye(len(cats), dtype=bool)
    max_ious: List[float] = []
    overlap = 0
    for i in range(len(cats)):
        if same[i].any():
            partner_ious = ious[i][same[i]]
            max_ious.append(float(partner_ious.max()))
            overlap += bool((partner_ious > 0).any())
    return max_ious, overlap


def log_difficulty_statistics(stats: Dict[str, float], name: str = "dataset") -> None:
    """Log the output of :func:`difficulty_statistics`, one line."""
    text = ", ".join(f"{k}={v:.3g}" for k, v in stats.items())
    logger.info(f"Difficulty of {name}: {text}")


# --------------------------------------------------------------------------- register


def register_synthetic(root: Optional[str] = None, prefix: str = "r2ios_synthetic") -> None:
    """Register the four synthetic splits at ``root`` (lazy; default :func:`synthetic_root`).

    Names: ``<prefix>_train`` / ``<prefix>_val`` (SBD tree) and ``<prefix>_voc_train`` /
    ``<prefix>_voc_val`` (VOC tree). All four share ``<root>/proposals/selective_search``
    as their default proposal folder, since the two trees hold the same images.

    Args:
        root: folder written by :func:`generate_synthetic_dataset`.
        prefix: dataset name prefix.
    """
    root = synthetic_root() if root is None else root

    def check() -> None:
        if _read_marker(root) is None:
            raise FileNotFoundError(
                f"The synthetic dataset is not at {root} (no {MARKER}). Generate it with:\n"
                f"  python -m r2ios_d2.data.synthetic --root {root}"
            )

    common = dict(
        thing_classes=SYNTHETIC_CLASSES,
        thing_colors=SYNTHETIC_COLORS,
        proposal_dir=os.path.join(root, "proposals", "selective_search"),
        before_load=check,
    )
    for split in ("train", "val"):
        register_sbd(f"{prefix}_{split}", os.path.join(root, "SBD"), f"{split}.txt", **common)
        register_voc_seg(f"{prefix}_voc_{split}", os.path.join(root, "VOC2012"), split, **common)


if __name__ != "__main__":  # under `python -m`, the package import has registered them
    register_synthetic()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: generate the synthetic dataset (or print the statistics of an existing one)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=synthetic_root(), help="output folder")
    parser.add_argument("--num-train", type=int, default=160)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, nargs=2, default=(144, 160), metavar=("H", "W"))
    parser.add_argument("--max-size", type=int, nargs=2, default=(192, 208), metavar=("H", "W"))
    parser.add_argument("--stats", action="store_true", help="print the statistics as JSON")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    content = generate_synthetic_dataset(
        a.root, a.num_train, a.num_val, a.seed, tuple(a.min_size), tuple(a.max_size)
    )
    if a.stats:
        print(json.dumps(content["stats"], indent=2))
    else:
        print(f"synthetic dataset at {a.root}: {a.num_train} train, {a.num_val} val images")


if __name__ == "__main__":
    main()
