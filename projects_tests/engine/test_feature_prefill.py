"""prefill_frozen_features stores the frozen features under the keys the data loader's images
will have: a model with the same frozen weights then reads every (image, flip) pair from
disk, as loaded by detectron2's DatasetMapper, without computing any."""

import uuid

import numpy as np
import pytest
import torch
from conftest import tiny_r2ios_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from r2ios_d2.engine.feature_prefill import prefill_frozen_features


def _setup(tmp_path):
    rng = np.random.RandomState(0)
    dicts = []
    for i, (h, w) in enumerate([(60, 90), (75, 50)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.randint(0, 255, (h, w, 3)).astype(np.uint8)).save(path)
        box = [2.0, 3.0, w - 5.0, h - 4.0]
        ann = {"bbox": box, "bbox_mode": 0, "category_id": 0, "iscrowd": 0}
        dicts.append(
            {"file_name": str(path), "image_id": i, "height": h, "width": w, "annotations": [ann]}
        )
    name = f"prefill_{uuid.uuid4().hex[:6]}"
    DatasetCatalog.register(name, lambda: dicts)
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB = 16
    cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR = str(tmp_path / "features")
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.MAX_SIZE_TEST = 80
    torch.manual_seed(0)
    weights = str(tmp_path / "init.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    return cfg, name, dicts, weights


def test_prefilled_features_serve_the_training_loader_and_the_test_images(tmp_path):
    cfg, name, dicts, weights = _setup(tmp_path)
    counts = prefill_frozen_features(cfg, [name], [name], weights=weights, progress=False)
    assert counts == {"computed": 6, "read": 0}  # 2 images x 2 flips + 2 at the test size
    again = prefill_frozen_features(cfg, [name], [name], weights=weights, progress=False)
    assert again == {"computed": 0, "read": 6}

    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    cache = model.backbone.feature_cache
    resize = utils.build_augmentation(cfg, True)[0]
    for flip in (0.0, 1.0):
        augs = [resize, T.RandomFlip(prob=flip, horizontal=True)]
        mapper = DatasetMapper(is_train=True, augmentations=augs, image_format=cfg.INPUT.FORMAT)
        batch = [mapper(dict(d)) for d in dicts]
        model.backbone(model.preprocess_image(batch).tensor)
    test_mapper = DatasetMapper(cfg, is_train=False)
    model.backbone(model.preprocess_image([test_mapper(dict(d)) for d in dicts]).tensor)
    assert (cache.misses, cache.disk_reads) == (0, 6)


def test_prefill_needs_the_cache_on(tmp_path):
    cfg, name, _, weights = _setup(tmp_path)
    cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR = ""
    with pytest.raises(ValueError, match="FROZEN_FEATURE_CACHE_DIR"):
        prefill_frozen_features(cfg, [name], weights=weights)
