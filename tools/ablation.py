#!/usr/bin/env python
"""The paper's Table 2 on the synthetic dataset (``tools/benchmark.py --ablation``).

Each row of Table 2, the paper-literal training and detectron2's stock Mask R-CNN heads as
a baseline, trained with ``tools/train_net.py`` on the synthetic dataset
(``configs/synthetic``) for several seeds and evaluated with AP^r. A row is a stage-1 YAML and
optionally a stage-2 (gate) YAML: a file of ``configs/synthetic`` runs as it is; a file of
``configs/ablations`` (written for VOC2012) contributes its own keys, as overrides, to the
synthetic config of the same stage. Rows that train the same stage-1 model share it.

    python tools/ablation.py --quick                        # 1 seed, 5 rows
    python tools/ablation.py --jobs 3                       # all 11 rows, 3 seeds (~1 h)
    python tools/ablation.py --seeds 0 --variants recursive_2 wo_seg_aware
    python tools/ablation.py --dataset-variant texture4     # on a held-out variant's data

``--dataset-variant NAME`` trains and evaluates on a held-out variant of the synthetic data
(:data:`r2ios_d2.data.synthetic.HELDOUT_VARIANTS`): ``DATASETS.*`` and ``NUM_CLASSES`` change.

Results (JSON + Markdown) go to ``benchmarks/results/ablation[_quick][_<variant>][_<tag>]``;
checkpoints
and per-run logs to ``--work-dir`` (reused: a row whose result JSON exists is skipped, a
model whose ``model_final.pth`` exists is not trained again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_options import (  # noqa: E402
    ABLATION_QUICK_HELP,
    ABLATION_QUICK_VARIANTS,
    add_ablation_arguments,
)
from cli_options import parse_before_imports, tool_parser  # noqa: E402

QUICK_VARIANTS, QUICK_HELP = ABLATION_QUICK_VARIANTS, ABLATION_QUICK_HELP


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    return tool_parser(__doc__, QUICK_HELP, add_ablation_arguments)


parse_before_imports(__name__, build_parser)

import torch  # noqa: E402
import yaml  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tqdm import tqdm  # noqa: E402

from r2ios_d2.benchmarking.records import fmt, machine_info, result_header, write_result  # noqa: E402
from r2ios_d2.data.synthetic import HELDOUT_VARIANTS, heldout_dataset_opts  # noqa: E402
from r2ios_d2.engine.runs import EvalJob, TrainEvalRunner, load_config, schedule_opts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SYNTHETIC = CONFIGS / "synthetic"
STAGE1, STAGE2 = SYNTHETIC / "r2ios_tiny_stage1.yaml", SYNTHETIC / "r2ios_tiny_stage2.yaml"
# An ablation YAML's keys apply to the synthetic config of its _BASE_'s stage.
SYNTHETIC_OF_BASE = {
    "r2ios_vgg16_voc2012_stage1.yaml": STAGE1,
    "r2ios_vgg16_voc2012_stage2.yaml": STAGE2,
}
# Keys of an ablation YAML that name its own VOC runs' folders: not carried over.
NOT_CARRIED = {"_BASE_", "OUTPUT_DIR", "MODEL.WEIGHTS"}
logger = logging.getLogger("r2ios_d2.benchmark")


@dataclass(frozen=True)
class Row:
    """A row of the paper's Table 2: its stage-1 YAML and stage-2 (gate) YAML, or None when
    the stage-1 model is tested. Rows naming the same ``model`` share that stage-1 model (and
    their stage-2 model); its name is the folder ``s1_<model>`` / ``s2_<model>``."""

    name: str
    paper_apr50: Optional[float]  # paper, Table 2, APr@0.5 averaged over the VOC classes
    model: str
    stage1: str  # under configs/
    stage2: Optional[str] = None


ROWS = [  # YAMLs under configs/
    Row("recursive_1", 59.6, "T1", "ablations/recursive_1.yaml"),
    Row("recursive_2", 62.8, "T2", "ablations/recursive_2.yaml"),
    Row("recursive_3", 64.7, "T3", "ablations/recursive_3.yaml"),
    Row("recursive_4", 65.2, "T4", "ablations/recursive_4.yaml"),
    Row("recursive_only_testing", 61.9, "T1", "ablations/recursive_only_testing.yaml"),
    Row("wo_autoencoder", 54.2, "conv",
        "ablations/wo_autoencoder_stage1.yaml", "ablations/wo_autoencoder.yaml"),
    Row("fully_wo_autoencoder", 63.6, "fc",
        "ablations/fully_wo_autoencoder_stage1.yaml", "ablations/fully_wo_autoencoder.yaml"),
    Row("wo_seg_aware", 63.4, "noseg",
        "ablations/wo_seg_aware_stage1.yaml", "ablations/wo_seg_aware.yaml"),
    Row("r2ios", 66.7, "T4",
        "synthetic/r2ios_tiny_stage1.yaml", "synthetic/r2ios_tiny_stage2.yaml"),
    Row("r2ios_paper_background", 66.7, "paper_bg",
        "ablations/paper_background_stage1.yaml", "ablations/paper_background.yaml"),
    Row("r2ios_paper_literal", 66.7, "literal",
        "ablations/paper_literal_stage1.yaml", "ablations/paper_literal.yaml"),
    Row("mask_rcnn_heads", None, "mask_rcnn", "synthetic/mask_rcnn_heads_tiny.yaml"),
]  # fmt: skip
METRICS = ["APr50", "APr60", "APr70", "APr_vol"]


def _flatten(node: dict, prefix: str = "") -> Iterator[Tuple[str, object]]:
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@dataclass(frozen=True)
class Recipe:
    """A row's YAML as run here: the synthetic ``config`` with the file's own keys as
    overrides, split into those of the model and its training and the test-time (``TEST_*``)."""

    config: Path
    train_opts: Tuple[str, ...] = ()
    test_opts: Tuple[str, ...] = ()


def recipe(yaml_file: str) -> Recipe:
    """The :class:`Recipe` of a YAML under ``configs/`` (see the module docstring)."""
    path = CONFIGS / yaml_file
    if path.parent == SYNTHETIC:
        return Recipe(path)
    data = yaml.safe_load(path.read_text())
    train, test = [], []
    for key, value in _flatten(data):
        if key not in NOT_CARRIED:
            test_time = key.rsplit(".", 1)[-1].startswith("TEST_")
            (test if test_time else train).extend([key, str(value)])
    return Recipe(SYNTHETIC_OF_BASE[Path(data["_BASE_"]).name], tuple(train), tuple(test))


def tested_iterations(r: Recipe) -> int:
    """T at test time: the merged config's ``TEST_NUM_ITERATIONS``; 1 for stock heads."""
    cfg = load_config(r.config)
    cfg.merge_from_list([*r.train_opts, *r.test_opts])
    return cfg.MODEL.R2IOS.TEST_NUM_ITERATIONS if cfg.MODEL.ROI_HEADS.NAME == "R2IOSROIHeads" else 1


def eval_opts(r: Recipe) -> List[str]:
    """The overrides of an evaluation: the model's, then the test-time ones with T explicit."""
    T_KEY = "MODEL.R2IOS.TEST_NUM_ITERATIONS"
    test = [kv for kv in zip(r.test_opts[::2], r.test_opts[1::2]) if kv[0] != T_KEY]
    return [*r.train_opts, *(x for kv in test for x in kv), T_KEY, str(tested_iterations(r))]


def _trained(r: Recipe) -> Tuple[Path, Tuple[str, ...]]:
    return r.config, r.train_opts


def check_shared_models(rows: Sequence[Row]) -> None:
    """Rows naming the same model must train it alike; raise ``ValueError`` otherwise."""
    first: Dict[str, Row] = {}
    for row in rows:
        other = first.setdefault(row.model, row)
        for a, b in ((row.stage1, other.stage1), (row.stage2, other.stage2)):
            if a and b and _trained(recipe(a)) != _trained(recipe(b)):
                raise ValueError(f"rows {other.name} and {row.name} share model {row.model} "
                                 f"but {a} and {b} train different models")  # fmt: skip


def yaml_max_iter(config: Path) -> int:
    return load_config(config).SOLVER.MAX_ITER


def ablation_schedule(config: Path, scale: float, max_iter: Optional[int]) -> Tuple[List[str], int]:
    """SOLVER overrides that shorten ``config``'s schedule: MAX_ITER x ``scale`` (or
    ``max_iter``), with STEPS and WARMUP_ITERS scaled alike. Returns (opts, MAX_ITER)."""
    n = max_iter or max(1, round(yaml_max_iter(config) * scale))
    opts = schedule_opts(config, n, always=True)
    return opts + ["SOLVER.CHECKPOINT_PERIOD", str(max(n, 1) * 10)], n


class AblationRunner:
    """Trains the shared stage-1 / stage-2 models of one seed and evaluates the rows.

    Layout under ``work``: ``seed<s>/s1_<model>/``, ``seed<s>/s2_<model>/`` (checkpoints),
    ``seed<s>/eval_<row>/``, ``seed<s>/logs/`` and ``seed<s>/<row>.json`` (the row's result;
    present = done).

    Args:
        work: the folder of this schedule.
        schedules: the SOLVER overrides of each synthetic config that is trained.
        runner: runs ``train_net.py``.
        data_opts: overrides of the datasets (and NUM_CLASSES) of every run; none: the demo's.
    """

    def __init__(
        self,
        work: Path,
        schedules: Dict[Path, List[str]],
        runner: TrainEvalRunner,
        data_opts: Sequence[str] = (),
    ):
        self.work, self.schedules, self.runner = work, schedules, runner
        self.data_opts = list(data_opts)
        self.train_seconds: Dict[str, float] = {}

    def _train(self, seed: int, row: Row, stage2: bool) -> Path:
        out = self.work / f"seed{seed}" / f"{'s2' if stage2 else 's1'}_{row.model}"
        weights = self.runner.weights_of(out)
        if weights.is_file():
            return weights
        r = recipe(row.stage2 if stage2 else row.stage1)
        opts = ["SEED", str(seed), *self.data_opts, "DATASETS.TEST", "()", *r.train_opts]
        opts += self.schedules[r.config]
        if stage2:
            opts += ["MODEL.WEIGHTS", str(self._train(seed, row, False))]
        log = out.parent / "logs" / f"train_{out.name}.log"
        seconds = self.runner.train(r.config, out, opts, log)
        if seconds is not None:
            self.train_seconds[f"seed{seed}/{out.name}"] = seconds
        return weights

    def result_path(self, seed: int, row: Row) -> Path:
        return self.work / f"seed{seed}" / f"{row.name}.json"

    def run(self, seed: int, row: Row) -> dict:
        """Train what ``row`` needs (if not there), evaluate it, return its AP^r."""
        path = self.result_path(seed, row)
        if path.is_file():
            return json.loads(path.read_text())
        weights = self._train(seed, row, row.stage2 is not None)
        r = recipe(row.stage2 or row.stage1)
        out = self.work / f"seed{seed}" / f"eval_{row.name}"
        log = out.parent / "logs" / f"eval_{row.name}.log"
        opts = ["SEED", str(seed), *self.data_opts, *eval_opts(r)]
        job = EvalJob(r.config, weights, out, opts, log)
        eval_s = self.runner.evaluate(job)
        metrics = self.runner.results(out)
        result = {
            "variant": row.name,
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


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: Sequence[Row], per_run: List[dict]) -> List[dict]:
    """Per row: mean and std over the seeds of each metric, next to the paper's APr@0.5."""
    summary = []
    for row in rows:
        runs = [r for r in per_run if r["variant"] == row.name]
        stats = {m: _mean_std([r["segm"][m] for r in runs]) for m in METRICS}
        summary.append(
            {
                "name": row.name,
                "paper_apr50": row.paper_apr50,
                "stage1_model": row.model,
                "stage2_gate": row.stage2 is not None,
                "test_T": tested_iterations(recipe(row.stage2 or row.stage1)),
                "n_seeds": len(runs),
                "mean": {m: s[0] for m, s in stats.items()},
                "std": {m: s[1] for m, s in stats.items()},
                "bbox_AP50_mean": statistics.fmean(r["bbox_AP50"] or 0.0 for r in runs),
            }
        )
    return summary


def ablation_table(result: dict) -> str:
    """Markdown table: mean ± std over seeds per metric, next to the paper's APr@0.5."""
    rows = []
    for v in result["variants"]:
        cells = [v["name"], fmt(v["paper_apr50"])]
        for m in METRICS:
            mean, std = v["mean"][m], v["std"][m]
            cells.append(f"{mean:.1f} ± {std:.1f}" if v["n_seeds"] > 1 else f"{mean:.1f}")
        cells += [fmt(v.get("bbox_AP50_mean")), v["n_seeds"]]
        rows.append(cells)
    head = ["variant", "paper APr@0.5 (VOC)", *(f"ours {m}" for m in METRICS)]
    head += ["ours box AP50", "seeds"]
    return tabulate(rows, head, tablefmt="github")


def prepare_synthetic_data() -> None:
    """The synthetic dataset and its proposals (what the demo uses), made if missing."""
    from r2ios_d2.data.synthetic import prepare_synthetic_benchmark

    prepare_synthetic_benchmark()


def prepare_heldout_data(name: str) -> None:
    """A held-out variant's dataset and proposals, made if missing."""
    from r2ios_d2.data.synthetic import prepare_heldout_variant

    prepare_heldout_variant(name)


def select_rows(args) -> List[Row]:
    """The rows of ``--variants`` (default: all, ``--quick``: ``QUICK_VARIANTS``), in order."""
    names = args.variants or (QUICK_VARIANTS if args.quick else [r.name for r in ROWS])
    unknown = set(names) - {r.name for r in ROWS}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {[r.name for r in ROWS]}")
    check_shared_models(ROWS)
    return [r for r in ROWS if r.name in names]


def _run_seeds(ablation: AblationRunner, rows: List[Row], seeds: List[int], jobs: int):
    """Seeds in parallel (``jobs``), the rows of one seed in order (stage 2 needs stage 1)."""
    bar = tqdm(total=len(seeds) * len(rows), desc="ablation")

    def one_seed(seed: int) -> List[dict]:
        out = []
        for row in rows:
            out.append(ablation.run(seed, row))
            bar.update()
        return out

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        per_run = [r for runs in pool.map(one_seed, seeds) for r in runs]
    bar.close()
    return per_run


def run_ablation(args) -> dict:
    """Train and evaluate the selected rows for every seed; aggregate over seeds."""
    rows = select_rows(args)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    scale = args.schedule or (args.quick_schedule if args.quick else args.full_schedule)
    s1_opts, n1 = ablation_schedule(STAGE1, scale, args.stage1_iters)
    s2_opts, n2 = ablation_schedule(STAGE2, scale, args.stage2_iters)
    schedules = {STAGE1: s1_opts, STAGE2: s2_opts}
    for row in rows:  # baselines: as many iterations as R2-IOS's two stages together
        for config in {recipe(f).config for f in (row.stage1, row.stage2) if f} - set(schedules):
            schedules[config] = ablation_schedule(config, scale, n1 + n2)[0]
    variant = args.dataset_variant
    if variant and variant not in HELDOUT_VARIANTS:
        raise SystemExit(f"unknown --dataset-variant {variant!r}; known: {list(HELDOUT_VARIANTS)}")
    if variant:
        prepare_heldout_data(variant)
    else:
        prepare_synthetic_data()
    machine = machine_info("cpu")
    work = Path(args.work_dir).resolve() / f"ablation_s1-{n1}_s2-{n2}{_suffix(variant)}"
    dataset = f"r2ios_heldout_{variant}_val" if variant else "r2ios_synthetic_val"
    runner = TrainEvalRunner(
        repo=REPO, python=sys.executable, threads=args.train_threads, dataset=dataset
    )
    data_opts = heldout_dataset_opts(variant) if variant else []
    ablation = AblationRunner(work, schedules, runner, data_opts)
    logger.info("ablation: %d variants x seeds %s, stage 1 %d it, stage 2 %d it -> %s",
                len(rows), seeds, n1, n2, work)  # fmt: skip
    t0 = time.time()
    per_run = _run_seeds(ablation, rows, seeds, args.jobs)
    return {
        "machine": machine,
        "quick": args.quick,
        "seeds": seeds,
        "dataset_variant": variant,
        "test_dataset": dataset,
        "stage1_config": str(STAGE1.relative_to(REPO)),
        "stage2_config": str(STAGE2.relative_to(REPO)),
        "schedule_scale": scale,
        "yaml_max_iter": {"stage1": yaml_max_iter(STAGE1), "stage2": yaml_max_iter(STAGE2)},
        "train_threads": args.train_threads,
        "jobs": args.jobs,
        "stage1_overrides": s1_opts,
        "stage2_overrides": s2_opts,
        "work_dir": str(work),
        "wall_seconds": time.time() - t0,
        "train_seconds": ablation.train_seconds,
        "variants": summarize(rows, per_run),
        "runs": per_run,
        "note": (
            "Synthetic dataset (configs/synthetic), tiny VGG (width from the YAML) from scratch, "
            f"AP^r on {dataset}; paper numbers: VOC2012 val, VGG-16 from ImageNet. "
            "Only the direction of the differences is comparable."
        ),
    }


def _suffix(variant: Optional[str]) -> str:
    return f"_{variant}" if variant else ""


def run(args: argparse.Namespace) -> dict:
    """Run the ablation of ``args``; write and print its table. Returns the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_ablation(args)
    table = ablation_table(result)
    data = f"held-out variant {result['dataset_variant']}" if result["dataset_variant"] else ""
    md = (
        f"# Table 2 ablations on the synthetic dataset{f' ({data})' if data else ''}"
        f"{' (quick)' if args.quick else ''}\n\n"
        f"{result_header(result)}\nStage 1 overrides `{' '.join(result['stage1_overrides'])}`, "
        f"stage 2 `{' '.join(result['stage2_overrides'])}`; seeds {result['seeds']}; "
        f"{result['wall_seconds'] / 60:.1f} min. {result['note']}\n\n{table}\n"
    )
    stem = f"ablation{'_quick' if args.quick else ''}{_suffix(result['dataset_variant'])}"
    stem += args.tag and f"_{args.tag}"
    write_result((REPO / args.results_dir).resolve(), stem, result, md)
    print(f"\nablation (AP^r on {result['test_dataset']}; paper: VOC2012 val)\n{table}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
