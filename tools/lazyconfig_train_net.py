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
"""

from __future__ import annotations

import logging
import os
import sys

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_net import add_r2ios_arguments, launch_args  # noqa: E402

from r2ios_d2.config_checks import check_lazy_overrides, check_output_dir  # noqa: E402
from r2ios_d2.data.coco import register_coco_from_args  # noqa: E402
from r2ios_d2.engine import lazy_load_for_test, lazy_test, lazy_train  # noqa: E402

logger = logging.getLogger("r2ios_d2")


def setup(args, cfg=None):
    """Load the config file (unless ``cfg`` is given), apply the ``key=value`` overrides
    (checked) and set up logging, seeds and the output folder as detectron2's
    ``default_setup`` does."""
    if cfg is None:
        cfg = LazyConfig.load(args.config_file)
    check_lazy_overrides(cfg, args.opts)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if comm.is_main_process():
        check_output_dir(cfg.train.output_dir)
    default_setup(cfg, args)
    return cfg


def main(args, cfg=None):
    """Train (or with ``--eval-only`` evaluate) the config of ``args`` (or ``cfg``)."""
    register_coco_from_args(args)  # in every process: registrations are per process
    cfg = setup(args, cfg)
    if args.eval_only:
        return lazy_test(cfg, lazy_load_for_test(cfg, resume=args.resume))
    lazy_train(cfg, resume=args.resume)
    return None


def build_parser():
    parser = default_argument_parser()
    add_r2ios_arguments(parser)
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch_args(main, args)
