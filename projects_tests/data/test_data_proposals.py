"""Proposal files, PrecomputedProposalMapper and the r2ios train/test loaders."""

import os
import pickle
import uuid

import detectron2.data.transforms as T
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from PIL import Image

from r2ios_d2.config import add_r2ios_config
from r2ios_d2.data import (
    PrecomputedProposalMapper,
    build_r2ios_test_loader,
    build_r2ios_train_loader,
)
from r2ios_d2.data.proposals import (
    filter_proposals,
    load_proposal_file,
    load_proposal_pickle,
    save_proposal_file,
    write_proposal_pickle,
)
from r2ios_d2.data.selective_search import compute_proposals
from r2ios_d2.data.synthetic import generate_synthetic_dataset, register_synthetic

H, W = 20, 30
GT = [4.0, 3.0, 14.0, 11.0]  # XYXY of the instance mask below


def _dict(tmp_path, proposals=None):
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    file_name = str(tmp_path / "im1.png")
    Image.fromarray(img).save(file_name)
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[3:11, 4:14] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode()
    d = {
        "file_name": file_name,
        "image_id": "im1",
        "height": H,
        "width": W,
        "annotations": [
            {
                "bbox": GT,
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 2,
                "segmentation": rle,
                "iscrowd": 0,
            }
        ],
    }
    if proposals is not None:
        path = str(tmp_path / "props" / "im1.npz")
        save_proposal_file(path, *proposals, "im1", H, W)
        d["proposal_file"] = path
    return d


def _mapper(augs, is_train=True, topk=100, min_size=2.0):
    return PrecomputedProposalMapper(
        is_train,
        augmentations=augs,
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        precomputed_proposal_topk=topk,
        proposal_min_size=min_size,
    )


def test_save_and_load_roundtrip(tmp_path):
    boxes = np.array([[1, 2, 5, 6], [0, 0, 30, 20]], np.float32)
    path = str(tmp_path / "a.npz")
    save_proposal_file(path, boxes, None, "a", H, W)
    b, s = load_proposal_file(path, "a", H, W)
    assert np.array_equal(b, boxes) and b.dtype == np.float32
    assert s.tolist() == [1.0, 0.5]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []


@pytest.mark.parametrize(
    "flip,scale", [(False, 1.0), (True, 1.0), (False, 2.0), (True, 1.5)], ids=str
)
def test_mapper_moves_proposals_with_ground_truth(tmp_path, flip, scale):
    boxes = np.array([GT, [0, 0, 30, 20]], np.float32)
    d = _dict(tmp_path, (boxes, np.array([0.9, 0.5], np.float32)))
    nh, nw = int(H * scale), int(W * scale)
    augs = [T.ResizeTransform(H, W, nh, nw, Image.BILINEAR)] + ([T.HFlipTransform(nw)] * flip)
    out = _mapper(augs)(d)
    assert tuple(out["image"].shape) == (3, nh, nw)
    gt = out["instances"].gt_boxes.tensor[0]
    props = out["proposals"]
    assert props.image_size == (nh, nw)
    assert torch.allclose(props.proposal_boxes.tensor[0], gt)  # the GT-box proposal still is
    assert torch.allclose(props.proposal_boxes.tensor[1], torch.tensor([0, 0, nw, nh]).float())
    x0, y0, x1, y1 = (v * scale for v in GT)
    expect = [nw - x1, y0, nw - x0, y1] if flip else [x0, y0, x1, y1]
    assert torch.allclose(gt, torch.tensor(expect), atol=1e-4)
    # the mask moved the same way: its box is the GT box
    m = out["instances"].gt_masks.tensor[0]
    ys, xs = torch.nonzero(m, as_tuple=True)
    assert abs(xs.float().mean().item() + 0.5 - (expect[0] + expect[2]) / 2) < 1.0
    assert props.objectness_logits.tolist() == pytest.approx([0.9, 0.5])


def test_mapper_drops_tiny_degenerate_duplicate_and_keeps_topk(tmp_path):
    boxes = np.array(
        [
            [1, 1, 10, 10],  # 0.5
            [2, 2, 3, 12],  # tiny: 1 px wide -> dropped (min size 2)
            [5, 5, 5, 9],  # degenerate
            [1, 1, 10, 10],  # duplicate of a better one below -> dropped
            [0, 0, 8, 8],  # 0.9
            [-3, -2, 31, 21],  # slightly outside: clipped
            [3, 3, 9, 9],  # 0.1, beyond top 3
        ],
        np.float32,
    )
    scores = np.array([0.5, 0.8, 0.95, 0.7, 0.9, 0.3, 0.1], np.float32)
    out = _mapper([], is_train=False, topk=3)(_dict(tmp_path, (boxes, scores)))
    p = out["proposals"]
    assert p.proposal_boxes.tensor.tolist() == [[0, 0, 8, 8], [1, 1, 10, 10], [0, 0, 30, 20]]
    assert p.objectness_logits.tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert "annotations" not in out  # test time


def test_filter_proposals_keeps_order_of_equal_scores():
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], np.float32)
    b, s = filter_proposals(boxes, np.ones(3, np.float32), 10, 10)
    assert np.array_equal(b, boxes) and len(s) == 3


def test_mapper_handles_zero_proposals(tmp_path):
    d = _dict(tmp_path, (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
    out = _mapper([T.HFlipTransform(W)])(d)
    assert len(out["proposals"]) == 0 and out["proposals"].proposal_boxes.tensor.shape == (0, 4)
    assert len(out["instances"]) == 1


def test_mapper_falls_back_to_proposal_dir(tmp_path):
    d = _dict(tmp_path, (np.array([GT], np.float32), None))
    path = d.pop("proposal_file")
    m = PrecomputedProposalMapper(
        False, augmentations=[], image_format="BGR", proposal_dir=os.path.dirname(path)
    )
    assert m(d)["proposals"].proposal_boxes.tensor.tolist() == [GT]
    with pytest.raises(ValueError, match="no proposals"):
        _mapper([])(d)


def _write_raw(path, **arrays):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    base = dict(
        boxes=np.array([GT], np.float32),
        scores=np.array([1.0], np.float32),
        image_id=np.asarray("im1"),
        height=np.asarray(H),
        width=np.asarray(W),
    )
    base.update(arrays)
    with open(path, "wb") as f:
        np.savez(f, **base)


@pytest.mark.parametrize(
    "arrays,message",
    [
        (dict(image_id=np.asarray("im2")), "is for image 'im2', not 'im1'"),
        (dict(height=np.asarray(40)), r"is for a 30x40 image"),
        (dict(boxes=np.array([[4, 3, 14, 11]], np.int64)), "dtype int64"),
        (dict(boxes=np.zeros((1, 5), np.float32)), r"shape \(1, 5\)"),
        (dict(boxes=np.array([[4, np.nan, 14, 11]], np.float32)), "NaN or inf"),
        (dict(scores=np.array([np.inf], np.float32)), "NaN or inf"),
        (dict(boxes=np.array([[14, 3, 4, 11]], np.float32)), "inverted"),
        (dict(boxes=np.array([[4, 3, 140, 11]], np.float32)), "far outside"),
        (dict(scores=np.ones(3, np.float32)), r"scores .* shape \(3,\)"),
        (dict(boxes=np.zeros((0, 4), np.float32), scores=np.ones(2, np.float32)), "scores"),
    ],
    ids=[
        "wrong-image",
        "wrong-size",
        "int-dtype",
        "bad-shape",
        "nan",
        "inf-score",
        "inverted",
        "outside",
        "scores-shape",
        "empty-scores",
    ],
)
def test_bad_proposal_file_is_an_error_naming_it(tmp_path, arrays, message):
    d = _dict(tmp_path)
    path = str(tmp_path / "bad" / "im1.npz")
    _write_raw(path, **arrays)
    d["proposal_file"] = path
    with pytest.raises(ValueError, match=message) as e:
        _mapper([])(d)
    assert path in str(e.value)


def test_corrupt_and_missing_proposal_files(tmp_path):
    d = _dict(tmp_path)
    path = str(tmp_path / "im1.npz")
    open(path, "wb").write(b"PK\x03\x04 not really a zip")
    d["proposal_file"] = path
    with pytest.raises(ValueError, match="Cannot read proposal file .*im1.npz"):
        _mapper([])(d)
    d["proposal_file"] = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz(.|\n)*selective_search\.py"):
        _mapper([])(d)


def test_pickled_object_array_is_not_unpickled(tmp_path):
    d = _dict(tmp_path)
    path = str(tmp_path / "evil" / "im1.npz")
    _write_raw(path, boxes=np.array([object()], dtype=object))
    d["proposal_file"] = path
    with pytest.raises(ValueError, match="Cannot read proposal file"):
        _mapper([])(d)


def test_truncated_image_is_named(tmp_path):
    d = _dict(tmp_path, (np.array([GT], np.float32), None))
    jpg = str(tmp_path / "broken.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(jpg)
    data = open(jpg, "rb").read()
    open(jpg, "wb").write(data[: len(data) // 2])
    d["file_name"] = jpg
    with pytest.raises(OSError, match=r"broken\.jpg"):
        _mapper([])(d)


def test_proposal_pickle_needs_opt_in(tmp_path):
    path = str(tmp_path / "p.pkl")
    write_proposal_pickle(path, ["im1"], [np.array([GT], np.float32)], [np.ones(1, np.float32)])
    with pytest.raises(PermissionError, match="ALLOW_PICKLE_PROPOSALS"):
        load_proposal_pickle(path)
    table = load_proposal_pickle(path, allow_pickle=True)
    assert table["im1"][0].tolist() == [GT]
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"ids", "boxes", "objectness_logits", "bbox_mode"}


# ------------------------------------------------------------------- loaders on synthetic


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synp") / "r2ios_synthetic")
    generate_synthetic_dataset(
        root, num_train=3, num_val=2, seed=1, min_size=(64, 72), max_size=(72, 80)
    )
    prefix = f"synp_{uuid.uuid4().hex[:6]}"
    register_synthetic(root, prefix=prefix)
    from detectron2.data import DatasetCatalog

    items = []
    for split in ("train", "val"):
        for d in DatasetCatalog.get(f"{prefix}_{split}"):
            items.append((d["image_id"], d["file_name"], d["height"], d["width"]))
    compute_proposals(items, os.path.join(root, "proposals", "selective_search"), max_boxes=50)
    return root, prefix


def _cfg(prefix):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.MODEL.LOAD_PROPOSALS = True
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.DATASETS.TRAIN = (f"{prefix}_train",)
    cfg.DATASETS.TEST = (f"{prefix}_val",)
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 20
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 30
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    return cfg


def test_train_loader_yields_proposals_and_masks(syn):
    _, prefix = syn
    batch = next(iter(build_r2ios_train_loader(_cfg(prefix))))
    assert len(batch) == 2
    for x in batch:
        h, w = x["image"].shape[1:]
        assert min(h, w) == 96
        p = x["proposals"]
        assert 0 < len(p) <= 20 and p.image_size == (h, w)
        b = p.proposal_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert x["instances"].gt_masks.tensor.shape[1:] == (h, w)


def test_test_loader_uses_metadata_dir_and_dirs_override(syn, tmp_path):
    root, prefix = syn
    cfg = _cfg(prefix)
    out = list(build_r2ios_test_loader(cfg, f"{prefix}_val"))
    assert len(out) == 2 and all(0 < len(x[0]["proposals"]) <= 30 for x in out)
    assert "instances" not in out[0][0]
    cfg.DATASETS.PROPOSAL_DIRS_TEST = (str(tmp_path / "nothing"),)
    with pytest.raises(FileNotFoundError, match="nothing"):
        build_r2ios_test_loader(cfg, f"{prefix}_val")


def test_test_loader_reads_pickle_only_with_opt_in(syn, tmp_path):
    root, prefix = syn
    cfg = _cfg(prefix)
    from detectron2.data import DatasetCatalog

    dicts = DatasetCatalog.get(f"{prefix}_val")
    ids, boxes, scores = [], [], []
    for d in dicts:
        path = os.path.join(root, "proposals", "selective_search", f"{d['image_id']}.npz")
        b, s = load_proposal_file(path, d["image_id"], d["height"], d["width"])
        ids.append(d["image_id"])
        boxes.append(b)
        scores.append(s)
    pkl = str(tmp_path / "val.pkl")
    write_proposal_pickle(pkl, ids, boxes, scores)
    cfg.DATASETS.PROPOSAL_FILES_TEST = (pkl,)
    with pytest.raises(PermissionError, match="ALLOW_PICKLE_PROPOSALS"):
        build_r2ios_test_loader(cfg, f"{prefix}_val")
    cfg.DATASETS.ALLOW_PICKLE_PROPOSALS = True
    from_pickle = [x[0]["proposals"] for x in build_r2ios_test_loader(cfg, f"{prefix}_val")]
    cfg.DATASETS.PROPOSAL_FILES_TEST = ()
    from_npz = [x[0]["proposals"] for x in build_r2ios_test_loader(cfg, f"{prefix}_val")]
    for a, b in zip(from_pickle, from_npz):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)


def test_mapper_from_config_forces_bitmask(syn):
    _, prefix = syn
    cfg = _cfg(prefix)
    cfg.INPUT.MASK_FORMAT = "polygon"
    m = PrecomputedProposalMapper(cfg, True)
    assert m.instance_mask_format == "bitmask" and m.proposal_topk == 20
    assert m.proposal_min_size == cfg.DATASETS.PROPOSAL_MIN_SIZE
