"""tools/benchmark_real.py (``tools/benchmark.py --real``): its options alone and behind the
dispatcher, the datasets it picks (and its error without them), the training chains, the photo
limit, COCO's AP from a predictions file and the results table. No training runs here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from readme_utils import load_tool

from r2ios_d2.benchmarking.coco_metrics import coco_ap_from_files


@pytest.fixture(scope="module")
def real():
    return load_tool("benchmark_real")


def test_options_alone_and_behind_the_dispatcher(real):
    args = real.build_parser().parse_args(
        ["--train", "a", "a.json", "a/", "--train", "b", "b.json", "b/"]
        + ["--val", "v", "v.json", "v/", "--jobs", "1", "--scale", "0.5", "--paper-literal"]
    )
    assert args.train == [["a", "a.json", "a/"], ["b", "b.json", "b/"]]
    assert args.val == ["v", "v.json", "v/"] and args.jobs == 1 and args.scale == 0.5
    assert args.paper_literal and args.categories == "voc" and args.device == "cpu"
    defaults = real.build_parser().parse_args([])
    assert defaults.train is None and defaults.val is None and defaults.scale is None
    assert real.build_parser().parse_args(["--work-dir", "w"]).real_work_dir == "w"

    dispatcher = load_tool("benchmark").build_parser()
    args = dispatcher.parse_args(["--real", "--quick", "--jobs", "3", "--real-work-dir", "w"])
    assert args.real and args.quick and args.jobs == 3 and args.real_work_dir == "w"
    assert args.work_dir != "w"  # the ablation's --work-dir is its own
    assert dispatcher.parse_args(["--real"]).categories == "voc"


def test_default_datasets_and_the_error_without_them(real, tmp_path):
    train, val = real.resolve_datasets(None, None, shared=tmp_path)
    assert [d.name for d in train] == ["tiny_coco_voc_train", "coco_mini_voc_train"]
    assert train[1].json == tmp_path / "coco_mini_train/annotations/instances_train2017.json"
    assert val.images == tmp_path / "tiny_coco/val2017"
    mine = real.resolve_datasets([["t", "t.json", "t/"]], ["v", "v.json", "v/"], tmp_path / "no")
    assert mine[0][0].json == Path("t.json") and mine[1].name == "v"
    with pytest.raises(SystemExit, match="--train NAME JSON IMAGES"):
        real.resolve_datasets(None, ["v", "v.json", "v/"], shared=tmp_path / "missing")
    with pytest.raises(SystemExit, match="must differ"):
        real.resolve_datasets([["v", "t.json", "t/"]], ["v", "v.json", "v/"], tmp_path)


def test_chains_keep_fine_tunings_after_their_start(real):
    rows = [*real.ROWS, *real.PAPER_LITERAL_ROWS]
    chains = [[r.key for r in c] for c in real.chains(rows)]
    assert sorted(chains) == [
        ["literal_stage1", "literal_stage2"],
        ["mask_rcnn_heads"],
        ["r2ios_scratch"],
        ["r2ios_stage1", "r2ios_stage2"],
    ]
    # With the schedules' iterations the costliest chain goes first: from scratch (200 its at
    # 8x a cached stage-1 step) before both stages (1000 + 300 at 1x) before the heads (1300
    # at 0.6x).
    its = {"r2ios_stage1": 1000, "r2ios_stage2": 300, "mask_rcnn_heads": 1300, "r2ios_scratch": 200}
    ordered = [[r.key for r in c] for c in real.chains(real.ROWS, its)]
    assert ordered == [["r2ios_scratch"], ["r2ios_stage1", "r2ios_stage2"], ["mask_rcnn_heads"]]
    assert sum("Mask R-CNN" in r.name for r in real.ROWS) == 1
    assert real.PICTURE_ROW in {r.key for r in real.ROWS}


def test_photo_limit_keeps_the_first_photos_with_kept_instances(real, tmp_path):
    cats = [{"id": 1, "name": "person"}, {"id": 9, "name": "boat"}, {"id": 3, "name": "car"}]
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in (5, 2, 7, 4)]
    anns = [
        {"id": 1, "image_id": 2, "category_id": 3, "iscrowd": 0},  # car only: not kept
        {"id": 2, "image_id": 4, "category_id": 1, "iscrowd": 1},  # crowd only
        {"id": 3, "image_id": 5, "category_id": 9, "iscrowd": 0},
        {"id": 4, "image_id": 7, "category_id": 1, "iscrowd": 0},
        {"id": 5, "image_id": 7, "category_id": 3, "iscrowd": 0},
    ]
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    out = json.loads(
        real.limit_coco_json(src, tmp_path / "out.json", 2, ["person", "boat"]).read_text()
    )
    assert sorted(im["id"] for im in out["images"]) == [5, 7]
    assert sorted(a["id"] for a in out["annotations"]) == [3, 4, 5]
    assert out["categories"] == cats
    one = json.loads(real.limit_coco_json(src, tmp_path / "one.json", 1).read_text())
    assert [im["id"] for im in one["images"]] == [2]


def _square(x: int, size: int = 16) -> np.ndarray:
    m = np.zeros((32, 48), np.uint8, order="F")
    m[4 : 4 + size, x : x + size] = 1
    return m


def test_coco_ap_of_a_predictions_file(tmp_path):
    gt_anns, dets = [], []
    for i, (x, cat) in enumerate([(2, 1), (26, 2)]):
        rle = mask_util.encode(np.asfortranarray(_square(x)))
        rle["counts"] = rle["counts"].decode()
        box = [float(x), 4.0, 16.0, 16.0]
        gt_anns.append(
            {"id": i + 1, "image_id": 1, "category_id": cat, "bbox": box, "area": 256.0,
             "iscrowd": 0, "segmentation": rle}
        )  # fmt: skip
        dets.append(
            {"image_id": 1, "category_id": cat, "bbox": box, "score": 0.9, "segmentation": rle}
        )
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "height": 32, "width": 48, "file_name": "1.png"}],
                "annotations": gt_anns,
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            }
        )
    )
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps(dets))
    result = coco_ap_from_files(gt, perfect)
    assert result["segm"]["AP"] == pytest.approx(100.0) and result["bbox"]["AP50"] == pytest.approx(
        100.0
    )
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps([{**d, "category_id": 3 - d["category_id"]} for d in dets]))
    assert coco_ap_from_files(gt, swapped)["segm"]["AP"] == pytest.approx(0.0)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert coco_ap_from_files(gt, empty) == {
        t: {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} for t in ("segm", "bbox")
    }


def test_results_table_and_markdown(real):
    segm = {"APr50": 31.25, "APr60": 20.0, "APr70": 9.5, "APr_vol": 30.0, "APr50-person": 44.4}
    coco = {"segm": {"AP": 12.3, "AP50": 25.0}, "bbox": {"AP": 14.0}}
    rows = {
        "R2-IOS stage 2": real.row_summary(segm, {"AP50": 40.0}, coco, 600.0),
        "Mask R-CNN heads (stock detectron2)": real.row_summary(segm, {}, None, None),
    }
    assert rows["R2-IOS stage 2"]["person"]["APr50"] == 44.4
    assert rows["R2-IOS stage 2"]["segm"] == {k: segm[k] for k in real.METRICS}
    table = real.real_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| model") and "person AP^r 50" in lines[0]
    assert "COCO mask AP" in lines[0] and "train min" in lines[0]
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first == ["R2-IOS stage 2", "31.2", "20.0", "9.5", "30.0", "44.4", "12.3", "25.0",
                     "14.0", "40.0", "10.0"]  # fmt: skip
    assert lines[3].count("–") == 5  # no COCO AP, box AP50 or training time
    result = {
        "machine": {"command": "tools/benchmark.py --real", "date": "today", "cpu_count": 2,
                    "cpu_model": "cpu", "torch": "2", "torch_threads": 1, "detectron2": "0.6"},
        "settings": {"train": ["a", "b"], "val": "v", "train_images": 9, "val_images": 5,
                     "categories": "voc", "num_classes": 20, "scale": 1.0},
        "rows": rows,
        "total_seconds": 120.0,
        "pictures": [{"picture": "pictures/real_1.png", "file_name": "1.jpg",
                      "flickr_url": "http://x", "license": "Attribution License"}],
    }  # fmt: skip
    md = real._markdown(result, quick=False)
    assert md.startswith("# R2-IOS on real photographs\n") and table in md
    assert "`pictures/real_1.png`: 1.jpg, http://x (Attribution License)" in md
