#!/usr/bin/env python
"""`make demo`: R2-IOS end to end on the built-in synthetic dataset, on the CPU.

Steps (each is skipped when its output is already complete, so a re-run resumes):

1. write the synthetic dataset (SBD and VOC2012 formats) under ``$DETECTRON2_DATASETS``;
2. selective-search proposals for its train and val images;
3. stage 1 training (no gate, T = 4) with ``configs/synthetic/r2ios_tiny_stage1.yaml``;
4. stage 2 fine-tuning with the reversible gate (``r2ios_tiny_stage2.yaml``);
5. AP^r evaluation of the untrained model, stage 1 and stage 2 on the val split;
6. pictures (final results and the per-iteration trace) of a few val images.

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

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "synthetic"
logger = logging.getLogger("r2ios_d2.demo")


def _run(cmd: list, log_file: Path) -> None:
    """Run a step as a subprocess, its output to ``log_file``; fail loudly with the log tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("$ %s  (log: %s)", " ".join(str(c) for c in cmd), log_file)
    # One intra-op thread per process: on 2 cores, with a data-loader worker beside it, more
    # threads oversubscribe the CPU and make a tiny model's step several times slower.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_file, "w") as f:
        proc = subprocess.run(
            [str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
    if proc.returncode != 0:
        tail = log_file.read_text().splitlines()[-30:]
        raise SystemExit(f"step failed ({proc.returncode}): see {log_file}\n" + "\n".join(tail))


def _segm(metrics_file: Path) -> dict:
    return json.loads(metrics_file.read_text())["results"]["segm"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--num-train", type=int, default=160)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stage1-iters", type=int, default=None, help="override MAX_ITER")
    parser.add_argument("--stage2-iters", type=int, default=None, help="override MAX_ITER")
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

    # 3-4. training (each stage is done once its model_final.pth exists; --resume continues it)
    stages = [
        ("stage1", "r2ios_tiny_stage1.yaml", args.stage1_iters, []),
        (
            "stage2",
            "r2ios_tiny_stage2.yaml",
            args.stage2_iters,
            ["MODEL.WEIGHTS", out / "stage1" / "model_final.pth"],
        ),
    ]
    for name, config, iters, extra in stages:
        t = time.time()
        final = out / name / "model_final.pth"
        if not final.is_file():
            opts = ["OUTPUT_DIR", out / name, *extra]
            if iters:
                opts += ["SOLVER.MAX_ITER", iters]
            _run(
                [py, "tools/train_net.py", "--config-file", CONFIGS / config, "--resume", *opts],
                out / "logs" / f"train_{name}.log",
            )
        timings[f"train_{name}"] = time.time() - t

    # 5. evaluation: untrained (random init) vs the two stages, same val set and proposals
    rows = {}
    for name, weights in (
        ("untrained", ""),
        ("stage1 (no gate)", out / "stage1" / "model_final.pth"),
        ("stage2 (gate)", out / "stage2" / "model_final.pth"),
    ):
        t = time.time()
        key = name.split()[0]
        eval_dir = out / "eval" / key
        metrics = eval_dir / "inference" / "r2ios_synthetic_val" / "sds_results.json"
        if not metrics.is_file():
            config = "r2ios_tiny_stage2.yaml" if key == "stage2" else "r2ios_tiny_stage1.yaml"
            _run(
                [
                    py,
                    "tools/train_net.py",
                    "--config-file",
                    CONFIGS / config,
                    "--eval-only",
                    "MODEL.WEIGHTS",
                    weights,
                    "OUTPUT_DIR",
                    eval_dir,
                ],
                out / "logs" / f"eval_{key}.log",
            )
        rows[name] = _segm(metrics)
        timings[f"eval_{key}"] = time.time() - t

    # 6. pictures
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
    timings["pictures"] = time.time() - t
    timings["total"] = time.time() - start

    keys = ["APr50", "APr60", "APr70", "APr_vol"]
    lines = [
        "| model (synthetic val, 60 images) | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, segm in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{segm[k]:.1f}" for k in keys) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps({"segm": rows, "seconds": timings}, indent=2, default=str)
    )
    print("\n" + table)
    print("\nseconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"outputs: {out} (logs/, stage1/, stage2/, eval/, pictures/, results.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
