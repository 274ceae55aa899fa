"""Fill the on-disk frozen-feature cache of a config before its trainings start.

With ``MODEL.VGG.FROZEN_FEATURE_CACHE_MB`` and ``MODEL.VGG.FROZEN_FEATURE_CACHE_DIR`` set,
each training computes the frozen conv blocks of an (image, flip) pair the first time it draws
it. :func:`prefill_frozen_features` computes them all once, in one process, in the form the
trainings will look them up (the same resize, flip and normalisation as the data loader and
the model), so that the trainings and evaluations that follow (stage 1, stage 2, the stock
heads on the same frozen weights) only read them.
"""

import logging
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.modeling import build_model
from tqdm import tqdm

__all__ = ["prefill_frozen_features"]

logger = logging.getLogger(__name__)


def _images(cfg: CfgNode, names: Iterable[str], is_train: bool) -> list:
    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    if is_train and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    return dicts


def prefill_frozen_features(
    cfg: CfgNode,
    train_datasets: Iterable[str] = (),
    test_datasets: Iterable[str] = (),
    weights: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, int]:
    """Compute and store the frozen features of every training image (as loaded, and
    flipped where ``INPUT.RANDOM_FLIP`` is "horizontal") and every test image.

    Args:
        cfg: a config with the cache on (``MODEL.VGG.FROZEN_FEATURE_CACHE_MB`` > 0 and
            ``MODEL.VGG.FROZEN_FEATURE_CACHE_DIR``).
        train_datasets: registered names, images resized as in training.
        test_datasets: registered names, images resized as at test time.
        weights: checkpoint of the frozen layers (default ``cfg.MODEL.WEIGHTS``).
        progress: show a tqdm bar.

    Returns:
        ``{"computed": n, "read": n}``: (image, flip) pairs computed now / found on disk.
    """
    if cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB <= 0 or not cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR:
        raise ValueError(
            "prefill_frozen_features needs MODEL.VGG.FROZEN_FEATURE_CACHE_MB > 0 and "
            "MODEL.VGG.FROZEN_FEATURE_CACHE_DIR set"
        )
    cfg = cfg.clone()
    cfg.defrost()
    # One image at a time: a small memory budget is enough, the disk keeps everything.
    cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB = 64
    model = build_model(cfg)
    model.eval()
    DetectionCheckpointer(model).load(weights if weights is not None else cfg.MODEL.WEIGHTS)
    cache = model.backbone.feature_cache
    flips = [False, True] if cfg.INPUT.RANDOM_FLIP == "horizontal" else [False]
    jobs = []
    for is_train, names in ((True, train_datasets), (False, test_datasets)):
        if not names:
            continue
        if is_train:
            size = T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
            if len(cfg.INPUT.MIN_SIZE_TRAIN) != 1:
                raise ValueError(
                    "prefill_frozen_features needs one INPUT.MIN_SIZE_TRAIN (random sizes "
                    f"would each be new images), got {cfg.INPUT.MIN_SIZE_TRAIN}"
                )
        else:
            size = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        for d in _images(cfg, names, is_train):
            for flip in flips if is_train else [False]:
                jobs.append((d["file_name"], size, flip))
    computed_before, read_before = cache.misses, cache.disk_reads
    with torch.no_grad():
        for file_name, size, flip in tqdm(jobs, desc="frozen features", disable=not progress):
            image = utils.read_image(file_name, format=cfg.INPUT.FORMAT)
            image = size.get_transform(image).apply_image(image)
            if flip:
                image = np.ascontiguousarray(image[:, ::-1])
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            images = model.preprocess_image([{"image": tensor}])
            model.backbone(images.tensor)
    counts = {"computed": cache.misses - computed_before, "read": cache.disk_reads - read_before}
    logger.info(
        "Frozen features of %d (image, flip) pairs in %s: %d computed, %d already there",
        len(jobs),
        cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR,
        counts["computed"],
        counts["read"],
    )
    return counts
