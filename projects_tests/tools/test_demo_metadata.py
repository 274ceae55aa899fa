"""tools/demo.py on a model trained on your own COCO-format dataset: class names and category ids
from the run's dataset_metadata.json, --register-coco or --class-names; results.json with the
dataset's category ids and image ids; the trace of a model tested without the gate."""

import json
import os
import shlex
import uuid

import cv2
import numpy as np
import pytest
import torch
from coco_files import CATEGORY_IDS, CATEGORY_NAMES, write_coco4
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from readme_utils import REPO, load_tool, readme_commands

from r2ios_d2 import visualization
from r2ios_d2.config_checks import load_r2ios_config
from r2ios_d2.engine import atomic_torch_save, record_training_datasets

CONFIG = "configs/synthetic/r2ios_tiny_stage1.yaml"
TINY = [
    "MODEL.VGG.WIDTH", "0.0625", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.R2IOS.AE_HIDDEN_DIM", "32", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST", "40", "TEST.DETECTIONS_PER_IMAGE", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """A COCO-format dataset (category ids 3, 7, 11, 15) and a 'trained' 4-class model: random
    weights in <out>/model_final.pth beside the run's dataset_metadata.json."""
    root = tmp_path_factory.mktemp("coco_run")
    data, out = root / "my_coco", root / "out"
    json_file = write_coco4(str(data), [11, 12], "val.json")
    name = f"demo_train_{uuid.uuid4().hex[:6]}"
    from r2ios_d2.data import register_coco_for_r2ios

    register_coco_for_r2ios(name, json_file, str(data / "images"))
    DatasetCatalog.get(name)
    record_training_datasets(str(out), [name], 4)
    cfg, _ = load_r2ios_config(
        os.path.join(REPO, CONFIG), TINY + ["MODEL.ROI_HEADS.NUM_CLASSES", "4"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # no proposal predicted background: the random model outputs boxes
        model.roi_heads.box_predictor.cls_score.bias[-1] = -10.0
    atomic_torch_save({"model": model.state_dict()}, str(out / "model_final.pth"))
    cv2.imwrite(str(root / "photo.jpg"), np.full((48, 60, 3), 90, np.uint8))
    return root


def _cfg(weights="", num_classes=4):
    opts = TINY + ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "MODEL.WEIGHTS", weights]
    return load_r2ios_config(os.path.join(REPO, CONFIG), opts)[0]


def test_class_names_and_ids_from_the_runs_dataset_metadata(coco_run):
    demo = load_tool("demo")
    meta = demo.demo_metadata(_cfg(str(coco_run / "out" / "model_final.pth")))
    assert list(meta.thing_classes) == list(CATEGORY_NAMES)
    assert meta.thing_dataset_id_to_contiguous_id == {c: i for i, c in enumerate(CATEGORY_IDS)}
    named = demo.demo_metadata(_cfg(str(coco_run / "out" / "model_final.pth")), list("abcd"))
    assert list(named.thing_classes) == list("abcd")  # --class-names first
    # another number of classes: the saved names do not fit, generic ones
    assert (
        demo.demo_metadata(_cfg(str(coco_run / "out" / "x.pth"), 3)).thing_classes[2] == "class_2"
    )


def test_class_names_of_the_wrong_length_are_a_usage_error(coco_run, capsys):
    argv = ["--config-file", os.path.join(REPO, CONFIG), "--input", str(coco_run / "photo.jpg")]
    argv += ["--output", str(coco_run / "x"), "--class-names", "a,b", *TINY]
    with pytest.raises(SystemExit) as e:
        load_tool("demo").main(argv + ["MODEL.ROI_HEADS.NUM_CLASSES", "4"])
    assert e.value.code == 2 and "--class-names gives 2 names" in capsys.readouterr().err


def _free(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_readme_demo_on_a_coco_trained_model_writes_dataset_ids(coco_run, monkeypatch):
    (command,) = readme_commands("demo-coco-example")
    argv = shlex.split(command)
    assert argv[:2] == ["python", "tools/demo.py"] and "--register-coco" in argv
    paths = {  # the README's paths, pointed at this test's files
        "datasets/my_coco": str(coco_run / "my_coco"),
        "output/my_coco": str(coco_run / "out"),
        "photo.jpg": str(coco_run / "photo.jpg"),
        CONFIG: os.path.join(REPO, CONFIG),
    }
    for old, new in paths.items():
        argv = [a.replace(old, new, 1) if a.startswith(old) else a for a in argv]
    gates = []  # what the demo tells draw_trace: the stage-1 config tests without the gate
    draw_trace = visualization.draw_trace
    monkeypatch.setattr(
        visualization, "draw_trace", lambda *a, **k: gates.append(k["gate"]) or draw_trace(*a, **k)
    )
    name = argv[argv.index("--register-coco") + 1]
    _free(name)  # the README's name is global
    try:
        i = argv.index("--opts")  # flags before it; the README's overrides, then the tiny ones
        extra = ["--confidence-threshold", "0.0", "--trace"]
        assert load_tool("demo").main([*argv[2:i], *extra, *argv[i:], *TINY]) == 0
    finally:
        _free(name)
    pictures = coco_run / "out" / "pictures"
    results = json.loads((pictures / "results.json").read_text())
    assert {r["image_id"] for r in results} == {11, 12, "photo"}  # the json's ids, else the stem
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    assert os.path.isfile(pictures / "000011_trace.png") and gates and set(gates) == {False}


def _traced(n=1, T=3):
    inst = Instances((40, 40))
    inst.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 30.0, 30.0]] * n))
    inst.scores = torch.ones(n)
    inst.trace_scores = torch.full((n, T), 0.9)
    inst.trace_classes = torch.zeros(n, T, dtype=torch.long)
    inst.trace_masks = torch.ones(n, T, 8, 8)
    inst.gate_iteration = torch.full((n,), T - 1)
    return inst, inst.pred_boxes.tensor[:, None].repeat(1, T, 1), inst.pred_boxes.tensor


def _titles_and_red_frames(fig):
    titles = [ax.get_title() for ax in fig.axes]
    red = [
        ax.get_title() for ax in fig.axes if ax.spines["top"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    ]
    return titles, red


def test_trace_without_the_test_gate_claims_no_gate():
    image = np.zeros((40, 40, 3), np.uint8)
    inst, boxes, init = _traced()
    meta = Metadata(name="t", thing_classes=["a"])
    titles, red = _titles_and_red_frames(visualization.draw_trace(image, inst, meta, boxes, init))
    assert titles[2].startswith("t=3 (gate)") and red == [titles[2]]
    fig = visualization.draw_trace(image, inst, meta, boxes, init, gate=False)
    titles, red = _titles_and_red_frames(fig)
    assert titles[2].startswith("t=3 (last, no gate)") and red == []
    assert not any("(gate)" in t for t in titles)
