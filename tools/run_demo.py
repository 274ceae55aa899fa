#!/usr/bin/env python
"""`make demo`: R2-IOS end to end on the built-in synthetic dataset, on the CPU.

Steps (each is skipped when its output is already complete, so a re-run resumes):

1. write the synthetic dataset (SBD and VOC2012 formats) under ``$DETECTRON2_DATASETS``;
2. selective-search proposals for its train and val images;
3. stage 1 training (no gate, T = 4) with ``configs/synthetic/r2ios_tiny_stage1.yaml``;
4. stage 2 fine-tuning with the reversible gate (``r2ios_tiny_stage2.yaml``);
5. the side-by-side baseline: detectron2's stock Mask R-CNN heads on the same backbone,
   proposals, data and optimiser, for as many iterations as both stages together
   (``mask_rcnn_heads_tiny.yaml``);
6. AP^r evaluation of the untrained model, stage 1, stage 2 and the baseline on the val split;
7. pictures (final results and the per-iteration trace) of a few val images.

Everything goes to ``--output`` (default ``demo_output/``); ``results.md`` / ``results.json``
there hold the table printed at the end. ``--long`` (``make demo-long``) trains every run
(both stages and the baseline) three times longer, schedules scaled alike, into
``demo_output_long/``. Trainings and evaluations run through
:class:`r2ios_d2.engine.runs.TrainEvalRunner` (subprocesses of ``tools/train_net.py``, one
log each under ``logs/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Sequence

if TYPE_CHECKING:
    from r2ios_d2.engine.runs import TrainEvalRunner

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "synthetic"
# --long: every run (both stages and the baseline) this many times longer.
LONG_FACTOR = 3
# Evaluations running at once (one core each on a 2-core machine).
EVAL_JOBS = 2
logger = logging.getLogger("r2ios_d2.demo")


def _num_iterations(config: str) -> int:
    from r2ios_d2.engine.runs import load_config

    return load_config(CONFIGS / config).MODEL.R2IOS.NUM_ITERATIONS


def _max_iter(config: str) -> int:
    from r2ios_d2.engine.runs import load_config

    return load_config(CONFIGS / config).SOLVER.MAX_ITER


def _plot_mask_losses(out: Path, num_iterations: int) -> None:
    """``pictures/mask_loss.png``: the training mask losses of stage 1 and the baseline."""
    from r2ios_d2.visualization import draw_training_curves, save_figure_atomic

    stage1, baseline = out / "stage1" / "metrics.json", out / "mask_rcnn_heads" / "metrics.json"
    curves = [
        (f"R2-IOS stage 1: v, t = {num_iterations}", stage1, f"r2ios/loss_mask_t{num_iterations}"),
        ("R2-IOS stage 1: v, t = 1", stage1, "r2ios/loss_mask_t1"),
        ("R2-IOS stage 1: C (auxiliary loss), t = 1", stage1, "r2ios/loss_mask_conf_t1"),
        ("Mask R-CNN heads (stock)", baseline, "loss_mask"),
    ]
    fig = draw_training_curves(
        [(label, str(path), key) for label, path, key in curves if path.is_file()],
        title="training mask loss (per-pixel cross-entropy; ln 2 = 0.693 is undecided)",
    )
    save_figure_atomic(fig, str(out / "pictures" / "mask_loss.png"))


def results_table(rows: dict, boxes: dict, mask_loss: dict) -> str:
    """Markdown table: AP^r, box AP and the final training mask loss of every row."""
    keys = ["APr50", "APr60", "APr70", "APr_vol"]
    head = ["model (synthetic val, 60 images)", *keys, "box AP50", "box AP70", "train mask loss"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name, segm in rows.items():
        box = boxes.get(name, {})
        cells = [f"{segm[k]:.1f}" for k in keys]
        cells += [f"{box[k]:.1f}" if k in box else "-" for k in ("AP50", "AP70")]
        loss = mask_loss.get(name)
        cells.append("-" if loss is None else f"{loss:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_all(
    runner: TrainEvalRunner, out: Path, iters1: int, iters2: int, baseline_iters: int
) -> Dict[str, float]:
    """Steps 3-5: both R2-IOS stages one after the other and the baseline beside them.

    Each run is done once its ``model_final.pth`` exists (``--resume`` continues an
    interrupted one). Returns the seconds of each (``train_<name>``).
    """
    from r2ios_d2.engine.runs import schedule_opts

    runs = [
        ("mask_rcnn_heads", "mask_rcnn_heads_tiny.yaml", baseline_iters, []),
        ("stage1", "r2ios_tiny_stage1.yaml", iters1, []),
        (
            "stage2",
            "r2ios_tiny_stage2.yaml",
            iters2,
            ["MODEL.WEIGHTS", runner.weights_of(out / "stage1")],
        ),
    ]
    timings, background = {}, None
    for name, config, iters, extra in runs:
        t = time.time()
        opts = [*extra, *schedule_opts(CONFIGS / config, iters)]
        step = runner.start_training(
            CONFIGS / config, out / name, opts, out / "logs" / f"train_{name}.log"
        )
        if step is not None:
            if name == "mask_rcnn_heads":  # one core beside the two stages on a 2-core machine
                background = (step, t)
                continue
            step.wait()
        timings[f"train_{name}"] = time.time() - t
    if background is not None:
        background[0].wait()
        timings["train_mask_rcnn_heads"] = time.time() - background[1]
    return timings


class _Eval(NamedTuple):
    """A row of the results table: what is evaluated and where its training mask loss is."""

    name: str  # row name
    key: str  # folder under eval/ and log name
    config: str
    trained: str  # training folder of the weights; "" = random init
    train_dir: Optional[str] = None  # training whose final mask loss is shown
    loss_key: Optional[str] = None  # its scalar; "T" = R2-IOS's mask loss at t = T
    opts: Sequence = ()


def _evals(baseline_iters: int) -> List[_Eval]:
    """The rows: untrained (random init), the two stages and the baseline, same val data."""
    return [
        _Eval("untrained", "untrained", "r2ios_tiny_stage1.yaml", ""),
        _Eval("stage1 (no gate)", "stage1", "r2ios_tiny_stage1.yaml", "stage1", "stage1", "T"),
        # Stage 2's mask loss counts only the iterations up to the gate: not comparable.
        _Eval("stage2 (gate)", "stage2", "r2ios_tiny_stage2.yaml", "stage2"),
        _Eval(
            "stage2, one output per proposal",
            "stage2_per_proposal",
            "r2ios_tiny_stage2.yaml",
            "stage2",
            opts=("MODEL.R2IOS.OUTPUT_MODE", "proposal"),
        ),
        _Eval(
            f"Mask R-CNN heads (stock detectron2, {baseline_iters} it)",
            "mask_rcnn_heads",
            "mask_rcnn_heads_tiny.yaml",
            "mask_rcnn_heads",
            "mask_rcnn_heads",
            "loss_mask",
        ),
    ]


def evaluate_all(runner: TrainEvalRunner, out: Path, evals: List[_Eval]) -> dict:
    """Step 6: AP^r of every row (``EVAL_JOBS`` at a time, done ones skipped); returns the
    segm and box metrics and the final training mask losses, by row name."""
    from r2ios_d2.engine.runs import EvalJob, final_train_scalar

    def job(e: _Eval) -> EvalJob:
        weights = out / e.trained / "model_final.pth" if e.trained else ""
        log = out / "logs" / f"eval_{e.key}.log"
        return EvalJob(CONFIGS / e.config, weights, out / "eval" / e.key, e.opts, log)

    runner.evaluate_all([job(e) for e in evals], parallel=EVAL_JOBS)
    rows, boxes, mask_loss = {}, {}, {}
    for e in evals:
        results = runner.results(out / "eval" / e.key)
        rows[e.name] = results["segm"]
        boxes[e.name] = results.get("bbox", {})
        if e.train_dir:
            loss_key = e.loss_key
            if loss_key == "T":  # R2-IOS: the mask loss of the last iteration t = T alone
                loss_key = f"r2ios/loss_mask_t{_num_iterations(e.config)}"
            mask_loss[e.name] = final_train_scalar(out / e.train_dir / "metrics.json", loss_key)
    return {"segm": rows, "bbox": boxes, "final_mask_loss": mask_loss}


def draw_pictures(runner: TrainEvalRunner, out: Path) -> None:
    """Step 7: final results and the per-iteration trace of 3 val images, the mask losses."""
    pictures = out / "pictures"
    if not list(pictures.glob("*_trace.png")):
        cmd = [runner.python, "tools/visualize.py", "--config-file"]
        cmd += [CONFIGS / "r2ios_tiny_stage2.yaml", "--dataset", "r2ios_synthetic_val"]
        cmd += ["--num-images", 3, "--output", pictures]
        cmd += ["MODEL.WEIGHTS", out / "stage2" / "model_final.pth"]
        runner.step(cmd, out / "logs" / "visualize.log").wait()
    _plot_mask_losses(out, _num_iterations("r2ios_tiny_stage1.yaml"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=None, help="default: demo_output(_long)/")
    parser.add_argument(
        "--long",
        action="store_true",
        help=f"train every run {LONG_FACTOR}x longer (schedules scaled alike), into "
        "demo_output_long/",
    )
    parser.add_argument("--num-train", type=int, default=160)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stage1-iters", type=int, default=None, help="override MAX_ITER")
    parser.add_argument("--stage2-iters", type=int, default=None, help="override MAX_ITER")
    parser.add_argument(
        "--baseline-iters", type=int, default=None, help="override the baseline's MAX_ITER"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """The demo's seven steps; writes ``results.{md,json}`` under the output folder."""
    from r2ios_d2.data.synthetic import prepare_synthetic_benchmark
    from r2ios_d2.engine.runs import TrainEvalRunner

    out = (REPO / (args.output or ("demo_output_long" if args.long else "demo_output"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = TrainEvalRunner(repo=REPO, python=sys.executable)
    start = t = time.time()
    prepare_synthetic_benchmark(args.num_train, args.num_val, seed=0, workers=args.workers)
    timings = {"data_and_proposals": time.time() - t}

    factor = LONG_FACTOR if args.long else 1
    iters1 = args.stage1_iters or factor * _max_iter("r2ios_tiny_stage1.yaml")
    iters2 = args.stage2_iters or factor * _max_iter("r2ios_tiny_stage2.yaml")
    baseline_iters = args.baseline_iters or iters1 + iters2  # as many as both stages
    timings.update(train_all(runner, out, iters1, iters2, baseline_iters))
    t = time.time()
    results = evaluate_all(runner, out, _evals(baseline_iters))
    timings["evaluation"] = time.time() - t
    t = time.time()
    draw_pictures(runner, out)
    timings["pictures"] = time.time() - t
    timings["total"] = time.time() - start

    table = results_table(results["segm"], results["bbox"], results["final_mask_loss"])
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps({**results, "seconds": timings}, indent=2, default=str)
    )
    print("\n" + table)
    print("\nseconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"outputs: {out} (logs/, stage1/, stage2/, eval/, pictures/, results.md)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[demo %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
    from r2ios_d2.engine.runs import StepError

    try:
        return run(args)
    except StepError as e:  # the failed step's log tail, without a traceback
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
