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
* **Gate** (as tested): what each iteration t would output for those proposals — its score
  (the gate score: max class probability), its box l_t and the mask predicted inside l_t
  (``TEST_MASK_FROM_OUTPUT_BOX``'s readout), binarised at ``MODEL.R2IOS.MASK_THRESHOLD`` and
  compared with the matched instance's mask in the image. Per t: mean box and mask IoU and
  the score; and the reversible gate's choice t' = argmax_t score against t = 1, t = T and
  the best t of each proposal (oracle), with the within-proposal correlation of the score
  with the box / mask IoU (does the more confident iteration have the better output?).
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
CONVERGENCE_EPS = (0.02, 0.05, 0.1)


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
    p.add_argument(
        "--output", default=None, help="write the numbers to this JSON file (and the tables to .md)"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def _box_iou(a, b):
    from detectron2.structures import Boxes, pairwise_iou

    return pairwise_iou(Boxes(a), Boxes(b))


def _row_iou(a, b):
    """(N,) IoU of the row-aligned (N, 4) boxes ``a`` and ``b``."""
    from detectron2.structures import Boxes
    from detectron2.structures.boxes import matched_pairwise_iou

    return matched_pairwise_iou(Boxes(a), Boxes(b))


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


def _masks_in_boxes(model, features, boxes, classes, image_size):
    """(R, M, M) foreground probabilities of the masks the model predicts inside (R, 4)
    input-frame boxes: its ROI heads' ``forward_with_given_boxes`` (R2-IOS's mask head, or
    the stock mask head's channel of ``classes``; background is given the last class)."""
    from detectron2.structures import Boxes, Instances

    rh = model.roi_heads
    given = Instances(image_size, pred_boxes=Boxes(boxes))
    given.pred_classes = classes.clamp(max=rh.num_classes - 1)
    return rh.forward_with_given_boxes(features, [given])[0].pred_masks[:, 0]


def _mask_iou(probs, boxes, gt_masks, image_size, threshold):
    """IoU of (R, M, M) mask probabilities pasted into (R, 4) original-image boxes and
    binarised at ``threshold`` with (R, H, W) bool ground-truth masks."""
    from detectron2.layers import paste_masks_in_image
    from detectron2.structures import Boxes

    pasted = paste_masks_in_image(probs, Boxes(boxes), image_size, threshold=threshold)
    inter = (pasted & gt_masks).flatten(1).sum(1).float()
    union = (pasted | gt_masks).flatten(1).sum(1).float()
    return inter / union.clamp(min=1.0)


def _box_move(old, new):
    """(R,) size of the step from (R, 4) boxes ``old`` to ``new``: the norm of the centre
    shift in box sides and the log change of width and height."""
    import torch

    wh = (old[:, 2:] - old[:, :2]).clamp(min=1e-3)
    new_wh = (new[:, 2:] - new[:, :2]).clamp(min=1e-3)
    shift = ((new[:, :2] + new[:, 2:]) - (old[:, :2] + old[:, 2:])) / (2 * wh)
    return torch.cat([shift, torch.log(new_wh / wh)], dim=1).norm(dim=1)


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
        self.gate = GateStats(num_iterations)

    def add(self, model, features, proposals, gt_boxes, gt_classes, hw, masks=None) -> None:
        """Add one image: (R, 4) proposals and (G, 4) GT boxes in the network-input frame,
        (G,) classes, ``hw`` (1, 2) the input size; ``masks`` (optional, for the gate
        measurement): ``(gt_masks (G, H, W) bool, scale (4,) input / original,
        threshold)`` in the original image."""
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
        gate_score = getattr(model.roi_heads, "gate_score", "all")
        for mode in ("teacher", "predicted"):
            s = self.sums[mode]
            trace: Dict[str, list] = {"score": [], "iou": [], "mask_iou": [], "move": []}
            cur = proposals[rows]
            prev = _row_iou(cur, gt_b)
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
                    trace["move"].append(_box_move(cur, new))
                    cur = new
                now = _row_iou(cur, gt_b)
                if mode == "predicted":
                    fg = probs[:, :k] if gate_score == "foreground" else probs
                    trace["score"].append(fg.max(dim=1).values)
                    trace["iou"].append(now)
                    if masks is not None:
                        gt_masks, scale, threshold = masks
                        m = _masks_in_boxes(model, features, cur, pred, tuple(hw[0].tolist()))
                        trace["mask_iou"].append(
                            _mask_iou(
                                m, cur / scale, gt_masks[gt_idx[rows]],
                                gt_masks.shape[-2:], threshold,
                            )
                        )  # fmt: skip
                s["iou"][t] += float(now.sum())
                s["iou70"][t] += float((now >= 0.7).sum())
                s["better"][t] += float((now > prev + 1e-3).sum())
                s["worse"][t] += float((now < prev - 1e-3).sum())
                prev = now
            if mode == "predicted":
                self.gate.add(**{k: torch.stack(v, dim=1) if v else None for k, v in trace.items()})

    def summary(self) -> Dict[str, Dict[str, List[float]]]:
        n = max(self.count, 1)
        return {
            mode: {k: [round(v / n, 4) for v in vals] for k, vals in s.items()}
            for mode, s in self.sums.items()
        } | {"num_proposals": self.count}


class GateStats:
    """What iteration t outputs for the GT-overlapping proposals as tested, and the choice
    of the reversible gate among them (see the module docstring)."""

    def __init__(self, num_iterations: int) -> None:
        self.T = num_iterations
        self.parts: Dict[str, list] = {"score": [], "iou": [], "mask_iou": [], "move": []}

    def add(self, score, iou, mask_iou=None, move=None) -> None:
        """(R, T) gate scores, box IoUs, and (optionally) mask IoUs and box moves (see
        :func:`_box_move`; iteration t's move is from l_{t-1} to l_t) of one image's rows."""
        for k, v in (("score", score), ("iou", iou), ("mask_iou", mask_iou), ("move", move)):
            if v is not None:
                self.parts[k].append(v)

    def _choices(self, score):
        """The iteration each rule picks per row: the reversible gate (highest score, first
        on ties) and, where the moves are known, the convergence of the box offsets (the
        paper's other candidate signal): the smallest move, or the first move below
        ``eps`` of the box size (else the last iteration)."""
        choices = {"gate": score.argmax(dim=1)}
        if self.parts["move"]:
            import torch

            move = torch.cat(self.parts["move"])
            choices["smallest_move"] = move.argmin(dim=1)
            for eps in CONVERGENCE_EPS:
                small = move < eps
                last = torch.full_like(choices["gate"], move.shape[1] - 1)
                choices[f"first_move_below_{eps}"] = torch.where(
                    small.any(dim=1), small.int().argmax(dim=1), last
                )
        return choices

    @staticmethod
    def _within_corr(a, b) -> Optional[float]:
        """Pearson correlation of (R, T) ``a`` and ``b`` after removing each row's mean:
        whether, within a proposal, the iteration with the higher ``a`` has the higher ``b``."""
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
        den = float((a.pow(2).sum() * b.pow(2).sum()).sqrt())
        return round(float((a * b).sum()) / den, 4) if den > 0 else None

    def summary(self) -> dict:
        import torch

        if not self.parts["score"]:
            return {"num_proposals": 0}
        score = torch.cat(self.parts["score"])
        rows = torch.arange(len(score))
        # argmax returns the first maximum: a tie keeps the earlier iteration, as the gate
        choices = self._choices(score)
        t_prime = choices["gate"]
        out: dict = {
            "num_proposals": len(score),
            "t_prime_frac": [
                round(float((t_prime == t).float().mean()), 4) for t in range(score.shape[1])
            ],
            "score": [round(float(x), 4) for x in score.mean(dim=0)],
        }
        for k in ("iou", "mask_iou"):
            if not self.parts[k]:
                continue
            x = torch.cat(self.parts[k])
            out[k] = {
                "per_t": [round(float(v), 4) for v in x.mean(dim=0)],
                "at_0.5_per_t": [round(float(v), 4) for v in (x >= 0.5).float().mean(dim=0)],
                "t1": round(float(x[:, 0].mean()), 4),
                "gate": round(float(x[rows, t_prime].mean()), 4),
                "last": round(float(x[:, -1].mean()), 4),
                "oracle": round(float(x.max(dim=1).values.mean()), 4),
                "corr_with_score": self._within_corr(score, x),
                "by_rule": {n: round(float(x[rows, c].mean()), 4) for n, c in choices.items()},
            }
        return out


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


def _gt_of(gt: dict):
    """GT boxes (G, 4) XYXY in original pixels, classes (G,) and masks (G, H, W) bool of an
    image's entry of ``gt_from_dataset_dicts``."""
    import numpy as np
    import pycocotools.mask as mask_util
    import torch

    h, w = gt["height"], gt["width"]
    masks = [mask_util.decode(m) for m in gt["masks"]]
    return (
        torch.as_tensor(gt["boxes"], dtype=torch.float32).view(-1, 4),
        torch.as_tensor(gt["labels"], dtype=torch.long),
        torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)).bool(),
    )


def diagnose(cfg, weights: str, dataset: str, iterations: int, max_images: int) -> dict:
    """Run both measurements of a model on ``dataset``; returns the summary dict."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from tqdm import tqdm

    from r2ios_d2.data import build_r2ios_test_loader
    from r2ios_d2.engine.checkpoint import R2IOSCheckpointer
    from r2ios_d2.evaluation.scoring import gt_from_dataset_dicts

    model = build_model(cfg)
    R2IOSCheckpointer.for_config(model, cfg).load(weights)
    model.eval()
    gts = gt_from_dataset_dicts(DatasetCatalog.get(dataset), dataset)
    threshold = cfg.MODEL.R2IOS.MASK_THRESHOLD
    recursion, detections = RecursionStats(iterations), DetectionStats()
    loader = build_r2ios_test_loader(cfg, dataset)
    total = len(gts) if max_images <= 0 else min(max_images, len(gts))
    with torch.no_grad():
        for n, batch in enumerate(tqdm(loader, total=total, desc="diagnose")):
            if n >= total:
                break
            x = batch[0]
            gt_boxes, gt_classes, gt_masks = _gt_of(gts[x["image_id"]])
            inst = model(batch)[0]["instances"]
            detections.add(
                inst.pred_boxes.tensor, inst.scores, inst.pred_classes, gt_boxes, gt_classes
            )
            images = model.preprocess_image(batch)
            features = model.backbone(images.tensor)
            h, w = x["image"].shape[-2:]
            sy, sx = h / x["height"], w / x["width"]
            scale = torch.tensor([sx, sy, sx, sy])
            hw = torch.tensor([[h, w]])
            proposals = x["proposals"].proposal_boxes.tensor
            masks = (gt_masks, scale, threshold)
            recursion.add(model, features, proposals, gt_boxes * scale, gt_classes, hw, masks)
    return {
        "weights": weights,
        "dataset": dataset,
        "images": total,
        "recursion": recursion.summary(),
        "gate": recursion.gate.summary(),
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
    gate = result["gate"]
    if gate["num_proposals"]:
        T = len(gate["score"])
        rows = [
            [t + 1, gate["t_prime_frac"][t], gate["score"][t]]
            + [gate[k]["per_t"][t] for k in ("iou", "mask_iou") if k in gate]
            for t in range(T)
        ]
        heads = ["t", "gate t' = t", "score"]
        heads += [n for k, n in (("iou", "box IoU"), ("mask_iou", "mask IoU")) if k in gate]
        lines.append(f"outputs of iteration t as tested, {gate['num_proposals']} proposals")
        lines.append(tabulate(rows, heads))
        rows = [
            [name, *(gate[k][c] for c in ("t1", "gate", "last", "oracle", "corr_with_score"))]
            for k, name in (("iou", "box IoU"), ("mask_iou", "mask IoU"))
            if k in gate
        ]
        lines.append("the reversible gate's choice t' = argmax_t score")
        lines.append(tabulate(rows, ["", "t = 1", "t'", f"t = {T}", "best t", "corr(score, IoU)"]))
        kinds = [k for k in ("iou", "mask_iou") if k in gate]
        rows = [
            [rule, *(gate[k]["by_rule"][rule] for k in kinds)] for rule in gate["iou"]["by_rule"]
        ]
        lines.append("mean IoU at the iteration each rule picks (gate: the score's argmax)")
        lines.append(tabulate(rows, ["rule", *heads[3:]]))
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
    tables = format_tables(result)
    print(tables)
    if args.output:
        from r2ios_d2.benchmarking.records import machine_info, result_header, write_result

        result["machine"] = machine_info("cpu")
        out = Path(args.output)
        markdown = (
            f"# Box diagnostics: {result['dataset']}\n\n{result_header(result)}\n"
            f"Weights `{result['weights']}`, {result['images']} images.\n\n```\n{tables}\n```\n"
        )
        write_result(out.parent, out.name.removesuffix(".json"), result, markdown)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
