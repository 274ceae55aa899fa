#!/usr/bin/env python
"""R2-IOS speed and memory against Mask R-CNN-style heads (``tools/benchmark.py --speed``).

Inference time per image and peak memory of ``R2IOSROIHeads`` for T in {1..4}, several
proposal counts and ``SKIP_BACKGROUND`` on/off, against detectron2's ``StandardROIHeads``
(Fast R-CNN box head + ``MaskRCNNConvUpsampleHead``) on the same backbone features and
proposals, all in one process; and the train-step time (forward + backward + SGD step) for
T = 1 vs T = 4, gate off/on. Random weights: the background logit bias of both models is
shifted so that a chosen fraction of the proposals (default 90 %) is predicted background at
the first iteration, as a trained detector on selective-search proposals does. How many
proposals each R2-IOS iteration ran on is what the heads report to detectron2's
``EventStorage`` (``r2ios/test_active_t<t>``).

The demo part (:mod:`r2ios_d2.benchmarking.speed_demo`, ``--no-demo`` skips it): the trained
demo models (``tools/run_demo.py``'s checkpoints, or ``--demo-stage1-weights`` /
``--demo-stage2-weights``) on the demo's val images at T = 1 and T = 4 against the stock
heads of ``mask_rcnn_heads_tiny.yaml``, with the images' selective-search proposals and with
the largest ``--proposals`` count of random ones, each with a per-stage profile; and the
train step of the demo's three configs on its training batches.

    python tools/benchmark_speed.py                         # CPU, tiny and full VGG-16 widths
    python tools/benchmark_speed.py --device cuda --widths 1.0
    python tools/benchmark_speed.py --quick                 # first width, 2 repeats

Results (JSON + Markdown) go to ``benchmarks/results/speed_<device>[_quick][_<tag>]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_options import SPEED_QUICK_HELP, add_speed_arguments  # noqa: E402
from cli_options import parse_before_imports, tool_parser  # noqa: E402

QUICK_HELP = SPEED_QUICK_HELP


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    return tool_parser(__doc__, QUICK_HELP, add_speed_arguments)


parse_before_imports(__name__, build_parser)

import r2ios_d2  # noqa: E402, F401  (first: registers its parts, filters detectron2's warnings)

# isort: split
import torch  # noqa: E402
from detectron2.modeling import build_model, build_roi_heads  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from r2ios_d2.benchmarking.records import (  # noqa: E402
    PeakMemory,
    machine_info,
    result_header,
    sync,
    write_result,
)
from r2ios_d2.benchmarking.speed_report import check_goals, speed_markdown, speed_tables  # noqa: E402
from r2ios_d2.benchmarking.speed_setup import (  # noqa: E402
    active_per_iteration,
    baseline_cfg,
    random_proposals,
    shift_background_bias,
    speed_cfg,
    train_batch,
)
from r2ios_d2.modeling.linear import onednn_available, set_cpu_linear  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("r2ios_d2.benchmark")


@dataclass
class _Case:
    """One timed configuration of the inference benchmark."""

    method: str  # "R2-IOS" or "baseline"
    proposals: int
    T: int = 0
    skip: Optional[bool] = None
    refine_nms: float = 0.0  # MODEL.R2IOS.TEST_REFINE_NMS


def _timed(fn: Callable[[], object], device: str) -> Tuple[object, float]:
    """``fn()`` and its wall seconds (device work included)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def _time_backbone(model, images, device: str, repeats: int):
    """Backbone features of ``images``, median ms over ``repeats`` and its peak memory."""

    @torch.no_grad()
    def backbone():
        return model.backbone(images.tensor)

    backbone()
    times = [_timed(backbone, device)[1] for _ in range(repeats)]
    with PeakMemory(device) as mem:
        feats = backbone()
        sync(device)
    return feats, 1000 * statistics.median(times), mem


def _inference_cases(args) -> List[_Case]:
    from r2ios_d2.benchmarking.speed_demo import demo_cfg

    # The demo recipe's test-time budget of iterations 2..T (MODEL.R2IOS.TEST_REFINE_NMS).
    budget = float(demo_cfg("stage1", "cpu").MODEL.R2IOS.TEST_REFINE_NMS)
    cases = []
    for n in args.proposals:
        cases.append(_Case("baseline", n))
        for T in args.iterations:
            for skip in (True, False) if T > 1 else (True,):  # identical paths at T = 1
                cases.append(_Case("R2-IOS", n, T, skip))
            if T > 1 and budget > 0:
                cases.append(_Case("R2-IOS", n, T, True, budget))
    return cases


def _time_cases(run: Callable[[_Case], int], cases: List[_Case], args, width, repeats) -> dict:
    """Warm-up, then round-robin repeats (load changes on a shared machine hit all cases
    alike). Per case: times, detections, per-iteration counts and memory of the last repeat."""
    run(_Case("R2-IOS", min(args.proposals), 1, True))
    run(_Case("baseline", min(args.proposals)))
    m = {k: {} for k in ("counts", "detections", "memory")}
    m["times"] = {i: [] for i in range(len(cases))}
    for r in tqdm(range(repeats), desc=f"inference width {width:g}", leave=False):
        for i, case in enumerate(cases):
            # Memory on the last repeat only: on CPU its malloc_trim makes the call page in.
            mem = PeakMemory(args.device if r == repeats - 1 else "none")
            with EventStorage() as storage, mem:  # the heads report their per-iteration counts
                m["detections"][i], seconds = _timed(lambda c=case: run(c), args.device)
            m["times"][i].append(seconds)
            m["counts"][i], m["memory"][i] = active_per_iteration(storage), mem
    return m


def _inference_rows(cases: List[_Case], m: dict, width: float, backbone_ms: float) -> List[dict]:
    rows = []
    for i, case in enumerate(cases):
        heads_ms = 1000 * statistics.median(m["times"][i])
        rows.append(
            {
                "width": width,
                "method": case.method,
                "proposals": case.proposals,
                "T": case.T or None,
                "skip_background": case.skip,
                "refine_nms": case.refine_nms if case.method == "R2-IOS" else None,
                "heads_ms": heads_ms,
                "heads_ms_all": [1000 * t for t in m["times"][i]],
                "total_ms": backbone_ms + heads_ms,
                "active_per_iteration": m["counts"][i] if case.method == "R2-IOS" else None,
                "detections": m["detections"][i],
                "heads_peak_mem_delta_mib": m["memory"][i].delta,
                "heads_peak_mem_mib": m["memory"][i].peak,
            }
        )
    for row in rows:  # ratios to the baseline with the same proposals
        base = next(
            r for r in rows if r["method"] == "baseline" and r["proposals"] == row["proposals"]
        )
        row["heads_ratio_to_baseline"] = row["heads_ms"] / base["heads_ms"]
        row["total_ratio_to_baseline"] = row["total_ms"] / base["total_ms"]
    return rows


def _add_layers_alone(rows: List[dict], heads, feats, boxes: torch.Tensor, device: str) -> None:
    """Per R2-IOS row with iterations after the first: ``layers_alone_after_first_ms`` (those
    iterations' layers alone at their active proposals, a lower bound on their cost) and the
    least ratios to T = 1 and to the baseline it allows."""
    from r2ios_d2.benchmarking.speed_demo import layers_alone_ms

    cache: dict = {}
    for row in rows:
        later = [c for c in (row["active_per_iteration"] or [])[1:] if c > 0]
        if not later:
            continue
        for c in later:
            if c not in cache:
                cache[c] = layers_alone_ms(heads, feats, boxes, c, device, 1)
        t1 = next(
            r
            for r in rows
            if r["method"] == "R2-IOS" and r["T"] == 1 and r["proposals"] == row["proposals"]
        )
        base = next(
            r for r in rows if r["method"] == "baseline" and r["proposals"] == row["proposals"]
        )
        row["layers_alone_after_first_ms"] = sum(cache[c] for c in later)
        least = t1["total_ms"] + row["layers_alone_after_first_ms"]
        row["least_ratio_to_T1"] = least / t1["total_ms"]
        row["least_ratio_to_baseline"] = least / base["total_ms"]


def bench_inference(args, width: float, repeats: int) -> Tuple[List[dict], dict]:
    """Inference rows (one per method/T/proposals/skip) and per-width facts at one width."""
    device, (h, w) = args.device, args.image_size
    cfg = speed_cfg(width, device, cpu_linear=args.cpu_linear)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    base_heads = build_roi_heads(baseline_cfg(cfg), model.backbone.output_shape()).to(device)
    set_cpu_linear(
        base_heads.eval(), cfg.MODEL.R2IOS.CPU_LINEAR, cfg.MODEL.R2IOS.CPU_LINEAR_PACK_MB
    )  # fc6/fc7 as R2-IOS's
    heads = model.roi_heads
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator())
    images = model.preprocess_image([{"image": image.to(device)}])
    feats, backbone_ms, backbone_mem = _time_backbone(model, images, device, repeats)

    all_props = random_proposals(max(args.proposals), h, w, device)
    bg_r2ios = shift_background_bias(heads, feats, all_props.proposal_boxes, args.bg_fraction)
    bg_base = shift_background_bias(base_heads, feats, all_props.proposal_boxes, args.bg_fraction)
    props = {n: [all_props[:n]] for n in args.proposals}

    @torch.no_grad()
    def run(case: _Case) -> int:
        """One image through the heads and ``detector_postprocess`` (mask pasting)."""
        if case.method == "baseline":
            out, _ = base_heads(images, feats, props[case.proposals])
        else:
            heads.test_num_iterations, heads.skip_background = case.T, case.skip
            heads.refine_nms = case.refine_nms
            out, _ = heads(images, feats, props[case.proposals])
        detector_postprocess(out[0], h, w)
        return len(out[0])

    cases = _inference_cases(args)
    rows = _inference_rows(cases, _time_cases(run, cases, args, width, repeats), width, backbone_ms)
    _add_layers_alone(rows, heads, feats, all_props.proposal_boxes.tensor, device)
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


def _train_rows(args, width: float, times: dict, memory: dict) -> List[dict]:
    rows = [
        {
            "width": width,
            "method": method,
            "T": T,
            "gate": gate,
            "images": args.train_images,
            "proposals": max(args.proposals),
            "step_ms": 1000 * statistics.median(times[(method, T, gate)]),
            "step_ms_all": [1000 * t for t in times[(method, T, gate)]],
            "peak_mem_delta_mib": memory[(method, T, gate)].delta,
            "peak_mem_mib": memory[(method, T, gate)].peak,
        }
        for method, T, gate in times
    ]
    ref = next(r for r in rows if r["method"] == "R2-IOS" and r["T"] == 1)
    for row in rows:
        row["ratio_to_T1"] = row["step_ms"] / ref["step_ms"]
        row["ratio_to_baseline"] = row["step_ms"] / rows[0]["step_ms"]
    return rows


def bench_train(args, width: float, repeats: int) -> List[dict]:
    """Train-step time (forward + backward + SGD step) of R2-IOS for T in {1, 4}, gate off/on,
    and of the baseline, on the same batch (``--train-images`` images, 2000 proposals)."""
    device, (h, w) = args.device, args.image_size
    cfg = speed_cfg(width, device, cpu_linear=args.cpu_linear)
    batch = train_batch(h, w, args.train_images, max(args.proposals), 20, device)
    torch.manual_seed(0)
    nets = {"R2-IOS": build_model(cfg).train()}
    torch.manual_seed(0)
    nets["baseline"] = build_model(baseline_cfg(cfg)).train()
    set_cpu_linear(nets["baseline"], cfg.MODEL.R2IOS.CPU_LINEAR, cfg.MODEL.R2IOS.CPU_LINEAR_PACK_MB)
    optims = {k: torch.optim.SGD(n.parameters(), lr=1e-6, momentum=0.9) for k, n in nets.items()}
    cases = [("baseline", None, None), ("R2-IOS", 1, False), ("R2-IOS", 4, False)]
    cases += [("R2-IOS", 4, True)]

    def step(case) -> float:
        method, T, gate = case
        if method == "R2-IOS":
            nets[method].roi_heads.num_iterations, nets[method].roi_heads.gate = T, gate
        torch.manual_seed(0)  # same RoI sampling in every case
        optims[method].zero_grad(set_to_none=True)
        with EventStorage():
            losses = nets[method](batch)
            total = sum(losses.values())
        total.backward()
        optims[method].step()
        return float(total.detach())

    step(cases[0])  # warm-up
    step(cases[1])
    times, memory = {c: [] for c in cases}, {}
    for r in tqdm(range(repeats), desc=f"train width {width:g}", leave=False):
        for case in cases:
            with PeakMemory(device if r == repeats - 1 else "none") as mem:
                times[case].append(_timed(lambda c=case: step(c), device)[1])
            memory[case] = mem
    return _train_rows(args, width, times, memory)


def _note(args, cpu_linear: str) -> str:
    memory = (
        "torch.cuda.max_memory_allocated."
        if args.device.startswith("cuda")
        else "CPU peak RSS growth during the call (VmHWM reset via /proc/self/clear_refs, "
        "after malloc_trim); includes allocator caching, approximate."
    )
    return (
        "Random weights: the background logit bias of each model is shifted so that "
        f"{args.bg_fraction:.0%} of the proposals are predicted background at iteration 1 "
        "(bg frac columns: reached). Heads time = ROI heads + detector_postprocess (mask "
        "pasting) for one image; total = backbone + heads. Median over repeats, cases run "
        f"round-robin in one process. Fully connected layers of every model: {cpu_linear} "
        "(MODEL.R2IOS.CPU_LINEAR on CPU). least ×T=1 / ×base: the total T = 4 would have if "
        "iterations 2..T cost only their layers (box head, autoencoder, predictor) at the "
        "proposals each ran on, timed alone after the round-robin on pooled inputs, once per "
        "count (a lower bound up to the noise between two timings). Memory: " + memory
    )


def _cpu_linear(args) -> str:
    """The fully connected layers' CPU backend the run uses, as it takes effect here."""
    backend = args.cpu_linear or speed_cfg(0.125, "cpu").MODEL.R2IOS.CPU_LINEAR
    if backend == "onednn" and not onednn_available():
        return "onednn (unavailable in this torch: F.linear)"
    return backend


def run_speed(args) -> dict:
    """The whole speed benchmark: inference and train step at every width."""
    cpu_linear = _cpu_linear(args)
    result = {
        "machine": machine_info(args.device),
        "device": args.device,
        "image_hw": list(args.image_size),
        "bg_fraction_target": args.bg_fraction,
        "note": _note(args, cpu_linear),
        "cpu_linear": cpu_linear,
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
    if not args.no_demo:
        result["demo"] = run_demo(args)
    result["goals"] = check_goals(result)
    return result


def run_demo(args) -> dict:
    """The demo part: inference of the trained demo models (T = 1, T = 4, the stock heads)
    with a per-stage profile, and the train step of the demo's configs (see
    :mod:`r2ios_d2.benchmarking.speed_demo`)."""
    from r2ios_d2.benchmarking import speed_demo

    demo = {"inference": [], "facts": [], "train": [], "skipped": []}
    weights = {
        "stage1": args.demo_stage1_weights or speed_demo.default_weights("stage1"),
        "stage2": args.demo_stage2_weights or speed_demo.default_weights("stage2"),
    }
    stock_weights = args.demo_stock_weights or speed_demo.default_weights("stock")

    def skip(what: str) -> None:
        demo["skipped"].append(what)
        logger.warning("speed: not measured: %s", what)

    inputs = None
    for stage, path in weights.items():
        if not path:
            skip(f"inference {stage}: no checkpoint (tools/run_demo.py, --demo-{stage}-weights)")
            continue
        if inputs is None:
            try:
                cfg = speed_demo.demo_cfg(stage, args.device)
                inputs = speed_demo.load_demo_inputs(cfg, args.demo_images)
            except FileNotFoundError as e:  # no demo data (make demo-data)
                skip(f"inference: {e}")
                break
        rows, facts = speed_demo.bench_demo_inference(
            stage,
            path,
            inputs,
            device=args.device,
            repeats=args.repeats,
            random_props=max(args.proposals),
            stock_weights=stock_weights,
            cpu_linear=args.cpu_linear,
        )
        demo["inference"] += rows
        demo["facts"].append(facts)
    if not args.no_train:
        cfg = speed_demo.demo_cfg("stage1", args.device)
        try:
            batches = speed_demo.load_demo_train_batches(cfg, args.demo_train_batches)
        except FileNotFoundError as e:
            skip(f"train step: {e}")
            return demo
        demo["train"] = speed_demo.bench_demo_train(
            batches, device=args.device, repeats=args.repeats, cpu_linear=args.cpu_linear
        )
    return demo


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark of ``args``; write and print its tables. Returns the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.widths, args.repeats = args.widths[:1], min(args.repeats, 2)
        args.demo_images, args.demo_train_batches = min(args.demo_images, 2), 1
    result = run_speed(args)
    device = args.device.split(":")[0]
    stem = f"speed_{device}{'_quick' if args.quick else ''}{args.tag and f'_{args.tag}'}"
    md = speed_markdown(result, result_header(result), args.quick)
    write_result((REPO / args.results_dir).resolve(), stem, result, md)
    tables = speed_tables(result)
    names = ("inference", "widths", "train", "demo_inference", "demo_profile", "demo_train")
    for name in (*names, "goals"):
        if name in tables:
            print(f"\n{name}\n{tables[name]}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
