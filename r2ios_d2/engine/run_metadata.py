"""What a trained model's outputs mean, saved beside its checkpoints.

A model predicts contiguous class indices 0..K-1; which category each is (its name, and the
dataset's own ``category_id`` for COCO-format data) lives in the training datasets' metadata,
which a later process (``tools/demo.py`` on your own images) does not have. The trainers write
it to ``<output_dir>/dataset_metadata.json`` (:func:`save_dataset_metadata`)::

    {"datasets": ["my_train"], "num_classes": 4, "thing_classes": ["cat", ...],
     "thing_dataset_id_to_contiguous_id": {"3": 0, "7": 1, ...}}

and :func:`load_dataset_metadata` reads it back (ids as ints). Before that,
:func:`check_num_classes` warns when the model has more classes than the datasets have
categories (the extra outputs never see a positive example).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Sequence

from detectron2.data import MetadataCatalog

from ..atomic import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "METADATA_FILE",
    "check_num_classes",
    "dataset_metadata",
    "load_dataset_metadata",
    "save_dataset_metadata",
]

METADATA_FILE = "dataset_metadata.json"


def dataset_metadata(dataset_names: Sequence[str], num_classes: int) -> Dict[str, Any]:
    """The class names and category-id mapping of the (already loaded) training datasets.

    Args:
        dataset_names: the training datasets (they share ``thing_classes``).
        num_classes: the model's number of classes.

    Returns:
        ``{"datasets", "num_classes", "thing_classes", "thing_dataset_id_to_contiguous_id"}``
        (the last two absent where the first dataset's metadata has none).
    """
    names = list(dataset_names)
    out: Dict[str, Any] = {"datasets": names, "num_classes": int(num_classes)}
    if not names:
        return out
    meta = MetadataCatalog.get(names[0])
    classes = meta.get("thing_classes", None)
    if classes is not None:
        out["thing_classes"] = [str(c) for c in classes]
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    if id_map is not None:
        out["thing_dataset_id_to_contiguous_id"] = {str(k): int(v) for k, v in id_map.items()}
    return out


def check_num_classes(dataset_names: Sequence[str], num_classes: int) -> None:
    """Warn, naming both numbers, when ``num_classes`` is larger than the number of categories
    of the (already loaded) training datasets; fewer is an error raised by the data loader."""
    classes = dataset_metadata(dataset_names, num_classes).get("thing_classes")
    if classes is not None and num_classes > len(classes):
        logger.warning(
            "The model has %d classes (MODEL.ROI_HEADS.NUM_CLASSES / model.roi_heads."
            "num_classes) but %s has %d categories: %d of its class outputs never see a "
            "positive example (set it to %d)",
            num_classes,
            ", ".join(dataset_names),
            len(classes),
            num_classes - len(classes),
            len(classes),
        )


def save_dataset_metadata(
    output_dir: str, dataset_names: Sequence[str], num_classes: int
) -> Optional[str]:
    """Write :func:`dataset_metadata` to ``<output_dir>/dataset_metadata.json``.

    Returns:
        the file written (None without an ``output_dir``).
    """
    if not output_dir:
        return None
    path = os.path.join(output_dir, METADATA_FILE)
    atomic_write_json(dataset_metadata(dataset_names, num_classes), path, indent=2)
    return path


def load_dataset_metadata(path: str) -> Dict[str, Any]:
    """A ``dataset_metadata.json`` as :func:`dataset_metadata` made it, category ids as ints.

    Raises:
        FileNotFoundError / ValueError: the file is missing or not such a file.
    """
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "num_classes" not in data:
        raise ValueError(f"{path} is not a {METADATA_FILE} written by r2ios_d2's trainers")
    id_map = data.get("thing_dataset_id_to_contiguous_id")
    if id_map is not None:
        data["thing_dataset_id_to_contiguous_id"] = {int(k): int(v) for k, v in id_map.items()}
    return data
