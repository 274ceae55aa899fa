"""Datasets (VOC2012, SBD, SDS, synthetic, your own COCO-format), proposals and data loaders.

Importing this package registers the datasets in detectron2's ``DatasetCatalog`` (lazily:
nothing is read until ``DatasetCatalog.get``). Modules, one concern each:

* ``voc_sbd`` (VOC / SBD format readers), ``cache`` (their cached, parallel loading),
  ``datasets`` (the registered VOC2012 / SBD / SDS splits), ``coco`` (COCO-format datasets and
  the training-set checks);
* ``synthetic`` (the synthetic dataset: generation, statistics, registration, CLI) with
  ``synthetic_render`` and ``synthetic_writers`` (SBD ``.mat`` / VOC PNG);
* ``proposals`` (proposal files and pickles), ``selective_search``, ``mapper``
  (``PrecomputedProposalMapper``), ``loaders`` (dataset dicts with proposals, train / test
  loaders).

The selective search function lives in :mod:`r2ios_d2.data.selective_search` (not re-exported:
it would shadow the module's name).
"""

from . import coco, datasets, proposals, selective_search, synthetic  # noqa: F401  (registers)
from .coco import (
    check_proposal_files,
    check_r2ios_training_dicts,
    register_coco_for_r2ios,
    register_coco_from_args,
)
from .datasets import register_all_voc_sbd, register_sbd, register_voc_seg
from .loaders import (
    build_r2ios_test_loader,
    build_r2ios_train_loader,
    get_r2ios_dataset_dicts,
    r2ios_train_dataset_dicts,
)
from .mapper import PrecomputedProposalMapper
from .proposals import load_proposal_file, save_proposal_file
from .synthetic import (
    SYNTHETIC_CLASSES,
    difficulty_statistics,
    generate_synthetic_dataset,
    register_synthetic,
)
from .voc_sbd import VOC_CLASSES, load_sbd_instances, load_voc_seg_instances

__all__ = [
    "VOC_CLASSES",
    "SYNTHETIC_CLASSES",
    "load_voc_seg_instances",
    "load_sbd_instances",
    "register_voc_seg",
    "register_sbd",
    "register_all_voc_sbd",
    "register_synthetic",
    "register_coco_for_r2ios",
    "register_coco_from_args",
    "check_r2ios_training_dicts",
    "check_proposal_files",
    "generate_synthetic_dataset",
    "difficulty_statistics",
    "PrecomputedProposalMapper",
    "build_r2ios_train_loader",
    "r2ios_train_dataset_dicts",
    "get_r2ios_dataset_dicts",
    "build_r2ios_test_loader",
    "load_proposal_file",
    "save_proposal_file",
]
