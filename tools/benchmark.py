#!/usr/bin/env python
"""R2-IOS benchmarks: speed and memory against Mask R-CNN-style heads, and the paper's ablations.

One command for both benchmark tools (``make bench``); each also runs on its own:

- ``--speed``: ``tools/benchmark_speed.py``, inference time per image and peak memory of the
  R2-IOS heads for T in {1..4} against detectron2's Mask R-CNN-style heads, and the
  train-step time;
- ``--ablation``: ``tools/ablation.py``, the variants of the paper's Table 2 trained and
  evaluated on the synthetic dataset for several seeds.

    python tools/benchmark.py --speed                       # CPU, tiny and full VGG-16 widths
    python tools/benchmark.py --speed --device cuda --widths 1.0
    python tools/benchmark.py --ablation --quick            # 1 seed, 5 rows, short schedule
    python tools/benchmark.py --ablation --jobs 3           # all 11 rows, 3 seeds (~1 h)
    python tools/benchmark.py --speed --ablation --quick    # `make bench`

Results (JSON + Markdown) go to ``benchmarks/results/``; checkpoints and per-run logs of the
ablation to ``--work-dir`` (reused: a run whose results JSON exists is skipped).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ablation  # noqa: E402
import benchmark_speed  # noqa: E402

from r2ios_d2.benchmarking.records import add_result_arguments  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The options of both tools, with ``--speed`` and ``--ablation`` choosing what runs."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--speed", action="store_true", help="inference / train-step time and memory")
    p.add_argument("--ablation", action="store_true", help="Table 2 variants on synthetic data")
    quick = f"minutes instead of an hour: speed {benchmark_speed.QUICK_HELP}; "
    add_result_arguments(p, quick + f"ablation with {ablation.QUICK_HELP}")
    benchmark_speed.add_speed_arguments(p)
    ablation.add_ablation_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if not (args.speed or args.ablation):
        raise SystemExit("nothing to do: give --speed and/or --ablation")
    if args.speed:
        benchmark_speed.run(args)
    if args.ablation:
        ablation.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
