"""AP^r of the evaluator against a plain, independent implementation of the metric: dense
masks, one threshold, one class and one detection at a time, no shortcuts."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.structures import Boxes, Instances
from evaluation_utils import gt_annotation

from r2ios_d2.evaluation import (
    SDSEvaluator,
    average_precision,
    encode_masks,
    evaluate_from_ious,
    match_image,
)

H, W = 30, 40
CLASSES = ["a", "b", "c", "d"]
THRESHOLDS = [round(0.1 * i, 1) for i in range(1, 10)]


# ------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------
def dense_iou(p: np.ndarray, g: np.ndarray, void: np.ndarray, void_mode: str) -> float:
    if void_mode == "ignore":
        p, g = p & ~void, g & ~void
    union = np.count_nonzero(p | g)
    return np.count_nonzero(p & g) / union if union else 0.0


def reference_tp(ious, labels, scores, gt_labels, t: float, matching: str) -> list:
    """TP flag of each detection of one image at threshold t, one detection at a time."""
    order = sorted(range(len(labels)), key=lambda i: -scores[i])  # stable
    matched = [False] * len(gt_labels)
    tp = [False] * len(labels)
    for i in order:
        same = [j for j in range(len(gt_labels)) if gt_labels[j] == labels[i]]
        if matching == "sds":
            free = [j for j in same if not matched[j]]
            if free:
                best = max(free, key=lambda j: (ious[i][j], -j))
                if ious[i][best] > t:
                    tp[i] = matched[best] = True
        elif same:
            best = max(same, key=lambda j: (ious[i][j], -j))
            if ious[i][best] >= t and not matched[best]:
                tp[i] = matched[best] = True
    return tp


def reference_ap(tp_sorted: list, n_pos: int) -> float:
    """Area under the monotone envelope of the PR curve: sum of recall steps times the best
    precision at that recall or beyond."""
    prec, rec, hits = [], [], 0
    for k, t in enumerate(tp_sorted):
        hits += t
        prec.append(hits / (k + 1))
        rec.append(hits / n_pos)
    ap, prev = 0.0, 0.0
    for k in range(len(rec)):
        if rec[k] > prev:
            ap += (rec[k] - prev) * max(prec[k:])
            prev = rec[k]
    return ap


def reference_results(images, matching: str, void_mode: str) -> dict:
    """``{(t, class): AP}`` (NaN without GT) from per-image dense masks."""
    out = {}
    ious = [
        [[dense_iou(p, g, im["void"], void_mode) for g in im["gt_masks"]] for p in im["masks"]]
        for im in images
    ]
    for t in THRESHOLDS:
        tps = [
            reference_tp(iou, im["labels"], im["scores"], im["gt_labels"], t, matching)
            for iou, im in zip(ious, images)
        ]
        for k in range(len(CLASSES)):
            n_pos = sum(list(im["gt_labels"]).count(k) for im in images)
            dets = [
                (im["scores"][i], tp[i])
                for im, tp in zip(images, tps)
                for i in range(len(im["labels"]))
                if im["labels"][i] == k
            ]
            dets = sorted(dets, key=lambda d: -d[0])  # stable: image order, then input order
            out[t, k] = reference_ap([d[1] for d in dets], n_pos) if n_pos else math.nan
    return out


# ------------------------------------------------------------------------------------------
# A fixed set of predictions
# ------------------------------------------------------------------------------------------
def make_images(seed: int = 0, n_images: int = 12) -> list:
    """Pasted predictions (as detector_postprocess makes them) near GT instances, with several
    instances per class, duplicates, coarse (tied) scores, clutter and void pixels."""
    rng = np.random.RandomState(seed)
    gen = torch.Generator().manual_seed(seed)
    yy, xx = np.mgrid[:H, :W] + 0.5
    images = []
    for i in range(n_images):
        gt_masks, gt_labels = [], []
        for _ in range(rng.randint(1, 5)):
            cx, cy = rng.uniform(5, W - 5), rng.uniform(5, H - 5)
            rx, ry = rng.uniform(3, 12), rng.uniform(3, 9)
            gt_masks.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
            gt_labels.append(rng.randint(2) if i % 2 else rng.randint(len(CLASSES)))
        union = np.any(gt_masks, axis=0)
        void = np.roll(union, 1, axis=1) & ~union if i % 3 == 0 else np.zeros((H, W), bool)
        boxes, labels = [], []
        for m, lab in zip(gt_masks, gt_labels):
            ys, xs = np.nonzero(m)
            box = np.array([xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0])
            for _ in range(rng.randint(1, 4)):
                boxes.append(box + rng.normal(0, 1.5, 4))
                labels.append(lab if rng.rand() < 0.8 else rng.randint(len(CLASSES)))
        for _ in range(rng.randint(0, 4)):  # clutter, some past the border
            x0, y0 = rng.uniform(-4, W), rng.uniform(-4, H)
            boxes.append([x0, y0, x0 + rng.uniform(1, 15), y0 + rng.uniform(1, 12)])
            labels.append(rng.randint(len(CLASSES)))
        boxes_t = torch.tensor(np.array(boxes), dtype=torch.float32)
        probs = torch.rand(len(boxes), 12, 12, generator=gen) * 0.6 + 0.3
        probs[:, 3:9, 3:9] = 0.9
        masks = paste_masks_in_image(probs, boxes_t, (H, W), threshold=0.5)
        if len(boxes) > 1:  # a duplicate: equal IoUs and an equal score
            masks = torch.cat([masks, masks[:1]])
            boxes_t = torch.cat([boxes_t, boxes_t[:1]])
            labels.append(labels[0])
        scores = np.round(rng.rand(len(labels)), 1).astype(np.float32)
        if len(boxes) > 1:
            scores[-1] = scores[0]
        images.append(
            {
                "gt_masks": gt_masks,
                "gt_labels": np.array(gt_labels),
                "void": void,
                "masks": masks.numpy(),
                "boxes": boxes_t,
                "labels": np.array(labels),
                "scores": scores.astype(np.float64),
            }
        )
    return images


def records(images: list) -> list:
    out = []
    for i, im in enumerate(images):
        anns = [gt_annotation(m, lab) for m, lab in zip(im["gt_masks"], im["gt_labels"])]
        rec = {"file_name": f"{i}.png", "image_id": i, "height": H, "width": W}
        rec["annotations"] = anns
        if im["void"].any():
            v = encode_masks(im["void"][None])[0]
            rec["void_segmentation"] = {"size": v["size"], "counts": v["counts"].decode()}
        out.append(rec)
    return out


@pytest.mark.parametrize("matching", ["sds", "voc"])
@pytest.mark.parametrize("void_mode", ["union", "ignore"])
def test_evaluator_ap_equals_the_reference(matching, void_mode):
    images = make_images()
    name = "_sds_test_reference"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records(make_images()))
        MetadataCatalog.get(name).set(thing_classes=CLASSES)
    evaluator = SDSEvaluator(name, distributed=False, matching=matching, void_mode=void_mode)
    evaluator.reset()
    for i, im in enumerate(images):
        inst = Instances((H, W))
        inst.pred_masks = torch.from_numpy(im["masks"])
        inst.pred_boxes = Boxes(im["boxes"])
        inst.scores = torch.from_numpy(im["scores"]).float()
        inst.pred_classes = torch.from_numpy(im["labels"])
        evaluator.process([{"image_id": i, "height": H, "width": W}], [{"instances": inst}])
    res = evaluator.evaluate()["segm"]
    assert gc.isenabled()  # paused while evaluating only

    ref = reference_results(images, matching, void_mode)
    ap_vol = {k: np.mean([ref[t, k] for t in THRESHOLDS]) for k in range(len(CLASSES))}
    for t in (0.5, 0.6, 0.7):
        key = f"APr{round(100 * t)}"
        for k, c in enumerate(CLASSES):
            np.testing.assert_allclose(res[f"{key}-{c}"], 100 * ref[t, k], rtol=0, atol=1e-9)
        mean = np.nanmean([ref[t, k] for k in range(len(CLASSES))])
        assert res[key] == pytest.approx(100 * mean, rel=0, abs=1e-9)
    for k, c in enumerate(CLASSES):
        np.testing.assert_allclose(res[f"APr_vol-{c}"], 100 * ap_vol[k], rtol=0, atol=1e-9)
    assert res["APr_vol"] == pytest.approx(100 * np.nanmean(list(ap_vol.values())), abs=1e-9)
    # The data exercise true and false positives at every reported threshold.
    assert all(0 < res[f"APr{t}"] < 100 for t in (50, 60, 70))


@pytest.mark.parametrize("matching", ["sds", "voc"])
def test_match_image_equals_the_reference_on_tied_ious(matching):
    # IoUs on a coarse grid: ties between GT instances, between detections, and with the
    # thresholds themselves (the strict / inclusive comparison matters).
    rng = np.random.RandomState(0)
    for _ in range(300):
        r, g = rng.randint(1, 12), rng.randint(1, 6)
        ious = np.round(rng.rand(r, g) * 10) / 10
        labels = rng.randint(0, 3, r)
        gt_labels = rng.randint(0, 3, g)
        scores = np.round(rng.rand(r) * 4) / 4
        tp = match_image(ious, labels, scores, gt_labels, THRESHOLDS, matching)
        for ti, t in enumerate(THRESHOLDS):
            expected = reference_tp(ious.tolist(), labels, scores, gt_labels, t, matching)
            assert tp[ti].tolist() == expected


@pytest.mark.parametrize("matching", ["sds", "voc"])
def test_ap_from_ious_equals_the_reference_on_many_tied_images(matching):
    rng = np.random.RandomState(1)
    n_cls = 3
    ious, labels, scores, gt_labels = [], [], [], []
    for _ in range(60):
        r, g = rng.randint(0, 10), rng.randint(0, 5)
        ious.append(np.round(rng.rand(r, g) * 10) / 10)
        labels.append(rng.randint(0, n_cls, r))
        scores.append(np.round(rng.rand(r) * 4) / 4)  # ties within and across images
        gt_labels.append(rng.randint(0, n_cls, g))
    res = evaluate_from_ious(ious, labels, scores, gt_labels, matching=matching, num_classes=n_cls)
    for ti, t in enumerate(THRESHOLDS):
        tps = [
            reference_tp(iou.tolist(), lab, sc, gl, t, matching)
            for iou, lab, sc, gl in zip(ious, labels, scores, gt_labels)
        ]
        for k in range(n_cls):
            n_pos = sum(list(gl).count(k) for gl in gt_labels)
            dets = [
                (sc[i], tp[i])
                for lab, sc, tp in zip(labels, scores, tps)
                for i in range(len(lab))
                if lab[i] == k
            ]
            dets = sorted(dets, key=lambda d: -d[0])
            expected = reference_ap([d[1] for d in dets], n_pos)
            assert res["ap"][ti, k] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("use_07_metric", [False, True])
def test_ap_of_every_curve_is_average_precision_of_that_curve(use_07_metric):
    rng = np.random.RandomState(2)
    ious = [rng.rand(8, 3) for _ in range(20)]
    labels = [rng.randint(0, 3, 8) for _ in range(20)]
    scores = [rng.rand(8) for _ in range(20)]
    gt_labels = [rng.randint(0, 3, 3) for _ in range(20)]
    res = evaluate_from_ious(ious, labels, scores, gt_labels, use_07_metric=use_07_metric)
    for t in range(len(THRESHOLDS)):
        for k in range(3):
            p, r = res["precision"][t][k], res["recall"][t][k]
            assert res["ap"][t, k] == average_precision(p, r, use_07_metric)  # bit for bit


def test_match_image_with_nan_iou_never_matches_that_detection():
    ious = np.array([[np.nan, 0.9], [0.8, 0.7]])
    tp = match_image(ious, np.zeros(2), np.array([0.9, 0.8]), np.zeros(2), [0.5], "sds")
    assert tp.tolist() == [[False, True]]
