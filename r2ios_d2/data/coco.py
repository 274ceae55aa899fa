"""Your own data in COCO format, and the checks that a training set has what R2-IOS needs.

A COCO-format dataset is a json file (``images``, ``annotations`` with ``segmentation`` as
polygons or RLE, ``categories``) and a folder of images. Register it with
:func:`register_coco_for_r2ios` (or ``--register-coco NAME JSON IMAGE_ROOT`` on the command line
of the tools): it calls detectron2's ``register_coco_instances`` and adds the metadata R2-IOS
uses,

* ``proposal_dir``: the folder of its per-image proposal files ``<image_id>.npz``, by default
  ``<folder of JSON>/proposals/<NAME>/`` (``tools/selective_search.py --dataset NAME`` writes
  there, the loaders read there);
* ``evaluator_type = "coco"``: evaluated with AP^r (:class:`r2ios_d2.evaluation.SDSEvaluator`)
  and with detectron2's ``COCOEvaluator``.

:func:`check_r2ios_training_dicts` turns what would otherwise fail deep inside training (an
instance without a mask, a dataset with nothing to learn from, images without proposal files,
more categories than ``MODEL.ROI_HEADS.NUM_CLASSES``) into a ``ValueError`` that names the
dataset, the image and the fix; it works for any dataset, not only COCO-format ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .coco_subsets import (
    VOC_CLASSES_FROM_COCO,
    CategorySpec,
    category_mapping,
    format_coco_categories,
    parse_coco_categories,
    write_category_subset,
)
from .files import check_registered_coco_on_load

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES_FROM_COCO",
    "default_proposal_dir",
    "register_coco_for_r2ios",
    "register_coco_from_args",
    "selective_search_command",
    "check_proposal_files",
    "check_r2ios_training_dicts",
]

# How many offending images an error message lists.
_MAX_LISTED = 3


def default_proposal_dir(name: str, json_file: str) -> str:
    """``<folder of json_file>/proposals/<name>``: a registered COCO dataset's proposal folder."""
    return os.path.join(os.path.dirname(os.fspath(json_file)), "proposals", name)


def register_coco_for_r2ios(
    name: str,
    json_file: str,
    image_root: str,
    proposal_dir: Optional[str] = None,
    categories: Optional[CategorySpec] = None,
) -> None:
    """Register a COCO-format instance segmentation dataset for R2-IOS (lazily: the json is read
    at the first ``DatasetCatalog.get(name)``).

    Registering the same name again with the same files does nothing, so that a tool may call
    this in every process it starts.

    Args:
        name: the dataset's name in ``DatasetCatalog`` / ``MetadataCatalog``.
        json_file: COCO instances json (``images``, ``annotations``, ``categories``); every
            annotation used for training needs a ``segmentation`` (polygons or RLE).
        image_root: folder the images' ``file_name`` are relative to.
        proposal_dir: folder of the per-image proposal files ``<image_id>.npz`` (default:
            :func:`default_proposal_dir`, ``<folder of json_file>/proposals/<name>``).
        categories: only these categories, as ``{new name: name in the json}`` (in class
            order) or a list of json names, e.g. :data:`VOC_CLASSES_FROM_COCO`; the dataset is
            then a derived json (:mod:`r2ios_d2.data.coco_subsets`). None: all categories.

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` does not exist.
        ValueError: ``name`` is already registered with other files or categories, or a
            category of ``categories`` is not in the json.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if proposal_dir is None:
        proposal_dir = default_proposal_dir(name, json_file)
    proposal_dir = os.fspath(proposal_dir)
    mapping = category_mapping(categories) if categories is not None else None
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        source = meta.get("source_json_file", None) or meta.get("json_file", None)
        current = (source, meta.get("image_root", None))
        same = meta.get("proposal_dir", None) == proposal_dir
        if current == (json_file, image_root) and same:
            if meta.get("coco_categories", None) == mapping:
                return
            raise ValueError(
                f"Dataset {name!r} is already registered with other categories; register the "
                "subset under another name."
            )
        raise ValueError(
            f"Dataset {name!r} is already registered (json_file={current[0]!r}, "
            f"image_root={current[1]!r}); register {json_file} under another name."
        )
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset {name!r}: the annotation file {json_file} does not exist (expected a "
            "COCO instances json)."
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Dataset {name!r}: the image folder {image_root} does not exist (the images' "
            "file_name in the json are relative to it)."
        )
    extra = {"proposal_dir": proposal_dir, "source_json_file": json_file}
    if mapping is not None:
        extra["coco_categories"] = mapping
        try:
            json_file = os.fspath(write_category_subset(json_file, mapping))
        except ValueError as e:
            raise ValueError(f"Dataset {name!r}: {e}") from e
    register_coco_instances(name, extra, json_file, image_root)
    check_registered_coco_on_load(name, json_file)  # clear errors, images checked, at load
    logger.info(f"Registered COCO-format dataset {name} ({json_file}); proposals: {proposal_dir}")


def register_coco_from_args(args: argparse.Namespace) -> List[str]:
    """Register every ``--register-coco NAME JSON IMAGE_ROOT`` dataset of parsed arguments
    (``args.register_coco``, a list of ``[NAME, JSON, IMAGE_ROOT]``, and
    ``args.coco_categories``, as the tools' ``add_register_coco_argument`` in
    ``tools/cli_options.py`` adds them) with :func:`register_coco_for_r2ios`.

    Call it in each process that reads the datasets (registrations are per process).

    Returns:
        the registered names, in command-line order.

    Raises:
        SystemExit: a json file or image folder is missing, or a name is taken.
    """
    names = []
    try:
        categories = parse_coco_categories(getattr(args, "coco_categories", None))
    except ValueError as e:
        raise SystemExit(str(e)) from e
    for name, json_file, image_root in getattr(args, "register_coco", None) or []:
        try:
            register_coco_for_r2ios(name, json_file, image_root, categories=categories)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"--register-coco {name} {json_file} {image_root}: {e}") from e
        names.append(name)
    return names


def selective_search_command(dataset_name: str, proposal_dir: Optional[str] = None) -> str:
    """The shell command that computes ``dataset_name``'s proposals into ``proposal_dir``.

    Includes ``--register-coco`` for datasets registered by :func:`register_coco_for_r2ios` with
    the default folder (the tool needs it to know the dataset) and ``--out`` when
    ``proposal_dir`` is not the dataset's metadata ``proposal_dir``.
    """
    json_file = image_root = meta_dir = categories = None
    if dataset_name in DatasetCatalog.list():
        meta = MetadataCatalog.get(dataset_name)
        json_file = meta.get("source_json_file", None) or meta.get("json_file", None)
        image_root, meta_dir = meta.get("image_root", None), meta.get("proposal_dir", None)
        categories = meta.get("coco_categories", None)
    words = ["python", "tools/selective_search.py"]
    if json_file and image_root and meta_dir == default_proposal_dir(dataset_name, json_file):
        words += ["--register-coco", dataset_name, str(json_file), str(image_root)]
        if categories:
            words += ["--coco-categories", format_coco_categories(categories)]
    words += ["--dataset", dataset_name]
    if proposal_dir is not None and proposal_dir != meta_dir:
        words += ["--out", proposal_dir]
    return " ".join(shlex.quote(w) for w in words)


def _image_label(d: Dict[str, Any]) -> str:
    return f"image {d.get('image_id')!r} ({d.get('file_name', '?')})"


def check_proposal_files(dataset_dicts: Sequence[Dict[str, Any]], dataset_name: str) -> None:
    """Check that every dict's ``proposal_file`` (set by ``attach_proposals``) exists.

    Dicts without ``proposal_file`` (proposals given as arrays, or none) are not checked.

    Raises:
        ValueError: naming the dataset, the folder, how many images lack a file, the first
            few of them, and the command that computes them.
    """
    paths = [d["proposal_file"] for d in dataset_dicts if "proposal_file" in d]
    missing = [
        d for d in dataset_dicts if "proposal_file" in d and not os.path.isfile(d["proposal_file"])
    ]
    if not missing:
        return
    folder = os.path.dirname(missing[0]["proposal_file"])
    listed = ", ".join(
        f"{os.path.basename(d['proposal_file'])} for {_image_label(d)}"
        for d in missing[:_MAX_LISTED]
    )
    raise ValueError(
        f"Dataset {dataset_name!r}: {len(missing)} of {len(paths)} images have no proposal file "
        f"in {folder} (e.g. {listed}). Compute them with\n"
        f"    {selective_search_command(dataset_name, folder)}"
    )


def _check_masks(
    dataset_dicts: Sequence[Dict[str, Any]], dataset_name: str
) -> Tuple[int, int, int]:
    """Raise ``ValueError`` if a non-crowd instance has no ``segmentation``; else return the
    number of non-crowd instances, of images with one, and the largest ``category_id``."""
    no_mask: List[str] = []
    num_no_mask = num_instances = num_usable_images = max_category = 0
    for d in dataset_dicts:
        anns = [(j, a) for j, a in enumerate(d.get("annotations", [])) if not a.get("iscrowd", 0)]
        num_instances += len(anns)
        num_usable_images += bool(anns)
        for j, a in anns:
            max_category = max(max_category, int(a["category_id"]))
            if not a.get("segmentation"):
                num_no_mask += 1
                if len(no_mask) < _MAX_LISTED:
                    no_mask.append(f"annotation {j} of {_image_label(d)}")
    if num_no_mask:
        raise ValueError(
            f"Dataset {dataset_name!r}: {num_no_mask} of {num_instances} instances have no "
            f"'segmentation' mask (e.g. {'; '.join(no_mask)}). R2-IOS trains a mask head on "
            "every instance: give each annotation a 'segmentation' (polygons or RLE), or drop "
            'the annotations without one (or mark them "iscrowd": 1 to leave them out).'
        )
    return num_instances, num_usable_images, max_category


def check_r2ios_training_dicts(
    dataset_dicts: Sequence[Dict[str, Any]],
    dataset_name: str,
    num_classes: Optional[int] = None,
    check_proposals: bool = True,
) -> None:
    """Check that one training dataset has what R2-IOS trains on; raise a clear error if not.

    Crowd annotations (``iscrowd`` 1) are left out of training by the mapper, so they need no
    mask and do not count as instances.

    Args:
        dataset_dicts: the dataset's detectron2 dicts (``image_id``, ``file_name``,
            ``annotations`` with ``category_id`` (contiguous, 0-based), ``segmentation``,
            ``iscrowd``), optionally with ``proposal_file`` set by ``attach_proposals``.
        dataset_name: the name, for the messages.
        num_classes: ``MODEL.ROI_HEADS.NUM_CLASSES``; when given, every ``category_id`` must be
            below it.
        check_proposals: also check that every ``proposal_file`` exists
            (:func:`check_proposal_files`).

    Raises:
        ValueError: an instance without a mask (R2-IOS trains a mask head on every instance),
            no image with a non-crowd instance, a category beyond ``num_classes``, or images
            without proposal files. The message names the dataset, the first offending images
            and the fix.
    """
    if not dataset_dicts:
        raise ValueError(f"Dataset {dataset_name!r} has no images.")
    num_instances, num_usable_images, max_category = _check_masks(dataset_dicts, dataset_name)
    if num_usable_images == 0:
        raise ValueError(
            f"Dataset {dataset_name!r} has nothing to train on: none of its {len(dataset_dicts)} "
            'images has an annotation that is not a crowd region ("iscrowd": 1). Check that '
            "the json's annotations refer to its images by image_id and are not all crowd."
        )
    if num_classes is not None and max_category >= num_classes:
        classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        wanted = len(classes) if classes else max_category + 1
        raise ValueError(
            f"Dataset {dataset_name!r} has category index {max_category} but "
            f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}: set it to the number of categories "
            f"({wanted})."
        )
    if check_proposals:
        check_proposal_files(dataset_dicts, dataset_name)
