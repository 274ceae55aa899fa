"""VOC2012 / SBD loaders on tiny trees written in the real formats."""

import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import scipy.io
import scipy.sparse
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from r2ios_d2.data import cache, voc_sbd
from r2ios_d2.data import datasets as ds
from r2ios_d2.data.datasets import (
    VOC_CLASSES,
    load_sbd_instances,
    load_voc_seg_instances,
    register_sbd,
    register_voc_seg,
)

H, W = 12, 16


def _palette_png(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(ds.voc_palette(256).reshape(-1).tolist())
    im.save(path)


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _example_maps():
    """Two instances: 1 = person (15), 2 = mostly dog (12) with some cat (8) pixels."""
    obj = np.zeros((H, W), np.uint8)
    cls = np.zeros((H, W), np.uint8)
    obj[2:6, 3:8] = 1
    cls[2:6, 3:8] = 15
    obj[6:11, 8:15] = 2
    cls[6:11, 8:15] = 12
    cls[6:8, 8:11] = 8  # 6 minority pixels of another class
    # VOC's void band around instance 1 (outside its pixels)
    obj[1, 2:9] = 255
    cls[1, 2:9] = 255
    return obj, cls


def write_voc(root, ids=("a_000001",), split="val", maps=None):
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for k, i in enumerate(ids):
        obj, cls = maps if maps is not None else _example_maps()
        Image.fromarray(_rgb(k)).save(os.path.join(root, "JPEGImages", f"{i}.jpg"))
        _palette_png(os.path.join(root, "SegmentationObject", f"{i}.png"), obj)
        _palette_png(os.path.join(root, "SegmentationClass", f"{i}.png"), cls)
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))


def _sparse_cells(masks):
    cells = np.empty((len(masks), 1), dtype=object)
    for k, m in enumerate(masks):
        cells[k, 0] = scipy.sparse.csc_matrix(m)
    return cells


def write_sbd(root, ids=("b_000001",), split_file="train.txt", seg=None, cats=(15, 12)):
    for sub in ("img", "inst", "cls"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    if seg is None:
        seg = np.zeros((H, W), np.uint8)
        seg[2:6, 3:8] = 1
        seg[6:11, 8:15] = 2
    clsmap = np.zeros_like(seg)
    for k, c in enumerate(cats):
        clsmap[seg == k + 1] = c
    for k, i in enumerate(ids):
        Image.fromarray(_rgb(k)).save(os.path.join(root, "img", f"{i}.jpg"))
        masks = [seg == k + 1 for k in range(len(cats))]
        scipy.io.savemat(
            os.path.join(root, "inst", f"{i}.mat"),
            {
                "GTinst": {
                    "Segmentation": seg,
                    "Boundaries": _sparse_cells(masks),
                    "Categories": np.asarray(cats, np.uint8).reshape(-1, 1),
                }
            },
        )
        scipy.io.savemat(
            os.path.join(root, "cls", f"{i}.mat"),
            {
                "GTcls": {
                    "Segmentation": clsmap,
                    "Boundaries": _sparse_cells([clsmap == c for c in range(1, 21)]),
                    "CategoriesPresent": np.asarray(sorted(set(cats)), np.uint8).reshape(-1, 1),
                }
            },
        )
    with open(os.path.join(root, split_file), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))


def _decode(seg):
    return mask_util.decode(seg).astype(bool)


def _name():
    return f"test_{uuid.uuid4().hex[:8]}"


def test_voc_loader_masks_boxes_classes_pixel_exact(tmp_path):
    root = str(tmp_path / "VOC2012")
    write_voc(root)
    (d,) = load_voc_seg_instances(root, "val", cache=False)
    obj, _ = _example_maps()
    assert d["file_name"] == os.path.join(root, "JPEGImages", "a_000001.jpg")
    assert (d["image_id"], d["height"], d["width"]) == ("a_000001", H, W)
    assert [a["category_id"] for a in d["annotations"]] == [14, 11]  # person, dog (majority)
    for k, a in enumerate(d["annotations"]):
        assert np.array_equal(_decode(a["segmentation"]), obj == k + 1)
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["bbox_mode"] == BoxMode.XYXY_ABS and a["iscrowd"] == 0
    assert d["annotations"][0]["bbox"] == [3.0, 2.0, 8.0, 6.0]
    assert d["annotations"][1]["bbox"] == [8.0, 6.0, 15.0, 11.0]
    assert np.array_equal(_decode(d["void_segmentation"]), obj == 255)


def test_sbd_loader_masks_boxes_classes_pixel_exact(tmp_path):
    root = str(tmp_path / "SBD")
    write_sbd(root, cats=(15, 3))
    (d,) = load_sbd_instances(root, "train.txt", cache=False)
    assert (d["image_id"], d["height"], d["width"]) == ("b_000001", H, W)
    assert d["file_name"] == os.path.join(root, "img", "b_000001.jpg")
    assert [a["category_id"] for a in d["annotations"]] == [14, 2]
    masks = [_decode(a["segmentation"]) for a in d["annotations"]]
    assert masks[0].sum() == 20 and masks[0][2:6, 3:8].all()
    assert masks[1].sum() == 35 and masks[1][6:11, 8:15].all()
    assert [a["bbox"] for a in d["annotations"]] == [[3.0, 2.0, 8.0, 6.0], [8.0, 6.0, 15.0, 11.0]]
    assert "void_segmentation" not in d


def test_sbd_single_instance_and_empty_image(tmp_path):
    root = str(tmp_path / "SBD")
    seg = np.zeros((H, W), np.uint8)
    seg[0:3, 0:2] = 1
    write_sbd(root, ids=("one",), seg=seg, cats=(7,))  # squeeze_me turns (1,1) into a scalar
    (d,) = load_sbd_instances(root, "train.txt", cache=False)
    assert [a["category_id"] for a in d["annotations"]] == [6]
    assert d["annotations"][0]["bbox"] == [0.0, 0.0, 2.0, 3.0]
    write_sbd(root, ids=("none",), seg=np.zeros((H, W), np.uint8), cats=(), split_file="e.txt")
    (e,) = load_sbd_instances(root, "e.txt", cache=False)
    assert e["annotations"] == []


def test_registered_voc_and_sbd_metadata(tmp_path):
    voc, sbd = str(tmp_path / "VOC2012"), str(tmp_path / "SBD")
    write_voc(voc)
    write_sbd(sbd)
    nv, ns = _name(), _name()
    register_voc_seg(nv, voc, "val")
    register_sbd(ns, sbd, "train.txt")
    assert len(DatasetCatalog.get(nv)) == 1 and len(DatasetCatalog.get(ns)) == 1
    for name, root, fmt in ((nv, voc, "voc"), (ns, sbd, "sbd")):
        md = MetadataCatalog.get(name)
        assert md.thing_classes == list(VOC_CLASSES) and len(md.thing_colors) == 20
        assert md.evaluator_type == "sds" and md.dataset_format == fmt
        assert md.proposal_dir == os.path.join(root, "proposals", "selective_search")
        assert md.dataset_root == root and md.void_masks == (fmt == "voc")


def test_builtin_names_registered_lazily():
    for name in (
        "voc_2012_seg_train",
        "voc_2012_seg_val",
        "sbd_train",
        "sbd_val",
        "voc_sds_train",
        "voc_sds_val",
    ):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "sds"
    assert MetadataCatalog.get("voc_sds_val").split_file.endswith(
        os.path.join("SBD", "sds_val.txt")
    )


def test_missing_root_names_expected_layout(tmp_path):
    name = _name()
    register_voc_seg(name, str(tmp_path / "nowhere" / "VOC2012"), "val")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*VOC2012(.|\n)*SegmentationObject"):
        DatasetCatalog.get(name)
    name = _name()
    register_sbd(name, str(tmp_path / "nowhere" / "SBD"), "train.txt")
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere.*SBD.*inst/<id>.mat"):
        DatasetCatalog.get(name)


def test_missing_split_file_is_named(tmp_path):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd)
    name = _name()
    register_sbd(name, sbd, "sds_train.txt")
    with pytest.raises(FileNotFoundError, match=r"(?s)SBD.sds_train\.txt does not exist.*sds_val"):
        DatasetCatalog.get(name)
    voc = str(tmp_path / "VOC2012")
    write_voc(voc)
    with pytest.raises(FileNotFoundError, match=r"ImageSets.Segmentation.train\.txt"):
        load_voc_seg_instances(voc, "train", cache=False)


def test_missing_image_listed_in_split(tmp_path):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd)
    os.remove(os.path.join(sbd, "img", "b_000001.jpg"))
    with pytest.raises(FileNotFoundError, match=r"b_000001\.jpg"):
        load_sbd_instances(sbd, "train.txt", cache=False)


def test_truncated_png_is_named(tmp_path):
    voc = str(tmp_path / "VOC2012")
    write_voc(voc)
    png = os.path.join(voc, "SegmentationObject", "a_000001.png")
    data = open(png, "rb").read()
    open(png, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"SegmentationObject.a_000001\.png"):
        load_voc_seg_instances(voc, "val", cache=False)


def test_rgb_png_is_rejected(tmp_path):
    voc = str(tmp_path / "VOC2012")
    write_voc(voc)
    png = os.path.join(voc, "SegmentationClass", "a_000001.png")
    Image.open(png).convert("RGB").save(png)
    with pytest.raises(ValueError, match=r"(?s)SegmentationClass.a_000001\.png.*mode RGB"):
        load_voc_seg_instances(voc, "val", cache=False)


def test_truncated_mat_is_named(tmp_path):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd)
    mat = os.path.join(sbd, "inst", "b_000001.mat")
    data = open(mat, "rb").read()
    open(mat, "wb").write(data[:200])
    with pytest.raises(ValueError, match=r"inst.b_000001\.mat"):
        load_sbd_instances(sbd, "train.txt", cache=False)


def test_mat_without_gtinst_is_named(tmp_path):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd)
    mat = os.path.join(sbd, "inst", "b_000001.mat")
    scipy.io.savemat(mat, {"something": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"b_000001\.mat has no GTinst"):
        load_sbd_instances(sbd, "train.txt", cache=False)


def test_voc_instance_without_class_is_an_error(tmp_path):
    voc = str(tmp_path / "VOC2012")
    obj, cls = _example_maps()
    cls[obj == 2] = 0  # instance 2 has no class pixels
    cls[6, 8] = 255
    write_voc(voc, maps=(obj, cls))
    with pytest.raises(ValueError, match=r"Instance 2 of .*a_000001\.png has no class"):
        load_voc_seg_instances(voc, "val", cache=False)


def test_sbd_instance_without_category_is_an_error(tmp_path):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd, cats=(15,))  # instance 2 has no entry in Categories
    with pytest.raises(ValueError, match=r"Instance 2 of .*b_000001\.mat has no class"):
        load_sbd_instances(sbd, "train.txt", cache=False)


def test_cache_is_reused_and_invalidated_by_changes(tmp_path, monkeypatch):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd, ids=("x1", "x2"))
    first = load_sbd_instances(sbd, "train.txt", cache=True)
    cache_files = os.listdir(os.path.join(sbd, ".r2ios_cache"))
    assert len(cache_files) == 1 and cache_files[0].endswith(".json.gz")

    def fail(job):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(voc_sbd, "_sbd_record", fail)
    second = load_sbd_instances(sbd, "train.txt", cache=True)
    assert second == first and second[0]["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS
    monkeypatch.undo()
    seg = np.zeros((H, W), np.uint8)
    seg[0:4, 0:4] = 1
    write_sbd(sbd, ids=("x2",), seg=seg, cats=(5,), split_file="other.txt")
    third = load_sbd_instances(sbd, "train.txt", cache=True)
    assert [a["category_id"] for a in third[1]["annotations"]] == [4]  # changed file re-read


def test_parallel_loading_matches_serial(tmp_path, monkeypatch):
    sbd = str(tmp_path / "SBD")
    write_sbd(sbd, ids=tuple(f"p{i}" for i in range(6)))
    serial = load_sbd_instances(sbd, "train.txt", cache=False, num_workers=1)
    monkeypatch.setattr(cache, "_MIN_IMAGES_FOR_POOL", 0)
    parallel = load_sbd_instances(sbd, "train.txt", cache=False, num_workers=2)
    assert parallel == serial and [d["image_id"] for d in parallel] == [f"p{i}" for i in range(6)]
