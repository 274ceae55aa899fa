"""Checks that a dataset's files are there and its annotations fit its json, made when the
dataset is loaded rather than hours into training inside a data-loader worker.

* :func:`check_image_files`: every image of a dataset exists (``os.path.isfile`` in a thread
  pool: fast on local disks, and on network file systems where each call waits), once per
  dataset and process;
* :func:`checked_coco_loader` / :func:`check_registered_coco_on_load`: wraps the loader of a
  registered COCO-format dataset so that an annotation whose ``category_id`` is not among the
  json's ``categories`` is an error naming the json, the annotation, its image, the bad id and
  the known ids, and checks its images.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

logger = logging.getLogger(__name__)

__all__ = [
    "check_image_files",
    "check_registered_coco_on_load",
    "checked_coco_loader",
    "coco_category_error",
]

# How many missing images an error message lists.
_MAX_LISTED = 3
# (dataset, number of images, first and last file) already checked in this process.
_CHECKED: Set[Tuple[str, int, str, str]] = set()


def _exist(paths: Sequence[str]) -> List[bool]:
    if len(paths) < 64:
        return [os.path.isfile(p) for p in paths]
    workers = min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(os.path.isfile, paths, chunksize=256))


def check_image_files(
    file_names: Sequence[str],
    dataset: str,
    image_ids: Optional[Sequence[Any]] = None,
    source: str = "",
) -> None:
    """Check that every image file exists; done once per dataset and process.

    Args:
        file_names: the images' paths (the dataset dicts' ``file_name``).
        dataset: the dataset's name, for the message and the once-only check.
        image_ids: the images' ids, parallel to ``file_names`` (for the message).
        source: the file that lists the images (a json or split file), for the message.

    Raises:
        FileNotFoundError: naming the dataset, ``source``, how many images are missing and the
            first few (image id and path).
    """
    names = list(file_names)
    key = (dataset, len(names), names[0] if names else "", names[-1] if names else "")
    if key in _CHECKED:
        return
    missing = [i for i, ok in enumerate(_exist(names)) if not ok]
    if missing:
        ids = list(image_ids) if image_ids is not None else [None] * len(names)
        listed = "; ".join(
            f"image {ids[i]!r}: {names[i]}" if ids[i] is not None else names[i]
            for i in missing[:_MAX_LISTED]
        )
        where = f" (listed in {source})" if source else ""
        raise FileNotFoundError(
            f"Dataset {dataset!r}{where}: {len(missing)} of {len(names)} image files do not "
            f"exist, e.g. {listed}"
        )
    _CHECKED.add(key)


def coco_category_error(json_file: str) -> Optional[ValueError]:
    """The error for the annotations of a COCO json whose ``category_id`` is not in its
    ``categories`` (None if there is none): it names the json, how many there are, the first
    few (annotation id, image id, category id) and the known ids."""
    with open(json_file) as f:
        data = json.load(f)
    known = sorted({c["id"] for c in data.get("categories", [])})
    known_set = set(known)
    bad = [a for a in data.get("annotations", []) if a.get("category_id") not in known_set]
    if not bad:
        return None
    listed = "; ".join(
        f"annotation {a.get('id')!r} of image {a.get('image_id')!r} has category_id "
        f"{a.get('category_id')!r}"
        for a in bad[:_MAX_LISTED]
    )
    return ValueError(
        f"{json_file}: {len(bad)} annotations have a category_id that is not in the json's "
        f"'categories' ({listed}); the known category ids are {known}. Add the category to "
        "'categories' or drop those annotations."
    )


def checked_coco_loader(
    name: str, json_file: str, load: Callable[[], List[Dict[str, Any]]]
) -> Callable[[], List[Dict[str, Any]]]:
    """``load`` (a registered COCO-format dataset's loader, e.g. detectron2's
    ``load_coco_json``) with its errors naming the annotation, and its images checked.

    Args:
        name: the dataset's name.
        json_file: its json (read again only to explain a ``KeyError``).
        load: the loader.

    Returns:
        a loader returning ``load()``'s dicts; it raises ``ValueError`` for an unknown
        ``category_id`` (:func:`coco_category_error`) and ``FileNotFoundError`` for missing
        images (:func:`check_image_files`).
    """

    def load_checked() -> List[Dict[str, Any]]:
        try:
            dicts = load()
        except KeyError as e:  # detectron2: "Encountered category_id=..."
            error = coco_category_error(json_file)
            if error is None:
                raise
            raise error from e
        check_image_files(
            [d["file_name"] for d in dicts], name, [d.get("image_id") for d in dicts], json_file
        )
        return dicts

    return load_checked


def check_registered_coco_on_load(name: str, json_file: str) -> None:
    """Replace the loader of the registered dataset ``name`` (COCO-format, ``json_file``) by
    :func:`checked_coco_loader` of it."""
    from detectron2.data import DatasetCatalog

    load = DatasetCatalog[name]  # the registered function (DatasetCatalog.get would call it)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, checked_coco_loader(name, json_file, load))
