#!/usr/bin/env python
"""Write the demo's data only: the synthetic dataset and its selective-search proposals.

    python tools/prepare_demo_data.py            # = make demo-data
    python tools/prepare_demo_data.py --num-train 40 --num-val 20 --workers 2

The dataset goes to ``$DETECTRON2_DATASETS/r2ios_synthetic`` (default ``./datasets``), the
proposals of its ``r2ios_synthetic_train`` and ``r2ios_synthetic_val`` splits to their
``proposal_dir`` (``<root>/proposals/selective_search/``), where the demo's configs (yacs and
LazyConfig) read them. Both steps are skipped when already done (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--num-train", type=int, default=160, help="training images")
    parser.add_argument("--num-val", type=int, default=60, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="selective-search processes"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from detectron2.data import MetadataCatalog

    from r2ios_d2.data.synthetic import prepare_synthetic_benchmark

    root = prepare_synthetic_benchmark(args.num_train, args.num_val, args.seed, args.workers)
    proposals = MetadataCatalog.get("r2ios_synthetic_train").proposal_dir
    logging.getLogger("r2ios_d2.demo").info(
        "demo data ready: %s (proposals in %s)", root, proposals
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
