#!/usr/bin/env python
"""Train and evaluate R2-IOS with detectron2.

python tools/train_net.py --config-file configs/r2ios_vgg16_sds_stage1.yaml
python tools/train_net.py --config-file configs/... --eval-only MODEL.WEIGHTS model.pth
python tools/train_net.py --config-file configs/... --resume          # continue a run
python tools/train_net.py --config-file configs/... --num-gpus 8      # GPUs (NCCL)
python tools/train_net.py --config-file configs/... --num-cpu-processes 2 MODEL.DEVICE cpu
python tools/train_net.py --config-file ... --register-coco my_train train.json images/ \
    DATASETS.TRAIN '("my_train",)'                         # a COCO-format dataset
python tools/train_net.py --config-file ... SOLVER.MAX_ITER 60   # a short run: STEPS scaled

Everything r2ios_d2 logs goes to the console and OUTPUT_DIR/log.txt; a misspelt config key is
one line on stderr and exit status 2. On SIGTERM, SIGINT or SIGUSR1 (a cluster's preemption)
training finishes its step, writes a checkpoint, logs the command that continues it and exits
with status 75 (r2ios_d2.preemption.EXIT_PREEMPTED); see docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import parse_before_imports, training_parser  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The options of detectron2's training tools, ``--register-coco`` and
    ``--num-cpu-processes`` (standard library only: parsed before torch is imported)."""
    return training_parser(__doc__)


parse_before_imports(__name__, build_parser)

import r2ios_d2  # noqa: E402, F401  (first: filters detectron2 v0.6's known-harmless warnings)

# isort: split
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from r2ios_d2.config_checks import check_output_dir, load_r2ios_config  # noqa: E402
from r2ios_d2.data.coco import register_coco_from_args  # noqa: E402
from r2ios_d2.engine import (  # noqa: E402
    ProcessLostError,
    R2IOSCheckpointer,
    R2IOSTrainer,
    exit_on_usage_error,
    launch_cpu,
    launch_gpu,
    r2ios_default_setup,
)
from r2ios_d2.preemption import Preempted, stop_signals  # noqa: E402

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger("r2ios_d2")


def load_cfg(args) -> Tuple[CfgNode, List[str]]:
    """The config of ``args`` (file + checked opts + the schedule fitted to a shortened
    SOLVER.MAX_ITER), frozen, and the notes to log."""
    cfg, notes = load_r2ios_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg, notes


def setup(args) -> CfgNode:
    cfg, notes = load_cfg(args)
    if comm.is_main_process():
        check_output_dir(cfg.OUTPUT_DIR)
    r2ios_default_setup(cfg, args)
    for note in notes:
        logger.warning(note)
    return cfg


def main(args):
    with stop_signals():
        try:
            return _main(args)
        except Preempted as e:
            logger.warning("%s", e)
            raise


def _main(args):
    register_coco_from_args(args)  # in every process: registrations are per process
    cfg = setup(args)
    if args.eval_only:
        model = R2IOSTrainer.build_model(cfg)
        R2IOSCheckpointer.for_config(model, cfg, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = R2IOSTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = R2IOSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_args(
    main_func, args, collective_timeout: float = 1800, lost_process_grace: float = 30
) -> None:
    """Run ``main_func(args)`` in the processes the flags ask for (GPUs or CPU processes),
    with the ``DIST.*`` limits; a lost process is one line on stderr and exit status 1."""
    if args.num_cpu_processes > 1 and args.num_gpus > 1:
        raise SystemExit("--num-cpu-processes and --num-gpus cannot both be above 1")
    try:
        if args.num_cpu_processes > 1:
            launch_cpu(
                main_func,
                args.num_cpu_processes,
                args=(args,),
                dist_url=args.dist_url,
                collective_timeout=collective_timeout,
                lost_process_grace=lost_process_grace,
            )
            return
        launch_gpu(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            collective_timeout=collective_timeout,
        )
    except ProcessLostError as e:
        raise SystemExit(f"{sys.argv[0]}: error: {e}") from None


def run(args, cfg: Optional[CfgNode] = None) -> None:
    dist = cfg.DIST if cfg is not None else None
    launch_args(
        main,
        args,
        collective_timeout=dist.COLLECTIVE_TIMEOUT if dist is not None else 1800,
        lost_process_grace=dist.LOST_PROCESS_GRACE if dist is not None else 30,
    )


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """The command line: a config error ends it before any process starts (exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    with exit_on_usage_error(parser):
        cfg, _ = load_cfg(args)
    run(args, cfg)


if __name__ == "__main__":
    cli()
