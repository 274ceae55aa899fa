"""The synthetic dataset: deterministic, written in both real formats, loadable by both loaders."""

import json
import os
import time
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from r2ios_d2.data.synthetic import (
    MARKER,
    SYNTHETIC_CLASSES,
    difficulty_statistics,
    generate_synthetic_dataset,
    register_synthetic,
    render_image,
)

SMALL = dict(num_train=4, num_val=3, seed=3, min_size=(72, 80), max_size=(88, 96))


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "r2ios_synthetic")
    generate_synthetic_dataset(root, **SMALL)
    return root


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_same_seed_gives_identical_files(syn_root, tmp_path):
    time.sleep(1.1)  # a clock second later: nothing time-dependent (e.g. .mat headers) may leak
    other = str(tmp_path / "again")
    generate_synthetic_dataset(other, **SMALL)
    a, b = _files(syn_root), _files(other)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert "SBD/inst/train_000000.mat" in a and "VOC2012/SegmentationObject/val_000002.png" in a


def test_other_seed_gives_other_images(syn_root, tmp_path):
    other = str(tmp_path / "seed4")
    generate_synthetic_dataset(other, **dict(SMALL, seed=4))
    p = os.path.join("SBD", "img", "train_000000.jpg")
    assert open(os.path.join(syn_root, p), "rb").read() != open(os.path.join(other, p), "rb").read()


def test_rerun_reuses_complete_dataset(syn_root):
    jpg = os.path.join(syn_root, "SBD", "img", "train_000001.jpg")
    before = os.stat(jpg).st_mtime_ns
    marker = generate_synthetic_dataset(syn_root, **SMALL)
    assert os.stat(jpg).st_mtime_ns == before
    assert marker["args"]["num_train"] == 4 and marker["classes"] == list(SYNTHETIC_CLASSES)
    with open(os.path.join(syn_root, MARKER)) as f:
        assert json.load(f)["args"]["seed"] == 3


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="precious|not empty"):
        generate_synthetic_dataset(str(root), **SMALL)
    assert (root / "precious.txt").exists()


def test_other_args_replace_own_dataset(tmp_path):
    root = str(tmp_path / "r")
    generate_synthetic_dataset(root, **dict(SMALL, num_train=2, num_val=1))
    generate_synthetic_dataset(root, **dict(SMALL, num_train=3, num_val=1))
    with open(os.path.join(root, "SBD", "train.txt")) as f:
        assert len(f.read().split()) == 3
    assert not [n for n in os.listdir(tmp_path) if n != "r"]  # no temp or old folders left


def test_both_loaders_give_the_same_instances(syn_root):
    prefix = f"syn_{uuid.uuid4().hex[:6]}"
    register_synthetic(syn_root, prefix=prefix)
    for split, n in (("train", 4), ("val", 3)):
        sbd = DatasetCatalog.get(f"{prefix}_{split}")
        voc = DatasetCatalog.get(f"{prefix}_voc_{split}")
        assert len(sbd) == len(voc) == n
        for a, b in zip(sbd, voc):
            assert (a["image_id"], a["height"], a["width"]) == (
                b["image_id"],
                b["height"],
                b["width"],
            )
            assert len(a["annotations"]) == len(b["annotations"]) > 0
            void = mask_util.decode(b["void_segmentation"]).astype(bool)
            for x, y in zip(a["annotations"], b["annotations"]):
                assert x["category_id"] == y["category_id"]
                assert 0 <= x["category_id"] < len(SYNTHETIC_CLASSES)
                mx = mask_util.decode(x["segmentation"]).astype(bool)
                my = mask_util.decode(y["segmentation"]).astype(bool)
                assert np.array_equal(mx & ~void, my) and my.any()
                x0, y0, x1, y1 = x["bbox"]
                ys, xs = np.nonzero(mx)
                assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert x["bbox_mode"] == BoxMode.XYXY_ABS
    md = MetadataCatalog.get(f"{prefix}_voc_val")
    assert md.thing_classes == list(SYNTHETIC_CLASSES) and md.evaluator_type == "sds"
    assert md.proposal_dir == os.path.join(syn_root, "proposals", "selective_search")


def test_missing_synthetic_dataset_says_how_to_generate(tmp_path):
    prefix = f"syn_{uuid.uuid4().hex[:6]}"
    register_synthetic(str(tmp_path / "absent"), prefix=prefix)
    with pytest.raises(FileNotFoundError, match=r"python -m r2ios_d2\.data\.synthetic --root"):
        DatasetCatalog.get(f"{prefix}_train")


def test_default_registration_exists():
    for n in ("r2ios_synthetic_train", "r2ios_synthetic_val", "r2ios_synthetic_voc_val"):
        assert MetadataCatalog.get(n).thing_classes == list(SYNTHETIC_CLASSES)


def test_rendered_images_have_same_class_overlaps_and_occlusion():
    overlaps = occluded = 0
    for i in range(12):
        rng = np.random.default_rng(i)
        image, inst, classes, amodal = render_image(rng, 96, 112)
        assert image.shape == (96, 112, 3) and image.dtype == np.uint8
        assert inst.max() == len(classes) == len(amodal)
        visible = [(inst == k + 1).sum() for k in range(len(classes))]
        assert all(0 < v <= a for v, a in zip(visible, amodal))
        occluded += sum(v < a for v, a in zip(visible, amodal))
        overlaps += len(classes) != len(set(classes))
    assert overlaps >= 6 and occluded >= 6


def test_difficulty_statistics_on_known_boxes():
    def anno(box, cat):
        m = np.zeros((20, 20), np.uint8, order="F")
        m[box[1] : box[3], box[0] : box[2]] = 1
        rle = mask_util.encode(m)
        return {"bbox": list(map(float, box)), "category_id": cat, "segmentation": rle}

    dicts = [
        {
            "image_id": "a",
            "annotations": [
                anno((0, 0, 10, 10), 0),
                anno((5, 0, 15, 10), 0),
                anno((0, 0, 4, 4), 1),
            ],
        },
        {"image_id": "b", "annotations": []},
    ]
    s = difficulty_statistics(dicts, amodal_areas={"a": [100, 150, 16], "b": []})
    assert s["mean_instances_per_image"] == 1.5
    assert s["frac_same_class_overlap"] == pytest.approx(2 / 3)
    assert s["mean_max_same_class_iou"] == pytest.approx(50 / 150)
    assert s["occluded_pixel_fraction"] == pytest.approx(50 / 266)


def test_marker_statistics_describe_a_hard_dataset(syn_root):
    with open(os.path.join(syn_root, MARKER)) as f:
        stats = json.load(f)["stats"]["train"]
    assert stats["num_images"] == 4 and stats["mean_instances_per_image"] >= 2
    assert 0 < stats["occluded_pixel_fraction"] < 1
    assert stats["frac_same_class_overlap"] > 0
