"""tools/box_diagnostics.py (per-iteration box IoU, kinds of detections) and the recipe
choice it led to (MODEL.R2IOS.TRAIN_MOVE_BACKGROUND in the tuned recipes only)."""

import importlib.util
import json
import os

import pytest
from reliability_utils import REPO, make_dataset, run_train_net, tiny_opts, write_base_config

from r2ios_d2.engine.runs import load_config


def _tool():
    path = os.path.join(REPO, "tools", "box_diagnostics.py")
    spec = importlib.util.spec_from_file_location("r2ios_box_diagnostics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_box_diagnostics_measures_a_trained_model(tmp_path):
    make_dataset(str(tmp_path), "diag_synth")
    config = write_base_config(str(tmp_path))
    out = str(tmp_path / "run")
    opts = tiny_opts("diag_synth", out, max_iter=6, test=True)
    opts += ["MODEL.R2IOS.TRAIN_MOVE_BACKGROUND", "True"]
    run_train_net(config, opts)
    result_file = tmp_path / "diag.json"
    argv = ["--config-file", config, "--weights", os.path.join(out, "model_final.pth")]
    argv += ["--iterations", "3", "--output", str(result_file), *opts]
    assert _tool().main(argv) == 0
    result = json.loads(result_file.read_text())
    tables = (tmp_path / "diag.md").read_text()
    assert "reversible gate's choice" in tables and result["machine"]["command"] in tables
    assert "first_move_below_0.05" in tables
    assert result["dataset"] == "diag_synth_val" and result["images"] == 2
    rec = result["recursion"]
    assert rec["num_proposals"] > 0
    teacher, predicted = rec["teacher"], rec["predicted"]
    assert len(teacher["iou"]) == 4  # t = 0 (the proposals) .. 3
    assert teacher["iou"][0] == predicted["iou"][0] >= 0.5  # proposals matched at IoU 0.5
    for stats in (teacher, predicted):
        for t in range(1, 4):
            assert 0.0 <= stats["better"][t] + stats["worse"][t] <= 1.0
            assert 0.0 <= stats["acc"][t] <= 1.0 and 0.0 <= stats["p_gt"][t] <= 1.0
    gate = result["gate"]
    assert gate["num_proposals"] == rec["num_proposals"]
    assert len(gate["t_prime_frac"]) == 3 and sum(gate["t_prime_frac"]) == pytest.approx(
        1, abs=1e-3
    )
    # iteration t's box is the one the predicted-class recursion reaches at t
    assert gate["iou"]["per_t"] == pytest.approx(predicted["iou"][1:], abs=1e-3)
    assert set(gate["iou"]["by_rule"]) == {"gate", "smallest_move"} | {
        f"first_move_below_{eps}" for eps in (0.02, 0.05, 0.1)
    }
    assert gate["iou"]["by_rule"]["gate"] == pytest.approx(gate["iou"]["gate"])
    for k in ("iou", "mask_iou"):
        g = gate[k]
        assert all(0.0 <= v <= 1.0 for v in g["per_t"] + g["at_0.5_per_t"])
        assert g["t1"] == pytest.approx(g["per_t"][0]) and g["last"] == pytest.approx(
            g["per_t"][-1]
        )
        assert max(g["t1"], g["gate"], g["last"]) <= g["oracle"] + 1e-4
    det = result["detections"]
    assert det["num_gt"] > 0
    assert sum(det["top_n"].values()) <= min(sum(det["all"].values()), det["num_gt"])
    assert det["all"]["tp"] <= det["recall_ceiling50"] * det["num_gt"] + 1e-6


def test_gate_stats_choose_the_first_best_score_and_compare_it_with_t1_and_the_oracle():
    import torch

    tool = _tool()
    stats = tool.GateStats(3)
    score = torch.tensor([[0.5, 0.9, 0.9], [0.8, 0.6, 0.7], [0.2, 0.3, 0.4]])
    iou = torch.tensor([[0.6, 0.7, 0.5], [0.9, 0.5, 0.6], [0.4, 0.5, 0.6]])
    stats.add(score[:2], iou[:2], iou[:2] / 2)
    stats.add(score[2:], iou[2:], iou[2:] / 2)
    s = stats.summary()
    assert s["num_proposals"] == 3
    assert s["t_prime_frac"] == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-4)  # ties: first
    g = s["iou"]
    assert g["gate"] == pytest.approx((0.7 + 0.9 + 0.6) / 3, abs=1e-4)
    assert g["t1"] == pytest.approx((0.6 + 0.9 + 0.4) / 3, abs=1e-4)
    assert g["oracle"] == pytest.approx((0.7 + 0.9 + 0.6) / 3, abs=1e-4)
    assert g["at_0.5_per_t"] == pytest.approx([2 / 3, 1.0, 1.0], abs=1e-4)
    assert g["corr_with_score"] > 0.3  # here the more confident iteration is mostly better
    assert s["mask_iou"]["gate"] == pytest.approx(g["gate"] / 2, abs=1e-4)
    reversed_stats = tool.GateStats(3)
    reversed_stats.add(score, 1 - iou)
    corr = reversed_stats.summary()["iou"]["corr_with_score"]
    assert corr == pytest.approx(-g["corr_with_score"], abs=1e-4)  # within rows: 1 - iou
    assert "mask_iou" not in reversed_stats.summary()
    assert list(s["iou"]["by_rule"]) == ["gate"]  # no moves given: the gate only


def test_gate_stats_compare_the_gate_with_the_convergence_of_the_box_offsets():
    import torch

    tool = _tool()
    stats = tool.GateStats(3)
    score = torch.tensor([[0.5, 0.9, 0.8], [0.8, 0.6, 0.7]])
    iou = torch.tensor([[0.6, 0.7, 0.5], [0.9, 0.5, 0.6]])
    move = torch.tensor([[0.3, 0.04, 0.01], [0.2, 0.15, 0.12]])
    stats.add(score, iou, move=move)
    rule = stats.summary()["iou"]["by_rule"]
    assert rule["gate"] == pytest.approx((0.7 + 0.9) / 2)
    assert rule["smallest_move"] == pytest.approx((0.5 + 0.6) / 2)
    assert rule["first_move_below_0.02"] == pytest.approx((0.5 + 0.6) / 2)  # row 2: never
    assert rule["first_move_below_0.05"] == pytest.approx((0.7 + 0.6) / 2)
    assert rule["first_move_below_0.1"] == pytest.approx((0.7 + 0.6) / 2)


def test_box_move_is_the_size_of_the_step_in_box_units():
    import math

    import torch

    tool = _tool()
    old = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]])
    new = torch.tensor([[5.0, 0.0, 15.0, 20.0], [0.0, 0.0, 20.0, 10.0]])
    move = tool._box_move(old, new)
    assert move[0] == pytest.approx(0.5)  # half a width to the right
    assert move[1] == pytest.approx(math.hypot(0.5, math.log(2)))  # centre +5, width x2


def test_mask_iou_pastes_masks_into_their_boxes():
    import torch

    tool = _tool()
    gt = torch.zeros(2, 20, 30, dtype=torch.bool)
    gt[0, 5:15, 10:20] = True  # the box (10, 5, 20, 15) filled
    gt[1, 0:10, 0:10] = True
    probs = torch.ones(2, 8, 8)
    boxes = torch.tensor([[10.0, 5.0, 20.0, 15.0], [0.0, 0.0, 10.0, 5.0]])
    iou = tool._mask_iou(probs, boxes, gt, (20, 30), 0.5)
    assert iou[0] == pytest.approx(1.0) and iou[1] == pytest.approx(0.5)
    assert tool._mask_iou(probs * 0.3, boxes, gt, (20, 30), 0.5).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "config,expected",
    [
        ("synthetic/r2ios_tiny_stage1.yaml", True),
        ("synthetic/r2ios_tiny_stage2.yaml", True),
        ("real/r2ios_vgg16_real_stage1.yaml", True),
        ("r2ios_vgg16_sds_stage1.yaml", False),  # the paper's recipe: background stays
        ("r2ios_vgg16_voc2012_stage2.yaml", False),
    ],
)
def test_tuned_recipes_move_background_in_training_and_paper_configs_do_not(config, expected):
    cfg = load_config(os.path.join(REPO, "configs", config))
    assert cfg.MODEL.R2IOS.TRAIN_MOVE_BACKGROUND is expected


@pytest.mark.parametrize(
    "config,threshold,from_output_box,output_mode",
    [
        ("synthetic/r2ios_tiny_stage1.yaml", 0.35, True, "per_class"),
        ("synthetic/r2ios_tiny_stage2.yaml", 0.35, True, "per_class"),
        # inherited; not read by its heads
        ("synthetic/mask_rcnn_heads_tiny.yaml", 0.3, True, "per_class"),
        ("real/r2ios_vgg16_real_stage1.yaml", 0.5, False, "proposal"),
        ("r2ios_vgg16_sds_stage2.yaml", 0.5, False, "proposal"),  # the paper's output v_t'
    ],
)
def test_demo_recipe_test_settings_and_the_model_that_applies_them(
    config, threshold, from_output_box, output_mode
):
    """Each demo model's test settings (chosen on the demo's val split) reach its pasted
    masks through R2IOSRCNN; the other recipes keep 0.5, the paper's mask and readout."""
    cfg = load_config(os.path.join(REPO, "configs", config))
    assert cfg.MODEL.META_ARCHITECTURE == "R2IOSRCNN"
    assert cfg.MODEL.R2IOS.MASK_THRESHOLD == threshold
    assert cfg.MODEL.R2IOS.TEST_MASK_FROM_OUTPUT_BOX is from_output_box
    assert cfg.MODEL.R2IOS.OUTPUT_MODE == output_mode
    assert cfg.MODEL.R2IOS.TEST_SCORE == ("mean" if output_mode == "per_class" else "gate")
    # The demo refines one of each group of overlapping proposals; the paper, every one.
    assert cfg.MODEL.R2IOS.TEST_REFINE_NMS == (0.5 if output_mode == "per_class" else 0.0)
    assert cfg.MODEL.R2IOS.TEST_REFINE_TOPK == 0
