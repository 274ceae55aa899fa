"""R2-IOS's data loaders: dataset dicts with their proposals attached, train and test loaders.

The proposal folder of a dataset is ``DATASETS.PROPOSAL_DIRS_TRAIN/TEST`` (parallel to
``DATASETS.TRAIN/TEST``), else its metadata's ``proposal_dir``; detectron2's proposal pickles
(``DATASETS.PROPOSAL_FILES_TRAIN/TEST``) are read only with ``DATASETS.ALLOW_PICKLE_PROPOSALS``
(see :mod:`r2ios_d2.data.proposals`). The mapper is
:class:`~r2ios_d2.data.mapper.PrecomputedProposalMapper`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations

from .coco import check_proposal_files, check_r2ios_training_dicts
from .mapper import PrecomputedProposalMapper
from .proposals import attach_proposals

logger = logging.getLogger(__name__)

__all__ = [
    "get_r2ios_dataset_dicts",
    "r2ios_train_dataset_dicts",
    "build_r2ios_train_loader",
    "build_r2ios_test_loader",
]


def _proposal_sources(
    names: Sequence[str],
    which: str,
    proposal_dirs: Sequence[str] = (),
    proposal_files: Sequence[str] = (),
    allow_pickle: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Where the proposals of each dataset in ``names`` are: ``{name: attach_proposals kwargs}``.

    ``proposal_dirs`` / ``proposal_files`` are parallel to ``names`` (or empty: then each
    dataset's metadata ``proposal_dir``); ``which`` ("TRAIN"/"TEST") only names the config keys
    in error messages.
    """
    names, dirs, files = list(names), list(proposal_dirs), list(proposal_files)
    for key, values in ((f"PROPOSAL_DIRS_{which}", dirs), (f"PROPOSAL_FILES_{which}", files)):
        if values and len(values) != len(names):
            raise ValueError(
                f"DATASETS.{key} has {len(values)} entries but DATASETS.{which} has "
                f"{len(names)}: give one per dataset."
            )
    if dirs and files:
        raise ValueError(f"Set DATASETS.PROPOSAL_DIRS_{which} or PROPOSAL_FILES_{which}, not both.")
    sources: Dict[str, Dict[str, Any]] = {}
    for i, name in enumerate(names):
        if dirs:
            sources[name] = {"proposal_dir": dirs[i]}
        elif files:
            sources[name] = {"proposal_pickle": files[i], "allow_pickle": bool(allow_pickle)}
        else:
            proposal_dir = MetadataCatalog.get(name).get("proposal_dir", None)
            if proposal_dir is None:
                raise ValueError(
                    f"No proposals for dataset {name}: set DATASETS.PROPOSAL_DIRS_{which} or "
                    "the dataset metadata's proposal_dir."
                )
            sources[name] = {"proposal_dir": proposal_dir}
    return sources


def get_r2ios_dataset_dicts(
    names: Union[str, Sequence[str]],
    *,
    is_train: bool = True,
    load_proposals: bool = True,
    proposal_dirs: Sequence[str] = (),
    proposal_files: Sequence[str] = (),
    allow_pickle_proposals: bool = False,
    filter_empty: bool = True,
    num_classes: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """The dataset dicts of registered datasets with their proposals attached (config-free:
    the LazyConfig loaders call it directly, the yacs ones through
    :func:`r2ios_train_dataset_dicts` / :func:`build_r2ios_test_loader`).

    Args:
        names: one or more registered dataset names.
        is_train: training dicts: crowd-only images are dropped (``filter_empty``), the class
            histogram is logged, and the datasets must share ``thing_classes``.
        load_proposals: attach proposals (False: e.g. an RPN model).
        proposal_dirs, proposal_files: per-dataset proposal folders / detectron2 proposal
            pickles, parallel to ``names`` (empty: each dataset's metadata ``proposal_dir``).
        allow_pickle_proposals: opt-in to unpickling ``proposal_files``.
        filter_empty: in training, drop images whose annotations are all crowd.
        num_classes: the model's number of classes; training categories must be below it.

    Raises:
        ValueError: what R2-IOS cannot train or test on, naming the dataset and the fix (see
            :func:`r2ios_d2.data.coco.check_r2ios_training_dicts`): instances without masks,
            no non-crowd instance, categories beyond ``num_classes``, missing proposal files.

    Returns:
        a list of dataset dicts (copies; the catalog's are not modified).
    """
    names = [names] if isinstance(names, str) else list(names)
    which = "TRAIN" if is_train else "TEST"
    sources = (
        _proposal_sources(names, which, proposal_dirs, proposal_files, allow_pickle_proposals)
        if load_proposals
        else {}
    )
    dicts: List[Dict[str, Any]] = []
    for name in names:
        part = [dict(d) for d in DatasetCatalog.get(name)]
        if not part:
            raise ValueError(f"Dataset {name} is empty.")
        if load_proposals:
            attach_proposals(part, dataset_name=name, **sources[name])
        if is_train:
            check_r2ios_training_dicts(part, name, num_classes, check_proposals=load_proposals)
        elif load_proposals:
            check_proposal_files(part, name)
        dicts.extend(part)
    if not is_train:
        return dicts
    return _finish_training_dicts(dicts, names, filter_empty)


def _finish_training_dicts(
    dicts: List[Dict[str, Any]], names: List[str], filter_empty: bool
) -> List[Dict[str, Any]]:
    """Drop crowd-only images (``filter_empty``), check that the datasets ``names`` share
    ``thing_classes`` and log the class histogram of the training dicts."""
    if filter_empty:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    classes = [MetadataCatalog.get(n).get("thing_classes", None) for n in names]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"DATASETS.TRAIN {names} have different thing_classes.")
    if classes[0] is not None:
        _log_class_histogram(dicts, classes[0])
    return dicts


def _cfg_test_dicts(cfg: CfgNode, name: str) -> List[Dict[str, Any]]:
    """:func:`get_r2ios_dataset_dicts` of one test dataset with the proposal settings of
    ``cfg`` (its ``DATASETS.PROPOSAL_DIRS_TEST``/``FILES_TEST`` entry if it is listed in
    ``DATASETS.TEST``, else its metadata's ``proposal_dir``)."""
    d = cfg.DATASETS
    listed, dirs, files = list(d.TEST), d.PROPOSAL_DIRS_TEST, d.PROPOSAL_FILES_TEST
    if (dirs or files) and listed:  # check the lengths against the whole list
        _proposal_sources(listed, "TEST", dirs, files, d.ALLOW_PICKLE_PROPOSALS)
    i = listed.index(name) if name in listed else None
    return get_r2ios_dataset_dicts(
        name,
        is_train=False,
        load_proposals=bool(cfg.MODEL.LOAD_PROPOSALS),
        proposal_dirs=[dirs[i]] if dirs and i is not None else (),
        proposal_files=[files[i]] if files and i is not None else (),
        allow_pickle_proposals=bool(d.ALLOW_PICKLE_PROPOSALS),
    )


def _log_class_histogram(dicts: List[Dict[str, Any]], class_names: Sequence[str]) -> None:
    # detectron2 v0.6's print_instances_class_histogram uses np.int, gone in numpy 2.
    cats = [a["category_id"] for d in dicts for a in d.get("annotations", [])]
    counts = np.bincount(np.asarray(cats, np.int64), minlength=len(class_names))
    text = ", ".join(f"{n}: {int(c)}" for n, c in zip(class_names, counts))
    logger.info(f"{len(dicts)} training images, {len(cats)} instances ({text})")


def r2ios_train_dataset_dicts(cfg: CfgNode) -> List[Dict[str, Any]]:
    """The training dicts of ``DATASETS.TRAIN``: proposals attached, crowd-only images filtered
    as ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` says, the class histogram logged.

    Raises:
        ValueError: if the datasets have different ``thing_classes``.
    """
    d = cfg.DATASETS
    return get_r2ios_dataset_dicts(
        list(d.TRAIN),
        is_train=True,
        load_proposals=bool(cfg.MODEL.LOAD_PROPOSALS),
        proposal_dirs=d.PROPOSAL_DIRS_TRAIN,
        proposal_files=d.PROPOSAL_FILES_TRAIN,
        allow_pickle_proposals=bool(d.ALLOW_PICKLE_PROPOSALS),
        filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
    )


def build_r2ios_train_loader(cfg: CfgNode, mapper: Optional[DatasetMapper] = None) -> Any:
    """detectron2's train loader over ``DATASETS.TRAIN`` with :class:`PrecomputedProposalMapper`.

    Args:
        cfg: the config (``MODEL.LOAD_PROPOSALS`` decides whether proposals are read).
        mapper: a mapper to use instead of ``PrecomputedProposalMapper(cfg, True)``.

    Returns:
        an iterable of lists of mapped dicts (``SOLVER.IMS_PER_BATCH`` in total per step).
    """
    dicts = r2ios_train_dataset_dicts(cfg)
    if mapper is None:
        mapper = PrecomputedProposalMapper(cfg, True)
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts)


def build_r2ios_test_loader(
    cfg: CfgNode, dataset_name: str, mapper: Optional[DatasetMapper] = None
) -> Any:
    """detectron2's test loader (batch 1, every image once) with the proposal mapper.

    Args:
        cfg: the config; proposals of ``dataset_name`` come from its entry in
            ``DATASETS.PROPOSAL_DIRS_TEST`` / ``PROPOSAL_FILES_TEST`` if it is in
            ``DATASETS.TEST``, else from its metadata's ``proposal_dir``.
        dataset_name: a registered dataset.
        mapper: a mapper to use instead of ``PrecomputedProposalMapper(cfg, False)``.

    Returns:
        an iterable of one-element lists of mapped dicts.
    """
    dicts = _cfg_test_dicts(cfg, dataset_name)
    if mapper is None:
        mapper = PrecomputedProposalMapper(cfg, False)
    return build_detection_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
