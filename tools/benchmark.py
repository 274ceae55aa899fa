#!/usr/bin/env python
"""R2-IOS benchmarks: speed and memory against Mask R-CNN-style heads, and the paper's ablations.

``--speed``: inference time per image and peak memory of ``R2IOSROIHeads`` for T in {1..4},
several proposal counts and ``SKIP_BACKGROUND`` on/off, against detectron2's
``StandardROIHeads`` (Fast R-CNN box head + ``MaskRCNNConvUpsampleHead``) on the same backbone
features and proposals, all in one process; and the train-step time (forward + backward +
SGD step) for T = 1 vs T = 4, gate off/on. Random weights: the background logit bias of both
models is shifted so that a chosen fraction of the proposals (default 90 %) is predicted
background at the first iteration, as a trained detector on selective-search proposals does.

``--ablation``: the variants of the paper's Table 2, the paper-literal training and detectron2's
stock Mask R-CNN heads as a baseline, trained with ``tools/train_net.py`` on the synthetic
dataset (``configs/synthetic``) for several seeds and evaluated with AP^r.

    python tools/benchmark.py --speed                       # CPU, tiny and full VGG-16 widths
    python tools/benchmark.py --speed --device cuda --widths 1.0
    python tools/benchmark.py --ablation --quick            # 1 seed, 5 rows, short schedule
    python tools/benchmark.py --ablation --jobs 3           # all 11 rows, 3 seeds (~1 h)
    python tools/benchmark.py --speed --ablation --quick    # `make bench`

Results (JSON + Markdown) go to ``benchmarks/results/``; checkpoints and per-run logs to
``--work-dir`` (reused: a run whose results JSON exists is skipped).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model, build_roi_heads
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from tqdm import tqdm

import r2ios_d2  # noqa: F401  (registers the model parts and datasets)
from r2ios_d2 import add_r2ios_config
from r2ios_d2.engine import scaled_schedule_opts

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "Base-R2IOS-VGG16.yaml"
SYNTHETIC = REPO / "configs" / "synthetic"
logger = logging.getLogger("r2ios_d2.benchmark")


# =========================================================================== environment
def machine_info(device: str) -> dict:
    """CPU model and count, torch/detectron2 versions, threads and (on CUDA) the GPU name."""
    import detectron2

    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_kib(key: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS, so that a later peak shows as new RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code in a ``with`` block, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, exact): ``peak`` is the absolute
    peak (weights and resident features included), ``delta`` the growth over the start.
    ``device="none"`` measures nothing. CPU: the process's peak resident set (VmHWM, reset
    through ``/proc/self/clear_refs``) minus
    the resident set at the start, after ``malloc_trim``: the RSS growth of the block, which
    includes allocator caching and anything else the process touched; ``peak`` is None (the RSS
    of a Python process holding several models says nothing about one model's need). None
    everywhere when the kernel does not allow the reset.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak: Optional[float] = None
        self.delta: Optional[float] = None

    def __enter__(self) -> PeakMemory:
        if self.device == "none":  # measure nothing
            return self
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            gc.collect()
            _malloc_trim()
            self._ok = _reset_peak_rss()
            self._start = _proc_status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "none":
            return
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.peak = peak / 2**20
            self.delta = (peak - self._start) / 2**20
        else:
            hwm = _proc_status_kib("VmHWM")
            if self._ok and hwm is not None and self._start is not None:
                self.delta = max(hwm - self._start, 0) / 1024


# ================================================================================= speed
def speed_cfg(width: float, device: str, num_classes: int = 20) -> CfgNode:
    """The paper's VGG-16 R2-IOS config (``Base-R2IOS-VGG16.yaml``) at a channel width.

    FC_DIM (4096) and the AE bottleneck (512) scale with the width (at least 64), as the
    backbone's channels do.
    """
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(BASE_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.MODEL.VGG.WIDTH = width
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = max(64, round(4096 * width))
    cfg.MODEL.R2IOS.AE_HIDDEN_DIM = max(64, round(512 * width))
    return cfg


def baseline_cfg(cfg: CfgNode) -> CfgNode:
    """The Mask R-CNN-style baseline on the same backbone: ``StandardROIHeads`` with the same
    Fast R-CNN box head (RoIPool 7x7, fc6/fc7) on ``det`` and ``MaskRCNNConvUpsampleHead``
    (4 convs of 256 channels x width, RoIAlign 14x14 on ``det``, 28x28 masks)."""
    cfg = cfg.clone()
    width = cfg.MODEL.VGG.WIDTH
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = max(16, round(256 * width))
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
    return cfg


def random_proposals(n: int, h: int, w: int, device: str, seed: int = 1) -> Instances:
    """``n`` random boxes of 8 px to 60 % of the image side, as ``proposal_boxes``."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:, 2].clamp_(max=w)
    boxes[:, 3].clamp_(max=h)
    p = Instances((h, w))
    p.proposal_boxes = Boxes(boxes.to(device))
    p.objectness_logits = torch.zeros(n, device=device)
    return p


def _first_iteration_logits(heads, features: Dict[str, torch.Tensor], boxes: Boxes):
    """Class logits (R, K+1) of the first iteration of R2-IOS or of the baseline's box head."""
    box_feats = [features[f] for f in heads.box_in_features]
    if hasattr(heads, "_predict"):  # R2IOSROIHeads
        scored = heads.mask_head.score_maps(features)
        return heads._predict(box_feats, scored, [boxes])[0]
    x = heads.box_head(heads.box_pooler(box_feats, [boxes]))
    return heads.box_predictor(x)[0]


@torch.no_grad()
def shift_background_bias(heads, features, boxes: Boxes, bg_fraction: float) -> float:
    """Lower/raise the background logit bias so that ``bg_fraction`` of ``boxes`` have
    background as their arg-max class; returns the fraction reached."""
    logits = _first_iteration_logits(heads, features, boxes)
    margin = logits[:, -1] - logits[:, :-1].max(dim=1).values
    heads.box_predictor.cls_score.bias[-1] -= margin.quantile(1 - bg_fraction)
    logits = _first_iteration_logits(heads, features, boxes)
    return (logits.argmax(1) == logits.shape[1] - 1).float().mean().item()


class _CountPredict:
    """Records the number of proposals each R2-IOS iteration runs on (wraps ``_predict``)."""

    def __init__(self, heads) -> None:
        self.heads, self.counts = heads, []
        self._orig = heads._predict

    def __enter__(self) -> _CountPredict:
        def spy(*a):
            out = self._orig(*a)
            self.counts.append(len(out[0]))
            return out

        self.heads._predict = spy
        return self

    def __exit__(self, *exc) -> None:
        del self.heads._predict  # back to the class method


@dataclass
class _Case:
    """One timed configuration of the inference benchmark."""

    method: str  # "R2-IOS" or "baseline"
    proposals: int
    T: int = 0
    skip: Optional[bool] = None


def bench_inference(args, width: float, repeats: int) -> Tuple[List[dict], dict]:
    """Inference rows (one per method/T/proposals/skip) and per-width facts at one width."""
    device = args.device
    cfg = speed_cfg(width, device)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    base_heads = build_roi_heads(baseline_cfg(cfg), model.backbone.output_shape()).to(device)
    base_heads.eval()
    heads = model.roi_heads
    h, w = args.image_size
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator())
    images = model.preprocess_image([{"image": image.to(device)}])

    def backbone():
        with torch.no_grad():
            return model.backbone(images.tensor)

    # Backbone: time and memory (its activations dominate at full width).
    feats = backbone()
    backbone_times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        backbone()
        _sync(device)
        backbone_times.append(time.perf_counter() - t0)
    with PeakMemory(device) as backbone_mem:
        feats = backbone()
        _sync(device)

    n_max = max(args.proposals)
    all_props = random_proposals(n_max, h, w, device)
    bg_r2ios = shift_background_bias(heads, feats, all_props.proposal_boxes, args.bg_fraction)
    bg_base = shift_background_bias(base_heads, feats, all_props.proposal_boxes, args.bg_fraction)

    cases = []
    for n in args.proposals:
        cases.append(_Case("baseline", n))
        for T in args.iterations:
            for skip in (True, False) if T > 1 else (True,):  # identical paths at T = 1
                cases.append(_Case("R2-IOS", n, T, skip))
    props = {n: [all_props[:n]] for n in args.proposals}

    @torch.no_grad()
    def run(case: _Case) -> int:
        """One image through the heads and ``detector_postprocess`` (mask pasting)."""
        if case.method == "baseline":
            out, _ = base_heads(images, feats, props[case.proposals])
        else:
            heads.test_num_iterations, heads.skip_background = case.T, case.skip
            out, _ = heads(images, feats, props[case.proposals])
        detector_postprocess(out[0], h, w)
        return len(out[0])

    # Warm-up, then round-robin repeats: load changes on a shared machine hit all cases alike.
    run(_Case("R2-IOS", min(args.proposals), 1, True))
    run(_Case("baseline", min(args.proposals)))
    times = {i: [] for i in range(len(cases))}
    counts, detections, memory = {}, {}, {}
    for r in tqdm(range(repeats), desc=f"inference width {width:g}", leave=False):
        for i, case in enumerate(cases):
            # Memory on the last repeat only: on CPU its malloc_trim makes the call page in.
            mem = PeakMemory(device if r == repeats - 1 else "none")
            with _CountPredict(heads) as spy, mem:
                _sync(device)
                t0 = time.perf_counter()
                detections[i] = run(case)
                _sync(device)
                times[i].append(time.perf_counter() - t0)
            counts[i], memory[i] = spy.counts, mem

    backbone_ms = 1000 * statistics.median(backbone_times)
    rows = []
    for i, case in enumerate(cases):
        heads_ms = 1000 * statistics.median(times[i])
        rows.append(
            {
                "width": width,
                "method": case.method,
                "proposals": case.proposals,
                "T": case.T or None,
                "skip_background": case.skip,
                "heads_ms": heads_ms,
                "heads_ms_all": [1000 * t for t in times[i]],
                "total_ms": backbone_ms + heads_ms,
                "active_per_iteration": counts[i] if case.method == "R2-IOS" else None,
                "detections": detections[i],
                "heads_peak_mem_delta_mib": memory[i].delta,
                "heads_peak_mem_mib": memory[i].peak,
            }
        )
    for row in rows:  # ratios to the baseline with the same proposals
        base = next(
            r for r in rows if r["method"] == "baseline" and r["proposals"] == row["proposals"]
        )
        row["heads_ratio_to_baseline"] = row["heads_ms"] / base["heads_ms"]
        row["total_ratio_to_baseline"] = row["total_ms"] / base["total_ms"]
    facts = {
        "width": width,
        "backbone_ms": backbone_ms,
        "backbone_peak_mem_delta_mib": backbone_mem.delta,
        "backbone_peak_mem_mib": backbone_mem.peak,
        "bg_fraction_t1_r2ios": bg_r2ios,
        "bg_fraction_t1_baseline": bg_base,
        "params_r2ios_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_baseline_heads_m": sum(p.numel() for p in base_heads.parameters()) / 1e6,
        "repeats": repeats,
    }
    return rows, facts


def _train_batch(h: int, w: int, n_images: int, n_props: int, num_classes: int, device: str):
    """Images with 4 random GT instances (box-filling ellipse masks) and ``n_props`` proposals
    of which a quarter jitter the GT boxes, so the sampler finds foreground RoIs."""
    g = torch.Generator().manual_seed(2)
    batch = []
    for _ in range(n_images):
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 24 + torch.rand(4, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        gt = torch.cat([xy, xy + wh], 1)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        masks = []
        for x0, y0, x1, y1 in gt.tolist():
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            masks.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(gt)
        inst.gt_classes = torch.randint(0, num_classes, (4,), generator=g)
        inst.gt_masks = BitMasks(torch.stack(masks))
        props = random_proposals(n_props, h, w, "cpu", seed=3)
        n_fg = n_props // 4
        jitter = gt[torch.randint(0, 4, (n_fg,), generator=g)]
        jitter = jitter + (torch.rand(n_fg, 4, generator=g) - 0.5) * 0.2 * (
            jitter[:, 2:] - jitter[:, :2]
        ).repeat(1, 2)
        props.proposal_boxes.tensor[:n_fg] = jitter
        props.proposal_boxes.clip((h, w))
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        batch.append(
            {"image": image.to(device), "instances": inst.to(device), "proposals": props.to(device)}
        )
    return batch


def bench_train(args, width: float, repeats: int) -> List[dict]:
    """Train-step time (forward + backward + SGD step) of R2-IOS for T in {1, 4}, gate off/on,
    and of the baseline, on the same batch (``--train-images`` images, 2000 proposals)."""
    device = args.device
    cfg = speed_cfg(width, device)
    h, w = args.image_size
    batch = _train_batch(h, w, args.train_images, max(args.proposals), 20, device)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    torch.manual_seed(0)
    base = build_model(baseline_cfg(cfg)).train()
    optims = {
        "R2-IOS": torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9),
        "baseline": torch.optim.SGD(base.parameters(), lr=1e-6, momentum=0.9),
    }
    cases = [("baseline", None, None), ("R2-IOS", 1, False), ("R2-IOS", 4, False)]
    cases += [("R2-IOS", 4, True)]

    def step(case) -> float:
        method, T, gate = case
        net = base if method == "baseline" else model
        if method == "R2-IOS":
            model.roi_heads.num_iterations, model.roi_heads.gate = T, gate
        torch.manual_seed(0)  # same RoI sampling in every case
        optims[method].zero_grad(set_to_none=True)
        with EventStorage():
            losses = net(batch)
            total = sum(losses.values())
        total.backward()
        optims[method].step()
        return float(total.detach())

    step(cases[0])  # warm-up
    step(cases[1])
    times = {c: [] for c in cases}
    memory = {}
    for r in tqdm(range(repeats), desc=f"train width {width:g}", leave=False):
        for case in cases:
            with PeakMemory(device if r == repeats - 1 else "none") as mem:
                _sync(device)
                t0 = time.perf_counter()
                step(case)
                _sync(device)
                times[case].append(time.perf_counter() - t0)
            memory[case] = mem
    rows = []
    for case in cases:
        method, T, gate = case
        rows.append(
            {
                "width": width,
                "method": method,
                "T": T,
                "gate": gate,
                "images": args.train_images,
                "proposals": max(args.proposals),
                "step_ms": 1000 * statistics.median(times[case]),
                "step_ms_all": [1000 * t for t in times[case]],
                "peak_mem_delta_mib": memory[case].delta,
                "peak_mem_mib": memory[case].peak,
            }
        )
    ref = next(r for r in rows if r["method"] == "R2-IOS" and r["T"] == 1)
    basel = rows[0]
    for row in rows:
        row["ratio_to_T1"] = row["step_ms"] / ref["step_ms"]
        row["ratio_to_baseline"] = row["step_ms"] / basel["step_ms"]
    return rows


def _fmt(x, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def speed_tables(result: dict) -> Dict[str, str]:
    """Markdown tables of a speed result: inference, train step, per-width facts, goals."""
    inf = [
        [
            _fmt(r["width"], "g"),
            r["method"],
            r["proposals"],
            r["T"] or "–",
            "–" if r["skip_background"] is None or r["T"] == 1 else r["skip_background"],
            _fmt(r["heads_ms"]),
            _fmt(r["total_ms"]),
            _fmt(r["heads_ratio_to_baseline"], ".2f"),
            _fmt(r["total_ratio_to_baseline"], ".2f"),
            "–" if r["active_per_iteration"] is None else str(r["active_per_iteration"]),
            r["detections"],
            _fmt(r["heads_peak_mem_delta_mib"], ".0f"),
        ]
        for r in result["inference"]
    ]
    mem_col = "heads peak Δ MiB" + (" (CUDA alloc)" if result["device"] != "cpu" else " (RSS)")
    inf_head = ["width", "method", "proposals", "T", "skip bg", "heads ms", "total ms"]
    inf_head += ["heads ×base", "total ×base", "active/iter", "dets", mem_col]
    train = [
        [
            _fmt(r["width"], "g"),
            r["method"],
            r["T"] or "–",
            "–" if r["gate"] is None else r["gate"],
            r["images"],
            r["proposals"],
            _fmt(r["step_ms"]),
            _fmt(r["ratio_to_T1"], ".2f"),
            _fmt(r["ratio_to_baseline"], ".2f"),
            _fmt(r["peak_mem_delta_mib"], ".0f"),
        ]
        for r in result["train"]
    ]
    train_head = ["width", "method", "T", "gate", "images", "proposals", "step ms"]
    train_head += ["×T=1", "×base", "peak Δ MiB"]
    facts = [
        [
            _fmt(f["width"], "g"),
            _fmt(f["backbone_ms"]),
            _fmt(f["backbone_peak_mem_delta_mib"], ".0f"),
            _fmt(f["backbone_peak_mem_mib"], ".0f"),
            _fmt(f["bg_fraction_t1_r2ios"], ".3f"),
            _fmt(f["bg_fraction_t1_baseline"], ".3f"),
            _fmt(f["params_r2ios_m"], ".1f"),
            f["repeats"],
        ]
        for f in result["widths"]
    ]
    facts_head = ["width", "backbone ms", "backbone peak Δ MiB", "backbone peak MiB (CUDA)"]
    facts_head += ["bg frac t=1 R2-IOS", "bg frac t=1 baseline", "params R2-IOS (M)", "repeats"]
    goals = [[g["goal"], g["measured"], g["met"]] for g in result["goals"]]
    return {
        "inference": tabulate(inf, inf_head, tablefmt="github"),
        "train": tabulate(train, train_head, tablefmt="github"),
        "widths": tabulate(facts, facts_head, tablefmt="github"),
        "goals": tabulate(goals, ["goal", "measured", "met"], tablefmt="github"),
    }


def check_goals(result: dict) -> List[dict]:
    """The speed goals of the issue, checked on what was measured (median times)."""
    goals = []
    device = result["device"]
    for width in sorted({r["width"] for r in result["inference"]}):

        def inf(T, n, skip=True, width=width):
            return next(
                r
                for r in result["inference"]
                if r["width"] == width
                and r["method"] == "R2-IOS"
                and r["T"] == T
                and r["proposals"] == n
                and (T == 1 or r["skip_background"] == skip)
            )

        n = max(r["proposals"] for r in result["inference"])
        if {1, 4} <= {r["T"] for r in result["inference"]}:
            ratio = inf(4, n)["total_ms"] / inf(1, n)["total_ms"]
            heads_ratio = inf(4, n)["heads_ms"] / inf(1, n)["heads_ms"]
            goals.append(
                {
                    "goal": f"inference T=4 ≤ 1.3× T=1 ({device}, width {width:g}, {n} proposals, "
                    "per image incl. backbone, skip bg on)",
                    "measured": f"{ratio:.2f}× (heads only {heads_ratio:.2f}×)",
                    "met": ratio <= 1.3,
                }
            )
            if device.startswith("cuda") and width == 1.0:
                row = inf(4, n)
                facts = next(f for f in result["widths"] if f["width"] == width)
                peak = max(row["heads_peak_mem_mib"] or 0, facts["backbone_peak_mem_mib"] or 0)
                goals.append(
                    {
                        "goal": f"full VGG-16, {n} proposals, T=4 fits in 2 GB ({device})",
                        "measured": f"{peak:.0f} MiB peak allocated",
                        "met": peak <= 2048,
                    }
                )
                goals.append(
                    {
                        "goal": f"full VGG-16, {n} proposals, T=4 well under 100 ms/image",
                        "measured": f"{row['total_ms']:.1f} ms",
                        "met": row["total_ms"] < 100,
                    }
                )
    for width in sorted({r["width"] for r in result["train"]}):
        rows = [r for r in result["train"] if r["width"] == width and r["method"] == "R2-IOS"]
        for gate in (False, True):
            r4 = next((r for r in rows if r["T"] == 4 and r["gate"] == gate), None)
            if r4:
                goals.append(
                    {
                        "goal": f"train step T=4 ≤ 1.8× T=1 ({device}, width {width:g}, "
                        f"gate {'on' if gate else 'off'})",
                        "measured": f"{r4['ratio_to_T1']:.2f}×",
                        "met": r4["ratio_to_T1"] <= 1.8,
                    }
                )
    if not device.startswith("cuda"):
        goals.append(
            {
                "goal": "full VGG-16, 2000 proposals, T=4: ≤ 2 GB and ≪ 100 ms/image on a GPU",
                "measured": "not measured (no GPU): run --speed --device cuda --widths 1.0",
                "met": None,
            }
        )
    return goals


def run_speed(args) -> dict:
    """The whole speed benchmark: inference and train step at every width."""
    result = {
        "machine": machine_info(args.device),
        "device": args.device,
        "image_hw": list(args.image_size),
        "bg_fraction_target": args.bg_fraction,
        "note": (
            "Random weights: the background logit bias of each model is shifted so that "
            f"{args.bg_fraction:.0%} of the proposals are predicted background at iteration 1 "
            "(bg frac columns: reached). Heads time = ROI heads + detector_postprocess (mask "
            "pasting) for one image; total = backbone + heads. Median over repeats, cases run "
            "round-robin in one process. Memory: "
            + (
                "torch.cuda.max_memory_allocated."
                if args.device.startswith("cuda")
                else "CPU peak RSS growth during the call (VmHWM reset via /proc/self/clear_refs, "
                "after malloc_trim); includes allocator caching, approximate."
            )
        ),
        "inference": [],
        "train": [],
        "widths": [],
    }
    for width in args.widths:
        full = width >= 1.0 and not args.device.startswith("cuda")
        repeats = args.full_repeats if full else args.repeats
        logger.info("speed: width %g, %d repeats", width, repeats)
        rows, facts = bench_inference(args, width, repeats)
        gc.collect()  # the models of the previous width are gone with their function
        result["inference"] += rows
        result["widths"].append(facts)
        if not args.no_train:
            result["train"] += bench_train(args, width, repeats)
    result["goals"] = check_goals(result)
    return result


# ============================================================================== ablation
# Stage-1 models (no gate), each trained once per seed and shared by the variants below.
STAGE1_MODELS: Dict[str, List[str]] = {
    "T1": ["MODEL.R2IOS.NUM_ITERATIONS", "1"],
    "T2": ["MODEL.R2IOS.NUM_ITERATIONS", "2"],
    "T3": ["MODEL.R2IOS.NUM_ITERATIONS", "3"],
    "T4": ["MODEL.R2IOS.NUM_ITERATIONS", "4"],
    "conv": ["MODEL.R2IOS.MASK_VARIANT", "conv"],
    "fc": ["MODEL.R2IOS.MASK_VARIANT", "fc"],
    "noseg": ["MODEL.R2IOS.SEG_AWARE", "False"],
    # The paper's text taken literally: raw v in the seg-aware feature with its full gradient,
    # no loss on the confidence maps C (the training aids off).
    "literal": [
        "MODEL.R2IOS.SEG_AWARE_INPUT",
        "logits",
        "MODEL.R2IOS.SEG_AWARE_SCALE",
        "1.0",
        "MODEL.R2IOS.SEG_AWARE_GRAD_SCALE",
        "1.0",
        "MODEL.R2IOS.CONF_LOSS_WEIGHT",
        "0.0",
    ],  # fmt: skip
    "mask_rcnn": [],
}
# Models trained from another config than r2ios_tiny_stage1.yaml, for both stages together.
BASELINE_CONFIGS = {"mask_rcnn": "mask_rcnn_heads_tiny.yaml"}


@dataclass(frozen=True)
class Variant:
    """A row of the paper's Table 2: which stage-1 model, whether stage 2 (gate), test T."""

    name: str
    paper_apr50: Optional[float]  # paper, Table 2, APr@0.5 averaged over the VOC classes
    stage1: str
    stage2: bool
    test_T: int


VARIANTS = [
    Variant("recursive_1", 59.6, "T1", False, 1),
    Variant("recursive_2", 62.8, "T2", False, 2),
    Variant("recursive_3", 64.7, "T3", False, 3),
    Variant("recursive_4", 65.2, "T4", False, 4),
    Variant("recursive_only_testing", 61.9, "T1", False, 4),
    Variant("wo_autoencoder", 54.2, "conv", True, 4),
    Variant("fully_wo_autoencoder", 63.6, "fc", True, 4),
    Variant("wo_seg_aware", 63.4, "noseg", True, 4),
    Variant("r2ios", 66.7, "T4", True, 4),
    Variant("r2ios_paper_literal", 66.7, "literal", True, 4),
    Variant("mask_rcnn_heads", None, "mask_rcnn", False, 1),
]
# --quick: the recursion and the gate (3 trainings), the paper's main claims, and the baseline.
QUICK_VARIANTS = [
    "recursive_1",
    "recursive_4",
    "recursive_only_testing",
    "r2ios",
    "mask_rcnn_heads",
]
METRICS = ["APr50", "APr60", "APr70", "APr_vol"]


def _yaml_solver(path: Path) -> CfgNode:
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg.SOLVER


def schedule_opts(path: Path, scale: float, max_iter: Optional[int]) -> Tuple[List[str], int]:
    """SOLVER overrides that shorten the YAML's schedule: MAX_ITER x ``scale`` (or
    ``max_iter``), with STEPS and WARMUP_ITERS scaled alike. Returns (opts, MAX_ITER)."""
    solver = _yaml_solver(path)
    n = max_iter or max(1, round(solver.MAX_ITER * scale))
    opts = scaled_schedule_opts(solver, n) + ["SOLVER.CHECKPOINT_PERIOD", str(max(n, 1) * 10)]
    return opts, n


def _run_logged(cmd: List[str], log: Path, threads: int = 0) -> float:
    """Run a subprocess with its output in ``log`` (``threads`` > 0: its OpenMP/MKL thread
    count); raise with the log's tail on failure. Returns the wall time in seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    logger.info("$ %s", " ".join(shlex.quote(c) for c in cmd))
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RuntimeError(f"failed ({proc.returncode}), log {log}:\n{tail}")
    return time.time() - t0


class AblationRunner:
    """Trains the shared stage-1 / stage-2 models of one seed and evaluates the variants.

    Layout under ``work``: ``seed<s>/s1_<model>/``, ``seed<s>/s2_<model>/`` (checkpoints,
    logs), ``seed<s>/eval_<variant>/`` and ``seed<s>/<variant>.json`` (the variant's result;
    present = done).
    """

    def __init__(
        self,
        work: Path,
        s1_opts: List[str],
        s2_opts: List[str],
        python: str,
        threads: int = 1,
        baseline_opts: Optional[List[str]] = None,
    ) -> None:
        self.work, self.s1_opts, self.s2_opts, self.python = work, s1_opts, s2_opts, python
        self.baseline_opts = baseline_opts or []
        self.threads = threads
        self.train_seconds: Dict[str, float] = {}

    def _train(self, seed: int, model: str, stage2: bool) -> Path:
        out = self.work / f"seed{seed}" / f"{'s2' if stage2 else 's1'}_{model}"
        final = out / "model_final.pth"
        if final.is_file():
            return final
        config = SYNTHETIC / _config_of(model, stage2)
        opts = ["OUTPUT_DIR", str(out), "SEED", str(seed), "DATASETS.TEST", "()"]
        if model in BASELINE_CONFIGS:
            schedule = self.baseline_opts
        else:
            schedule = self.s2_opts if stage2 else self.s1_opts
        opts += STAGE1_MODELS[model] + schedule
        if stage2:
            opts += ["MODEL.WEIGHTS", str(self._train(seed, model, False))]
        cmd = [self.python, str(REPO / "tools" / "train_net.py"), "--config-file", str(config)]
        cmd += ["--resume", *opts]
        key = f"seed{seed}/{out.name}"
        self.train_seconds[key] = _run_logged(
            cmd, out.parent / "logs" / f"train_{out.name}.log", self.threads
        )
        return final

    def result_path(self, seed: int, variant: Variant) -> Path:
        return self.work / f"seed{seed}" / f"{variant.name}.json"

    def run(self, seed: int, variant: Variant) -> dict:
        """Train what ``variant`` needs (if not there), evaluate it, return its AP^r."""
        path = self.result_path(seed, variant)
        if path.is_file():
            return json.loads(path.read_text())
        weights = self._train(seed, variant.stage1, variant.stage2)
        config = _config_of(variant.stage1, variant.stage2)
        out = self.work / f"seed{seed}" / f"eval_{variant.name}"
        opts = ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out), "SEED", str(seed)]
        opts += STAGE1_MODELS[variant.stage1]
        opts += ["MODEL.R2IOS.TEST_NUM_ITERATIONS", str(variant.test_T)]
        cmd = [self.python, str(REPO / "tools" / "train_net.py"), "--config-file"]
        cmd += [str(SYNTHETIC / config), "--eval-only", *opts]
        eval_s = _run_logged(cmd, out.parent / "logs" / f"eval_{variant.name}.log", self.threads)
        metrics = json.loads(
            (out / "inference" / "r2ios_synthetic_val" / "sds_results.json").read_text()
        )["results"]
        result = {
            "variant": variant.name,
            "seed": seed,
            "segm": {k: metrics["segm"][k] for k in METRICS},
            "bbox_AP50": metrics.get("bbox", {}).get("AP50"),
            "weights": str(weights.relative_to(REPO) if weights.is_relative_to(REPO) else weights),
            "eval_seconds": eval_s,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        return result


def _config_of(model: str, stage2: bool) -> str:
    """The synthetic YAML that trains (and evaluates) ``model`` in the given stage."""
    if model in BASELINE_CONFIGS:
        return BASELINE_CONFIGS[model]
    return "r2ios_tiny_stage2.yaml" if stage2 else "r2ios_tiny_stage1.yaml"


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def ablation_table(result: dict) -> str:
    """Markdown table: mean ± std over seeds per metric, next to the paper's APr@0.5."""
    rows = []
    for v in result["variants"]:
        cells = [v["name"], _fmt(v["paper_apr50"])]
        for m in METRICS:
            mean, std = v["mean"][m], v["std"][m]
            cells.append(f"{mean:.1f} ± {std:.1f}" if v["n_seeds"] > 1 else f"{mean:.1f}")
        cells += [_fmt(v.get("bbox_AP50_mean")), v["n_seeds"]]
        rows.append(cells)
    head = ["variant", "paper APr@0.5 (VOC)", *(f"ours {m}" for m in METRICS)]
    head += ["ours box AP50", "seeds"]
    return tabulate(rows, head, tablefmt="github")


def prepare_synthetic_data() -> None:
    """The synthetic dataset and its proposals (what the demo uses), made if missing."""
    from r2ios_d2.data.synthetic import prepare_synthetic_benchmark

    prepare_synthetic_benchmark()


def run_ablation(args) -> dict:
    """Train and evaluate the selected variants for every seed; aggregate over seeds."""
    names = args.variants or (QUICK_VARIANTS if args.quick else [v.name for v in VARIANTS])
    unknown = set(names) - {v.name for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {[v.name for v in VARIANTS]}")
    variants = [v for v in VARIANTS if v.name in names]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    scale = args.schedule or (args.quick_schedule if args.quick else args.full_schedule)
    s1_opts, n1 = schedule_opts(SYNTHETIC / "r2ios_tiny_stage1.yaml", scale, args.stage1_iters)
    s2_opts, n2 = schedule_opts(SYNTHETIC / "r2ios_tiny_stage2.yaml", scale, args.stage2_iters)
    prepare_synthetic_data()
    machine = machine_info("cpu")
    work = Path(args.work_dir).resolve() / f"ablation_s1-{n1}_s2-{n2}"
    # Baselines train as many iterations as R2-IOS's two stages together.
    baseline_opts = schedule_opts(SYNTHETIC / BASELINE_CONFIGS["mask_rcnn"], scale, n1 + n2)[0]
    runner = AblationRunner(
        work, s1_opts, s2_opts, sys.executable, args.train_threads, baseline_opts
    )
    logger.info("ablation: %d variants x seeds %s, stage 1 %d it, stage 2 %d it -> %s",
                len(variants), seeds, n1, n2, work)  # fmt: skip
    t0 = time.time()
    # Seeds in parallel (--jobs), the variants of one seed in order (stage 2 needs stage 1).
    bar = tqdm(total=len(seeds) * len(variants), desc="ablation")

    def one_seed(seed: int) -> List[dict]:
        out = []
        for variant in variants:
            out.append(runner.run(seed, variant))
            bar.update()
        return out

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        per_run = [r for runs in pool.map(one_seed, seeds) for r in runs]
    bar.close()
    summary = []
    for v in variants:
        runs = [r for r in per_run if r["variant"] == v.name]
        stats = {m: _mean_std([r["segm"][m] for r in runs]) for m in METRICS}
        summary.append(
            {
                "name": v.name,
                "paper_apr50": v.paper_apr50,
                "stage1_model": v.stage1,
                "stage2_gate": v.stage2,
                "test_T": v.test_T,
                "n_seeds": len(runs),
                "mean": {m: s[0] for m, s in stats.items()},
                "std": {m: s[1] for m, s in stats.items()},
                "bbox_AP50_mean": statistics.fmean(r["bbox_AP50"] or 0.0 for r in runs),
            }
        )
    return {
        "machine": machine,
        "quick": args.quick,
        "seeds": seeds,
        "stage1_config": "configs/synthetic/r2ios_tiny_stage1.yaml",
        "stage2_config": "configs/synthetic/r2ios_tiny_stage2.yaml",
        "schedule_scale": scale,
        "yaml_max_iter": {
            "stage1": _yaml_solver(SYNTHETIC / "r2ios_tiny_stage1.yaml").MAX_ITER,
            "stage2": _yaml_solver(SYNTHETIC / "r2ios_tiny_stage2.yaml").MAX_ITER,
        },
        "train_threads": args.train_threads,
        "jobs": args.jobs,
        "stage1_overrides": s1_opts,
        "stage2_overrides": s2_opts,
        "work_dir": str(work),
        "wall_seconds": time.time() - t0,
        "train_seconds": runner.train_seconds,
        "variants": summary,
        "runs": per_run,
        "note": (
            "Synthetic dataset (configs/synthetic), tiny VGG (width from the YAML) from scratch, "
            "AP^r on r2ios_synthetic_val; paper numbers: VOC2012 val, VGG-16 from ImageNet. "
            "Only the direction of the differences is comparable."
        ),
    }


# ==================================================================================== CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--speed", action="store_true", help="inference / train-step time and memory")
    p.add_argument("--ablation", action="store_true", help="Table 2 variants on synthetic data")
    p.add_argument(
        "--quick",
        action="store_true",
        help="minutes instead of an hour: speed at the first width only with 2 repeats; "
        f"ablation with 1 seed, the variants {QUICK_VARIANTS} and --quick-schedule",
    )
    g = p.add_argument_group("speed")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    g.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0], help="VGG widths")
    g.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3, 4], help="T values")
    g.add_argument("--proposals", type=int, nargs="+", default=[300, 1000, 2000])
    g.add_argument("--image-size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    g.add_argument("--bg-fraction", type=float, default=0.9, help="background at iteration 1")
    g.add_argument("--repeats", type=int, default=5, help="timed repeats (tiny widths, CUDA)")
    g.add_argument("--full-repeats", type=int, default=1, help="timed repeats, width 1 on CPU")
    g.add_argument("--train-images", type=int, default=2, help="images per train step")
    g.add_argument("--no-train", action="store_true", help="skip the train-step benchmark")
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 because on a shared 2-core machine 2 threads "
        "ran 10-20x slower under contention",
    )
    g = p.add_argument_group("ablation")
    g.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (--quick: 0)")
    g.add_argument("--variants", nargs="+", help=f"default: all ({[v.name for v in VARIANTS]})")
    g.add_argument("--schedule", type=float, help="fraction of the YAMLs' MAX_ITER/STEPS")
    g.add_argument("--full-schedule", type=float, default=0.5, help="default --schedule")
    g.add_argument("--quick-schedule", type=float, default=0.5, help="--schedule of --quick")
    g.add_argument("--jobs", type=int, default=2, help="seeds trained in parallel")
    g.add_argument("--train-threads", type=int, default=1, help="threads per training process")
    g.add_argument("--stage1-iters", type=int, help="stage-1 MAX_ITER (overrides --schedule)")
    g.add_argument("--stage2-iters", type=int, help="stage-2 MAX_ITER (overrides --schedule)")
    g.add_argument("--work-dir", default="output/benchmark", help="checkpoints, logs, per-run")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    return p


def _write(results_dir: Path, stem: str, result: dict, markdown: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (results_dir / f"{stem}.md").write_text(markdown)
    logger.info("wrote %s.{json,md}", results_dir / stem)


def _header(result: dict) -> str:
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return (
        f"`{m['command']}` — {m['date']}; {m['cpu_count']} × {m['cpu_model']}{gpu}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), detectron2 {m['detectron2']}\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if not (args.speed or args.ablation):
        raise SystemExit("nothing to do: give --speed and/or --ablation")
    if args.threads:
        torch.set_num_threads(args.threads)
    results_dir = (REPO / args.results_dir).resolve()
    tag = args.tag and f"_{args.tag}"
    if args.speed:
        if args.quick:
            args.widths, args.repeats = args.widths[:1], min(args.repeats, 2)
        result = run_speed(args)
        t = speed_tables(result)
        device = args.device.split(":")[0]
        md = (
            f"# Speed and memory ({device}{', quick' if args.quick else ''})\n\n"
            f"{_header(result)}\nImage {args.image_size[0]}×{args.image_size[1]}. "
            f"{result['note']}\n\n## Inference, one image\n\n{t['inference']}\n\n"
            f"## Per width\n\n{t['widths']}\n\n## Train step\n\n{t['train']}\n\n"
            f"## Goals\n\n{t['goals']}\n"
        )
        _write(results_dir, f"speed_{device}{'_quick' if args.quick else ''}{tag}", result, md)
        for name in ("inference", "widths", "train", "goals"):
            print(f"\n{name}\n{t[name]}")
    if args.ablation:
        result = run_ablation(args)
        table = ablation_table(result)
        md = (
            f"# Table 2 ablations on the synthetic dataset{' (quick)' if args.quick else ''}\n\n"
            f"{_header(result)}\nStage 1 overrides `{' '.join(result['stage1_overrides'])}`, "
            f"stage 2 `{' '.join(result['stage2_overrides'])}`; seeds {result['seeds']}; "
            f"{result['wall_seconds'] / 60:.1f} min. {result['note']}\n\n{table}\n"
        )
        _write(results_dir, f"ablation{'_quick' if args.quick else ''}{tag}", result, md)
        print(f"\nablation (AP^r on r2ios_synthetic_val; paper: VOC2012 val)\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
