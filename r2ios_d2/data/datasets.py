"""VOC2012 instance segmentation, SBD and the SDS split, registered as detectron2 datasets.

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

The files are read by :mod:`r2ios_d2.data.voc_sbd` (layouts and dict format there). The VOC
tarball unpacks to ``VOCdevkit/VOC2012`` and SBD's to ``benchmark_RELEASE/dataset``: link (or
move) them to ``VOC2012`` and ``SBD``. The SDS split files are not part of the SBD release:
``sds_train.txt`` is SBD's ``train_noval.txt`` (5623 ids) and ``sds_val.txt`` is every other SBD
id (5732), e.g.
``cat train.txt val.txt | sort | comm -23 - <(sort train_noval.txt) > sds_val.txt``.

Metadata: ``thing_classes``, ``thing_colors``, ``evaluator_type = "sds"``, ``dataset_root``,
``split_file``, ``dataset_format`` (``"voc"`` / ``"sbd"``), ``void_masks`` (whether dicts carry
``void_segmentation``) and ``proposal_dir``: the default folder of per-image proposal files,
``<root>/proposals/selective_search/<image_id>.npz`` (see :mod:`r2ios_d2.data.proposals`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .voc_sbd import VOC_CLASSES, load_sbd_instances, load_voc_seg_instances, voc_palette

__all__ = [
    "datasets_root",
    "register_voc_seg",
    "register_sbd",
    "register_all_voc_sbd",
]


def datasets_root() -> str:
    """detectron2's dataset root: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


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
