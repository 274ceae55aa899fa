"""A subset of a COCO-format dataset's categories, renamed and in an order of your choice.

Training R2-IOS on COCO photographs in the paper's setting means the 20 PASCAL VOC classes, in
VOC's order and under VOC's names (:data:`VOC_CLASSES_FROM_COCO`). A subset is given as a
mapping ``{new name: name in the json}`` (its order is the contiguous class order) or a
sequence of json names kept as they are; :func:`parse_coco_categories` reads the command-line
form (``voc``, or ``"aeroplane=airplane,person,..."``).

:func:`write_category_subset` writes a derived COCO json: only the kept categories, renumbered
``1..K`` in the given order and renamed, only their annotations, and **every** image (an image
left without instances stays in the dataset, as detectron2 keeps images without annotations;
training drops it when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on, evaluation counts it).
Registering the derived json with detectron2's ``register_coco_instances`` makes everything
downstream (``thing_classes``, ``COCOEvaluator``'s ground truth, AP^r) see only the subset.
The derived file lives in the cache folder (:func:`r2ios_d2.user_cache.cache_dir`), named by
the source file's path, size and modification time and by the subset, so it is written once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from ..atomic import atomic_write_json
from ..user_cache import cache_dir

__all__ = [
    "COCO_CATEGORY_PRESETS",
    "CategorySpec",
    "VOC_CLASSES_FROM_COCO",
    "category_mapping",
    "format_coco_categories",
    "parse_coco_categories",
    "subset_json_path",
    "write_category_subset",
]

logger = logging.getLogger(__name__)

# The 20 PASCAL VOC classes in VOC's order and names -> their COCO category names.
VOC_CLASSES_FROM_COCO: Dict[str, str] = {
    "aeroplane": "airplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "diningtable": "dining table",
    "dog": "dog",
    "horse": "horse",
    "motorbike": "motorcycle",
    "person": "person",
    "pottedplant": "potted plant",
    "sheep": "sheep",
    "sofa": "couch",
    "train": "train",
    "tvmonitor": "tv",
}
# Named subsets for ``--coco-categories``.
COCO_CATEGORY_PRESETS: Dict[str, Dict[str, str]] = {"voc": VOC_CLASSES_FROM_COCO}

# A category subset: {new name: json name} (ordered) or json names kept as they are.
CategorySpec = Union[Mapping[str, str], Sequence[str]]


def category_mapping(categories: CategorySpec) -> Dict[str, str]:
    """``{new name: json name}`` of a subset given either way, checked.

    Raises:
        ValueError: empty, or a new name or a json name given twice.
    """
    if isinstance(categories, str):
        raise TypeError("give a mapping or a list of names (parse_coco_categories reads text)")
    if isinstance(categories, Mapping):
        mapping = {str(k): str(v) for k, v in categories.items()}
    else:
        names = [str(c) for c in categories]
        if len(set(names)) != len(names):
            raise ValueError(f"category subset names a category twice: {names}")
        mapping = {c: c for c in names}
    if not mapping:
        raise ValueError("the category subset is empty")
    sources = list(mapping.values())
    twice = sorted({s for s in sources if sources.count(s) > 1})
    if twice:
        raise ValueError(f"category subset maps several classes onto {twice}")
    return mapping


def parse_coco_categories(text: Optional[str]) -> Optional[Dict[str, str]]:
    """The ``--coco-categories`` value: None / ``""`` / ``"all"`` -> None (every category),
    a preset name (``"voc"``), or comma-separated ``NAME`` (kept as it is) or ``NEW=NAME``
    (json category NAME renamed NEW) entries, in the class order wanted.

    Raises:
        ValueError: an empty entry, or a name given twice.
    """
    if text is None or text.strip() in ("", "all"):
        return None
    if text.strip() in COCO_CATEGORY_PRESETS:
        return dict(COCO_CATEGORY_PRESETS[text.strip()])
    mapping: Dict[str, str] = {}
    for entry in text.split(","):
        new, _, source = entry.strip().partition("=")
        new, source = new.strip(), (source.strip() if _ else new.strip())
        if not new or not source:
            raise ValueError(f"--coco-categories: empty entry in {text!r}")
        if new in mapping:
            raise ValueError(f"--coco-categories: class {new!r} given twice in {text!r}")
        mapping[new] = source
    return category_mapping(mapping)


def format_coco_categories(mapping: Mapping[str, str]) -> str:
    """The ``--coco-categories`` text of a subset (a preset's name where it is one); the
    inverse of :func:`parse_coco_categories`."""
    for name, preset in COCO_CATEGORY_PRESETS.items():
        if list(preset.items()) == list(mapping.items()):
            return name
    return ",".join(new if new == src else f"{new}={src}" for new, src in mapping.items())


def subset_json_path(json_file: Union[str, Path], categories: CategorySpec) -> Path:
    """Where :func:`write_category_subset` puts the derived json of ``json_file``: under
    ``cache_dir("coco_subsets")``, named by the source's path, size and mtime and the subset
    (so a changed source or subset gets a new file)."""
    mapping = category_mapping(categories)
    src = Path(json_file).resolve()
    st = src.stat()
    key = json.dumps([str(src), st.st_size, st.st_mtime_ns, list(mapping.items())])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir("coco_subsets") / f"{src.stem}-{digest}.json"


def _subset(data: dict, mapping: Dict[str, str], json_file: str) -> dict:
    """The derived COCO dict: kept categories renumbered 1..K in ``mapping``'s order."""
    by_name: Dict[str, List[dict]] = {}
    for c in data.get("categories", []):
        by_name.setdefault(c["name"], []).append(c)
    missing = [s for s in mapping.values() if s not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none"
        raise ValueError(f"{json_file} has no categories named {missing} (its categories: {known})")
    ambiguous = [s for s in mapping.values() if len(by_name[s]) > 1]
    if ambiguous:
        raise ValueError(f"{json_file} defines the categories {ambiguous} more than once")
    new_id = {by_name[s][0]["id"]: i + 1 for i, s in enumerate(mapping.values())}
    categories = []
    for i, (new, source) in enumerate(mapping.items()):
        cat = dict(by_name[source][0])
        cat.update(id=i + 1, name=new)
        categories.append(cat)
    annotations = []
    for ann in data.get("annotations", []):
        if ann.get("category_id") in new_id:
            annotations.append({**ann, "category_id": new_id[ann["category_id"]]})
    out = {k: v for k, v in data.items() if k not in ("categories", "annotations")}
    out.update(categories=categories, annotations=annotations)
    return out


def write_category_subset(
    json_file: Union[str, Path], categories: CategorySpec, out: Optional[Union[str, Path]] = None
) -> Path:
    """Write the derived COCO json of a category subset (once; see the module docstring).

    Args:
        json_file: the COCO instances json.
        categories: ``{new name: json name}`` in class order, or json names kept as they are.
        out: the derived file (default: :func:`subset_json_path`); an existing one is reused.

    Returns:
        the derived json's path.

    Raises:
        FileNotFoundError: ``json_file`` does not exist.
        ValueError: a json name of the subset is not among the file's categories (the message
            lists them) or is defined twice.
    """
    mapping = category_mapping(categories)
    json_file = os.fspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"the annotation file {json_file} does not exist")
    out = Path(out) if out is not None else subset_json_path(json_file, mapping)
    if out.is_file():
        return out
    with open(json_file) as f:
        data = json.load(f)
    derived = _subset(data, mapping, json_file)
    atomic_write_json(derived, str(out), sanitize=False)
    logger.info(
        "Category subset of %s: %d classes, %d of %d annotations -> %s",
        json_file,
        len(mapping),
        len(derived["annotations"]),
        len(data.get("annotations", [])),
        out,
    )
    return out
