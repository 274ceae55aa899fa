"""A dataset's files and annotations are checked when it is first read: a missing image or an
annotation with an unknown category_id is an error naming the json, the image and the
annotation, not a crash inside a data-loader worker hours in."""

import json
import os
import uuid

import pytest
from coco_files import CATEGORY_IDS, CATEGORY_NAMES, write_coco4
from detectron2.data import DatasetCatalog, MetadataCatalog

from r2ios_d2.data import files, register_coco_for_r2ios
from r2ios_d2.data.files import check_image_files


def _register(tmp_path, image_ids=(1, 2, 3)):
    json_file = write_coco4(str(tmp_path), list(image_ids))
    name = f"files_{uuid.uuid4().hex[:8]}"
    register_coco_for_r2ios(name, json_file, str(tmp_path / "images"))
    return name, json_file


def test_own_coco_dataset_loads_with_its_category_ids(tmp_path):
    name, _ = _register(tmp_path)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3 and all(len(d["annotations"]) == 3 for d in dicts)
    meta = MetadataCatalog.get(name)
    assert list(meta.thing_classes) == list(CATEGORY_NAMES)
    assert meta.thing_dataset_id_to_contiguous_id == {c: i for i, c in enumerate(CATEGORY_IDS)}


def test_missing_image_names_json_image_id_and_path(tmp_path):
    name, json_file = _register(tmp_path)
    os.remove(tmp_path / "images" / "000002.png")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert json_file in msg and "1 of 3 image files do not exist" in msg
    assert f"image 2: {tmp_path / 'images' / '000002.png'}" in msg


def test_unknown_category_id_names_json_annotation_image_and_known_ids(tmp_path):
    name, json_file = _register(tmp_path)
    with open(json_file) as f:
        data = json.load(f)
    data["annotations"][4]["category_id"] = 9  # annotation 201 of image 2
    with open(json_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert msg.startswith(json_file)
    assert "annotation 201 of image 2 has category_id 9" in msg
    assert "known category ids are [3, 7, 11, 15]" in msg


def test_image_files_are_all_checked_once_per_dataset(tmp_path, monkeypatch):
    paths = []
    for i in range(100):
        paths.append(str(tmp_path / f"{i}.jpg"))
        open(paths[-1], "wb").close()
    calls = []

    def isfile(path):
        calls.append(path)
        return not path.endswith("/7.jpg")

    monkeypatch.setattr(files.os.path, "isfile", isfile)
    with pytest.raises(FileNotFoundError, match=r"'x' \(listed in split\.txt\).*image 7: .*7\.jpg"):
        check_image_files(paths, "x", list(range(100)), "split.txt")
    assert sorted(calls) == sorted(paths)
    monkeypatch.setattr(files.os.path, "isfile", lambda p: calls.append(p) or True)
    check_image_files(paths, "y", None, "split.txt")
    calls.clear()
    check_image_files(paths, "y", None, "split.txt")  # done before: not stat'ed again
    assert calls == []
