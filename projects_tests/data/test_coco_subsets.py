"""COCO category subsets: kept classes renamed and in the asked order, the others dropped, images
left without instances kept (and dropped by training's empty-image filter), the command-line
form, the errors, and two subset datasets trained on together."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from readme_utils import load_tool

from r2ios_d2.data import get_r2ios_dataset_dicts
from r2ios_d2.data.coco import (
    VOC_CLASSES_FROM_COCO,
    register_coco_for_r2ios,
    register_coco_from_args,
    selective_search_command,
)
from r2ios_d2.data.coco_subsets import (
    format_coco_categories,
    parse_coco_categories,
    write_category_subset,
)

# COCO ids with gaps; "fire hydrant" is not kept.
CATEGORIES = [
    {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
    {"id": 5, "name": "airplane", "supercategory": "vehicle"},
    {"id": 11, "name": "fire hydrant", "supercategory": "outdoor"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]
KEEP = {"aeroplane": "airplane", "dog": "dog", "bicycle": "bicycle"}  # VOC-style names and order


def _ann(ann_id: int, image_id: int, category_id: int, x: int) -> dict:
    poly = [x, 4, x + 10, 4, x + 10, 14, x, 14]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, 4, 10, 10],
        "area": 100.0,
        "iscrowd": 0,
        "segmentation": [poly],
    }


def write_coco(folder: Path, first_id: int = 1) -> Path:
    """Four 32x48 images: 1) airplane + hydrant, 2) dog + bicycle, 3) only a hydrant, 4) none."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    ids = [first_id + i for i in range(4)]
    images = []
    for i in ids:
        Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(folder / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 32, "width": 48})
    anns = [
        _ann(1, ids[0], 5, 2),
        _ann(2, ids[0], 11, 20),
        _ann(3, ids[1], 18, 2),
        _ann(4, ids[1], 2, 20),
        _ann(5, ids[2], 11, 2),
    ]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("R2IOS_D2_CACHE", str(tmp_path / "cache"))


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_subset_renames_reorders_and_keeps_images_without_instances(tmp_path):
    json_file = write_coco(tmp_path)
    name = _name("subset")
    register_coco_for_r2ios(name, str(json_file), str(tmp_path / "images"), categories=KEEP)
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["aeroplane", "dog", "bicycle"]
    by_image = {d["image_id"]: [a["category_id"] for a in d["annotations"]] for d in dicts}
    # airplane -> 0, dog -> 1, bicycle -> 2; the hydrants are gone, every image stays.
    assert by_image == {1: [0], 2: [1, 2], 3: [], 4: []}
    assert meta.source_json_file == str(json_file)
    assert meta.proposal_dir == str(tmp_path / "proposals" / name)  # beside the source json
    # Training drops the images left without instances (DATALOADER.FILTER_EMPTY_ANNOTATIONS).
    train = get_r2ios_dataset_dicts(name, is_train=True, load_proposals=False, num_classes=3)
    assert sorted(d["image_id"] for d in train) == [1, 2]
    # The derived json is what COCO's evaluator reads: only the subset, ids 1..K.
    derived = json.loads(Path(meta.json_file).read_text())
    assert [(c["id"], c["name"]) for c in derived["categories"]] == [
        (1, "aeroplane"),
        (2, "dog"),
        (3, "bicycle"),
    ]
    assert len(derived["images"]) == 4 and len(derived["annotations"]) == 3
    assert Path(meta.json_file).is_relative_to(tmp_path / "cache")


def test_subset_json_is_written_once_and_per_subset(tmp_path):
    json_file = write_coco(tmp_path)
    a = write_category_subset(json_file, KEEP)
    stamp = a.stat().st_mtime_ns
    assert write_category_subset(json_file, dict(KEEP)) == a and a.stat().st_mtime_ns == stamp
    assert write_category_subset(json_file, ["dog"]) != a


def test_command_line_subset_and_presets():
    assert parse_coco_categories(None) is None and parse_coco_categories("all") is None
    voc = parse_coco_categories("voc")
    assert list(voc) == list(VOC_CLASSES_FROM_COCO) and len(voc) == 20
    assert voc["aeroplane"] == "airplane" and voc["tvmonitor"] == "tv"
    assert voc["diningtable"] == "dining table" and voc["sofa"] == "couch"
    mapping = parse_coco_categories("person, sofa=couch ,dining table")
    assert mapping == {"person": "person", "sofa": "couch", "dining table": "dining table"}
    assert format_coco_categories(voc) == "voc"
    assert parse_coco_categories(format_coco_categories(mapping)) == mapping
    with pytest.raises(ValueError, match="given twice"):
        parse_coco_categories("dog,dog")
    with pytest.raises(ValueError, match="several classes onto"):
        parse_coco_categories("a=dog,b=dog")
    with pytest.raises(ValueError, match="empty entry"):
        parse_coco_categories("dog,,cat")


def test_unknown_category_and_other_subset_under_a_taken_name(tmp_path):
    json_file = write_coco(tmp_path)
    with pytest.raises(ValueError, match=r"no categories named \['cat'\].*airplane, bicycle"):
        register_coco_for_r2ios(_name("bad"), str(json_file), str(tmp_path), categories=["cat"])
    name = _name("taken")
    register_coco_for_r2ios(name, str(json_file), str(tmp_path / "images"), categories=KEEP)
    register_coco_for_r2ios(name, str(json_file), str(tmp_path / "images"), categories=KEEP)
    with pytest.raises(ValueError, match="other categories"):
        register_coco_for_r2ios(name, str(json_file), str(tmp_path / "images"), categories=["dog"])


def test_tools_flag_registers_every_dataset_with_the_subset(tmp_path):
    a, b = write_coco(tmp_path / "a"), write_coco(tmp_path / "b", first_id=11)
    na, nb = _name("flag_a"), _name("flag_b")
    parser = load_tool("cli_options").add_register_coco_argument(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--coco-categories", "aeroplane=airplane,dog,bicycle"]
        + ["--register-coco", na, str(a), str(tmp_path / "a" / "images")]
        + ["--register-coco", nb, str(b), str(tmp_path / "b" / "images")]
    )
    assert register_coco_from_args(args) == [na, nb]
    for n in (na, nb):
        DatasetCatalog.get(n)
        assert MetadataCatalog.get(n).thing_classes == ["aeroplane", "dog", "bicycle"]
    # The proposal command names the dataset as it was registered.
    assert "--coco-categories aeroplane=airplane,dog,bicycle" in selective_search_command(na)
    bad = parser.parse_args(["--coco-categories", "dog,dog"])
    with pytest.raises(SystemExit, match="twice"):
        register_coco_from_args(bad)


def test_two_subset_datasets_train_together(tmp_path):
    # DATASETS.TRAIN with two names: one list of training dicts, one class list, ids distinct.
    a, b = write_coco(tmp_path / "a"), write_coco(tmp_path / "b", first_id=11)
    na, nb = _name("two_a"), _name("two_b")
    register_coco_for_r2ios(na, str(a), str(tmp_path / "a" / "images"), categories=KEEP)
    register_coco_for_r2ios(nb, str(b), str(tmp_path / "b" / "images"), categories=KEEP)
    train = get_r2ios_dataset_dicts([na, nb], is_train=True, load_proposals=False, num_classes=3)
    assert sorted(d["image_id"] for d in train) == [1, 2, 11, 12]
    other = _name("two_c")
    register_coco_for_r2ios(other, str(b), str(tmp_path / "b" / "images"), categories=["dog"])
    with pytest.raises(ValueError, match="different thing_classes"):
        get_r2ios_dataset_dicts([na, other], is_train=True, load_proposals=False)
