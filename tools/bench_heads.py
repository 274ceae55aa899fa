#!/usr/bin/env python
"""Inference time of R2IOSROIHeads: T iterations vs 1, SKIP_BACKGROUND on vs off.

Random weights on a random image with random proposals; the background logit is shifted so
that a chosen fraction of the proposals is predicted background at iteration 1 (a trained
model on selective-search proposals predicts most of them background). Backbone time is
measured once per width and reported separately.

    python tools/bench_heads.py --widths 0.0625 1.0 --out output/bench_heads.json
"""

import argparse
import json
import logging
import os
import platform
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import r2ios_d2  # noqa: F401  (registers the model parts)
from r2ios_d2 import add_r2ios_config

logger = logging.getLogger("bench_heads")


def build(width: float, num_classes: int, device: str):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.BACKBONE.NAME = "build_r2ios_vgg_backbone"
    cfg.MODEL.VGG.WIDTH = width
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "R2IOSROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["det"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = max(64, round(4096 * width))
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "InstanceAwareAEMaskHead"
    cfg.MODEL.R2IOS.AE_HIDDEN_DIM = max(64, round(512 * width))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def random_proposals(n: int, h: int, w: int, device: str) -> Instances:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:, 2].clamp_(max=w)
    boxes[:, 3].clamp_(max=h)
    p = Instances((h, w))
    p.proposal_boxes = Boxes(boxes.to(device))
    p.objectness_logits = torch.zeros(n, device=device)
    return p


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def bench_width(args, width: float) -> list:
    model = build(width, args.num_classes, args.device)
    heads = model.roi_heads
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    images = model.preprocess_image([{"image": image.to(args.device)}])
    sync(args.device)
    t0 = time.perf_counter()
    feats = model.backbone(images.tensor)
    sync(args.device)
    backbone_s = time.perf_counter() - t0
    proposals = [random_proposals(args.proposals, args.height, args.width, args.device)]

    # Background logit shift: bg_fraction of the proposals predicted background at t = 1.
    scored = heads.mask_head.score_maps(feats)
    box_feats = [feats[f] for f in heads.box_in_features]
    logits = heads._predict(box_feats, scored, [proposals[0].proposal_boxes])[0]
    margin = logits[:, -1] - logits[:, :-1].max(dim=1).values
    heads.box_predictor.cls_score.bias[-1] -= margin.quantile(1 - args.bg_fraction)

    rows = []
    for T in args.iterations:
        for skip in (False, True):
            heads.test_num_iterations = T
            heads.skip_background = skip
            active = []
            predict = heads._predict

            def spy(*a, _predict=predict, _active=active):
                out = _predict(*a)
                _active.append(len(out[0]))
                return out

            heads._predict = spy
            times = []
            for r in range(args.warmup + args.repeats):
                active.clear()
                sync(args.device)
                t0 = time.perf_counter()
                heads.forward_inference(feats, proposals)
                sync(args.device)
                if r >= args.warmup:
                    times.append(time.perf_counter() - t0)
            heads._predict = predict
            row = {
                "width": width,
                "T": T,
                "skip_background": skip,
                "proposals": args.proposals,
                "heads_s": statistics.median(times),
                "heads_s_all": times,
                "backbone_s": backbone_s,
                "active_per_iteration": list(active),
            }
            rows.append(row)
            logger.info("%s", row)
    del model, feats
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1 / 16, 1.0])
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--proposals", type=int, default=2000)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--bg-fraction", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="output/bench_heads.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [row for w in args.widths for row in bench_width(args, w)]
    header = f"{'width':>7} {'T':>2} {'skip_bg':>7} {'heads s':>8} {'backbone s':>10}  active/iter"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['width']:>7.4g} {r['T']:>2} {str(r['skip_background']):>7} "
            f"{r['heads_s']:>8.3f} {r['backbone_s']:>10.3f}  {r['active_per_iteration']}"
        )
    logger.info("\n%s", "\n".join(lines))
    meta = {
        "device": args.device
        if args.device == "cpu"
        else torch.cuda.get_device_name(torch.device(args.device)),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image_hw": [args.height, args.width],
        "bg_fraction_at_t1": args.bg_fraction,
        "num_classes": args.num_classes,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
