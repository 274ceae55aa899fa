#!/usr/bin/env python
"""Train and evaluate R2-IOS from a LazyConfig (a Python config, ``configs/lazy/*.py``).

python tools/lazyconfig_train_net.py --config-file configs/lazy/r2ios_vgg16_sds_stage1.py
python tools/lazyconfig_train_net.py --config-file configs/lazy/r2ios_tiny_stage1.py \\
    train.max_iter=100 model.roi_heads.num_iterations=2      # key=value overrides
python tools/lazyconfig_train_net.py --config-file ... --resume    # continue a run
python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=m.pth
python tools/lazyconfig_train_net.py --config-file ... --num-gpus 8

The training loop, loaders, checkpointer, hooks and evaluators are those of
``tools/train_net.py`` (:mod:`r2ios_d2.engine.trainer`); only the config format differs.
``train.max_iter=N`` alone shortens a run (the milestones are scaled if they reach N, see
:mod:`r2ios_d2.engine.schedule`); a misspelt override is one line on stderr and exit status 2.
A preemption signal (SIGTERM, SIGINT, SIGUSR1) stops training as in ``tools/train_net.py``:
a checkpoint, the command that continues, exit status 75.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import parse_before_imports, training_parser  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The options of ``tools/train_net.py`` (standard library only: parsed before torch is
    imported); the overrides are ``key=value``."""
    return training_parser(__doc__)


parse_before_imports(__name__, build_parser)

import r2ios_d2  # noqa: E402, F401  (first: filters detectron2 v0.6's known-harmless warnings)

# isort: split
from detectron2.utils import comm  # noqa: E402
from train_net import launch_args  # noqa: E402

from r2ios_d2.config_checks import check_output_dir, load_r2ios_lazy_config  # noqa: E402
from r2ios_d2.data.coco import register_coco_from_args  # noqa: E402
from r2ios_d2.engine import (  # noqa: E402
    exit_on_usage_error,
    lazy_load_for_test,
    lazy_test,
    lazy_train,
    r2ios_default_setup,
)
from r2ios_d2.preemption import Preempted, stop_signals  # noqa: E402

logger = logging.getLogger("r2ios_d2")


def load_cfg(args, cfg=None) -> Tuple[Any, List[str]]:
    """The config file of ``args`` (or ``cfg``) with the checked ``key=value`` overrides and
    the schedule fitted to a shortened ``train.max_iter``, and the notes to log."""
    return load_r2ios_lazy_config(args.config_file, args.opts, cfg)


def setup(args, cfg=None):
    """Load the config file (unless ``cfg`` is given), apply the ``key=value`` overrides
    (checked) and set up logging, seeds and the output folder as detectron2's
    ``default_setup`` does (with r2ios_d2's logger too)."""
    cfg, notes = load_cfg(args, cfg)
    if comm.is_main_process():
        check_output_dir(cfg.train.output_dir)
    r2ios_default_setup(cfg, args)
    for note in notes:
        logger.warning(note)
    return cfg


def main(args, cfg=None):
    """Train (or with ``--eval-only`` evaluate) the config of ``args`` (or ``cfg``)."""
    with stop_signals():
        try:
            register_coco_from_args(args)  # in every process: registrations are per process
            cfg = setup(args, cfg)
            if args.eval_only:
                return lazy_test(cfg, lazy_load_for_test(cfg, resume=args.resume))
            lazy_train(cfg, resume=args.resume)
            return None
        except Preempted as e:
            logger.warning("%s", e)
            raise


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """The command line: a config error ends it before any process starts (exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    with exit_on_usage_error(parser):
        cfg, _ = load_cfg(args)
    dist = cfg.train.get("dist", None) or {}
    launch_args(
        main,
        args,
        collective_timeout=dist.get("collective_timeout", 1800),
        lost_process_grace=dist.get("lost_process_grace", 30),
    )


if __name__ == "__main__":
    cli()
