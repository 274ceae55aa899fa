#!/usr/bin/env python
"""R2-IOS benchmarks: speed and memory against Mask R-CNN-style heads, the paper's ablations,
held-out synthetic variants, and R2-IOS on real photographs.

One command for the benchmark tools (``make bench``, ``make bench-heldout``, ``make
bench-real``); each also runs on its own:

- ``--speed``: ``tools/benchmark_speed.py``, inference time per image and peak memory of the
  R2-IOS heads for T in {1..4} against detectron2's Mask R-CNN-style heads, and the
  train-step time;
- ``--real``: ``tools/benchmark_real.py``, R2-IOS (stages 1 and 2), detectron2's stock Mask
  R-CNN heads and R2-IOS from scratch, trained from a pre-trained VGG-16 on COCO photographs of
  the 20 PASCAL VOC classes and evaluated on 50 val photos (``make bench-real``, ~1 h);
- ``--ablation``: ``tools/ablation.py``, the variants of the paper's Table 2 trained and
  evaluated on the synthetic dataset for several seeds (``--dataset-variant NAME``: on a
  held-out variant's data);
- ``--heldout [NAME ...]``: ``tools/heldout.py``, the demo's recipe (R2-IOS stages 1 and 2,
  the stock Mask R-CNN heads at equal iterations) trained and evaluated on held-out variants
  of the synthetic data (default: all).

    python tools/benchmark.py --speed                       # CPU, tiny and full VGG-16 widths
    python tools/benchmark.py --speed --device cuda --widths 1.0
    python tools/benchmark.py --ablation --quick            # 1 seed, 5 rows, short schedule
    python tools/benchmark.py --ablation --jobs 3           # all 11 rows, 3 seeds (~1 h)
    python tools/benchmark.py --speed --ablation --quick    # `make bench`
    python tools/benchmark.py --real                        # `make bench-real`
    python tools/benchmark.py --real --quick                # smoke run, a few minutes
    python tools/benchmark.py --ablation --dataset-variant texture4
    python tools/benchmark.py --heldout                     # `make bench-heldout`
    python tools/benchmark.py --heldout texture4 --seeds 0 1 --configs-dir configs/synthetic

Results (JSON + Markdown) go to ``benchmarks/results/``; checkpoints and per-run logs of the
ablation and the held-out runs to ``--work-dir`` (reused: a run whose results JSON exists is
skipped). ``--seeds``, ``--jobs``, ``--train-threads`` and ``--work-dir`` serve both.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_options import (  # noqa: E402
    ABLATION_QUICK_HELP,
    HELDOUT_QUICK_HELP,
    SPEED_QUICK_HELP,
    add_ablation_arguments,
    add_heldout_arguments,
    add_real_arguments,
    add_speed_arguments,
)
from cli_options import add_result_arguments, parse_before_imports  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The options of the tools, with ``--speed``, ``--ablation`` and ``--heldout`` choosing
    what runs (standard library only: parsed before torch is imported)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--speed", action="store_true", help="inference / train-step time and memory")
    p.add_argument("--ablation", action="store_true", help="Table 2 variants on synthetic data")
    p.add_argument("--real", action="store_true", help="pre-trained VGG-16 on real photographs")
    p.add_argument(
        "--heldout",
        nargs="*",
        metavar="NAME",
        help="the demo's recipe on held-out synthetic variants (default: all of "
        "r2ios_d2.data.synthetic.HELDOUT_VARIANTS)",
    )
    quick = f"minutes instead of an hour: speed {SPEED_QUICK_HELP}; "
    quick += f"ablation with {ABLATION_QUICK_HELP}; held-out with {HELDOUT_QUICK_HELP}"
    add_result_arguments(p, quick)
    add_speed_arguments(p)
    add_ablation_arguments(p)
    add_heldout_arguments(p, standalone=False)
    add_real_arguments(p)  # last: shares the others' --jobs, --device, --scale
    return p


parse_before_imports(__name__, build_parser)

import ablation  # noqa: E402
import benchmark_real  # noqa: E402
import benchmark_speed  # noqa: E402
import heldout  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if not (args.speed or args.ablation or args.heldout is not None or args.real):
        raise SystemExit("nothing to do: give --speed, --ablation, --heldout and/or --real")
    if args.speed:
        benchmark_speed.run(args)
    if args.ablation:
        ablation.run(args)
    if args.real:
        try:
            benchmark_real.run(args)
        except benchmark_real.StepError as e:  # the failed step's log tail, no traceback
            raise SystemExit(str(e)) from None
    if args.heldout is not None:
        args.heldout_variants = args.heldout or None
        heldout.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
