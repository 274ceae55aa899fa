#!/usr/bin/env python
"""Time the AP^r evaluator on a VOC2012-val-sized synthetic stand-in.

1449 images of 500 x 375, a few GT instances per image (random star-shaped blobs, 20 classes),
100 detections per image (jittered copies of the GT, random blobs and boxes elsewhere). Stages:

* ``process``: ``SDSEvaluator.process`` on dense (100, 375, 500) bool ``pred_masks``, C-contiguous
  as ``detector_postprocess`` pastes them (the RLE encoding done during inference); building the
  dense masks is not timed.
* ``mask IoU``: one (R, G) RLE IoU matrix per image, of the same-class pairs as ``evaluate()``
  computes them.
* ``match + AP``: matching and AP at the nine thresholds 0.1 ... 0.9 from those matrices.
* ``evaluate()``: the whole ``SDSEvaluator.evaluate`` (GT conversion, mask and box IoU, matching,
  AP, tables), without and with saving the predictions JSON.

Writes ``benchmarks/results/sds_eval_speed.json``.

    python tools/bench_sds_eval.py [--num-images 1449] [--dets 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from typing import Any, Dict, List, Tuple


def parse_args() -> argparse.Namespace:
    """The command line (``--num-images``, ``--dets``, ``--seed``, ``--output``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--num-images", type=int, default=1449)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="benchmarks/results/sds_eval_speed.json")
    return ap.parse_args()


if __name__ == "__main__":  # --help and usage errors answer before torch and detectron2 load
    parse_args()

import r2ios_d2  # noqa: E402, F401  (first: filters detectron2 v0.6's known-harmless warnings)

# isort: split
import numpy as np  # noqa: E402
import pycocotools.mask as mask_util  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances  # noqa: E402
from tabulate import tabulate  # noqa: E402

from r2ios_d2.evaluation import SDSEvaluator, evaluate_from_ious, mask_iou_rle  # noqa: E402

H, W = 375, 500
NUM_CLASSES = 20
PROCESS = "process (dense -> RLE)"
EVALUATE = "evaluate() (mask + box, no save)"


def blob_polygon(rng: np.random.RandomState, cx: float, cy: float, r: float) -> List[float]:
    """A random star-shaped polygon (flat [x0, y0, x1, y1, ...]) around (cx, cy)."""
    n = rng.randint(8, 20)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + rad * np.cos(ang), 0, W - 1)
    ys = np.clip(cy + rad * np.sin(ang), 0, H - 1)
    return np.stack([xs, ys], 1).reshape(-1).tolist()


def to_rle(poly: List[float]) -> Dict[str, Any]:
    rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def rle_box(rle: Dict[str, Any]) -> List[float]:
    x, y, w, h = mask_util.toBbox(rle).tolist()
    return [x, y, x + w, y + h]


def make_image(rng: np.random.RandomState, image_id: int, dets: int):
    gts = []
    for _ in range(rng.randint(1, 6)):
        cx, cy, r = rng.uniform(50, W - 50), rng.uniform(50, H - 50), rng.uniform(20, 120)
        gts.append((cx, cy, r, rng.randint(NUM_CLASSES)))
    anns = []
    for cx, cy, r, c in gts:
        rle = to_rle(blob_polygon(rng, cx, cy, r))
        anns.append(
            {
                "segmentation": rle,
                "category_id": c,
                "bbox": rle_box(rle),
                "bbox_mode": BoxMode.XYXY_ABS,
            }
        )
    rec = {
        "file_name": f"{image_id:06d}.jpg",
        "image_id": image_id,
        "height": H,
        "width": W,
        "annotations": anns,
    }
    rles, classes = [], []
    for k in range(dets):
        if k < 30:  # near a GT instance, usually its class
            cx, cy, r, c = gts[rng.randint(len(gts))]
            cx, cy, r = cx + rng.normal(0, 0.15 * r), cy + rng.normal(0, 0.15 * r), r
            c = c if rng.rand() < 0.7 else rng.randint(NUM_CLASSES)
            rles.append(to_rle(blob_polygon(rng, cx, cy, r * rng.uniform(0.8, 1.2))))
        elif k % 2:  # clutter blob
            rles.append(
                to_rle(blob_polygon(rng, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(10, 80)))
            )
            c = rng.randint(NUM_CLASSES)
        else:  # clutter box
            x0, y0 = rng.uniform(0, W - 20), rng.uniform(0, H - 20)
            x1, y1 = rng.uniform(x0 + 10, W), rng.uniform(y0 + 10, H)
            rles.append(to_rle([x0, y0, x1, y0, x1, y1, x0, y1]))
            c = rng.randint(NUM_CLASSES)
        classes.append(c)
    pred = {
        "rles": rles,
        "classes": np.array(classes, dtype=np.int64),
        "scores": rng.rand(dets).astype(np.float32),
        "boxes": np.array([rle_box(r) for r in rles], dtype=np.float32).reshape(-1, 4),
    }
    return rec, pred


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_dataset(
    num_images: int, dets: int, seed: int
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], float]:
    """The synthetic data set: (dataset records, predictions, seconds taken to generate)."""
    t0 = time.perf_counter()
    rng = np.random.RandomState(seed)
    data = [make_image(rng, i, dets) for i in range(num_images)]
    records = [d[0] for d in data]
    preds = [d[1] for d in data]
    return records, preds, time.perf_counter() - t0


def pred_instances(pred: Dict[str, Any]) -> Instances:
    """One image's predictions as detectron2 Instances with dense (R, H, W) bool masks."""
    masks = mask_util.decode(pred["rles"])  # (H, W, R) uint8, not timed
    inst = Instances((H, W))
    # (R, H, W) row-major, like the model's pasted masks (the decoded layout is column-major).
    inst.pred_masks = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1), dtype=bool))
    inst.scores = torch.from_numpy(pred["scores"])
    inst.pred_classes = torch.from_numpy(pred["classes"])
    inst.pred_boxes = Boxes(torch.from_numpy(pred["boxes"]))
    return inst


def time_process(evaluator: SDSEvaluator, records: List[Dict], preds: List[Dict]) -> float:
    """Seconds spent in ``evaluator.process`` over all images (building masks not timed)."""
    t_process = 0.0
    for rec, p in zip(records, preds):
        inst = pred_instances(p)
        inp = [{"image_id": rec["image_id"], "height": H, "width": W}]
        s = time.perf_counter()
        evaluator.process(inp, [{"instances": inst}])
        t_process += time.perf_counter() - s
    return t_process


def time_core(
    records: List[Dict], preds: List[Dict], timings: Dict[str, float]
) -> Tuple[List[List[Dict[str, Any]]], Dict[str, Any]]:
    """Time mask IoU and match + AP into ``timings``; returns (GT RLEs per image, core result)."""
    gt_rles = [[a["segmentation"] for a in r["annotations"]] for r in records]
    gt_labels = [np.array([a["category_id"] for a in r["annotations"]]) for r in records]
    s = time.perf_counter()
    ious = [
        mask_iou_rle(p["rles"], g, pred_labels=p["classes"], gt_labels=lab)
        for p, g, lab in zip(preds, gt_rles, gt_labels)
    ]
    timings["mask IoU (all images)"] = time.perf_counter() - s
    s = time.perf_counter()
    core = evaluate_from_ious(
        ious,
        [p["classes"] for p in preds],
        [p["scores"] for p in preds],
        gt_labels,
        num_classes=NUM_CLASSES,
    )
    timings["match + AP, 9 thresholds"] = time.perf_counter() - s
    return gt_rles, core


def time_evaluate(
    evaluator: SDSEvaluator, timings: Dict[str, float]
) -> Tuple[Dict[str, Any], float]:
    """Time ``evaluate()`` without and with saving into ``timings``; returns (results, JSON MiB)."""
    s = time.perf_counter()
    results = evaluator.evaluate()
    timings[EVALUATE] = time.perf_counter() - s
    with tempfile.TemporaryDirectory() as d:
        evaluator._output_dir = d
        s = time.perf_counter()
        evaluator.evaluate()
        timings["evaluate() + save predictions JSON"] = time.perf_counter() - s
        json_mb = os.path.getsize(os.path.join(d, "sds_predictions.json")) / 2**20
    return results, json_mb


def print_report(
    args: argparse.Namespace,
    n_img: int,
    num_gt: int,
    timings: Dict[str, float],
    json_mb: float,
    t_gen: float,
    results: Dict[str, Any],
    core: Dict[str, Any],
) -> None:
    """The timing table and the AP^r numbers on stdout."""
    rows = [[k, v, 1000 * v / n_img] for k, v in timings.items()]
    print(
        f"{n_img} images x {args.dets} detections, {W}x{H} masks, "
        f"{num_gt} GT instances ({cpu_name()}, "
        f"{os.cpu_count()} cores visible, single-threaded)"
    )
    print(tabulate(rows, headers=["stage", "seconds", "ms / image"], floatfmt=".3f"))
    print(
        f"process(): {1000 * timings[PROCESS] / n_img:.2f} ms / image; "
        f"evaluate(): {timings[EVALUATE]:.3f} s"
    )
    print(f"predictions JSON: {json_mb:.1f} MiB; synthetic data generation: {t_gen:.1f} s")
    print(
        f"APr50 {results['segm']['APr50']:.2f}  APr70 {results['segm']['APr70']:.2f}  "
        f"APr_vol {results['segm']['APr_vol']:.2f}  (core mAP@0.5 {100 * core['map'][4]:.2f})"
    )


def summary(
    args: argparse.Namespace,
    n_img: int,
    num_gt: int,
    timings: Dict[str, float],
    json_mb: float,
    results: Dict[str, Any],
) -> Dict[str, Any]:
    """The JSON written to ``--output``: sizes, timings, machine, command, AP^r."""
    return {
        "num_images": n_img,
        "dets_per_image": args.dets,
        "image_size": [H, W],
        "num_gt": int(num_gt),
        "seconds": timings,
        "ms_per_image": {k: 1000 * v / n_img for k, v in timings.items()},
        "process_ms_per_image": 1000 * timings[PROCESS] / n_img,
        "evaluate_seconds": timings[EVALUATE],
        "predictions_json_mib": json_mb,
        "machine": {
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
        "command": "python tools/bench_sds_eval.py "
        + f"--num-images {args.num_images} --dets {args.dets} --seed {args.seed}",
        "segm": {k: results["segm"][k] for k in ("APr50", "APr60", "APr70", "APr_vol")},
    }


def main() -> None:
    """Generate the data, time each stage, print the table and write ``--output``."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    records, preds, t_gen = make_dataset(args.num_images, args.dets, args.seed)
    name = "_bench_sds_synthetic"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=[f"class{i}" for i in range(NUM_CLASSES)])

    timings: Dict[str, float] = {}
    evaluator = SDSEvaluator(name, distributed=False)
    evaluator.reset()
    timings[PROCESS] = time_process(evaluator, records, preds)
    gt_rles, core = time_core(records, preds, timings)  # functional core, stage by stage
    results, json_mb = time_evaluate(evaluator, timings)

    n_img = len(records)
    num_gt = sum(len(g) for g in gt_rles)
    print_report(args, n_img, num_gt, timings, json_mb, t_gen, results, core)
    out = summary(args, n_img, num_gt, timings, json_mb, results)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
