"""Selective search: the function, the resumable batch runner and the CLI."""

import importlib.util
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from readme_utils import REPO

from r2ios_d2.data.proposals import load_proposal_file
from r2ios_d2.data.selective_search import compute_proposals, proposal_recall, selective_search

TOOL = os.path.join(REPO, "tools", "selective_search.py")


def _image(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 10, (h, w, 3), dtype=np.uint8)
    img[10:30, 8:40] = (30, 200, 40)
    img[35:55, 45:75] = (200, 40, 40)
    return img


def test_boxes_inside_image_scores_descending():
    img = _image()
    boxes, scores = selective_search(img, "fast", max_boxes=25)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert 0 < len(boxes) <= 25 and boxes.shape == (len(scores), 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (np.diff(scores) < 0).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_finds_the_objects_and_accepts_grey():
    img = _image()
    boxes, _ = selective_search(img, "quality", max_boxes=2000)
    for gt in ([8, 10, 40, 30], [45, 35, 75, 55]):
        lt = np.maximum(boxes[:, :2], gt[:2])
        rb = np.minimum(boxes[:, 2:], gt[2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        iou = inter / (area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter)
        assert iou.max() > 0.7
    grey, _ = selective_search(img[:, :, 0], "fast")
    assert len(grey) > 0
    with pytest.raises(ValueError, match="mode"):
        selective_search(img, "slow")


def _write_images(folder, n=3):
    os.makedirs(folder, exist_ok=True)
    items = []
    for i in range(n):
        path = os.path.join(folder, f"im{i}.jpg")
        Image.fromarray(_image(seed=i)[:, :, ::-1]).save(path)
        items.append((f"im{i}", path, 60, 80))
    return items


def test_compute_proposals_is_resumable_and_parallel(tmp_path):
    items = _write_images(str(tmp_path / "img"))
    out = str(tmp_path / "props")
    first = compute_proposals(items, out, "fast", max_boxes=40, workers=2)
    assert first["computed"] == 3 and first["skipped"] == 0
    boxes, _ = load_proposal_file(os.path.join(out, "im1.npz"), "im1", 60, 80)
    assert 0 < len(boxes) <= 40
    assert compute_proposals(items, out, "fast", max_boxes=40)["skipped"] == 3
    open(os.path.join(out, "im2.npz"), "wb").write(b"truncated")
    again = compute_proposals(items, out, "fast", max_boxes=40)
    assert (again["computed"], again["skipped"]) == (1, 2)
    load_proposal_file(os.path.join(out, "im2.npz"), "im2", 60, 80)
    assert sorted(os.listdir(out)) == ["im0.npz", "im1.npz", "im2.npz"]


def test_box_order_is_the_same_whatever_ran_before(tmp_path):
    """OpenCV ranks the regions with the C library's rand(): seeded per image, an image's
    boxes come in the same order alone, after other images, and from 1 or 2 pool workers."""
    img = _image(seed=5)
    alone, _ = selective_search(img, "fast")
    for seed in range(3):
        selective_search(_image(seed=seed), "quality")
    again, _ = selective_search(img, "fast")
    assert len(alone) > 10 and np.array_equal(alone, again)
    items = _write_images(str(tmp_path / "img"), n=6)
    runs = []
    for workers in (1, 2):
        out = str(tmp_path / f"props{workers}")
        compute_proposals(items, out, "fast", max_boxes=200, workers=workers)
        runs.append([load_proposal_file(os.path.join(out, f"im{i}.npz"))[0] for i in range(6)])
    for one, two in zip(*runs):
        assert np.array_equal(one, two)


def test_unreadable_image_is_named(tmp_path):
    bad = str(tmp_path / "bad.jpg")
    open(bad, "wb").write(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        compute_proposals([("bad", bad, -1, -1)], str(tmp_path / "p"))


def test_proposal_recall():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        from r2ios_d2.data.proposals import save_proposal_file

        save_proposal_file(
            os.path.join(d, "a.npz"), np.array([[0, 0, 10, 10]], np.float32), None, "a", 20, 20
        )
        dicts = [
            {
                "image_id": "a",
                "height": 20,
                "width": 20,
                "annotations": [{"bbox": [0, 0, 10, 10]}, {"bbox": [0, 0, 10, 5]}],
            }
        ]
        r = proposal_recall(dicts, d)
    assert r["recall@0.5"] == 1.0 and r["recall@0.7"] == 0.5 and r["mabo"] == 0.75


def test_cli_on_image_folder_with_pickle_export(tmp_path, capsys):
    _write_images(str(tmp_path / "img"), n=2)
    spec = importlib.util.spec_from_file_location("ss_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    pkl = str(tmp_path / "p.pkl")
    tool.main(
        [
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "out"),
            "--max-boxes",
            "30",
            "--workers",
            "1",
            "--export-pickle",
            pkl,
        ]
    )
    assert "2 images computed" in capsys.readouterr().out
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    assert data["ids"] == ["im0", "im1"] and all(len(b) <= 30 for b in data["boxes"])
    b, _ = load_proposal_file(str(tmp_path / "out" / "im0.npz"), "im0", 60, 80)
    assert np.array_equal(b, data["boxes"][0])
