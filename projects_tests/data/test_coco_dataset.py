"""Your own COCO-format dataset: registration, the clear errors for what R2-IOS cannot train on,
both evaluators on such a dataset, and the README's commands run end to end."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import uuid
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image
from readme_utils import REPO, load_tool, readme_commands

from r2ios_d2.data.coco import (
    check_r2ios_training_dicts,
    register_coco_for_r2ios,
    register_coco_from_args,
)
from r2ios_d2.data.proposals import attach_proposals
from r2ios_d2.evaluation import SDSEvaluator, gt_from_dataset_dicts

H, W = 96, 112
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]  # ids need not be 0..K-1
COLOURS = {3: (220, 60, 40), 7: (40, 200, 40)}


# ----------------------------------------------------------------------------- the dataset


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(mask: np.ndarray) -> Dict:
    """COCO's crowd format: run lengths (starting with background) in column-major order."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


# Per image: (category id, "poly" | "rle", mask, polygon or None); image 0 has a crowd region.
def _instances(i: int) -> List[Tuple[int, str, np.ndarray, Optional[List[float]]]]:
    dx = 6 * i
    x0, y0, x1, y1 = 8 + dx, 10, 48 + dx, 44
    square = (3, "poly", _rect(x0, y0, x1, y1), [x0, y0, x1, y0, x1, y1, x0, y1])
    disc = (7, "rle", _disc(78 - dx, 62, 16), None)
    small = (3, "rle", _rect(60, 8, 84, 28), None)
    return [square, disc] + ([small] if i % 2 else [])


def write_coco_dataset(folder: str, image_ids: List[int], name: str = "train.json") -> str:
    """Images ``images/im<id>.png`` (96x112, shared) and a COCO json ``<folder>/<name>`` with
    polygon and RLE instances of two categories and, on the first image, a crowd region."""
    images_dir = os.path.join(folder, "images")
    os.makedirs(images_dir, exist_ok=True)
    images, annotations = [], []
    for i in image_ids:
        rng = np.random.default_rng(i)
        img = rng.integers(60, 100, (H, W, 3)).astype(np.uint8)
        for cat, kind, mask, poly in _instances(i):
            img[mask] = COLOURS[cat]
            x, y = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [
                        float(x[0]),
                        float(y[0]),
                        float(x[-1] + 1 - x[0]),
                        float(y[-1] + 1 - y[0]),
                    ],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [poly] if kind == "poly" else _rle(mask),
                }
            )
        if i == image_ids[0]:  # a crowd of small discs, as COCO writes it (uncompressed RLE)
            crowd = _disc(20, 76, 7) | _disc(36, 80, 7)
            img[crowd] = COLOURS[7]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 7,
                    "bbox": [13.0, 69.0, 30.0, 18.0],
                    "area": float(crowd.sum()),
                    "iscrowd": 1,
                    "segmentation": _uncompressed_rle(crowd),
                }
            )
        file_name = f"im{i}.png"
        Image.fromarray(img).save(os.path.join(images_dir, file_name))
        images.append({"id": i, "file_name": file_name, "height": H, "width": W})
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _register(tmp_path, image_ids=(1, 2, 3), edit=None) -> Tuple[str, str]:
    json_file = write_coco_dataset(str(tmp_path), list(image_ids))
    if edit is not None:
        with open(json_file) as f:
            doc = json.load(f)
        edit(doc)
        with open(json_file, "w") as f:
            json.dump(doc, f)
    name = _unique("coco_test")
    register_coco_for_r2ios(name, json_file, str(tmp_path / "images"))
    return name, json_file


# ----------------------------------------------------------------------------- registration


def test_registration_sets_proposal_dir_and_evaluator(tmp_path):
    name, json_file = _register(tmp_path)
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco"
    assert meta.proposal_dir == os.path.join(str(tmp_path), "proposals", name)
    register_coco_for_r2ios(name, json_file, str(tmp_path / "images"))  # same again: no-op
    with pytest.raises(ValueError, match=name):
        register_coco_for_r2ios(name, json_file, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_coco_for_r2ios(_unique("x"), str(tmp_path / "missing.json"), str(tmp_path))


def test_register_coco_flag_is_repeatable(tmp_path):
    json_file = write_coco_dataset(str(tmp_path), [1])
    a, b = _unique("flag_a"), _unique("flag_b")
    parser = load_tool("cli_options").add_register_coco_argument(argparse.ArgumentParser())
    images = str(tmp_path / "images")
    args = parser.parse_args(
        ["--register-coco", a, json_file, images, "--register-coco", b, json_file, images]
    )
    assert register_coco_from_args(args) == [a, b]
    assert len(DatasetCatalog.get(b)) == 1
    bad = parser.parse_args(["--register-coco", _unique("c"), json_file, str(tmp_path / "no")])
    with pytest.raises(SystemExit, match="image folder"):
        register_coco_from_args(bad)


# ----------------------------------------------------------------------------- clear errors


def test_instance_without_mask_is_named(tmp_path):
    def drop_mask(doc):
        del doc["annotations"][1]["segmentation"]

    name, _ = _register(tmp_path, edit=drop_mask)
    with pytest.raises(ValueError) as e:
        check_r2ios_training_dicts(DatasetCatalog.get(name), name, check_proposals=False)
    msg = str(e.value)
    assert name in msg and "'segmentation'" in msg and "im1.png" in msg and "1 of 8" in msg


def test_crowd_only_dataset_has_nothing_to_train_on(tmp_path):
    def all_crowd(doc):
        for a in doc["annotations"]:
            a["iscrowd"] = 1
            if isinstance(a["segmentation"], list):  # crowd regions are RLE in COCO
                a["segmentation"] = {"size": [H, W], "counts": [0, H * W]}

    name, _ = _register(tmp_path, edit=all_crowd)
    with pytest.raises(ValueError, match=f"{name}.*nothing to train on.*crowd"):
        check_r2ios_training_dicts(DatasetCatalog.get(name), name, check_proposals=False)


def test_too_few_classes_is_named(tmp_path):
    name, _ = _register(tmp_path)
    with pytest.raises(ValueError, match=f"{name}.*NUM_CLASSES is 1.*\\(2\\)"):
        check_r2ios_training_dicts(DatasetCatalog.get(name), name, num_classes=1)


def test_missing_proposals_name_the_folder_and_the_command(tmp_path):
    name, json_file = _register(tmp_path)
    proposal_dir = MetadataCatalog.get(name).proposal_dir
    dicts = [dict(d) for d in DatasetCatalog.get(name)]
    with pytest.raises(FileNotFoundError) as e:
        attach_proposals(dicts, proposal_dir=proposal_dir, dataset_name=name)
    assert name in str(e.value) and proposal_dir in str(e.value)
    assert "tools/selective_search.py --register-coco" in str(e.value)

    # proposals of all images but one: the check lists the missing one and the command
    ss = load_tool("selective_search")
    images = str(tmp_path / "images")
    ss.main(["--register-coco", name, json_file, images, "--dataset", name, "--limit", "2"])
    attach_proposals(dicts, proposal_dir=proposal_dir, dataset_name=name)
    with pytest.raises(ValueError) as e:
        check_r2ios_training_dicts(dicts, name)
    msg = str(e.value)
    assert name in msg and proposal_dir in msg and "1 of 3" in msg and "3.npz" in msg
    command = msg.splitlines()[-1].strip()
    assert command.startswith("python tools/selective_search.py --register-coco")

    # the command it gives makes them
    ss.main(shlex.split(command)[2:] + ["--workers", "1"])
    check_r2ios_training_dicts(dicts, name, num_classes=2)


# ----------------------------------------------------------------------------- evaluation


def test_gt_reads_polygons_rle_and_crowd_as_void(tmp_path):
    name, _ = _register(tmp_path, image_ids=(1, 2))
    gt = gt_from_dataset_dicts(DatasetCatalog.get(name), name)
    first = gt[1]
    # polygon square, RLE disc, RLE square; the crowd region is no instance but void
    assert first["labels"].tolist() == [0, 1, 0]
    expected = [m for _, _, m, _ in _instances(1)]
    for rle, mask in zip(first["masks"], expected):
        assert np.array_equal(mask_util.decode(rle).astype(bool), mask)
    assert mask_util.area(first["void"]) == (_disc(20, 76, 7) | _disc(36, 80, 7)).sum()
    assert gt[2]["void"] is None and len(gt[2]["labels"]) == 2


def _perfect_outputs(name: str) -> Tuple[List[Dict], List[Dict]]:
    inputs, outputs = [], []
    for d in DatasetCatalog.get(name):
        anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        masks = np.stack([m for _, _, m, _ in _instances(d["image_id"])])
        inst = Instances((H, W))
        inst.pred_masks = torch.from_numpy(masks)
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        inst.scores = torch.linspace(0.9, 0.5, len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        inputs.append({"image_id": d["image_id"], "height": H, "width": W})
        outputs.append({"instances": inst})
    return inputs, outputs


def test_sds_and_coco_evaluators_score_perfect_predictions(tmp_path):
    name, _ = _register(tmp_path)
    out_dir = str(tmp_path / "eval")
    sds = SDSEvaluator(name, output_dir=out_dir, distributed=False)  # before the json is read
    coco = COCOEvaluator(name, output_dir=out_dir, distributed=False, use_fast_impl=False)
    inputs, outputs = _perfect_outputs(name)
    for evaluator in (sds, coco):
        evaluator.reset()
        evaluator.process(inputs, outputs)
    sds_res, coco_res = sds.evaluate(), coco.evaluate()
    assert sds_res["segm"]["APr50"] == pytest.approx(100.0)
    assert sds_res["segm"]["APr_vol"] == pytest.approx(100.0)
    assert os.path.isfile(os.path.join(out_dir, "sds_results.json"))
    assert coco_res["segm"]["AP"] == pytest.approx(100.0)
    assert coco_res["bbox"]["AP50"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------- the README


# What keeps the run fast: a 1/16-width VGG, small heads, small inputs, 4 iterations. After 4
# iterations a model may call every proposal background; per-class outputs with a zero score
# threshold give both evaluators detections to score whatever the model learnt.
TINY_OPTS = [
    "MODEL.R2IOS.OUTPUT_MODE", "per_class",
    "MODEL.VGG.WIDTH", "0.0625", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.R2IOS.AE_HIDDEN_DIM", "32", "MODEL.R2IOS.MASK_SIZE", "20",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.R2IOS.GRAD_PROBE_PERIOD", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN", "30",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST", "30",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.DETECTIONS_PER_IMAGE", "20",
]  # fmt: skip


def run_readme_command(command: str, variables: Dict[str, str]):
    """Run one ``python tools/<tool>.py ...`` line of the block in this process (importing
    torch and detectron2 once instead of per command), with tiny settings appended."""
    expanded = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: variables[m[1] or m[2]], command)
    argv = shlex.split(expanded, comments=True)
    assert argv[:1] == ["python"] and argv[1].startswith("tools/"), command
    tool, args = load_tool(os.path.basename(argv[1])), argv[2:]
    if argv[1] == "tools/selective_search.py":
        return tool.main(args + ["--workers", "1"])
    if argv[1] == "tools/evaluate_sds.py":
        return tool.main(args)
    assert argv[1] == "tools/train_net.py", command
    return tool.main(tool.build_parser().parse_args(args + TINY_OPTS))


@pytest.fixture
def readme_names():
    names = ("my_train", "my_val")
    for name in names:  # the README's names are global: free them before and after
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_readme_coco_example_runs(tmp_path, monkeypatch, readme_names):
    data = tmp_path / "my_coco"
    write_coco_dataset(str(data), [1, 2, 3], "train.json")
    write_coco_dataset(str(data), [4, 5], "val.json")
    commands = readme_commands("coco-example")
    variables = {}
    for c in commands:  # the block's leading NAME=value lines are its placeholders
        m = re.match(r"^(\w+)=(\S+)", c)
        if m:
            variables[m[1]] = m[2]
    assert {"DATA", "OUT", "K"} <= set(variables), variables
    variables.update(DATA=str(data), OUT=str(tmp_path / "out"), K="2")
    monkeypatch.chdir(REPO)

    results = [run_readme_command(c, variables) for c in commands if not re.match(r"^\w+=", c)]
    assert len(results) == 5, commands

    for split, n in (("my_train", 3), ("my_val", 2)):
        assert len(os.listdir(data / "proposals" / split)) == n
    out = tmp_path / "out"
    assert os.path.isfile(out / "model_final.pth")
    with open(out / "inference" / "my_val" / "sds_results.json") as f:
        saved = json.load(f)["results"]
    assert {"APr50", "APr_vol"} <= set(saved["segm"]) and "AP50" in saved["bbox"]
    # training evaluated at its end (metrics.json), --eval-only returned the same numbers
    with open(out / "metrics.json") as f:
        after_training = json.loads(f.read().splitlines()[-1])
    evaluated = results[3]
    for task, keys in (
        ("segm", ("APr50", "APr70", "APr_vol")),
        ("bbox", ("AP50", "AP_vol")),
        ("coco_segm", ("AP", "AP50")),
        ("coco_bbox", ("AP", "AP50")),
    ):
        assert task in evaluated, sorted(evaluated)
        for k in keys:
            assert math.isfinite(evaluated[task][k]), (task, k, evaluated[task][k])
            assert after_training[f"{task}/{k}"] == pytest.approx(evaluated[task][k])
    # re-scored with crowd regions ignored: the same keys, finite
    assert {"APr50", "APr_vol"} <= set(results[4]["segm"])
    assert math.isfinite(results[4]["segm"]["APr_vol"])
