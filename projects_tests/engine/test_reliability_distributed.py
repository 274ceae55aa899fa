"""Two gloo CPU processes (tools/train_net.py --num-cpu-processes 2): training completes and
writes its checkpoints, and distributed evaluation gives exactly the single-process AP^r."""

import json
import os
import subprocess
import sys
import uuid

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from reliability_utils import TRAIN_NET, make_dataset, run_train_net, tiny_opts, write_base_config

from r2ios_d2 import add_r2ios_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    parent = tmp_path_factory.mktemp("rel_dist")
    prefix = f"reld_{uuid.uuid4().hex[:6]}"
    make_dataset(str(parent), prefix)
    return str(parent), prefix, write_base_config(str(parent))


def _results(output_dir, dataset):
    path = os.path.join(output_dir, "inference", dataset, "sds_results.json")
    with open(path) as f:
        return json.load(f)["results"]


def _predictions(output_dir, dataset):
    with open(os.path.join(output_dir, "inference", dataset, "sds_predictions.json")) as f:
        doc = json.load(f)
    preds = doc["predictions"] if isinstance(doc, dict) else doc
    return sorted(preds, key=lambda p: str(p["image_id"]))


def _confident_init(config, opts, path):
    """Initial weights whose classifier predicts foreground classes with spread scores, so that
    a 5-iteration run still outputs detections to compare (an untrained one predicts none)."""
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    pred = model.roi_heads.box_predictor
    with torch.no_grad():
        torch.nn.init.normal_(pred.cls_score.weight, std=0.5)
        pred.cls_score.bias[-1] = -8.0
    torch.save({"model": model.state_dict()}, path)


def test_two_process_training_and_evaluation_match_one_process(syn, tmp_path):
    parent, prefix, config = syn
    out2 = str(tmp_path / "two")
    # The subprocess registers the dataset under its default names from $DETECTRON2_DATASETS.
    opts = tiny_opts("r2ios_synthetic", out2, max_iter=5, test=True)
    init = str(tmp_path / "init.pth")
    _confident_init(config, opts, init)
    opts += ["MODEL.WEIGHTS", init, "SOLVER.BASE_LR", "0.0001"]
    env = dict(os.environ, DETECTRON2_DATASETS=parent, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", config, "--num-cpu-processes", "2", *opts],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = set(os.listdir(out2))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    two = _results(out2, "r2ios_synthetic_val")

    out1 = str(tmp_path / "one")
    weights = os.path.join(out2, "model_final.pth")
    opts1 = tiny_opts(prefix, out1, test=True) + ["MODEL.WEIGHTS", weights]
    run_train_net(config, opts1, "--eval-only")
    one = _results(out1, f"{prefix}_val")
    assert one == two
    p1, p2 = _predictions(out1, f"{prefix}_val"), _predictions(out2, "r2ios_synthetic_val")
    assert len(p1) == len(p2) == 2 and all(len(p["instances"]) > 0 for p in p1)
    for a, b in zip(p1, p2):
        assert a["image_id"] == b["image_id"]
        assert a == b or {k: v for k, v in a.items() if k != "file_name"} == {
            k: v for k, v in b.items() if k != "file_name"
        }
