#!/usr/bin/env python
"""Train and evaluate R2-IOS with detectron2.

python tools/train_net.py --config-file configs/r2ios_vgg16_sds_stage1.yaml
python tools/train_net.py --config-file configs/... --eval-only MODEL.WEIGHTS model.pth
python tools/train_net.py --config-file configs/... --resume          # continue a run
python tools/train_net.py --config-file configs/... --num-gpus 8      # GPUs (NCCL)
python tools/train_net.py --config-file configs/... --num-cpu-processes 2 MODEL.DEVICE cpu
"""

from __future__ import annotations

import logging
import os
import weakref

from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, verify_results
from detectron2.utils import comm

from r2ios_d2 import add_r2ios_config
from r2ios_d2.config_checks import check_opts_keys, check_output_dir, validate_r2ios_config
from r2ios_d2.data import (
    PrecomputedProposalMapper,
    build_r2ios_test_loader,
    build_r2ios_train_loader,
    r2ios_train_dataset_dicts,
)
from r2ios_d2.engine import (
    FiniteLossCheck,
    IterationSeed,
    R2IOSCheckpointer,
    build_r2ios_optimizer,
    build_resumable_train_loader,
    ddp_for_cpu_models,
    launch_cpu,
)
from r2ios_d2.evaluation import SDSEvaluator

logger = logging.getLogger("r2ios_d2")


class Trainer(DefaultTrainer):
    """`DefaultTrainer` with the precomputed-proposal loaders, the AP^r evaluator, the
    pre-trained-layer lr and the atomic, safe checkpointer."""

    def __init__(self, cfg: CfgNode) -> None:
        with ddp_for_cpu_models():
            super().__init__(cfg)
        self.checkpointer = R2IOSCheckpointer.for_config(
            self.model, cfg, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                "%s: --resume will not continue the data stream exactly",
                cfg.DATALOADER.SAMPLER_TRAIN,
            )
            return build_r2ios_train_loader(cfg)
        # Same data as build_r2ios_train_loader, in a stream that --resume continues exactly.
        mapper = PrecomputedProposalMapper(cfg, True)
        return build_resumable_train_loader(cfg, r2ios_train_dataset_dicts(cfg), mapper)

    def state_dict(self):
        ret = super().state_dict()
        # detectron2 v0.6's DefaultTrainer leaves out its SimpleTrainer's state (the optimizer's
        # momentum buffers), so --resume restarted the momentum; later versions save it here.
        ret.setdefault("_trainer", self._trainer.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "load_state_dict" not in DefaultTrainer.__dict__:  # v0.6: restore it ourselves
            if "_trainer" in state_dict:
                self._trainer.load_state_dict(state_dict["_trainer"])
            else:
                logger.warning("Checkpoint has no optimizer state: momentum restarts from zero")

    def build_hooks(self):
        # Seed each step from (SEED, rank, iteration) and name non-finite loss terms.
        return [IterationSeed(self.cfg.SEED), FiniteLossCheck(), *super().build_hooks()]

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_r2ios_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_r2ios_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sds")
        if evaluator_type == "sds":
            return SDSEvaluator(
                dataset_name,
                output_dir=output_folder,
                mask_threshold=cfg.MODEL.R2IOS.MASK_THRESHOLD,
            )
        if evaluator_type == "coco":
            return DatasetEvaluators(
                [
                    COCOEvaluator(
                        dataset_name,
                        output_dir=output_folder,
                        use_fast_impl=False,  # works without detectron2's compiled _C
                    )
                ]
            )
        raise ValueError(f"no evaluator for evaluator_type {evaluator_type!r} of {dataset_name}")


def setup(args) -> CfgNode:
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(args.config_file)
    check_opts_keys(cfg, args.opts)
    cfg.merge_from_list(args.opts)
    validate_r2ios_config(cfg)
    cfg.freeze()
    if comm.is_main_process():
        check_output_dir(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        R2IOSCheckpointer.for_config(model, cfg, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--num-cpu-processes",
        type=int,
        default=1,
        help="train/evaluate with this many CPU processes (gloo); use with MODEL.DEVICE cpu",
    )
    return parser


def run(args) -> None:
    if args.num_cpu_processes > 1:
        if args.num_gpus > 1:
            raise SystemExit("--num-cpu-processes and --num-gpus cannot both be above 1")
        launch_cpu(main, args.num_cpu_processes, args=(args,), dist_url=args.dist_url)
        return
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    run(args)
