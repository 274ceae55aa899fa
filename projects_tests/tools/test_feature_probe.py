"""tools/feature_probe.py: a whole run on a small COCO-format dataset written here (random
"pre-trained" weights, tiny photos), its result file and table, and the probe's AP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from coco_files import write_coco4
from readme_utils import load_tool


@pytest.fixture(scope="module")
def probe():
    return load_tool("feature_probe")


def test_average_precision_matches_the_definition(probe):
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    positive = np.array([True, False, True, False])
    assert probe.average_precision(scores, positive) == pytest.approx((1 + 2 / 3) / 2)
    assert probe.average_precision(scores, ~np.ones(4, bool)) != probe.average_precision(
        scores, positive
    )
    assert np.isnan(probe.average_precision(scores, np.zeros(4, bool)))


def test_probe_runs_on_a_users_coco_data(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("R2IOS_D2_CACHE", str(tmp_path / "cache"))
    train_json = write_coco4(str(tmp_path / "data"), [1, 2, 3, 4], "train.json")
    val_json = write_coco4(str(tmp_path / "data"), [5, 6, 7], "val.json")
    images = str(tmp_path / "data" / "images")
    # "Pre-trained" weights: the real config's backbone with another random init.
    cfg = load_tool("benchmark_real").load_config(
        probe.REPO / "configs/real/r2ios_vgg16_real_stage1.yaml"
    )
    torch.manual_seed(123)
    holder = torch.nn.Module()
    holder.backbone = probe.build_backbone(cfg)
    weights = tmp_path / "init.pth"
    torch.save({"model": holder.state_dict()}, weights)
    result = probe.run_probe(
        probe.build_parser().parse_args(
            ["--train", "mine_train", train_json, images, "--val", "mine_val", val_json, images]
            + ["--categories", "person=cat,dog,cow", "--weights", str(weights)]
            + ["--short-side", "64", "--real-work-dir", str(tmp_path / "work")]
            + ["--results-dir", str(tmp_path / "results"), "--l2", "0.01", "--threads", "1"]
        )
    )
    rows = result["rows"]
    assert sorted(rows) == sorted(
        f"{init} {layer} l2 0.01"
        for init in ("pre-trained", "random")
        for layer in ("det_conv4_3", "det_conv5_3")
    )
    for r in rows.values():
        for key in ("val_person_ap", "val_object_ap", "train_person_ap", "train_object_ap"):
            assert 0.0 <= r[key] <= 1.0
        # Per val photo: the 2 non-crowd GT boxes, their matching proposals, background.
        assert r["val_rois"] >= 3 * 2 and 0 < r["val_person_share"] < r["val_object_share"] < 1
    # The four categories differ by colour here: the probe separates them on every row.
    assert rows["random det_conv5_3 l2 0.01"]["val_person_ap"] > 0.9
    # The "pre-trained" rows probe the given weights, the "random" rows the init.
    pre, rnd = probe.ProbedBackbone(cfg, str(weights)), probe.ProbedBackbone(cfg, None)
    assert torch.equal(pre.model.det_conv5_3.weight, holder.backbone.det_conv5_3.weight)
    assert not torch.equal(rnd.model.det_conv5_3.weight, holder.backbone.det_conv5_3.weight)
    saved = json.loads((tmp_path / "results" / "feature_probe.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert saved["settings"]["short_side"] == 64
    recall = saved["settings"]["proposal_recall"]
    assert sorted(recall) == ["mine_train", "mine_val"]
    assert recall["mine_val"]["instances"] == 5  # 6 non-crowd, one of them an owl (not kept)
    assert 0.0 <= recall["mine_val"]["recall70"] <= recall["mine_val"]["recall50"] <= 1.0
    md = (tmp_path / "results" / "feature_probe.md").read_text()
    assert "| pre-trained | det_conv4_3 |" in md and "val person AP" in md
    assert (tmp_path / "work" / "proposals" / "mine_val" / "5.npz").is_file()
