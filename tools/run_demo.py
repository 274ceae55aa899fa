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
there hold the table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "synthetic"
logger = logging.getLogger("r2ios_d2.demo")


class _Step:
    """A step running as a subprocess, its output in ``log_file``."""

    def __init__(self, cmd: list, log_file: Path) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.info("$ %s  (log: %s)", " ".join(str(c) for c in cmd), log_file)
        # One intra-op thread per process: on 2 cores, with a data-loader worker beside it,
        # more threads oversubscribe the CPU and make a tiny model's step several times slower.
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.log_file = log_file
        with open(log_file, "w") as f:
            self.proc = subprocess.Popen(
                [str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )

    def wait(self) -> None:
        """Wait for the step; fail loudly with the tail of its log."""
        if self.proc.wait() != 0:
            tail = self.log_file.read_text().splitlines()[-30:]
            raise SystemExit(
                f"step failed ({self.proc.returncode}): see {self.log_file}\n" + "\n".join(tail)
            )


def _run(cmd: list, log_file: Path) -> None:
    """Run a step as a subprocess and wait for it."""
    _Step(cmd, log_file).wait()


def _results(metrics_file: Path) -> dict:
    return json.loads(metrics_file.read_text())["results"]


def final_train_scalar(metrics_json: Path, key: str) -> Optional[float]:
    """The last logged value of ``key`` in a detectron2 ``metrics.json`` (the median of its
    last logging window), or None if it was never logged."""
    from r2ios_d2.visualization import read_metrics

    if not metrics_json.is_file():
        return None
    values = read_metrics(str(metrics_json), key)[1]
    return values[-1] if values else None


def _solver_and_model(config: str):
    from detectron2.config import get_cfg

    from r2ios_d2 import add_r2ios_config

    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config))
    return cfg


def _max_iter(config: str) -> int:
    return _solver_and_model(config).SOLVER.MAX_ITER


def schedule_opts(config: str, max_iter: int) -> list:
    """``SOLVER`` overrides that run ``config``'s schedule in ``max_iter`` iterations (steps
    and warm-up scaled alike); none if it already has that length."""
    from r2ios_d2.engine import scaled_schedule_opts

    solver = _solver_and_model(config).SOLVER
    return [] if max_iter == solver.MAX_ITER else scaled_schedule_opts(solver, max_iter)


def _num_iterations(config: str) -> int:
    return _solver_and_model(config).MODEL.R2IOS.NUM_ITERATIONS


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--num-train", type=int, default=160)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stage1-iters", type=int, default=None, help="override MAX_ITER")
    parser.add_argument("--stage2-iters", type=int, default=None, help="override MAX_ITER")
    parser.add_argument(
        "--baseline-iters", type=int, default=None, help="override the baseline's MAX_ITER"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[demo %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )

    out = (REPO / args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    start = time.time()
    timings = {}

    # 1-2. data and selective-search proposals (both reuse what is already complete)
    t = time.time()
    from r2ios_d2.data.synthetic import prepare_synthetic_benchmark

    prepare_synthetic_benchmark(args.num_train, args.num_val, seed=0, workers=args.workers)
    timings["data_and_proposals"] = time.time() - t

    # 3-5. training (each run is done once its model_final.pth exists; --resume continues it).
    # The baseline trains beside the two R2-IOS stages (one core each on a 2-core machine).
    iters1 = args.stage1_iters or _max_iter("r2ios_tiny_stage1.yaml")
    iters2 = args.stage2_iters or _max_iter("r2ios_tiny_stage2.yaml")
    baseline_iters = args.baseline_iters or iters1 + iters2  # as many as both stages
    runs = [
        ("mask_rcnn_heads", "mask_rcnn_heads_tiny.yaml", baseline_iters, []),
        ("stage1", "r2ios_tiny_stage1.yaml", iters1, []),
        (
            "stage2",
            "r2ios_tiny_stage2.yaml",
            iters2,
            ["MODEL.WEIGHTS", out / "stage1" / "model_final.pth"],
        ),
    ]
    background = None
    for name, config, iters, extra in runs:
        t = time.time()
        if not (out / name / "model_final.pth").is_file():
            opts = ["OUTPUT_DIR", out / name, *extra, *schedule_opts(config, iters)]
            step = _Step(
                [py, "tools/train_net.py", "--config-file", CONFIGS / config, "--resume", *opts],
                out / "logs" / f"train_{name}.log",
            )
            if name == "mask_rcnn_heads":
                background = (step, t)
                continue
            step.wait()
        timings[f"train_{name}"] = time.time() - t
    if background is not None:
        background[0].wait()
        timings["train_mask_rcnn_heads"] = time.time() - background[1]

    # 6. evaluation: untrained (random init), the two stages and the baseline, same val set
    # and proposals
    rows, boxes, mask_loss = {}, {}, {}
    # row name, folder, config, weights, training folder, its mask-loss scalar, extra opts
    evals = (
        ("untrained", "untrained", "r2ios_tiny_stage1.yaml", "", None, None, []),
        ("stage1 (no gate)", "stage1", "r2ios_tiny_stage1.yaml", "stage1", "stage1", "T", []),
        # Stage 2's mask loss counts only the iterations up to the gate: not comparable.
        ("stage2 (gate)", "stage2", "r2ios_tiny_stage2.yaml", "stage2", None, None, []),
        (
            "stage2, per-class output",
            "stage2_per_class",
            "r2ios_tiny_stage2.yaml",
            "stage2",
            None,
            None,
            ["MODEL.R2IOS.OUTPUT_MODE", "per_class"],
        ),
        (
            f"Mask R-CNN heads (stock detectron2, {baseline_iters} it)",
            "mask_rcnn_heads",
            "mask_rcnn_heads_tiny.yaml",
            "mask_rcnn_heads",
            "mask_rcnn_heads",
            "loss_mask",
            [],
        ),
    )
    t = time.time()
    pending = []  # two evaluations at a time, one core each
    for _, key, config, trained, _, _, extra in evals:
        eval_dir = out / "eval" / key
        if not (eval_dir / "inference" / "r2ios_synthetic_val" / "sds_results.json").is_file():
            weights = out / trained / "model_final.pth" if trained else ""
            cmd = [py, "tools/train_net.py", "--config-file", CONFIGS / config, "--eval-only"]
            cmd += ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", eval_dir, *extra]
            pending.append((cmd, out / "logs" / f"eval_{key}.log"))
    for i in range(0, len(pending), 2):
        steps = [_Step(cmd, log) for cmd, log in pending[i : i + 2]]
        for step in steps:
            step.wait()
    timings["evaluation"] = time.time() - t
    for name, key, config, _, train_dir, loss_key, _ in evals:
        results = _results(
            out / "eval" / key / "inference" / "r2ios_synthetic_val" / "sds_results.json"
        )
        rows[name] = results["segm"]
        boxes[name] = results.get("bbox", {})
        if train_dir:
            if loss_key == "T":  # R2-IOS: the mask loss of the last iteration t = T alone
                loss_key = f"r2ios/loss_mask_t{_num_iterations(config)}"
            mask_loss[name] = final_train_scalar(out / train_dir / "metrics.json", loss_key)

    # 7. pictures
    t = time.time()
    pictures = out / "pictures"
    if not list(pictures.glob("*_trace.png")):
        _run(
            [
                py,
                "tools/visualize.py",
                "--config-file",
                CONFIGS / "r2ios_tiny_stage2.yaml",
                "--dataset",
                "r2ios_synthetic_val",
                "--num-images",
                3,
                "--output",
                pictures,
                "MODEL.WEIGHTS",
                out / "stage2" / "model_final.pth",
            ],
            out / "logs" / "visualize.log",
        )
    _plot_mask_losses(out, _num_iterations("r2ios_tiny_stage1.yaml"))
    timings["pictures"] = time.time() - t
    timings["total"] = time.time() - start

    table = results_table(rows, boxes, mask_loss)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"segm": rows, "bbox": boxes, "final_mask_loss": mask_loss, "seconds": timings},
            indent=2,
            default=str,
        )
    )
    print("\n" + table)
    print("\nseconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"outputs: {out} (logs/, stage1/, stage2/, eval/, pictures/, results.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
