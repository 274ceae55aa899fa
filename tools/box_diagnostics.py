#!/usr/bin/env python
"""Where the detection quality of a trained model goes: per-iteration box IoU and the kinds
of wrong detections, for R2-IOS and for detectron2's stock ``StandardROIHeads`` alike.

Two measurements on a registered dataset (default: the config's first ``DATASETS.TEST``):

* **Recursion** (per iteration t = 0..T): the proposals that overlap a ground-truth
  instance (IoU >= 0.5 with its box) are refined T times, once moved by the deltas of their
  ground-truth class ("teacher-forced") and once as at test time (by the deltas of the
  predicted class; predicted background stays). Per t: mean IoU with the matched instance,
  the fraction at IoU >= 0.7, how many boxes got better / worse than at t - 1, the
  classification accuracy and the mean probability of the ground-truth class. For the stock
  heads the same loop applies their single-step regressor repeatedly (t = 1 is what they
  output).
* **Detections** (the model's final outputs): every detection, by decreasing score, is a
  true positive (box IoU >= 0.5 with an unmatched instance of its class), a duplicate (its
  best same-class instance is already matched), a wrong class (IoU >= 0.5 with an instance of
  another class only), a poor box (0.1 <= IoU < 0.5 with a same-class instance) or
  background. Counted over all detections and over each image's top-N (N = its number of
  instances), with the recall ceiling (instances covered by any detection of their class).

    python tools/box_diagnostics.py --config-file configs/synthetic/r2ios_tiny_stage1.yaml \\
        --weights demo_output/stage1/model_final.pth --output diag_stage1.json

Prints a table per measurement and writes the numbers as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
KINDS = ("tp", "duplicate", "wrong_class", "poor_box", "background")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="checkpoint of the trained model")
    p.add_argument("--dataset", default=None, help="registered dataset (default: DATASETS.TEST[0])")
    p.add_argument("--iterations", type=int, default=4, help="T of the recursion measurement")
    p.add_argument("--max-images", type=int, default=0, help="0 = all images")
    p.add_argument("--output", default=None, help="write the numbers to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def _box_iou(a, b):
    from detectron2.structures import Boxes, pairwise_iou

    return pairwise_iou(Boxes(a), Boxes(b))


def _heads_step(model, features, boxes):
    """One pass of the ROI heads on (R, 4) input-frame boxes: logits (R, K+1), deltas,
    and the box transform."""
    from detectron2.structures import Boxes

    rh = model.roi_heads
    box_features = [features[f] for f in rh.box_in_features]
    if hasattr(rh, "_predict"):  # R2IOSROIHeads
        scored = rh.mask_head.score_maps(features)
        logits, deltas, _ = rh._predict(box_features, scored, [Boxes(boxes)])
    else:  # StandardROIHeads
        x = rh.box_head(rh.box_pooler(box_features, [Boxes(boxes)]))
        logits, deltas = rh.box_predictor(x)
    return logits, deltas


class RecursionStats:
    """Per-iteration sums over the GT-overlapping proposals of all images."""

    def __init__(self, num_iterations: int) -> None:
        self.T = num_iterations
        self.sums: Dict[str, Dict[str, List[float]]] = {
            mode: {
                k: [0.0] * (num_iterations + 1)
                for k in ("iou", "iou70", "better", "worse", "acc", "p_gt")
            }
            for mode in ("teacher", "predicted")
        }
        self.count = 0

    def add(self, model, features, proposals, gt_boxes, gt_classes, hw) -> None:
        import torch
        from torch.nn import functional as F

        from r2ios_d2.modeling.recursion import refine_boxes

        if len(gt_boxes) == 0 or len(proposals) == 0:
            return
        iou = _box_iou(proposals, gt_boxes)
        best, gt_idx = iou.max(dim=1)
        rows = torch.nonzero(best >= 0.5).squeeze(1)
        if len(rows) == 0:
            return
        gt_b, gt_c = gt_boxes[gt_idx[rows]], gt_classes[gt_idx[rows]]
        transform = model.roi_heads.box_predictor.box2box_transform
        hw_rows = hw.expand(len(rows), 2)
        k = model.roi_heads.num_classes
        self.count += len(rows)
        for mode in ("teacher", "predicted"):
            s = self.sums[mode]
            cur = proposals[rows]
            prev = torch.diag(_box_iou(cur, gt_b))
            s["iou"][0] += float(prev.sum())
            s["iou70"][0] += float((prev >= 0.7).sum())
            for t in range(1, self.T + 1):
                logits, deltas = _heads_step(model, features, cur)
                probs = F.softmax(logits, dim=1)
                pred = probs.argmax(dim=1)
                s["acc"][t] += float((pred == gt_c).sum())
                s["p_gt"][t] += float(probs[torch.arange(len(gt_c)), gt_c].sum())
                if mode == "teacher":
                    cur = refine_boxes(transform, deltas, cur, gt_c, hw_rows)
                else:
                    moving = pred < k
                    new = cur.clone()
                    new[moving] = refine_boxes(
                        transform, deltas[moving], cur[moving], pred[moving], hw_rows[moving]
                    )
                    cur = new
                now = torch.diag(_box_iou(cur, gt_b))
                s["iou"][t] += float(now.sum())
                s["iou70"][t] += float((now >= 0.7).sum())
                s["better"][t] += float((now > prev + 1e-3).sum())
                s["worse"][t] += float((now < prev - 1e-3).sum())
                prev = now

    def summary(self) -> Dict[str, Dict[str, List[float]]]:
        n = max(self.count, 1)
        return {
            mode: {k: [round(v / n, 4) for v in vals] for k, vals in s.items()}
            for mode, s in self.sums.items()
        } | {"num_proposals": self.count}


class DetectionStats:
    """Kinds of detections (see the module docstring), all and top-N per image."""

    def __init__(self) -> None:
        self.all = dict.fromkeys(KINDS, 0)
        self.top = dict.fromkeys(KINDS, 0)
        self.num_gt = 0
        self.covered50 = 0
        self.covered70 = 0

    def add(self, boxes, scores, classes, gt_boxes, gt_classes) -> None:
        import torch

        n_gt = len(gt_boxes)
        self.num_gt += n_gt
        if len(boxes) == 0:
            return
        order = scores.argsort(descending=True)
        boxes, classes = boxes[order], classes[order]
        if n_gt == 0:
            self.all["background"] += len(boxes)
            return
        iou = _box_iou(boxes, gt_boxes)
        same = classes[:, None] == gt_classes[None]
        best_same = torch.where(same, iou, torch.zeros_like(iou)).max(dim=0).values
        self.covered50 += int((best_same >= 0.5).sum())
        self.covered70 += int((best_same >= 0.7).sum())
        matched = torch.zeros(n_gt, dtype=torch.bool)
        for i in range(len(boxes)):
            kind = self._kind(iou[i], same[i], matched)
            self.all[kind] += 1
            if i < n_gt:
                self.top[kind] += 1

    @staticmethod
    def _kind(iou, same, matched) -> str:
        import torch

        iou_same = torch.where(same, iou, torch.zeros_like(iou))
        free = torch.where(matched, torch.zeros_like(iou_same), iou_same)
        if float(free.max()) >= 0.5:
            matched[int(free.argmax())] = True
            return "tp"
        if float(iou_same.max()) >= 0.5:
            return "duplicate"
        if float(torch.where(same, torch.zeros_like(iou), iou).max()) >= 0.5:
            return "wrong_class"
        if float(iou_same.max()) >= 0.1:
            return "poor_box"
        return "background"

    def summary(self) -> dict:
        return {
            "all": dict(self.all),
            "top_n": dict(self.top),
            "num_gt": self.num_gt,
            "recall_ceiling50": round(self.covered50 / max(self.num_gt, 1), 4),
            "recall_ceiling70": round(self.covered70 / max(self.num_gt, 1), 4),
        }


def _gt_of(d: dict):
    """GT boxes (G, 4) XYXY in original pixels and classes (G,) of a dataset dict."""
    import torch
    from detectron2.structures import BoxMode

    anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    return (
        torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        torch.tensor([a["category_id"] for a in anns], dtype=torch.long),
    )


def diagnose(cfg, weights: str, dataset: str, iterations: int, max_images: int) -> dict:
    """Run both measurements of a model on ``dataset``; returns the summary dict."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from tqdm import tqdm

    from r2ios_d2.data import build_r2ios_test_loader
    from r2ios_d2.engine.checkpoint import R2IOSCheckpointer

    model = build_model(cfg)
    R2IOSCheckpointer.for_config(model, cfg).load(weights)
    model.eval()
    gts = {d["image_id"]: _gt_of(d) for d in DatasetCatalog.get(dataset)}
    recursion, detections = RecursionStats(iterations), DetectionStats()
    loader = build_r2ios_test_loader(cfg, dataset)
    total = len(gts) if max_images <= 0 else min(max_images, len(gts))
    with torch.no_grad():
        for n, batch in enumerate(tqdm(loader, total=total, desc="diagnose")):
            if n >= total:
                break
            x = batch[0]
            gt_boxes, gt_classes = gts[x["image_id"]]
            inst = model(batch)[0]["instances"]
            detections.add(
                inst.pred_boxes.tensor, inst.scores, inst.pred_classes, gt_boxes, gt_classes
            )
            images = model.preprocess_image(batch)
            features = model.backbone(images.tensor)
            h, w = x["image"].shape[-2:]
            sy, sx = h / x["height"], w / x["width"]
            scaled = gt_boxes * torch.tensor([sx, sy, sx, sy])
            hw = torch.tensor([[h, w]])
            proposals = x["proposals"].proposal_boxes.tensor
            recursion.add(model, features, proposals, scaled, gt_classes, hw)
    return {
        "weights": weights,
        "dataset": dataset,
        "images": total,
        "recursion": recursion.summary(),
        "detections": detections.summary(),
    }


def format_tables(result: dict) -> str:
    """The two measurements as plain-text tables."""
    from tabulate import tabulate

    lines = []
    rec = result["recursion"]
    for mode in ("teacher", "predicted"):
        s = rec[mode]
        rows = [
            [
                t,
                s["iou"][t],
                s["iou70"][t],
                s["better"][t],
                s["worse"][t],
                s["acc"][t],
                s["p_gt"][t],
            ]
            for t in range(len(s["iou"]))
        ]
        lines.append(f"recursion ({mode} class), {rec['num_proposals']} GT-overlapping proposals")
        lines.append(
            tabulate(rows, ["t", "mean IoU", "IoU>=0.7", "better", "worse", "cls acc", "p_gt"])
        )
    det = result["detections"]
    rows = [[k, det["all"][k], det["top_n"][k]] for k in KINDS]
    lines.append(
        f"detections ({det['num_gt']} instances; recall ceiling {det['recall_ceiling50']} at "
        f"IoU 0.5, {det['recall_ceiling70']} at 0.7)"
    )
    lines.append(tabulate(rows, ["kind", "all", "top-N per image"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import r2ios_d2  # noqa: F401  (registers the datasets and parts)
    from r2ios_d2.config_checks import load_r2ios_config
    from r2ios_d2.engine import exit_on_usage_error

    with exit_on_usage_error(parser):  # a misspelt key or a bad value: one line, exit status 2
        cfg, _ = load_r2ios_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    result = diagnose(cfg, args.weights, dataset, args.iterations, args.max_images)
    print(format_tables(result))
    if args.output:
        from r2ios_d2.atomic import atomic_write_json

        atomic_write_json(result, args.output, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
