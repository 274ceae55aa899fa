"""Datasets (VOC2012, SBD, SDS, synthetic), proposals and data loaders of r2ios_d2.

Importing this package registers the datasets in detectron2's ``DatasetCatalog`` (lazily:
nothing is read until ``DatasetCatalog.get``). The selective search function lives in
:mod:`r2ios_d2.data.selective_search` (not re-exported: it would shadow the module's name).
"""

from . import datasets, proposals, selective_search, synthetic  # noqa: F401  (registers)
from .datasets import (
    VOC_CLASSES,
    load_sbd_instances,
    load_voc_seg_instances,
    register_all_voc_sbd,
    register_sbd,
    register_voc_seg,
)
from .proposals import (
    PrecomputedProposalMapper,
    build_r2ios_test_loader,
    build_r2ios_train_loader,
    load_proposal_file,
    r2ios_train_dataset_dicts,
    save_proposal_file,
)
from .synthetic import (
    SYNTHETIC_CLASSES,
    difficulty_statistics,
    generate_synthetic_dataset,
    register_synthetic,
)

__all__ = [
    "VOC_CLASSES",
    "SYNTHETIC_CLASSES",
    "load_voc_seg_instances",
    "load_sbd_instances",
    "register_voc_seg",
    "register_sbd",
    "register_all_voc_sbd",
    "register_synthetic",
    "generate_synthetic_dataset",
    "difficulty_statistics",
    "PrecomputedProposalMapper",
    "build_r2ios_train_loader",
    "r2ios_train_dataset_dicts",
    "build_r2ios_test_loader",
    "load_proposal_file",
    "save_proposal_file",
]
