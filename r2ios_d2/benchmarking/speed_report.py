"""Markdown tables and goal checks of a speed benchmark result (``tools/benchmark_speed.py``)."""

from __future__ import annotations

from typing import Dict, List, Optional

from tabulate import tabulate

from .records import fmt

__all__ = ["check_goals", "speed_markdown", "speed_tables"]


def _inference_table(result: dict) -> str:
    rows = [
        [
            fmt(r["width"], "g"),
            r["method"],
            r["proposals"],
            r["T"] or "–",
            "–" if r["skip_background"] is None or r["T"] == 1 else r["skip_background"],
            "–" if not r.get("refine_nms") or r["T"] == 1 else fmt(r["refine_nms"], "g"),
            fmt(r["heads_ms"]),
            fmt(r["total_ms"]),
            fmt(r["heads_ratio_to_baseline"], ".2f"),
            fmt(r["total_ratio_to_baseline"], ".2f"),
            "–" if r["active_per_iteration"] is None else str(r["active_per_iteration"]),
            fmt(r.get("least_ratio_to_T1"), ".2f"),
            fmt(r.get("least_ratio_to_baseline"), ".2f"),
            r["detections"],
            fmt(r["heads_peak_mem_delta_mib"], ".0f"),
        ]
        for r in result["inference"]
    ]
    mem_col = "heads peak Δ MiB" + (" (CUDA alloc)" if result["device"] != "cpu" else " (RSS)")
    head = ["width", "method", "proposals", "T", "skip bg", "refine nms", "heads ms", "total ms"]
    head += ["heads ×base", "total ×base", "active/iter", "least ×T=1", "least ×base", "dets"]
    head += [mem_col]
    return tabulate(rows, head, tablefmt="github")


def _train_table(result: dict) -> str:
    rows = [
        [
            fmt(r["width"], "g"),
            r["method"],
            r["T"] or "–",
            "–" if r["gate"] is None else r["gate"],
            r["images"],
            r["proposals"],
            fmt(r["step_ms"]),
            fmt(r["ratio_to_T1"], ".2f"),
            fmt(r["ratio_to_baseline"], ".2f"),
            fmt(r["peak_mem_delta_mib"], ".0f"),
        ]
        for r in result["train"]
    ]
    head = ["width", "method", "T", "gate", "images", "proposals", "step ms"]
    head += ["×T=1", "×base", "peak Δ MiB"]
    return tabulate(rows, head, tablefmt="github")


def _widths_table(result: dict) -> str:
    rows = [
        [
            fmt(f["width"], "g"),
            fmt(f["backbone_ms"]),
            fmt(f["backbone_peak_mem_delta_mib"], ".0f"),
            fmt(f["backbone_peak_mem_mib"], ".0f"),
            fmt(f["bg_fraction_t1_r2ios"], ".3f"),
            fmt(f["bg_fraction_t1_baseline"], ".3f"),
            fmt(f["params_r2ios_m"], ".1f"),
            f["repeats"],
        ]
        for f in result["widths"]
    ]
    head = ["width", "backbone ms", "backbone peak Δ MiB", "backbone peak MiB (CUDA)"]
    head += ["bg frac t=1 R2-IOS", "bg frac t=1 baseline", "params R2-IOS (M)", "repeats"]
    return tabulate(rows, head, tablefmt="github")


def _demo_inference_table(demo: dict) -> str:
    rows = [
        [
            r["stage"],
            r["proposals"],
            r["case"],
            fmt(r["ms_per_image"]),
            fmt(r["heads_ms"]),
            fmt(r["ratio_to_T1"], ".2f"),
            fmt(r["ratio_to_stock"], ".2f"),
            "–" if r["active_per_iteration"] is None else str(r["active_per_iteration"]),
            fmt(r["active_fraction_after_first"], ".2f"),
            fmt(r["iterations_after_first_ms"], ".1f"),
            fmt(r.get("layers_alone_after_first_ms"), ".1f"),
            fmt(r.get("least_ratio_to_T1"), ".2f"),
            fmt(r.get("least_ratio_to_stock"), ".2f"),
            r["detections"],
        ]
        for r in demo["inference"]
    ]
    head = ["stage", "proposals", "case", "ms/image", "heads ms", "×T=1", "×stock"]
    head += ["active/iter (all images)", "active t≥2 / t=1", "iterations 2..T ms"]
    head += ["layers alone 2..T ms", "least ×T=1", "least ×stock", "dets"]
    return tabulate(rows, head, tablefmt="github")


def _demo_profile_table(demo: dict) -> str:
    """One column per case, one row per stage (ms per image)."""
    cases = demo["inference"]
    stages: List[str] = []
    for r in cases:
        stages += [k for k in r["profile_ms"] if k not in stages]
    head = ["stage"] + [f"{r['stage']} {r['proposals']} {r['case']}" for r in cases]
    rows = [[k] + [fmt(r["profile_ms"].get(k), ".1f") for r in cases] for k in stages]
    return tabulate(rows, head, tablefmt="github")


def _demo_train_table(demo: dict) -> str:
    stages: List[str] = []
    for r in demo["train"]:
        stages += [k for k in r["profile_ms"] if k not in stages]
    rows = [
        [
            r["model"],
            r["config"],
            r.get("cpu_linear", "–"),
            r.get("cpu_roi_align_grad", "–"),
            r["T"] or "–",
            "–" if r["gate"] is None else r["gate"],
            fmt(r["images_per_step"], "g"),
            fmt(r["step_ms"]),
            fmt(r["ratio_to_stock"], ".2f"),
            fmt(r.get("ratio_to_stock_same_roi_grad"), ".2f"),
        ]
        + [fmt(r["profile_ms"].get(k), ".0f") for k in stages]
        for r in demo["train"]
    ]
    head = ["model", "config", "cpu linear", "RoIAlign grad", "T", "gate", "images", "step ms"]
    head += ["×stock", "×stock same grad"]
    head += [f"{k} ms" for k in stages]
    return tabulate(rows, head, tablefmt="github")


def speed_tables(result: dict) -> Dict[str, str]:
    """Markdown tables of a speed result: inference, train step, per-width facts, the demo
    models' inference, profile and train step (if measured), goals."""
    goals = [[g["goal"], g["measured"], g["met"]] for g in result["goals"]]
    tables = {
        "inference": _inference_table(result),
        "train": _train_table(result),
        "widths": _widths_table(result),
        "goals": tabulate(goals, ["goal", "measured", "met"], tablefmt="github"),
    }
    demo = result.get("demo")
    if demo and demo["inference"]:
        tables["demo_inference"] = _demo_inference_table(demo)
        tables["demo_profile"] = _demo_profile_table(demo)
    if demo and demo["train"]:
        tables["demo_train"] = _demo_train_table(demo)
    return tables


def speed_markdown(result: dict, header: str, quick: bool) -> str:
    """The whole Markdown file of a speed result, ``header`` (command, machine) first."""
    t = speed_tables(result)
    device = result["device"].split(":")[0]
    h, w = result["image_hw"]
    demo = ""
    if "demo_inference" in t:
        demo += (
            "## Demo models, inference with trained weights\n\n"
            f"{DEMO_NOTE}\n\n{t['demo_inference']}\n\n"
            f"### Profile, ms per image\n\n{t['demo_profile']}\n\n"
        )
    if "demo_train" in t:
        demo += f"## Demo configs, train step\n\n{DEMO_TRAIN_NOTE}\n\n{t['demo_train']}\n\n"
    for line in (result.get("demo") or {}).get("skipped", []):
        demo += f"Not measured: {line}.\n\n"
    return (
        f"# Speed and memory ({device}{', quick' if quick else ''})\n\n"
        f"{header}\nImage {h}×{w}. "
        f"{result['note']}\n\n## Inference, one image\n\n{t['inference']}\n\n"
        f"## Per width\n\n{t['widths']}\n\n## Train step\n\n{t['train']}\n\n"
        f"{demo}## Goals\n\n{t['goals']}\n"
    )


DEMO_NOTE = (
    "The demo's configs and checkpoints on its first val images; ms/image = backbone + ROI "
    "heads + detector_postprocess (mask pasting at the original image size), median over "
    "round-robin repeats. The stock heads (mask_rcnn_heads_tiny.yaml) run on R2-IOS's "
    "backbone features; with no trained stock checkpoint, their random weights' background "
    "bias is shifted to R2-IOS's background fraction at iteration 1. Profile: one "
    "instrumented pass; `<module> t<k>` = the k-th call per image (R2-IOS: iteration k); "
    "heads_other = the heads' time outside the timed stages. Iterations 2..T run only on the "
    "proposals the previous iteration moved (predicted foreground, box changed): for a share a "
    "of them (active t≥2 / t=1), heads time h and backbone time b per image, T = 4 costs about "
    "1 + 3·a·h / (b + h) times T = 1. Layers alone 2..T: what iterations 2..T's layers "
    "(box head, autoencoder, predictor) take by themselves, per image, at the number of "
    "proposals each iteration ran on in each image (pooled beforehand; no pooling, gate, "
    "refinement or bookkeeping; timed in the same round-robin, each right after a warm-up "
    "run); least ×T=1 / ×stock: the ratios T = 4 would have if iterations 2..T cost only "
    "that (a lower bound)."
)
DEMO_TRAIN_NOTE = (
    "Forward + backward + optimizer step (the config's) on the demo's first training "
    "batches, models from their random init, round-robin; step ms: each batch's median over "
    "the repeats, averaged over the batches; profile: ms per step. cpu linear: "
    "the backend of every model's fully connected layers (MODEL.R2IOS.CPU_LINEAR; the rows "
    'named "(torch)" run torch\'s F.linear in the same round-robin); RoIAlign grad: the input '
    "gradient of the RoIAlign poolers on CPU (matmul = two matrix products per image, "
    "MODEL.R2IOS.CPU_ROI_ALIGN_GRAD, R2-IOS's default; torchvision = its own backward, the "
    'stock heads\' as detectron2 builds them; the rows named "(... RoIAlign grad)" swap it); '
    "×stock: to the stock heads on the same linear backend with detectron2's RoIAlign; "
    "×stock same grad: to the stock heads with the same RoIAlign backward too."
)


def _inference_goals(result: dict, width: float) -> List[dict]:
    """T=4 vs T=1 per image at ``width`` and, for full VGG-16 on CUDA, memory and time."""
    device, inference = result["device"], result["inference"]

    def inf(T: int, n: int, budget: bool = False) -> Optional[dict]:
        return next(
            (
                r
                for r in inference
                if r["width"] == width
                and r["method"] == "R2-IOS"
                and r["T"] == T
                and r["proposals"] == n
                and (T == 1 or (r["skip_background"] and bool(r.get("refine_nms")) == budget))
            ),
            None,
        )

    n = max(r["proposals"] for r in inference)
    if not {1, 4} <= {r["T"] for r in inference}:
        return []
    where = f"{device}, width {width:g}, {n} proposals, random weights, per image incl. backbone"
    goals = []
    for budget in (False, True):
        r4, r1 = inf(4, n, budget), inf(1, n)
        if r4 is None:
            continue
        how = f", TEST_REFINE_NMS {r4['refine_nms']:g}" if budget else ""
        least = {k: r4.get(f"least_ratio_to_{k}") for k in ("T1", "baseline")}
        alone = {k: "" if v is None else f"; layers alone: ≥ {v:.2f}×" for k, v in least.items()}
        goals.append(
            _ratio_goal(
                f"inference T=4 ≤ 1.1× T=1 ({where}, skip bg on{how})",
                r4["total_ms"] / r1["total_ms"],
                1.1,
                f" (heads only {r4['heads_ms'] / r1['heads_ms']:.2f}×{alone['T1']})",
            )
        )
        goals.append(
            _ratio_goal(
                f"inference T=4 ≤ 1.0× stock heads ({where}{how})",
                r4["total_ratio_to_baseline"],
                1.0,
                f" (heads only {r4['heads_ratio_to_baseline']:.2f}×{alone['baseline']})",
            )
        )
    row = inf(4, n)
    if device.startswith("cuda") and width == 1.0 and row is not None:
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
    return goals


def _ratio_goal(goal: str, ratio: float, limit: float, extra: str = "") -> dict:
    """A goal "ratio ≤ limit", measured ``ratio`` (``extra`` appended to the measured text)."""
    return {"goal": goal, "measured": f"{ratio:.2f}×{extra}", "met": ratio <= limit}


def _train_goals(result: dict, width: float) -> List[dict]:
    """Train step T=4 vs T=1 at ``width``, gate off and on."""
    rows = [r for r in result["train"] if r["width"] == width and r["method"] == "R2-IOS"]
    goals = []
    for gate in (False, True):
        r4 = next((r for r in rows if r["T"] == 4 and r["gate"] == gate), None)
        if r4:
            where = f"{result['device']}, width {width:g}, gate {'on' if gate else 'off'}"
            goals.append(
                _ratio_goal(f"train step T=4 ≤ 1.8× T=1 ({where})", r4["ratio_to_T1"], 1.8)
            )
    return goals


def _demo_goals(result: dict) -> List[dict]:
    """T=4 vs T=1 and vs the stock heads with the trained demo models; the demo configs'
    train step vs the stock heads'."""
    demo, device, goals = result.get("demo") or {}, result["device"], []
    for r in demo.get("inference", []):
        if r["case"] != "R2-IOS T=4":
            continue
        where = (
            f"{device}, trained demo {r['stage']}, {r['proposals']} proposals, "
            "per image incl. backbone"
        )
        least = {k: r.get(f"least_ratio_to_{k}") for k in ("T1", "stock")}
        extra = {k: "" if v is None else f" (layers alone: ≥ {v:.2f}×)" for k, v in least.items()}
        if r["proposals"] == "selective_search":
            goal = f"inference T=4 ≤ 1.1× T=1 ({where})"
            goals.append(_ratio_goal(goal, r["ratio_to_T1"], 1.1, extra["T1"]))
        goal = f"inference T=4 ≤ 1.0× stock heads ({where})"
        goals.append(_ratio_goal(goal, r["ratio_to_stock"], 1.0, extra["stock"]))
    for r in demo.get("train", []):
        if r["model"] in ("stage1", "stage2"):  # the configs' own CPU_LINEAR
            model = f"R2-IOS {r['model']} (T={r['T']})"
            goal = f"train step {model} ≤ 1.2× stock heads ({device}, demo config)"
            goals.append(_ratio_goal(goal, r["ratio_to_stock"], 1.2))
            same = r.get("ratio_to_stock_same_roi_grad")
            grad = r.get("cpu_roi_align_grad")
            if same is not None and grad != "torchvision":  # the stock heads on it too
                goal = (
                    f"train step {model} ≤ 1.2× stock heads, both with the {grad} RoIAlign "
                    f"backward ({device}, demo config)"
                )
                goals.append(_ratio_goal(goal, same, 1.2))
    return goals


def check_goals(result: dict) -> List[dict]:
    """The speed goals of the issue, checked on what was measured (median times)."""
    goals = []
    for width in sorted({r["width"] for r in result["inference"]}):
        goals += _inference_goals(result, width)
    for width in sorted({r["width"] for r in result["train"]}):
        goals += _train_goals(result, width)
    goals += _demo_goals(result)
    if not result["device"].startswith("cuda"):
        goals.append(
            {
                "goal": "full VGG-16, 2000 proposals, T=4: ≤ 2 GB and ≪ 100 ms/image on a GPU",
                "measured": "not measured (no GPU): run --speed --device cuda --widths 1.0",
                "met": None,
            }
        )
    return goals
