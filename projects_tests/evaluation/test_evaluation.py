"""AP^r evaluator: hand-computed cases, matching rules, AP integrations, evaluator equality,
distributed gather, saved predictions and the re-scoring CLI.

Most cases use 1 x 10 "images", so masks are runs of pixels and IoUs are easy fractions.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from evaluation_utils import gt_annotation

from r2ios_d2.evaluation import (
    SDSEvaluator,
    average_precision,
    box_iou,
    encode_masks,
    eval_instance_segmentation_voc,
    eval_instance_segmentation_voc_rle,
    evaluate_all,
    evaluate_from_ious,
    load_predictions,
    mask_iou_rle,
)

W = 10


def run(*spans, width: int = W) -> np.ndarray:
    """(N, 1, width) bool masks, mask i covering [a_i, b_i)."""
    m = np.zeros((len(spans), 1, width), dtype=bool)
    for i, (a, b) in enumerate(spans):
        m[i, 0, a:b] = True
    return m


def ev(pm, pl, ps, gm, gl, **kw):
    return eval_instance_segmentation_voc(
        [pm], [np.array(pl)], [np.array(ps, dtype=float)], [gm], [np.array(gl)], **kw
    )


# ------------------------------------------------------------------------------------------
# Hand-computed cases of the functional core
# ------------------------------------------------------------------------------------------
def test_perfect_and_partial_single_image():
    # GT [0,4) and [5,9); detections: exact copy of the first, a miss, a 3/4 overlap of the second.
    gm = run((0, 4), (5, 9))
    pm = run((0, 4), (9, 10), (5, 8))
    res = ev(pm, [0, 0, 0], [0.9, 0.8, 0.7], gm, [0, 0])
    # Ranked TP, FP, TP: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> AP = .5 * 1 + .5 * 2/3.
    assert res["ap"].shape == (1,)
    assert res["ap"][0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert res["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_overlapping_gts_duplicate_sds_vs_voc():
    # Two overlapping GTs A=[0,6), B=[1,7); two identical detections equal to A.
    # IoU(det, A) = 1, IoU(det, B) = 5/7 > 0.5.
    gm = run((0, 6), (1, 7))
    pm = run((0, 6), (0, 6))
    ious = mask_iou_rle(encode_masks(pm), encode_masks(gm))
    np.testing.assert_allclose(ious, [[1.0, 5 / 7], [1.0, 5 / 7]])
    # SDS: the 2nd detection takes the best *unmatched* GT (B, 5/7) -> TP, TP -> AP 1.
    sds = ev(pm, [0, 0], [0.9, 0.8], gm, [0, 0], matching="sds")
    assert sds["ap"][0] == pytest.approx(1.0)
    # VOC: the 2nd detection's best GT is A, already taken -> duplicate FP. P = 1, 1/2;
    # R = 1/2, 1/2 -> AP = 1/2 (envelope) and 6/11 (11-point: recall 0..0.5 at precision 1).
    voc = ev(pm, [0, 0], [0.9, 0.8], gm, [0, 0], matching="voc")
    assert voc["ap"][0] == pytest.approx(0.5)
    voc07 = ev(pm, [0, 0], [0.9, 0.8], gm, [0, 0], matching="voc", use_07_metric=True)
    assert voc07["ap"][0] == pytest.approx(6 / 11)
    sds07 = ev(pm, [0, 0], [0.9, 0.8], gm, [0, 0], matching="sds", use_07_metric=True)
    assert sds07["ap"][0] == pytest.approx(1.0)


def test_threshold_strict_for_sds_inclusive_for_voc():
    # IoU exactly 0.5: GT [0,4), detection [0,2).
    gm, pm = run((0, 4)), run((0, 2))
    assert ev(pm, [0], [1.0], gm, [0], matching="sds")["ap"][0] == 0.0
    assert ev(pm, [0], [1.0], gm, [0], matching="voc")["ap"][0] == 1.0


def test_sds_unmatched_detection_does_not_consume_gt():
    # GT [0,4). Det 1 (higher score) [0,2): IoU 0.5, not > 0.5 -> FP and GT stays free;
    # det 2 [0,4): IoU 1 -> TP. P = 0, 1/2; R = 0, 1 -> AP = 1/2.
    gm, pm = run((0, 4)), run((0, 2), (0, 4))
    assert ev(pm, [0, 0], [0.9, 0.8], gm, [0])["ap"][0] == pytest.approx(0.5)


def test_ap_integrations_differ():
    # Envelope area vs 11-point on P = [1, .5, 2/3], R = [.5, .5, 1]:
    # envelope = .5 * 1 + .5 * 2/3; 11-point = (6 * 1 + 5 * 2/3) / 11.
    p, r = np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])
    assert average_precision(p, r) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(p, r, use_07_metric=True) == pytest.approx((6 + 10 / 3) / 11)
    # Precision drops, then rises at a higher recall: only the envelope lifts the middle step.
    # P = [1, 1/2, 2/3, 3/4], R = [1/4, 1/4, 1/2, 3/4]: envelope = 1/4 * (1 + 3/4 + 3/4);
    # 11-point: recall 0, .1, .2 -> 1; .3 ... .7 -> 3/4; .8, .9, 1 -> 0.
    p, r = np.array([1.0, 0.5, 2 / 3, 0.75]), np.array([0.25, 0.25, 0.5, 0.75])
    assert average_precision(p, r) == pytest.approx(0.625)
    assert average_precision(p, r, use_07_metric=True) == pytest.approx((3 + 5 * 0.75) / 11)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0
    assert average_precision(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0


def test_class_without_gt_is_nan_and_detections_on_it_do_not_matter():
    gm = run((0, 4))
    # class 0: perfect; class 1: no GT, no detection; class 2: a detection but no GT.
    res = ev(run((0, 4), (0, 4)), [0, 2], [0.5, 0.9], gm, [0], num_classes=4)
    assert res["ap"][0] == 1.0
    assert all(math.isnan(x) for x in res["ap"][1:])
    assert res["map"] == 1.0
    # Default number of classes: 1 + the largest label (3 here: labels 0 and 2).
    assert ev(run((0, 4), (0, 4)), [0, 2], [0.5, 0.9], gm, [0])["ap"].shape == (3,)


def test_class_with_gt_but_no_detection_is_zero():
    res = ev(run((0, 4)), [0], [0.5], run((0, 4), (5, 9)), [0, 1])
    np.testing.assert_array_equal(res["ap"], [1.0, 0.0])
    assert res["map"] == 0.5


def test_cross_class_pairs_never_match():
    res = ev(run((0, 4)), [1], [0.5], run((0, 4)), [0], num_classes=2)
    assert res["ap"][0] == 0.0 and math.isnan(res["ap"][1])


def test_ties_in_score_keep_input_order_within_image():
    gm = run((0, 4))
    fp_first = ev(run((6, 9), (0, 4)), [0, 0], [0.5, 0.5], gm, [0])  # P = 0, 1/2 -> AP 1/2
    tp_first = ev(run((0, 4), (6, 9)), [0, 0], [0.5, 0.5], gm, [0])  # P = 1, 1/2 -> AP 1
    assert fp_first["ap"][0] == pytest.approx(0.5)
    assert tp_first["ap"][0] == pytest.approx(1.0)


def test_ties_in_score_stable_in_a_long_mixed_list():
    # 15 GTs [3j, 3j+2). Input alternates a high-score exact TP on GT 0..9 (score .9) with a
    # tied detection (score .5); the tied ones come in pairs on GT 10..14: first an exact copy
    # (IoU 1), then [3j, 3j+3) (IoU 2/3). With stable order the first of each pair takes the GT
    # and the second is a duplicate, in both matching and ranking: 10 TPs, then TP, FP, TP, FP...
    # (An unstable sort of these 20 mixed keys reorders the tied block, in either place.)
    # Precision at the TPs after the first 11: 12/13, 13/15, 14/17, 15/19 (decreasing, so its
    # own envelope), each over a recall step of 1/15.
    width = 48
    gm = run(*[(3 * j, 3 * j + 2) for j in range(15)], width=width)
    spans, scores = [], []
    for i in range(10):
        j = 10 + i // 2
        tied = (3 * j, 3 * j + 2) if i % 2 == 0 else (3 * j, 3 * j + 3)
        spans += [(3 * i, 3 * i + 2), tied]
        scores += [0.9, 0.5]
    res = ev(run(*spans, width=width), [0] * 20, scores, gm, [0] * 15)
    expected = 11 / 15 + (12 / 13 + 13 / 15 + 14 / 17 + 15 / 19) / 15
    assert res["ap"][0] == pytest.approx(expected)


def test_ties_in_score_keep_image_order_across_images():
    gm = run((0, 4))
    tp = (run((0, 4)), np.array([0]), np.array([0.5]), gm, np.array([0]))
    fp = (run((6, 9)), np.array([0]), np.array([0.5]), gm, np.array([0]))

    def two(a, b):
        return eval_instance_segmentation_voc(*[[x, y] for x, y in zip(a, b)])["ap"][0]

    # Two GTs (one per image); ranked TP, FP -> P = 1, 1/2, R = 1/2, 1/2 -> AP 1/2.
    assert two(tp, fp) == pytest.approx(0.5)
    # Ranked FP, TP -> P = 0, 1/2, R = 0, 1/2 -> AP 1/4.
    assert two(fp, tp) == pytest.approx(0.25)


def test_ties_in_score_decide_which_detection_takes_the_gt():
    # GT [0,4); tied detections [0,3) (IoU .75) then [0,4) (IoU 1). At 0.7 the first (input order)
    # takes the GT, the second is a duplicate: P = 1, 1/2 -> AP 1. At 0.8 the first misses:
    # P = 0, 1/2, R = 0, 1 -> AP 1/2.
    gm, pm = run((0, 4)), run((0, 3), (0, 4))
    rles = [encode_masks(pm)], [np.array([0, 0])], [np.array([0.5, 0.5])]
    res = evaluate_all(*rles, [encode_masks(gm)], [np.array([0])], thresholds=[0.7, 0.8])
    thr = list(res["thresholds"])
    assert res["ap"][thr.index(0.7), 0] == pytest.approx(1.0)
    assert res["ap"][thr.index(0.8), 0] == pytest.approx(0.5)


def test_empty_predictions():
    gm = run((0, 4))
    empty = np.zeros((0, 1, W), dtype=bool)
    res = eval_instance_segmentation_voc(
        [empty, empty],
        [np.zeros(0, int), np.zeros(0, int)],
        [np.zeros(0), np.zeros(0)],
        [gm, np.zeros((0, 1, W), bool)],
        [np.array([0]), np.zeros(0, int)],
    )
    np.testing.assert_array_equal(res["ap"], [0.0])
    assert res["map"] == 0.0
    # No GT and no predictions at all: NaN, without a warning escaping.
    res = eval_instance_segmentation_voc(
        [empty], [np.zeros(0, int)], [np.zeros(0)], [empty], [np.zeros(0, int)], num_classes=2
    )
    assert np.isnan(res["ap"]).all() and math.isnan(res["map"])


def test_evaluate_all_vol_and_consistency_with_single_threshold():
    # One GT [0,10) (size 1 x 20 image), one detection [0,11) -> IoU 10/11 ~ .909;
    # a second GT [12,20) with detection [12,17): IoU 5/8 = .625.
    width = 20
    gm, pm = run((0, 10), (12, 20), width=width), run((0, 11), (12, 17), width=width)
    args = ([encode_masks(pm)], [np.array([0, 0])], [np.array([0.9, 0.8])])
    gts = ([encode_masks(gm)], [np.array([0, 0])])
    res = evaluate_all(*args, *gts)
    np.testing.assert_allclose(res["thresholds"], np.arange(1, 10) / 10)
    # Thresholds .1-.6: both TP -> 1; .7-.9: first TP, second FP -> P 1, 1/2, R 1/2, 1/2 -> 1/2.
    expected = np.array([1, 1, 1, 1, 1, 1, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(res["ap"][:, 0], expected)
    assert res["ap_vol"][0] == pytest.approx(expected.mean())
    assert res["map_vol"] == pytest.approx(expected.mean())
    for t in (0.5, 0.6, 0.7):
        single = eval_instance_segmentation_voc_rle(*args, *gts, iou_thresh=t)
        assert single["ap"][0] == res["ap"][list(res["thresholds"]).index(t), 0]


def test_void_union_vs_ignore():
    # GT [0,4), void [4,6), detection [0,6): union mode IoU 4/6, ignore mode 4/4.
    gm, pm, void = run((0, 4)), run((0, 6)), run((4, 6))[0]
    p, g, v = encode_masks(pm), encode_masks(gm), encode_masks(void[None])[0]
    assert mask_iou_rle(p, g, v, "union")[0, 0] == pytest.approx(4 / 6)
    assert mask_iou_rle(p, g, v, "ignore")[0, 0] == pytest.approx(1.0)
    kw = dict(iou_thresh=0.7, gt_void_masks=[void])
    assert ev(pm, [0], [1.0], gm, [0], void_mode="union", **kw)["ap"][0] == 0.0
    assert ev(pm, [0], [1.0], gm, [0], void_mode="ignore", **kw)["ap"][0] == 1.0
    # Void overlapping the GT is removed from it too: G' = [0,3), P' = [0,3) -> IoU 1;
    # a detection [3,4) on the GT's void part has IoU 0 under "ignore".
    v2 = encode_masks(run((3, 6)))[0]
    ious = mask_iou_rle(encode_masks(run((0, 6), (3, 4))), g, v2, "ignore")
    np.testing.assert_allclose(ious[:, 0], [1.0, 0.0])


def test_box_iou_hand_values():
    ious = box_iou(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]), np.array([[0, 0, 2, 2], [5, 5, 6, 6]]))
    np.testing.assert_allclose(ious, [[1.0, 0.0], [1 / 7, 0.0]])
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


def test_invalid_options_raise():
    gm = run((0, 4))
    with pytest.raises(ValueError):
        ev(gm, [0], [1.0], gm, [0], matching="coco")
    with pytest.raises(ValueError):
        ev(gm, [0], [1.0], gm, [0], void_mode="drop", gt_void_masks=[gm[0]])
    with pytest.raises(ValueError):
        ev(gm, [5], [1.0], gm, [0], num_classes=2)


# ------------------------------------------------------------------------------------------
# The detectron2 evaluator
# ------------------------------------------------------------------------------------------
CLASSES = ["cat", "dog", "horse"]
H_IMG, W_IMG = 24, 32


def make_data(seed: int = 0, n_images: int = 6):
    """Dataset dicts (RLE GT, some with void) and matching model outputs (Instances)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:H_IMG, :W_IMG]
    records, outputs, dense = [], [], []
    for i in range(n_images):
        gms, gls = [], []
        for _ in range(rng.randint(1, 4)):
            cy, cx = rng.uniform(4, H_IMG - 4), rng.uniform(4, W_IMG - 4)
            ry, rx = rng.uniform(3, 8), rng.uniform(3, 10)
            gms.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
            gls.append(rng.randint(len(CLASSES)))
        gm = np.stack(gms)
        void = np.zeros((H_IMG, W_IMG), bool)
        if i % 2 == 0:  # a void band along the border of every other GT mask
            for m in gm:
                void |= np.roll(m, 1, axis=1) & ~gm.any(0)
        anns = [gt_annotation(m, lab) for m, lab in zip(gm, gls)]
        rec = {
            "file_name": f"img{i}.png",
            "image_id": i,
            "height": H_IMG,
            "width": W_IMG,
            "annotations": anns,
        }
        if void.any():
            v = encode_masks(void[None])[0]
            rec["void_segmentation"] = {"size": v["size"], "counts": v["counts"].decode()}
        records.append(rec)

        # Predictions: jittered copies of GT (some with wrong class), duplicates, clutter.
        pms, pls, pss = [], [], []
        for m, lab in zip(gm, gls):
            for _ in range(rng.randint(1, 3)):
                pms.append(np.roll(m, (rng.randint(-3, 4), rng.randint(-3, 4)), axis=(0, 1)))
                pls.append(lab if rng.rand() < 0.8 else rng.randint(len(CLASSES)))
                pss.append(round(rng.rand(), 1))  # coarse scores -> ties
        for _ in range(rng.randint(0, 3)):
            y0, x0 = rng.randint(0, H_IMG - 5), rng.randint(0, W_IMG - 5)
            m = np.zeros((H_IMG, W_IMG), bool)
            m[y0 : y0 + 5, x0 : x0 + 6] = True
            pms.append(m)
            pls.append(rng.randint(len(CLASSES)))
            pss.append(round(rng.rand(), 1))
        pm = np.stack(pms)
        boxes = []
        for m in pm:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0])
        inst = Instances((H_IMG, W_IMG))
        inst.pred_masks = torch.from_numpy(pm)
        inst.scores = torch.tensor(pss, dtype=torch.float32)
        inst.pred_classes = torch.tensor(pls, dtype=torch.int64)
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        outputs.append({"instances": inst})
        dense.append((pm, np.array(pls), inst.scores.numpy().astype(float), gm, np.array(gls)))
    # One image without any detection.
    empty = Instances((H_IMG, W_IMG))
    empty.pred_masks = torch.zeros((0, H_IMG, W_IMG), dtype=torch.bool)
    empty.scores = torch.zeros(0)
    empty.pred_classes = torch.zeros(0, dtype=torch.int64)
    empty.pred_boxes = Boxes(torch.zeros((0, 4)))
    outputs[-1] = {"instances": empty}
    pm, pl, ps, gm, gl = dense[-1]
    dense[-1] = (pm[:0], pl[:0], ps[:0], gm, gl)
    inputs = [{"image_id": r["image_id"], "height": H_IMG, "width": W_IMG} for r in records]
    return records, inputs, outputs, dense


def register(name: str, seed: int = 0) -> None:
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: make_data(seed)[0])
        MetadataCatalog.get(name).set(thing_classes=CLASSES)


def test_evaluator_equals_functional_core(tmp_path):
    register("_sds_test_tiny")
    records, inputs, outputs, dense = make_data(0)
    assert any("void_segmentation" in r for r in records)
    for matching in ("sds", "voc"):
        for void_mode in ("union", "ignore"):
            evaluator = SDSEvaluator(
                "_sds_test_tiny",
                output_dir=str(tmp_path),
                distributed=False,
                matching=matching,
                void_mode=void_mode,
            )
            evaluator.reset()
            for i in range(0, len(inputs), 2):  # batches of 2
                evaluator.process(inputs[i : i + 2], outputs[i : i + 2])
            res = evaluator.evaluate()

            voids = []
            for r in records:
                voids.append(r.get("void_segmentation"))
            core = evaluate_all(
                [encode_masks(d[0]) for d in dense],
                [d[1] for d in dense],
                [d[2] for d in dense],
                [encode_masks(d[3]) for d in dense],
                [d[4] for d in dense],
                matching=matching,
                num_classes=len(CLASSES),
                gt_void_rles=voids,
                void_mode=void_mode,
            )
            thr = list(core["thresholds"])
            for t, key in ((0.5, "APr50"), (0.6, "APr60"), (0.7, "APr70")):
                assert res["segm"][key] == pytest.approx(100 * core["map"][thr.index(t)])
                for k, c in enumerate(CLASSES):
                    np.testing.assert_allclose(
                        res["segm"][f"{key}-{c}"], 100 * core["ap"][thr.index(t), k]
                    )
            assert res["segm"]["APr_vol"] == pytest.approx(100 * core["map_vol"])

            # Box AP from the same boxes.
            bious = [
                box_iou(o["instances"].pred_boxes.tensor.numpy(), _gt_boxes(r))
                for o, r in zip(outputs, records)
            ]
            box = evaluate_from_ious(
                bious,
                [d[1] for d in dense],
                [d[2] for d in dense],
                [d[4] for d in dense],
                thresholds=[0.5, 0.7],
                matching=matching,
                num_classes=len(CLASSES),
            )
            assert res["bbox"]["AP50"] == pytest.approx(100 * box["map"][0])
            assert res["bbox"]["AP70"] == pytest.approx(100 * box["map"][1])
    # Non-trivial numbers (the test data must exercise both TPs and FPs).
    assert 0 < res["segm"]["APr50"] < 100

    saved = load_predictions(str(tmp_path / "sds_predictions.json"))
    assert len(saved["predictions"]) == len(inputs)
    assert saved["dataset"] == "_sds_test_tiny"
    with open(tmp_path / "sds_results.json") as f:
        assert json.load(f)["results"]["segm"]["APr50"] == pytest.approx(res["segm"]["APr50"])


def _gt_boxes(rec):
    return np.array([a["bbox"] for a in rec["annotations"]], dtype=float).reshape(-1, 4)


def test_evaluator_ignores_predictions_duplicated_by_padding():
    register("_sds_test_tiny")
    _, inputs, outputs, _ = make_data(0)
    a = SDSEvaluator("_sds_test_tiny", distributed=False)
    a.process(inputs, outputs)
    b = SDSEvaluator("_sds_test_tiny", distributed=False)
    b.process(inputs, outputs)
    b.process(inputs[:2], outputs[:2])  # the sampler padded the last batch with repeats
    assert a.evaluate() == b.evaluate()


def _load_cli():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "evaluate_sds.py")
    spec = importlib.util.spec_from_file_location("evaluate_sds_cli", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_rescoring_matches_evaluator(tmp_path, capsys):
    register("_sds_test_tiny")
    _, inputs, outputs, _ = make_data(0)
    results = {}
    for matching in ("sds", "voc"):
        e = SDSEvaluator(
            "_sds_test_tiny",
            output_dir=str(tmp_path / matching),
            distributed=False,
            matching=matching,
            use_07_metric=True,
        )
        e.process(inputs, outputs)
        results[matching] = e.evaluate()
    cli = _load_cli()
    out_json = tmp_path / "rescored.json"
    # Re-score the predictions saved by the "sds" run with the options of the "voc" run.
    res = cli.main(
        [
            str(tmp_path / "sds" / "sds_predictions.json"),
            "--matching",
            "voc",
            "--use-07-metric",
            "--thresholds",
            "0.5",
            "0.6",
            "0.7",
            "--output",
            str(out_json),
        ]
    )
    assert res["segm"] == pytest.approx(results["voc"]["segm"], nan_ok=True)
    assert res["bbox"] == pytest.approx(results["voc"]["bbox"], nan_ok=True)
    assert results["voc"]["segm"]["APr50"] != results["sds"]["segm"]["APr50"]
    assert "APr50" in capsys.readouterr().out
    with open(out_json) as f:
        assert json.load(f)["results"]["segm"]["APr50"] == pytest.approx(res["segm"]["APr50"])
    # Extra thresholds appear as their own keys.
    res75 = cli.main([str(tmp_path / "sds" / "sds_predictions.json"), "--thresholds", "0.75"])
    assert "APr75" in res75["segm"] and "APr50" not in res75["segm"]


# ------------------------------------------------------------------------------------------
# Distributed gather
# ------------------------------------------------------------------------------------------
def _dist_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        register("_sds_test_tiny")
        _, inputs, outputs, _ = make_data(0)
        evaluator = SDSEvaluator("_sds_test_tiny", distributed=True)
        evaluator.reset()
        for i in range(rank, len(inputs), world_size):  # interleaved shards, as the sampler
            evaluator.process(inputs[i : i + 1], outputs[i : i + 1])
        res = evaluator.evaluate()
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(res, f)
        else:
            assert res == {}
        # Leave together: a rank tearing gloo down while its peer still works in a collective
        # can abort the peer ("terminate called without an active exception") under load.
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Nothing is pending after the barrier. gloo's teardown (destroy_process_group, static
    # destructors at exit) still aborted a rank under load now and then: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_process_gather_equals_single_process(tmp_path):
    register("_sds_test_tiny")
    _, inputs, outputs, _ = make_data(0)
    single = SDSEvaluator("_sds_test_tiny", distributed=False)
    single.process(inputs, outputs)
    expected = single.evaluate()

    out_file = str(tmp_path / "dist.json")
    torch.multiprocessing.spawn(
        _dist_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True
    )
    with open(out_file) as f:
        got = json.load(f)
    assert got["segm"] == pytest.approx(dict(expected["segm"]), nan_ok=True)
    assert got["bbox"] == pytest.approx(dict(expected["bbox"]), nan_ok=True)


def test_void_pixels_of_the_voc_loader_reach_the_evaluator(tmp_path):
    """The VOC loader's ``void_segmentation`` is what the evaluator's void modes use."""
    import pycocotools.mask as mask_util

    from r2ios_d2.data.synthetic import generate_synthetic_dataset, register_synthetic
    from r2ios_d2.evaluation.sds import gt_from_dataset_dicts

    generate_synthetic_dataset(str(tmp_path / "syn"), num_train=1, num_val=2, seed=3)
    register_synthetic(str(tmp_path / "syn"), prefix="evalvoid")
    voc = DatasetCatalog.get("evalvoid_voc_val")
    sbd = DatasetCatalog.get("evalvoid_val")
    gt_voc = gt_from_dataset_dicts(voc)
    gt_sbd = gt_from_dataset_dicts(sbd)
    for rec in voc:
        void = gt_voc[rec["image_id"]]["void"]
        assert void is not None and mask_util.area(void) > 0
        assert gt_sbd[rec["image_id"]]["void"] is None
    # A prediction equal to the SBD mask (VOC mask + its void band) scores IoU 1 only when
    # void pixels are ignored.
    rec = voc[0]
    g_voc, g_sbd = gt_voc[rec["image_id"]], gt_sbd[rec["image_id"]]
    union = mask_iou_rle(g_sbd["masks"], g_voc["masks"], g_voc["void"], "union").max(axis=1)
    ignore = mask_iou_rle(g_sbd["masks"], g_voc["masks"], g_voc["void"], "ignore").max(axis=1)
    assert (union < 1.0).all()
    np.testing.assert_allclose(ignore, 1.0)
