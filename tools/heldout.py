#!/usr/bin/env python
"""R2-IOS against the stock Mask R-CNN heads on held-out synthetic data (``tools/benchmark.py
--heldout``).

The demo's recipe (``configs/synthetic``) was tuned on the val split of the demo's synthetic
dataset. Here it is trained and evaluated, unchanged, on the held-out variants of
:data:`r2ios_d2.data.synthetic.HELDOUT_VARIANTS` (other classes, shapes, textures, colours,
densities, overlaps and image sizes, each with its own seed): per variant and seed, R2-IOS
stage 1 (``r2ios_tiny_stage1.yaml``) then stage 2 (``r2ios_tiny_stage2.yaml`` from stage 1's
``model_final.pth``), and the Mask R-CNN heads (``mask_rcnn_heads_tiny.yaml``) for as many
iterations as both stages together. Only ``DATASETS.TRAIN``, ``DATASETS.TEST`` and
``MODEL.ROI_HEADS.NUM_CLASSES`` change (plus ``OUTPUT_DIR``, ``MODEL.WEIGHTS``, ``SEED``
and, with ``--scale``, the schedule). Each model is evaluated on the variant's val split; stage
2 also with the paper's readout (``MODEL.R2IOS.OUTPUT_MODE proposal``: one detection per
proposal; the demo's recipe reads out per class) and with one test iteration
(``MODEL.R2IOS.TEST_NUM_ITERATIONS 1``: what the recursion adds at test time).

    python tools/heldout.py                                 # 4 variants, seed 0 (est. 45 min)
    python tools/heldout.py --quick                         # a 1 % schedule: a smoke run
    python tools/heldout.py --variants texture4 --seeds 0 1
    python tools/heldout.py --configs-dir configs/my_recipe --tag my_recipe

Results (JSON + Markdown: per variant, and mean ± std over the variants) go to
``benchmarks/results/heldout[_quick][_<tag>]``; checkpoints and logs to ``--work-dir`` (reused:
a trained ``model_final.pth`` is not trained again, a row whose result JSON exists is not
evaluated again).
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_options import (  # noqa: E402
    HELDOUT_HEADS,
    HELDOUT_QUICK_HELP,
    HELDOUT_QUICK_SCALE,
    HELDOUT_STAGE1,
    HELDOUT_STAGE2,
    add_heldout_arguments,
)
from cli_options import parse_before_imports, tool_parser  # noqa: E402

STAGE1, STAGE2, HEADS = HELDOUT_STAGE1, HELDOUT_STAGE2, HELDOUT_HEADS
QUICK_SCALE, QUICK_HELP = HELDOUT_QUICK_SCALE, HELDOUT_QUICK_HELP


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    return tool_parser(__doc__, QUICK_HELP, add_heldout_arguments)


parse_before_imports(__name__, build_parser)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tqdm import tqdm  # noqa: E402

from r2ios_d2.atomic import atomic_write_json  # noqa: E402
from r2ios_d2.benchmarking.records import fmt, machine_info, result_header, write_result  # noqa: E402
from r2ios_d2.data.synthetic import HELDOUT_VARIANTS, heldout_dataset_opts  # noqa: E402
from r2ios_d2.engine.runs import EvalJob, TrainEvalRunner, load_config, schedule_opts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEGM_METRICS = ["APr50", "APr60", "APr70", "APr_vol"]
BOX_METRICS = ["AP50", "AP70"]
logger = logging.getLogger("r2ios_d2.benchmark")


@dataclass(frozen=True)
class Training:
    """A model trained per variant and seed: its YAML (in the configs folder), its folder
    name and the training it starts from (its ``MODEL.WEIGHTS``), if any."""

    name: str
    config: str
    init_from: Optional[str] = None


TRAININGS = [
    Training("stage1", STAGE1),
    Training("stage2", STAGE2, init_from="stage1"),
    Training("mask_rcnn_heads", HEADS),
]


@dataclass(frozen=True)
class Row:
    """A row of the table: a trained model evaluated with its YAML and ``eval_opts``."""

    name: str
    label: str
    model: str  # a Training name
    config: str
    eval_opts: Tuple[str, ...] = ()


ROWS = [
    Row("r2ios_stage1", "R2-IOS stage 1 (no gate)", "stage1", STAGE1),
    Row("r2ios", "R2-IOS stage 2 (gate)", "stage2", STAGE2),
    Row("r2ios_per_proposal", "R2-IOS stage 2, one output per proposal", "stage2", STAGE2,
        ("MODEL.R2IOS.OUTPUT_MODE", "proposal")),
    # The same weights with one test iteration: what the recursion adds at test time.
    Row("r2ios_test_t1", "R2-IOS stage 2, test T = 1", "stage2", STAGE2,
        ("MODEL.R2IOS.TEST_NUM_ITERATIONS", "1")),
    # Without the demo's test-time budget: every moving proposal runs all T iterations.
    Row("r2ios_refine_all", "R2-IOS stage 2, every proposal refined (no TEST_REFINE_NMS)",
        "stage2", STAGE2, ("MODEL.R2IOS.TEST_REFINE_NMS", "0.0")),
    Row("mask_rcnn_heads", "Mask R-CNN heads (stock detectron2)", "mask_rcnn_heads", HEADS),
]  # fmt: skip


def training(name: str) -> Training:
    """The :class:`Training` called ``name``."""
    return next(t for t in TRAININGS if t.name == name)


def lineage(name: str) -> List[str]:
    """The trainings behind model ``name``: what it starts from, first, then itself."""
    t = training(name)
    return [*(lineage(t.init_from) if t.init_from else []), name]


def iterations(configs: Path, scale: float) -> Dict[str, int]:
    """MAX_ITER of each training: the YAMLs' x ``scale``; the heads as many as both stages."""
    n1 = max(1, round(load_config(configs / STAGE1).SOLVER.MAX_ITER * scale))
    n2 = max(1, round(load_config(configs / STAGE2).SOLVER.MAX_ITER * scale))
    return {"stage1": n1, "stage2": n2, "mask_rcnn_heads": n1 + n2}


class HeldoutRunner:
    """Trains and evaluates the models of one variant, for any seed.

    Layout under ``work``: ``<variant>/seed<s>/<training>/`` (checkpoints and
    ``train_seconds.json``), ``<variant>/seed<s>/eval_<row>/``, ``<variant>/seed<s>/logs/``
    and ``<variant>/seed<s>/<row>.json`` (the row's result; present = done).

    Args:
        work: the folder of this recipe and schedule.
        configs: the folder of the three YAMLs.
        variant: a key of ``HELDOUT_VARIANTS``.
        iters: MAX_ITER of each training (see :func:`iterations`).
        runner: runs ``train_net.py`` (its ``dataset`` is the variant's val split).
    """

    def __init__(
        self,
        work: Path,
        configs: Path,
        variant: str,
        iters: Dict[str, int],
        runner: TrainEvalRunner,
    ) -> None:
        self.work, self.configs, self.variant = work, configs, variant
        self.iters, self.runner = iters, runner
        self.data_opts = heldout_dataset_opts(variant)
        self.train_data_opts = heldout_dataset_opts(variant, test=False)

    def folder(self, seed: int) -> Path:
        return self.work / self.variant / f"seed{seed}"

    def train_opts(self, seed: int, t: Training) -> List[str]:
        """The overrides of a training: seed, the variant's datasets and classes (no test
        set: evaluations run apart), the schedule if scaled, the initial weights."""
        opts = ["SEED", str(seed), *self.train_data_opts]
        opts += schedule_opts(self.configs / t.config, self.iters[t.name])
        if t.init_from:
            opts += ["MODEL.WEIGHTS", str(self.runner.weights_of(self.folder(seed) / t.init_from))]
        return opts

    def train(self, seed: int, name: str) -> Path:
        """Train ``name`` (and what it starts from) unless done; its final weights."""
        t = training(name)
        out = self.folder(seed) / t.name
        weights = self.runner.weights_of(out)
        if weights.is_file():
            return weights
        if t.init_from:
            self.train(seed, t.init_from)
        log = self.folder(seed) / "logs" / f"train_{t.name}.log"
        seconds = self.runner.train(self.configs / t.config, out, self.train_opts(seed, t), log)
        if seconds is not None:
            atomic_write_json({"seconds": seconds}, str(out / "train_seconds.json"))
        return weights

    def train_seconds(self, seed: int, row: Row) -> Optional[float]:
        """Wall seconds of the trainings behind ``row`` (None if one is not recorded)."""
        total = 0.0
        for name in lineage(row.model):
            path = self.folder(seed) / name / "train_seconds.json"
            if not path.is_file():
                return None
            total += json.loads(path.read_text())["seconds"]
        return total

    def eval_job(self, seed: int, row: Row) -> EvalJob:
        weights = self.runner.weights_of(self.folder(seed) / row.model)
        out = self.folder(seed) / f"eval_{row.name}"
        opts = ["SEED", str(seed), *self.data_opts, *row.eval_opts]
        log = self.folder(seed) / "logs" / f"eval_{row.name}.log"
        return EvalJob(self.configs / row.config, weights, out, opts, log)

    def run(self, seed: int, row: Row) -> dict:
        """Train what ``row`` needs (if not there), evaluate it; its result (cached as JSON)."""
        path = self.folder(seed) / f"{row.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        self.train(seed, row.model)
        job = self.eval_job(seed, row)
        eval_s = self.runner.evaluate(job)
        metrics = self.runner.results(job.output_dir)
        box = metrics.get("bbox", {})
        result = {
            "variant": self.variant,
            "seed": seed,
            "row": row.name,
            "segm": {m: metrics["segm"][m] for m in SEGM_METRICS},
            "bbox": {m: box.get(m) for m in BOX_METRICS},
            "train_seconds": self.train_seconds(seed, row),
            "eval_seconds": eval_s,
        }
        atomic_write_json(result, str(path), indent=1)
        return result


def chains(runners: Dict[str, HeldoutRunner], seeds: Sequence[int]) -> List[Callable[[], list]]:
    """The work as independent chains, longest first: per variant and seed, R2-IOS (stage 1,
    stage 2 and their rows) and the Mask R-CNN heads (training and row)."""
    r2ios = [r for r in ROWS if r.model != "mask_rcnn_heads"]
    heads = [r for r in ROWS if r.model == "mask_rcnn_heads"]

    def chain(runner: HeldoutRunner, seed: int, rows: List[Row]) -> Callable[[], list]:
        return lambda: [runner.run(seed, row) for row in rows]

    return [
        chain(runner, seed, rows)
        for rows in (r2ios, heads)
        for runner in runners.values()
        for seed in seeds
    ]


def _mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample std of the values that are not None (None where there are too few)."""
    values = [v for v in values if v is not None]
    mean = statistics.fmean(values) if values else None
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _metrics(run: dict) -> Dict[str, Optional[float]]:
    """One run's table values: the AP^r, the box APs (``box_AP50``...) and training seconds."""
    out = dict(run["segm"])
    out.update({f"box_{k}": v for k, v in run["bbox"].items()})
    out["train_seconds"] = run.get("train_seconds")
    return out


COLUMNS = [*SEGM_METRICS, *(f"box_{m}" for m in BOX_METRICS), "train_seconds"]


def summarize(per_run: Sequence[dict], rows: Sequence[Row], variants: Sequence[str]) -> dict:
    """Per row: each variant's mean over its seeds, then mean and std over the variants.

    Args:
        per_run: results of :meth:`HeldoutRunner.run`.
        rows: the rows, in table order.
        variants: the variants, in table order.

    Returns:
        ``{"per_variant": [{"row", "label", "variant", "n_seeds", <column>: mean}],
        "mean_over_variants": [{"row", "label", "n_variants", "mean": {col}, "std": {col}}]}``.
    """
    per_variant, overall = [], []
    for row in rows:
        means = {}
        for v in variants:
            runs = [_metrics(r) for r in per_run if r["row"] == row.name and r["variant"] == v]
            if not runs:
                continue
            means[v] = {c: _mean_std([r[c] for r in runs])[0] for c in COLUMNS}
            head = {"row": row.name, "label": row.label, "variant": v, "n_seeds": len(runs)}
            per_variant.append({**head, **means[v]})
        stats = {c: _mean_std([m[c] for m in means.values()]) for c in COLUMNS}
        overall.append(
            {
                "row": row.name,
                "label": row.label,
                "n_variants": len(means),
                "mean": {c: s[0] for c, s in stats.items()},
                "std": {c: s[1] for c, s in stats.items()},
            }
        )
    return {"per_variant": per_variant, "mean_over_variants": overall}


_HEAD = ["APr50", "APr60", "APr70", "APr_vol", "box AP50", "box AP70", "train s"]


def _cell(column: str, value: Optional[float], std: Optional[float] = None) -> str:
    spec = ".0f" if column == "train_seconds" else ".1f"
    if std is None or value is None:
        return fmt(value, spec)
    return f"{format(value, spec)} ± {format(std, spec)}"


def heldout_tables(summary: dict) -> str:
    """Markdown: mean ± std over the variants per row, then every variant's rows."""
    rows = [
        [s["label"], *(_cell(c, s["mean"][c], s["std"][c]) for c in COLUMNS), s["n_variants"]]
        for s in summary["mean_over_variants"]
    ]
    head = ["mean ± std over variants", *_HEAD, "variants"]
    mean = tabulate(rows, head, tablefmt="github", disable_numparse=True)
    rows = [
        [p["variant"], p["label"], *(_cell(c, p[c]) for c in COLUMNS), p["n_seeds"]]
        for p in sorted(summary["per_variant"], key=lambda p: p["variant"])
    ]
    head = ["variant", "model", *_HEAD, "seeds"]
    per = tabulate(rows, head, tablefmt="github", disable_numparse=True)
    return f"{mean}\n\n{per}"


def prepare_data(variants: Sequence[str], workers: Optional[int] = None) -> None:
    """Each variant's dataset and proposals at its default root (made if missing)."""
    from r2ios_d2.data.synthetic import prepare_heldout_variant

    for v in variants:
        prepare_heldout_variant(v, workers=workers)


def select_variants(args: argparse.Namespace) -> List[str]:
    """The variants of ``--variants`` (``--heldout NAME...``), default all, in table order."""
    names = getattr(args, "heldout_variants", None) or list(HELDOUT_VARIANTS)
    unknown = set(names) - set(HELDOUT_VARIANTS)
    if unknown:
        known = list(HELDOUT_VARIANTS)
        raise SystemExit(f"unknown held-out variants {sorted(unknown)}; known: {known}")
    return [v for v in HELDOUT_VARIANTS if v in names]


def _work_name(configs: Path, iters: Dict[str, int]) -> str:
    rel = configs.relative_to(REPO) if configs.is_relative_to(REPO) else configs
    slug = "_".join(p for p in rel.parts if p not in ("/", ""))
    return f"heldout_{slug}_s1-{iters['stage1']}_s2-{iters['stage2']}"


def run_heldout(args: argparse.Namespace) -> dict:
    """Prepare the data, train and evaluate every (variant, seed) and aggregate."""
    variants = select_variants(args)
    seeds = args.seeds or [0]
    scale = args.scale or (QUICK_SCALE if args.quick else 1.0)
    configs = (REPO / args.configs_dir).resolve()
    iters = iterations(configs, scale)
    machine = machine_info("cpu")
    t0 = time.time()
    prepare_data(variants)
    data_seconds = time.time() - t0
    work = Path(args.work_dir).resolve() / _work_name(configs, iters)
    runners = {}
    for v in variants:
        runner = TrainEvalRunner(
            repo=REPO,
            python=sys.executable,
            threads=args.train_threads,
            dataset=f"r2ios_heldout_{v}_val",
        )
        runners[v] = HeldoutRunner(work, configs, v, iters, runner)
    what = f"variants {variants} x seeds {seeds}, iterations {iters}, {configs}"
    logger.info("held-out: %s -> %s", what, work)
    todo = chains(runners, seeds)
    bar = tqdm(total=len(todo), desc="held-out")

    def one(chain: Callable[[], list]) -> list:
        out = chain()
        bar.update()
        return out

    t1 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        per_run = [r for runs in pool.map(one, todo) for r in runs]
    bar.close()
    one_runner = runners[variants[0]]
    return {
        "machine": machine,
        "quick": args.quick,
        "variants": {v: variant_record(v) for v in variants},
        "seeds": seeds,
        "configs_dir": str(configs.relative_to(REPO) if configs.is_relative_to(REPO) else configs),
        "schedule_scale": scale,
        "iterations": iters,
        "train_overrides": {  # of the first variant and seed; the others differ in names only
            t.name: one_runner.train_opts(seeds[0], t) for t in TRAININGS
        },
        "jobs": args.jobs,
        "train_threads": args.train_threads,
        "work_dir": str(work),
        "data_seconds": data_seconds,
        "train_eval_seconds": time.time() - t1,
        "wall_seconds": time.time() - t0,
        **summarize(per_run, ROWS, variants),
        "runs": per_run,
        "note": (
            "Each model trained on a held-out variant's train split and evaluated (AP^r, box "
            "AP) on its val split; neither was used to tune the recipe. Train seconds: wall "
            f"time of the trainings behind a row ({args.jobs} running at once)."
        ),
    }


def variant_record(name: str) -> dict:
    """What the result records of a variant: its description, data seed, classes, splits."""
    v = HELDOUT_VARIANTS[name]
    return {
        "description": v.description,
        "data_seed": v.seed,
        "classes": list(v.spec.class_names),
        "num_train": v.num_train,
        "num_val": v.num_val,
        "train_dataset": f"r2ios_heldout_{name}_train",
        "test_dataset": f"r2ios_heldout_{name}_val",
    }


def run(args: argparse.Namespace) -> dict:
    """Run the held-out benchmark of ``args``; write and print its tables. Returns the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_heldout(args)
    tables = heldout_tables(result)
    it = result["iterations"]
    md = (
        f"# Held-out synthetic variants{' (quick)' if args.quick else ''}\n\n"
        f"{result_header(result)}\nRecipe `{result['configs_dir']}`: stage 1 {it['stage1']} it, "
        f"stage 2 {it['stage2']} it, Mask R-CNN heads {it['mask_rcnn_heads']} it; seeds "
        f"{result['seeds']}; {result['wall_seconds'] / 60:.1f} min. {result['note']}\n\n"
        + "".join(
            f"- `{v}`: {d['description']} (data seed {d['data_seed']}; "
            f"{d['num_train']} train / {d['num_val']} val images)\n"
            for v, d in result["variants"].items()
        )
        + f"\n{tables}\n"
    )
    stem = f"heldout{'_quick' if args.quick else ''}{args.tag and f'_{args.tag}'}"
    write_result((REPO / args.results_dir).resolve(), stem, result, md)
    print(f"\nheld-out variants (AP^r and box AP on each variant's val split)\n{tables}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
