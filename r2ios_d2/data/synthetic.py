"""A synthetic instance segmentation dataset written in the real SBD and VOC2012 formats.

Real VOC/SBD data and ImageNet weights cannot be downloaded everywhere, so the demo, tests and
benchmarks use this dataset. It is written twice, as the public releases are laid out, and read
back through exactly the real loaders of :mod:`r2ios_d2.data.datasets`::

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
import io
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from .datasets import (
    datasets_root,
    masks_to_annotations,
    register_sbd,
    register_voc_seg,
    voc_palette,
)

logger = logging.getLogger(__name__)

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

SYNTHETIC_CLASSES: Tuple[str, ...] = ("disc", "tile", "leaf", "star", "ring")
SYNTHETIC_COLORS: List[Tuple[int, int, int]] = [
    (230, 80, 40),
    (40, 90, 220),
    (40, 170, 60),
    (240, 210, 30),
    (160, 60, 200),
]
MARKER = "r2ios_synthetic.json"
_VERSION = 1
# An instance must keep this much of itself visible, else it is not drawn.
_MIN_VISIBLE_FRAC = 0.3
_MIN_VISIBLE_PIXELS = 40


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


# ------------------------------------------------------------------------------ drawing


def _jitter_color(rng: np.random.Generator, base: Sequence[int], amount: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered background (float32 HxWx3 RGB): gradient, blotches, noise, distractors."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    angle = rng.uniform(0, np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / (h + w)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    # Low-frequency blotches.
    small = rng.normal(0, 25, (max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, (h, w, 3))
    canvas = np.ascontiguousarray(img.astype(np.float32))
    # Distractors: not objects. Greyish blobs, lines and textured polygons.
    for _ in range(int(rng.integers(2, 7))):
        kind = rng.integers(0, 3)
        grey = rng.uniform(50, 210)
        color = tuple(float(v) for v in np.clip(grey + rng.normal(0, 20, 3), 0, 255))
        if kind == 0:  # blob
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(3, 12)), int(rng.integers(3, 12)))
            cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        elif kind == 1:  # line
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(canvas, p0, p1, color, int(rng.integers(1, 3)))
        else:  # textured irregular patch
            pts = _random_polygon(rng, w, h, radius=rng.uniform(8, 22), n=int(rng.integers(5, 9)))
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [pts], 1)
            noise = rng.normal(0, 30, (h, w, 1)).astype(np.float32)
            tex = np.asarray(color, np.float32)[None, None] + noise
            canvas[mask.astype(bool)] = tex[mask.astype(bool)]
    return canvas


def _random_polygon(rng: np.random.Generator, w: int, h: int, radius: float, n: int) -> np.ndarray:
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def _shape_mask(
    cls: int, h: int, w: int, cx: float, cy: float, size: float, angle: float, aspect: float
) -> np.ndarray:
    """Full (amodal) boolean mask of one object of class ``cls``."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    center = (int(round(cx)), int(round(cy)))
    deg = float(np.degrees(angle))
    if cls == 0:  # disc: ellipse
        cv2.ellipse(mask, center, (max(2, int(r)), max(2, int(r * aspect))), deg, 0, 360, 1, -1)
    elif cls == 1:  # tile: rotated rectangle
        box = cv2.boxPoints(((cx, cy), (size, size * aspect), deg))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif cls == 2:  # leaf: kite
        a = np.array([0, np.pi / 2, np.pi, 3 * np.pi / 2]) + angle
        rr = np.array([r, r * 0.45 * aspect, r * 0.8, r * 0.45 * aspect])
        pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif cls == 3:  # star: five points
        a = angle + np.arange(10) * np.pi / 5
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:  # ring: annulus
        outer = (max(3, int(r)), max(3, int(r * aspect)))
        inner = (max(1, int(outer[0] * 0.5)), max(1, int(outer[1] * 0.5)))
        cv2.ellipse(mask, center, outer, deg, 0, 360, 1, -1)
        cv2.ellipse(mask, center, inner, deg, 0, 360, 0, -1)
    return mask.astype(bool)


def _texture(
    rng: np.random.Generator, cls: int, h: int, w: int, cx: float, cy: float, size: float
) -> np.ndarray:
    """Appearance of one object of class ``cls`` over the whole image (float32 HxWx3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = _jitter_color(rng, SYNTHETIC_COLORS[cls], 18)
    if cls == 0:  # radial shading
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(size / 2, 1)
        tex = base[None, None] * (1.05 - 0.45 * np.clip(d, 0, 1))[..., None]
    elif cls == 1:  # stripes of two colours
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(3, 7)
        s = ((xx * np.cos(theta) + yy * np.sin(theta)) / period) % 2 < 1
        other = _jitter_color(rng, (225, 225, 235), 15)
        tex = np.where(s[..., None], base[None, None], other[None, None])
    elif cls == 2:  # checker of the colour and a darker shade
        p = int(rng.integers(3, 6))
        s = ((xx // p + yy // p) % 2).astype(bool)
        tex = np.where(s[..., None], base[None, None], 0.55 * base[None, None])
    else:  # star, ring: flat
        tex = np.broadcast_to(base[None, None], (h, w, 3))
    tex = tex + rng.normal(0, 8, (h, w, 1))
    return tex.astype(np.float32)


def _visible(masks: List[np.ndarray], h: int, w: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    label = np.zeros((h, w), np.int32)
    for k, m in enumerate(masks):
        label[m] = k + 1
    return label, [label == k + 1 for k in range(len(masks))]


def _place_objects(rng: np.random.Generator, h: int, w: int) -> List[Dict[str, Any]]:
    """Object parameters in painting (depth) order: groups of same-class objects + singles."""
    objs = []
    side = min(h, w)
    num_groups = int(rng.integers(1, 4))
    for _ in range(num_groups):
        cls = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        size = float(np.exp(rng.uniform(np.log(0.12 * side), np.log(0.5 * side))))
        cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
        for _ in range(n):
            s = size * rng.uniform(0.8, 1.2)
            objs.append(dict(cls=cls, cx=cx, cy=cy, size=s))
            step = s * rng.uniform(0.3, 0.7)
            a = rng.uniform(0, 2 * np.pi)
            cx = float(np.clip(cx + step * np.cos(a), 0, w - 1))
            cy = float(np.clip(cy + step * np.sin(a), 0, h - 1))
    for _ in range(int(rng.integers(0, 3))):
        size = float(np.exp(rng.uniform(np.log(0.12 * side), np.log(0.5 * side))))
        objs.append(
            dict(
                cls=int(rng.integers(0, len(SYNTHETIC_CLASSES))),
                cx=rng.uniform(0, w),
                cy=rng.uniform(0, h),
                size=size,
            )
        )
    order = rng.permutation(len(objs))
    objs = [objs[i] for i in order]
    for o in objs:
        o["angle"] = float(rng.uniform(0, 2 * np.pi))
        o["aspect"] = float(rng.uniform(0.6, 1.0))
    return objs


def render_image(
    rng: np.random.Generator, h: int, w: int
) -> Tuple[np.ndarray, np.ndarray, List[int], List[int]]:
    """Render one synthetic image.

    Args:
        rng: random generator (the image is a deterministic function of its state).
        h, w: image size.

    Returns:
        image: uint8 (h, w, 3) RGB.
        inst_map: uint8 (h, w); 0 background, k = instance k (1-based, depth order).
        classes: class id (0-based) of each instance.
        amodal_areas: pixel count of each instance's full shape (before occlusion).
    """
    canvas = _background(rng, h, w)
    objs = _place_objects(rng, h, w)
    masks = [
        _shape_mask(o["cls"], h, w, o["cx"], o["cy"], o["size"], o["angle"], o["aspect"])
        for o in objs
    ]
    keep = [i for i, m in enumerate(masks) if m.sum() >= _MIN_VISIBLE_PIXELS]
    # Drop the most occluded object until every drawn one is visible enough.
    while keep:
        _, vis = _visible([masks[i] for i in keep], h, w)
        fracs = [v.sum() / max(masks[i].sum(), 1) for v, i in zip(vis, keep)]
        ok = [f >= _MIN_VISIBLE_FRAC and v.sum() >= _MIN_VISIBLE_PIXELS for f, v in zip(fracs, vis)]
        if all(ok):
            break
        keep.pop(int(np.argmin(fracs)))
    label, vis = _visible([masks[i] for i in keep], h, w)
    for k, i in enumerate(keep):
        o = objs[i]
        tex = _texture(rng, o["cls"], h, w, o["cx"], o["cy"], o["size"])
        canvas[vis[k]] = tex[vis[k]]
    # Foreground occluders that cut objects into pieces.
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        pole = np.zeros((h, w), np.uint8)
        p0 = (int(rng.integers(0, w)), 0)
        p1 = (int(rng.integers(0, w)), h - 1)
        if rng.random() < 0.5:
            p0, p1 = (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h)))
        cv2.line(pole, p0, p1, 1, int(rng.integers(3, 7)))
        pole = pole.astype(bool)
        after = [v & ~pole for v in vis]
        if all(
            a.sum() >= _MIN_VISIBLE_PIXELS and a.sum() >= _MIN_VISIBLE_FRAC * masks[i].sum()
            for a, i in zip(after, keep)
        ):
            color = _jitter_color(rng, (110, 90, 70), 25)
            canvas[pole] = color + rng.normal(0, 6, (int(pole.sum()), 3))
            label[pole] = 0
            vis = after
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    classes = [objs[i]["cls"] for i in keep]
    amodal = [int(masks[i].sum()) for i in keep]
    return image, label.astype(np.uint8), classes, amodal


def _void_band(inst_map: np.ndarray) -> np.ndarray:
    """Pixels next to a label change (8-neighbourhood): VOC's void band, 2 px wide."""
    m = inst_map.astype(np.int16)
    pad = np.pad(m, 1, mode="edge")
    h, w = m.shape
    band = np.zeros_like(m, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            band |= pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != m
    # Never void an instance completely.
    for k in np.unique(m):
        if k and not (m == k)[~band].any():
            band[m == k] = False
    return band


def _boundaries(masks: List[np.ndarray]) -> np.ndarray:
    cells = np.empty((len(masks), 1), dtype=object)
    kernel = np.ones((3, 3), np.uint8)
    for k, m in enumerate(masks):
        inner = cv2.erode(m.astype(np.uint8), kernel, borderValue=0).astype(bool)
        cells[k, 0] = scipy.sparse.csc_matrix(m & ~inner)
    return cells


# ------------------------------------------------------------------------------ writing


def _savemat(path: str, content: Dict[str, Any]) -> None:
    """``scipy.io.savemat`` (MATLAB 5 format, compressed) with a fixed header text.

    The 116-byte descriptive header normally holds the creation time, which would make two
    runs with the same seed write different bytes.
    """
    buf = io.BytesIO()
    scipy.io.savemat(buf, content, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by r2ios_d2.data.synthetic".ljust(116)
    with open(path, "wb") as f:
        f.write(bytes(data))


def _write_image(
    out: str, image_id: str, image: np.ndarray, inst_map: np.ndarray, classes: List[int]
) -> None:
    palette = voc_palette(256).reshape(-1).tolist()
    sbd, voc = os.path.join(out, "SBD"), os.path.join(out, "VOC2012")
    jpg = os.path.join(sbd, "img", f"{image_id}.jpg")
    Image.fromarray(image).save(jpg, quality=90)
    shutil.copyfile(jpg, os.path.join(voc, "JPEGImages", f"{image_id}.jpg"))
    n = len(classes)
    cls_map = np.zeros_like(inst_map)
    for k, c in enumerate(classes):
        cls_map[inst_map == k + 1] = c + 1
    inst_masks = [inst_map == k + 1 for k in range(n)]
    present = sorted({c + 1 for c in classes})
    _savemat(
        os.path.join(sbd, "inst", f"{image_id}.mat"),
        {
            "GTinst": {
                "Segmentation": inst_map,
                "Boundaries": _boundaries(inst_masks),
                "Categories": np.asarray([c + 1 for c in classes], np.uint8).reshape(-1, 1),
            }
        },
    )
    _savemat(
        os.path.join(sbd, "cls", f"{image_id}.mat"),
        {
            "GTcls": {
                "Segmentation": cls_map,
                "Boundaries": _boundaries(
                    [cls_map == c + 1 for c in range(len(SYNTHETIC_CLASSES))]
                ),
                "CategoriesPresent": np.asarray(present, np.uint8).reshape(-1, 1),
            }
        },
    )
    void = _void_band(inst_map)
    for sub, arr in (("SegmentationObject", inst_map), ("SegmentationClass", cls_map)):
        png = Image.fromarray(np.where(void, 255, arr).astype(np.uint8), mode="P")
        png.putpalette(palette)
        png.save(os.path.join(voc, sub, f"{image_id}.png"))


def _split_records(
    out: str, split: str, num: int, seed: int, sizes: Tuple[int, int, int, int]
) -> List[Dict[str, Any]]:
    split_code = {"train": 0, "val": 1}[split]
    hmin, hmax, wmin, wmax = sizes
    records = []
    for i in range(num):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_code, i]))
        h, w = int(rng.integers(hmin, hmax + 1)), int(rng.integers(wmin, wmax + 1))
        image, inst_map, classes, amodal = render_image(rng, h, w)
        image_id = f"{split}_{i:06d}"
        _write_image(out, image_id, image, inst_map, classes)
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
    with open(os.path.join(out, "SBD", f"{split}.txt"), "w") as f:
        f.write("".join(f"{r['image_id']}\n" for r in records))
    with open(os.path.join(out, "VOC2012", "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("".join(f"{r['image_id']}\n" for r in records))
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
        for sub in ("SBD/img", "SBD/inst", "SBD/cls", "VOC2012/JPEGImages"):
            os.makedirs(os.path.join(tmp, sub))
        for sub in ("SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
            os.makedirs(os.path.join(tmp, "VOC2012", sub))
        sizes = (min_size[0], max_size[0], min_size[1], max_size[1])
        stats = {}
        for split, num in (("train", num_train), ("val", num_val)):
            logger.info(f"Writing {num} synthetic {split} images to {root}")
            records = _split_records(tmp, split, num, seed, sizes)
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
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split in ("train", "val"):
        log_difficulty_statistics(stats[split], f"synthetic {split}")
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


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


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

    n_inst = overlap = partnered = iou_gt = 0
    max_ious: List[float] = []
    sides: List[float] = []
    hidden = total = 0
    for d in dataset_dicts:
        annos = d["annotations"]
        n_inst += len(annos)
        if not annos:
            continue
        boxes = np.asarray([a["bbox"] for a in annos], np.float64).reshape(-1, 4)
        cats = np.asarray([a["category_id"] for a in annos])
        sides.extend(np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).tolist())
        ious = _box_iou(boxes, boxes)
        lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
        rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        intersects = np.all(rb > lt, axis=2)
        same = (cats[:, None] == cats[None]) & ~np.eye(len(annos), dtype=bool)
        for i in range(len(annos)):
            if same[i].any():
                partnered += 1
                m = float(ious[i][same[i]].max())
                max_ious.append(m)
                iou_gt += m > 0.3
                overlap += bool((intersects[i] & same[i]).any())
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
        "frac_same_class_iou_gt_0.3": iou_gt / max(n_inst, 1),
        "min_box_side": float(np.min(sides)) if sides else 0.0,
        "median_box_side": float(np.median(sides)) if sides else 0.0,
        "max_box_side": float(np.max(sides)) if sides else 0.0,
    }
    if amodal_areas is not None:
        stats["occluded_pixel_fraction"] = hidden / max(total, 1.0)
    return stats


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
