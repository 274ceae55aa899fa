"""A synthetic instance segmentation dataset written in the real SBD and VOC2012 formats.

Real VOC/SBD data and ImageNet weights cannot be downloaded everywhere, so the demo, tests and
benchmarks use this dataset. It is written twice, as the public releases are laid out, and read
back through exactly the real loaders of :mod:`r2ios_d2.data.voc_sbd`::

    <root>/SBD/img/<id>.jpg  inst/<id>.mat  cls/<id>.mat  train.txt  val.txt
    <root>/VOC2012/JPEGImages/<id>.jpg  SegmentationObject/<id>.png  SegmentationClass/<id>.png
    <root>/VOC2012/ImageSets/Segmentation/{train,val}.txt
    <root>/r2ios_synthetic.json        marker: generation args (+ spec) + difficulty statistics
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

Held-out variants. What the images hold is a :class:`SyntheticSpec` (classes with their shape
families, textures and colours, a shared palette, object density, cluster overlap, object and
image sizes, occluders; see :mod:`r2ios_d2.data.synthetic_render`); the default spec is the
dataset above, byte for byte. :data:`HELDOUT_VARIANTS` (:mod:`r2ios_d2.data.synthetic_variants`,
with their difficulty statistics) are other specs with their own seeds, to check a recipe tuned
on the demo's val split on other distributions. A variant ``NAME`` is registered as
``r2ios_heldout_<NAME>_train`` / ``_val`` (SBD tree; ``_voc_train`` / ``_voc_val`` as above)
with its own class names, at ``$DETECTRON2_DATASETS/r2ios_heldout_<NAME>``; the marker records
its spec, so a changed spec is written again. Generate one (with its proposals) with::

    python -m r2ios_d2.data.synthetic --variant texture4 --proposals
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..utils import box_iou
from .datasets import datasets_root, register_sbd, register_voc_seg
from .synthetic_render import (
    DEFAULT_SPEC,
    SYNTHETIC_CLASSES,
    SYNTHETIC_COLORS,
    ClassSpec,
    SyntheticSpec,
    render_image,
)
from .synthetic_variants import HELDOUT_VARIANTS, HeldoutVariant
from .synthetic_writers import make_layout, write_image, write_split_files
from .voc_sbd import masks_to_annotations

logger = logging.getLogger(__name__)

# The synthetic dataset's public names (rendering and the format writers are in
# synthetic_render.py and synthetic_writers.py).
__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "DEFAULT_SPEC",
    "ClassSpec",
    "SyntheticSpec",
    "HeldoutVariant",
    "HELDOUT_VARIANTS",
    "generate_synthetic_dataset",
    "render_image",
    "difficulty_statistics",
    "log_difficulty_statistics",
    "register_synthetic",
    "register_heldout_variant",
    "prepare_synthetic_benchmark",
    "prepare_heldout_variant",
    "synthetic_root",
    "heldout_root",
    "heldout_variant",
    "heldout_dataset_opts",
]

MARKER = "r2ios_synthetic.json"
_VERSION = 1


def synthetic_root() -> str:
    """Default root of the synthetic dataset: ``$DETECTRON2_DATASETS/r2ios_synthetic``."""
    return os.path.join(datasets_root(), "r2ios_synthetic")


def heldout_variant(name: str) -> HeldoutVariant:
    """The held-out variant ``name`` of :data:`HELDOUT_VARIANTS` (``KeyError`` naming the
    known ones otherwise)."""
    if name not in HELDOUT_VARIANTS:
        raise KeyError(f"unknown held-out variant {name!r}; known: {sorted(HELDOUT_VARIANTS)}")
    return HELDOUT_VARIANTS[name]


def heldout_root(name: str) -> str:
    """Default root of a held-out variant: ``$DETECTRON2_DATASETS/r2ios_heldout_<name>``."""
    return os.path.join(datasets_root(), f"r2ios_heldout_{name}")


def heldout_dataset_opts(name: str, test: bool = True) -> List[str]:
    """The config overrides that train and evaluate on the held-out variant ``name``:
    ``DATASETS.TRAIN`` / ``DATASETS.TEST`` (its registered splits; without ``test`` no test
    set) and ``MODEL.ROI_HEADS.NUM_CLASSES``, as ``KEY value`` strings for a command line."""
    v = heldout_variant(name)
    test_sets = f'("r2ios_heldout_{name}_val",)' if test else "()"
    return [
        "DATASETS.TRAIN",
        f'("r2ios_heldout_{name}_train",)',
        "DATASETS.TEST",
        test_sets,
        "MODEL.ROI_HEADS.NUM_CLASSES",
        str(len(v.spec.classes)),
    ]


def _compute_split_proposals(prefix: str, workers: Optional[int]) -> None:
    """Selective search for the registered ``<prefix>_train`` / ``_val`` splits, into their
    ``proposal_dir`` (resumable: finished images are skipped)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .selective_search import compute_proposals

    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        items = [
            (str(d["image_id"]), d["file_name"], d["height"], d["width"])
            for d in DatasetCatalog.get(name)
        ]
        stats = compute_proposals(
            items, MetadataCatalog.get(name).proposal_dir, workers=workers or os.cpu_count() or 1
        )
        logger.info("selective search for %s: %s", name, stats)


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
    root = synthetic_root()
    generate_synthetic_dataset(root, num_train=num_train, num_val=num_val, seed=seed)
    _compute_split_proposals("r2ios_synthetic", workers)
    return root


def prepare_heldout_variant(
    name: str, workers: Optional[int] = None, root: Optional[str] = None
) -> str:
    """A held-out variant ready to train on: written at ``root`` (default
    :func:`heldout_root`) if missing, registered as ``r2ios_heldout_<name>_train`` / ``_val``
    and with selective-search proposals in their ``proposal_dir`` (resumable).

    Args:
        name: a key of :data:`HELDOUT_VARIANTS`.
        workers: selective-search processes (default: all cores).
        root: dataset folder. ``tools/train_net.py`` finds only the default one (its
            registration happens at import).

    Returns:
        the dataset root.
    """
    v = heldout_variant(name)
    root = heldout_root(name) if root is None else root
    generate_synthetic_dataset(root, v.num_train, v.num_val, v.seed, spec=v.spec)
    register_heldout_variant(name, root)  # at this root, whatever it was at import
    _compute_split_proposals(f"r2ios_heldout_{name}", workers)
    return root


# ------------------------------------------------------------------------------ writing


def _split_records(
    out: str, split: str, num: int, seed: int, spec: SyntheticSpec
) -> List[Dict[str, Any]]:
    """Render and write the ``num`` images of ``split``; their dataset dicts (plus
    ``amodal_areas``), without ``file_name``."""
    split_code = {"train": 0, "val": 1}[split]
    (hmin, wmin), (hmax, wmax) = spec.min_size, spec.max_size
    records = []
    for i in range(num):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_code, i]))
        h, w = int(rng.integers(hmin, hmax + 1)), int(rng.integers(wmin, wmax + 1))
        image, inst_map, classes, amodal = render_image(rng, h, w, spec)
        image_id = f"{split}_{i:06d}"
        write_image(out, image_id, image, inst_map, classes, len(spec.classes))
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


def _spec_record(spec: SyntheticSpec) -> Optional[Dict[str, Any]]:
    """What the marker records of ``spec``: nothing for the default content (image sizes are
    in the marker's ``args``), so that the default dataset's marker is as it always was."""
    sizes = dict(min_size=DEFAULT_SPEC.min_size, max_size=DEFAULT_SPEC.max_size)
    if dataclasses.replace(spec, **sizes) == DEFAULT_SPEC:
        return None
    return spec.to_dict()


def generate_synthetic_dataset(
    root: Optional[str] = None,
    num_train: int = 160,
    num_val: int = 60,
    seed: int = 0,
    min_size: Optional[Tuple[int, int]] = None,
    max_size: Optional[Tuple[int, int]] = None,
    spec: Optional[SyntheticSpec] = None,
) -> Dict[str, Any]:
    """Write the synthetic dataset to ``root`` unless an identical one is already there.

    The dataset is written to a temporary folder beside ``root`` and renamed into place, with
    the marker file (the generation args, the spec and statistics) written last; a folder with
    a marker for other args or another spec is replaced, a non-empty folder without a marker is
    an error.

    Args:
        root: output folder (default :func:`synthetic_root`).
        num_train, num_val: number of images of each split.
        seed: random seed; the files are a deterministic function of all args.
        min_size, max_size: (height, width) range of the images (default: the spec's,
            144-192 x 160-208 for the default spec).
        spec: what the images hold (default :data:`DEFAULT_SPEC`, the demo's dataset;
            :data:`HELDOUT_VARIANTS` holds others).

    Returns:
        the marker's content: ``{"version", "args", "classes", "stats": {split: stats}}`` and,
        for a spec other than the default, ``"spec"`` (:meth:`SyntheticSpec.to_dict`).
    """
    root = synthetic_root() if root is None else root
    spec = DEFAULT_SPEC if spec is None else spec
    sizes = {
        k: tuple(int(x) for x in v)
        for k, v in (("min_size", min_size), ("max_size", max_size))
        if v is not None
    }
    spec = dataclasses.replace(spec, **sizes)
    args = {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "min_size": list(spec.min_size),
        "max_size": list(spec.max_size),
    }
    spec_record = _spec_record(spec)
    marker = _read_marker(root)
    if (
        marker is not None
        and marker.get("args") == args
        and marker.get("version") == _VERSION
        and marker.get("spec") == spec_record
    ):
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
        content = _write_dataset(tmp, root, args, spec)
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split in ("train", "val"):
        log_difficulty_statistics(content["stats"][split], f"synthetic {split}")
    return content


@contextlib.contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    """OpenCV without its thread pool inside the block, as it was set after.

    A process forked after OpenCV's pool has run (the selective-search workers that follow
    the writing) can deadlock in its first OpenCV call; a pool never started cannot. The
    images do not depend on the number of threads.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _write_dataset(
    tmp: str, root: str, args: Dict[str, Any], spec: SyntheticSpec
) -> Dict[str, Any]:
    """Write both splits and, last, the marker into the empty folder ``tmp`` (``root`` is only
    named in the log); the marker's content."""
    make_layout(tmp)
    stats = {}
    for split, num in (("train", args["num_train"]), ("val", args["num_val"])):
        logger.info(f"Writing {num} synthetic {split} images to {root}")
        with _opencv_single_threaded():
            records = _split_records(tmp, split, num, args["seed"], spec)
        stats[split] = difficulty_statistics(
            records, amodal_areas={r["image_id"]: r["amodal_areas"] for r in records}
        )
    content = {"version": _VERSION, "args": args}
    spec_record = _spec_record(spec)
    if spec_record is not None:  # the default dataset's marker stays as it always was
        content["spec"] = spec_record
    content.update(classes=list(spec.class_names), stats=stats)
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


def _unregister(name: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.keys():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.keys():
        MetadataCatalog.remove(name)


def register_synthetic(
    root: Optional[str] = None,
    prefix: str = "r2ios_synthetic",
    spec: Optional[SyntheticSpec] = None,
    generate_command: Optional[str] = None,
) -> None:
    """Register the four synthetic splits at ``root`` (lazy; default :func:`synthetic_root`).

    Names: ``<prefix>_train`` / ``<prefix>_val`` (SBD tree) and ``<prefix>_voc_train`` /
    ``<prefix>_voc_val`` (VOC tree). All four share ``<root>/proposals/selective_search``
    as their default proposal folder, since the two trees hold the same images. A name
    registered before is replaced.

    Args:
        root: folder written by :func:`generate_synthetic_dataset`.
        prefix: dataset name prefix.
        spec: the spec the dataset was written with (default :data:`DEFAULT_SPEC`): its class
            names and colours are the metadata's ``thing_classes`` / ``thing_colors``; loading
            checks that the marker names the same classes.
        generate_command: the command that writes the dataset, shown when it is missing.
    """
    root = synthetic_root() if root is None else root
    spec = DEFAULT_SPEC if spec is None else spec
    command = generate_command or f"python -m r2ios_d2.data.synthetic --root {root}"
    classes = list(spec.class_names)

    def check() -> None:
        marker = _read_marker(root)
        if marker is None:
            raise FileNotFoundError(
                f"The synthetic dataset is not at {root} (no {MARKER}). Generate it with:\n"
                f"  {command}"
            )
        if marker.get("classes") != classes:
            raise ValueError(
                f"The synthetic dataset at {root} has the classes {marker.get('classes')}, "
                f"registered as {prefix}_* with {classes}. Regenerate it with:\n  {command}"
            )

    common = dict(
        thing_classes=classes,
        thing_colors=spec.class_colors,
        proposal_dir=os.path.join(root, "proposals", "selective_search"),
        before_load=check,
    )
    for split in ("train", "val"):
        for name in (f"{prefix}_{split}", f"{prefix}_voc_{split}"):
            _unregister(name)
        register_sbd(f"{prefix}_{split}", os.path.join(root, "SBD"), f"{split}.txt", **common)
        register_voc_seg(f"{prefix}_voc_{split}", os.path.join(root, "VOC2012"), split, **common)


def register_heldout_variant(name: str, root: Optional[str] = None) -> None:
    """Register a held-out variant as ``r2ios_heldout_<name>_train`` / ``_val`` (SBD tree; and
    ``_voc_train`` / ``_voc_val``) with its own class names, lazily.

    Args:
        name: a key of :data:`HELDOUT_VARIANTS`.
        root: its folder (default :func:`heldout_root`); proposals are read from
            ``<root>/proposals/selective_search``.
    """
    v = heldout_variant(name)
    root = heldout_root(name) if root is None else root
    command = f"python -m r2ios_d2.data.synthetic --variant {name} --root {root}"
    register_synthetic(root, f"r2ios_heldout_{name}", spec=v.spec, generate_command=command)


if __name__ != "__main__":  # under `python -m`, the package import has registered them
    register_synthetic()
    for _name in HELDOUT_VARIANTS:
        register_heldout_variant(_name)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's options; ``--variant`` sets the defaults of the others to the variant's."""
    variants = "\n".join(
        f"  {k}: {v.description} (seed {v.seed})" for k, v in HELDOUT_VARIANTS.items()
    )
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"held-out variants (--variant):\n{variants}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--variant",
        choices=sorted(HELDOUT_VARIANTS),
        help="write a held-out variant instead of the demo's dataset (default root "
        f"{heldout_root('NAME')})",
    )
    parser.add_argument("--root", help=f"output folder (default: {synthetic_root()})")
    parser.add_argument("--num-train", type=int, help="default: 160, a variant's own")
    parser.add_argument("--num-val", type=int, help="default: 60, a variant's own")
    parser.add_argument("--seed", type=int, help="default: 0, a variant's own")
    for flag, (h, w) in (
        ("--min-size", DEFAULT_SPEC.min_size),
        ("--max-size", DEFAULT_SPEC.max_size),
    ):
        parser.add_argument(
            flag, type=int, nargs=2, metavar=("H", "W"), help=f"default: {h} {w}, a variant's own"
        )
    parser.add_argument("--stats", action="store_true", help="print the statistics as JSON")
    parser.add_argument(
        "--proposals",
        action="store_true",
        help="also compute the selective-search proposals of both splits",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: generate the synthetic dataset or a held-out variant (or print the statistics of
    an existing one)."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.variant:
        v = heldout_variant(a.variant)
        spec, counts, root = v.spec, (v.num_train, v.num_val, v.seed), heldout_root(a.variant)
    else:
        spec, counts, root = DEFAULT_SPEC, (160, 60, 0), synthetic_root()
    root = a.root or root
    given = (a.num_train, a.num_val, a.seed)
    num_train, num_val, seed = (x if x is not None else d for x, d in zip(given, counts))
    sizes = [tuple(x) if x else None for x in (a.min_size, a.max_size)]
    content = generate_synthetic_dataset(root, num_train, num_val, seed, *sizes, spec=spec)
    if a.proposals:
        if a.variant:
            register_heldout_variant(a.variant, root)
        else:
            register_synthetic(root)
        _compute_split_proposals(
            f"r2ios_heldout_{a.variant}" if a.variant else "r2ios_synthetic", None
        )
    if a.stats:
        print(json.dumps(content["stats"], indent=2))
    else:
        name = f"held-out variant {a.variant}" if a.variant else "synthetic dataset"
        print(f"{name} at {root}: {num_train} train, {num_val} val images")


if __name__ == "__main__":
    main()
