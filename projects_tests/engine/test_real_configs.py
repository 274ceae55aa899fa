"""configs/real (yacs) and configs/lazy/real_*.py: the twins build the same models with the same
schedule and optimiser, and the stage-1 config trains on real photographs from two registered
COCO datasets at once (tiny width, two photos; skipped without ../shared/data)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from reliability_utils import REPO, run_train_net

from r2ios_d2 import add_r2ios_config
from r2ios_d2.data.coco import VOC_CLASSES_FROM_COCO
from r2ios_d2.data.selective_search import compute_proposals
from r2ios_d2.engine import build_r2ios_optimizer

SHARED_DATA = Path(REPO).parent / "shared" / "data"
PAIRS = [
    ("real_r2ios_stage1.py", "r2ios_vgg16_real_stage1.yaml"),
    ("real_r2ios_stage2.py", "r2ios_vgg16_real_stage2.yaml"),
    ("real_mask_rcnn_heads.py", "mask_rcnn_heads_vgg16_real.yaml"),
    ("real_r2ios_scratch.py", "r2ios_vgg16_real_scratch.yaml"),
]


def _yacs(name: str):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "real", name))
    return cfg


@pytest.mark.parametrize("lazy,yacs", PAIRS, ids=[p[0] for p in PAIRS])
def test_real_lazy_and_yacs_configs_agree(lazy, yacs):
    cfg = _yacs(yacs)
    lazy_cfg = LazyConfig.load(os.path.join(REPO, "configs", "lazy", lazy))
    a, b = instantiate(lazy_cfg.model), build_model(cfg)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    trainable = [n for n, p in a.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in b.named_parameters() if p.requires_grad]
    assert type(a.roi_heads) is type(b.roi_heads)
    assert a.input_format == b.input_format == "BGR"
    assert list(a.pixel_mean.flatten()) == list(b.pixel_mean.flatten())
    assert lazy_cfg.train.max_iter == cfg.SOLVER.MAX_ITER
    assert list(lazy_cfg.lr_multiplier.scheduler.milestones) == list(cfg.SOLVER.STEPS)
    assert lazy_cfg.optimizer.lr == cfg.SOLVER.BASE_LR
    assert lazy_cfg.optimizer.params.pretrained_lr_factor == cfg.SOLVER.PRETRAINED_LR_FACTOR
    assert list(lazy_cfg.optimizer.params.pretrained_prefixes) == list(
        cfg.SOLVER.PRETRAINED_PARAM_PREFIXES
    )
    assert os.path.basename(lazy_cfg.train.init_checkpoint) == os.path.basename(cfg.MODEL.WEIGHTS)
    # The same optimiser: class, and the lr and size of every param group.
    lazy_cfg.optimizer.params.model = a
    opt_a, opt_b = instantiate(lazy_cfg.optimizer), build_r2ios_optimizer(cfg, b)
    assert type(opt_a) is type(opt_b)

    def groups(opt):
        return sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups)

    assert groups(opt_a) == groups(opt_b)
    resize = lazy_cfg.dataloader.train.mapper.augmentations[0]
    assert tuple(resize.short_edge_length) == tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    assert resize.max_size == cfg.INPUT.MAX_SIZE_TRAIN


def test_real_rows_share_iterations_and_budget_keys():
    s1, s2 = _yacs("r2ios_vgg16_real_stage1.yaml"), _yacs("r2ios_vgg16_real_stage2.yaml")
    heads, scratch = (
        _yacs("mask_rcnn_heads_vgg16_real.yaml"),
        _yacs("r2ios_vgg16_real_scratch.yaml"),
    )
    total = s1.SOLVER.MAX_ITER + s2.SOLVER.MAX_ITER
    assert heads.SOLVER.MAX_ITER == total
    # From scratch nothing is frozen or cached: it gets the CPU time, not the iterations.
    assert 0 < scratch.SOLVER.MAX_ITER <= total
    assert scratch.MODEL.VGG.FROZEN_FEATURE_CACHE_MB == 0
    for cfg in (s1, s2, heads):  # the same frozen convs, so the same cached features
        assert cfg.MODEL.BACKBONE.FREEZE_AT == 5 and cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB > 0
        assert cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR == s1.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR
    for cfg in (s2, heads, scratch):
        for key in ("INPUT.MIN_SIZE_TRAIN", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                    "MODEL.ROI_BOX_HEAD.FC_DIM", "SOLVER.OPTIMIZER", "DATASETS.TRAIN",
                    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST", "MODEL.PIXEL_MEAN"):  # fmt: skip
            node_a, node_b = s1, cfg
            for part in key.split("."):
                node_a, node_b = node_a[part], node_b[part]
            assert node_a == node_b, key
    assert s1.MODEL.WEIGHTS == heads.MODEL.WEIGHTS and scratch.MODEL.WEIGHTS == ""
    assert scratch.MODEL.BACKBONE.FREEZE_AT == 0 and scratch.SOLVER.PRETRAINED_LR_FACTOR == 1.0


def _first_photo_json(src: Path, dst: Path) -> Path:
    """The first image of ``src`` with a non-crowd instance of a VOC class, its annotations."""
    data = json.loads(src.read_text())
    voc = {c["id"] for c in data["categories"] if c["name"] in VOC_CLASSES_FROM_COCO.values()}
    image_id = min(
        a["image_id"] for a in data["annotations"] if a["category_id"] in voc and not a["iscrowd"]
    )
    data["images"] = [im for im in data["images"] if im["id"] == image_id]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == image_id]
    dst.write_text(json.dumps(data))
    return dst


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"no real photographs: {SHARED_DATA} does not exist"
)
def test_real_stage1_trains_on_two_registered_coco_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("R2IOS_D2_CACHE", str(tmp_path / "cache"))
    sets = {
        "real_step_tiny": ("tiny_coco/annotations/instances_train2017.json", "tiny_coco/train2017"),
        "real_step_mini": (
            "coco_mini_train/annotations/instances_train2017.json",
            "coco_mini_train/train2017",
        ),
    }
    flags = ["--coco-categories", "voc"]
    proposal_dirs = []
    for name, (json_file, images) in sets.items():
        one = _first_photo_json(SHARED_DATA / json_file, tmp_path / f"{name}.json")
        flags += ["--register-coco", name, str(one), str(SHARED_DATA / images)]
        proposal_dirs.append(str(tmp_path / "proposals" / name))
        data = json.loads(one.read_text())
        items = [
            (str(im["id"]), str(SHARED_DATA / images / im["file_name"]), im["height"], im["width"])
            for im in data["images"]
        ]
        compute_proposals(items, proposal_dirs[-1], max_boxes=200)
    out = tmp_path / "out"
    opts = [
        "MODEL.WEIGHTS", "", "MODEL.VGG.WIDTH", "0.0625", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.R2IOS.AE_HIDDEN_DIM", "32", "INPUT.MIN_SIZE_TRAIN", "(160,)",
        "INPUT.MAX_SIZE_TRAIN", "272", "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TRAIN", str(tuple(sets)), "DATASETS.TEST", "()",
        "DATASETS.PROPOSAL_DIRS_TRAIN", str(tuple(proposal_dirs)),
        "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "MODEL.VGG.FROZEN_FEATURE_CACHE_DIR", str(tmp_path / "features"),
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    config = os.path.join(REPO, "configs", "real", "r2ios_vgg16_real_stage1.yaml")
    run_train_net(config, opts, *flags)
    assert (out / "model_final.pth").is_file()
    assert len({d["image_id"] for n in sets for d in DatasetCatalog.get(n)}) == 2
    last = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()][-1]
    assert math.isfinite(last["total_loss"]) and last["iteration"] == 1
    # conv1-conv5 frozen: each (photo, flip) drawn had its features cached on disk.
    assert {p.name.rsplit("_", 1)[1] for p in (tmp_path / "features").rglob("*.npy")} == {
        "det.npy",
        "seg.npy",
    }
