"""The training and evaluation loops of r2ios_d2, for yacs configs and for LazyConfig.

Both ways of running share every part that makes an R2-IOS run what it is: the precomputed-
proposal loaders in a stream that ``--resume`` continues exactly (:mod:`.resumable_data`), the
per-step seeding and the named non-finite-loss check (:func:`r2ios_hooks`), the clean stop on
a preemption signal (:class:`~.hooks.GracefulStop`, before the evaluation hook; evaluation
itself stops at once), the atomic, safe checkpointer with the optimizer state that falls back
to an older checkpoint when the last one is damaged (:class:`R2IOSCheckpointer`), a
``metrics.json`` that a full disk cannot leave half-written (:mod:`.writers`), the
pre-trained-layer lr (:mod:`.optimizer`), the evaluators (:func:`build_r2ios_evaluator`: AP^r,
plus COCO's for COCO-format datasets) and the training datasets' classes saved beside the
checkpoints (:func:`record_training_datasets`).

* :class:`R2IOSTrainer` is a detectron2 ``DefaultTrainer`` for yacs configs
  (``tools/train_net.py``);
* :func:`lazy_train` / :func:`lazy_test` run a LazyConfig (``tools/lazyconfig_train_net.py``):
  ``cfg.model``, ``cfg.optimizer`` (``params.model`` is filled in), ``cfg.lr_multiplier``,
  ``cfg.dataloader.{train,test,evaluator}`` and ``cfg.train`` (see ``configs/lazy/common.py``).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.utils import comm

from .. import preemption
from ..config_checks import validate_r2ios_config
from ..data import (
    PrecomputedProposalMapper,
    build_r2ios_test_loader,
    build_r2ios_train_loader,
    r2ios_train_dataset_dicts,
)
from ..evaluation import SDSEvaluator
from ..modeling.linear import set_cpu_linear
from .checkpoint import R2IOSCheckpointer
from .compat import (
    create_ddp_model,
    ddp_for_cpu_models,
    load_trainer_state,
    save_trainer_state,
)
from .hooks import FiniteLossCheck, GracefulStop, IterationSeed, insert_before_evaluation
from .optimizer import build_r2ios_optimizer
from .resumable_data import build_resumable_train_loader
from .run_metadata import check_num_classes, save_dataset_metadata
from .writers import r2ios_default_writers

logger = logging.getLogger("r2ios_d2")

__all__ = [
    "R2IOSTrainer",
    "build_r2ios_evaluator",
    "lazy_load_for_test",
    "lazy_test",
    "lazy_train",
    "r2ios_hooks",
    "record_training_datasets",
]


class _PrefixedEvaluator(DatasetEvaluator):
    """An evaluator whose result tasks are renamed ``<prefix><task>`` (so that two evaluators
    that both report "segm" and "bbox" fit in one :class:`DatasetEvaluators`)."""

    def __init__(self, evaluator: DatasetEvaluator, prefix: str) -> None:
        self.evaluator = evaluator
        self.prefix = prefix

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, inputs: Any, outputs: Any) -> None:
        self.evaluator.process(inputs, outputs)

    def evaluate(self) -> Optional[Dict[str, Any]]:
        results = self.evaluator.evaluate()
        if results is None:  # non-main processes
            return None
        return OrderedDict((self.prefix + k, v) for k, v in results.items())


def build_r2ios_evaluator(
    dataset_name: str, output_dir: Optional[str] = None, mask_threshold: float = 0.5
) -> DatasetEvaluator:
    """The evaluator of a dataset, chosen by its metadata's ``evaluator_type``.

    * ``"sds"`` (the default; VOC2012, SBD, SDS, synthetic): :class:`SDSEvaluator` (AP^r);
    * ``"coco"`` (e.g. registered with ``register_coco_instances``): AP^r as ``segm`` /
      ``bbox`` and detectron2's ``COCOEvaluator`` as ``coco_segm`` / ``coco_bbox``.

    Args:
        dataset_name: a registered dataset.
        output_dir: where the evaluators write their files (None: nowhere).
        mask_threshold: binarisation threshold of the predicted masks for AP^r.

    Raises:
        ValueError: for another ``evaluator_type``.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sds")
    sds = SDSEvaluator(dataset_name, output_dir=output_dir, mask_threshold=mask_threshold)
    if evaluator_type == "sds":
        return sds
    if evaluator_type == "coco":
        # use_fast_impl=False: pycocotools' COCOeval, no need for detectron2's compiled _C.
        coco = COCOEvaluator(dataset_name, output_dir=output_dir, use_fast_impl=False)
        return DatasetEvaluators([sds, _PrefixedEvaluator(coco, "coco_")])
    raise ValueError(
        f"no evaluator for evaluator_type {evaluator_type!r} of {dataset_name} "
        "(r2ios_d2 evaluates 'sds' and 'coco' datasets)"
    )


def r2ios_hooks(seed: int) -> List[hooks.HookBase]:
    """The hooks every R2-IOS run has before detectron2's own: each step seeded from
    (``seed``, rank, iteration), so that ``--resume`` reproduces the random draws of an
    uninterrupted run, and non-finite loss terms named before they spoil the weights."""
    return [IterationSeed(seed), FiniteLossCheck()]


def record_training_datasets(
    output_dir: str, dataset_names: Sequence[str], num_classes: Optional[int]
) -> None:
    """Once the training datasets are loaded: warn if the model has more classes than they
    have categories, and (main process) save their class names and category ids to
    ``<output_dir>/dataset_metadata.json`` (see :mod:`.run_metadata`), where ``tools/demo.py``
    finds them beside the weights."""
    if not dataset_names or num_classes is None:
        return
    check_num_classes(dataset_names, int(num_classes))
    if comm.is_main_process():
        save_dataset_metadata(output_dir, dataset_names, int(num_classes))


# ---------------------------------------------------------------------------------- yacs


class R2IOSTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with the precomputed-proposal loaders, the R2-IOS
    evaluators, the pre-trained-layer lr, the reliability hooks and the atomic, safe
    checkpointer that also saves the optimizer state."""

    def __init__(self, cfg: CfgNode) -> None:
        with ddp_for_cpu_models():
            super().__init__(cfg)
        self._use_r2ios_checkpointer()
        # The train loader (built above) has loaded the datasets: their metadata is complete.
        record_training_datasets(
            cfg.OUTPUT_DIR, list(cfg.DATASETS.TRAIN), cfg.MODEL.ROI_HEADS.NUM_CLASSES
        )

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """The model of ``cfg``, after every r2ios_d2 value of the config is checked
        (:func:`~r2ios_d2.config_checks.validate_r2ios_config`): the first thing the trainer
        builds, and what ``--eval-only`` builds. Every ``nn.Linear`` of the model, not only
        R2-IOS's heads', runs on ``MODEL.R2IOS.CPU_LINEAR``'s backend (the stock heads
        trained beside R2-IOS use the same)."""
        validate_r2ios_config(cfg)
        model = super().build_model(cfg)
        set_cpu_linear(model, cfg.MODEL.R2IOS.CPU_LINEAR, cfg.MODEL.R2IOS.CPU_LINEAR_PACK_MB)
        return model

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                "%s: --resume will not continue the data stream exactly",
                cfg.DATALOADER.SAMPLER_TRAIN,
            )
            return preemption.quiet_workers(build_r2ios_train_loader(cfg))
        # Same data as build_r2ios_train_loader, in a stream that --resume continues exactly.
        mapper = PrecomputedProposalMapper(cfg, True)
        return build_resumable_train_loader(cfg, r2ios_train_dataset_dicts(cfg), mapper)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        return preemption.quiet_workers(build_r2ios_test_loader(cfg, dataset_name))

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_r2ios_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_r2ios_evaluator(dataset_name, output_folder, cfg.MODEL.R2IOS.MASK_THRESHOLD)

    def _use_r2ios_checkpointer(self) -> None:
        if not isinstance(self.checkpointer, R2IOSCheckpointer):
            self.checkpointer = R2IOSCheckpointer.for_config(
                self.model, self.cfg, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
            )

    def build_hooks(self) -> List[hooks.HookBase]:
        # DefaultTrainer.__init__ builds the hooks right after its own checkpointer: replace it
        # first, so that the periodic checkpoints are written by the atomic one too.
        self._use_r2ios_checkpointer()
        return insert_before_evaluation(
            [*r2ios_hooks(self.cfg.SEED), *super().build_hooks()], GracefulStop(self.checkpointer)
        )

    def build_writers(self) -> List[Any]:
        return r2ios_default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators: Any = None) -> Any:
        # A stop signal ends an evaluation at once (nothing to save: its files are atomic).
        with preemption.immediate():
            return super().test(cfg, model, evaluators)

    def resume_or_load(self, resume: bool = True) -> None:
        """As detectron2's, with :meth:`R2IOSCheckpointer.resume_or_load`'s fallback to an
        older checkpoint when the last one is damaged (and its error when none loads)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from is not None:
            # The checkpoint holds the iteration that finished: continue with the next one.
            self.start_iter = self.iter + 1

    def state_dict(self) -> Dict[str, Any]:
        return save_trainer_state(self, super().state_dict())

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        load_trainer_state(self, state_dict)


# ---------------------------------------------------------------------------------- Lazy


def lazy_test(cfg: Any, model: torch.nn.Module) -> Dict[str, Any]:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    Returns:
        the evaluator's results (``{task: {metric: value}}``; empty on non-main processes or
        without an evaluator).
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    with preemption.immediate():
        results = inference_on_dataset(
            model,
            preemption.quiet_workers(instantiate(cfg.dataloader.test)),
            instantiate(cfg.dataloader.evaluator),
        )
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results or {}


def _lazy_checkpointer(cfg: Any, model: torch.nn.Module, **checkpointables: Any) -> Any:
    return R2IOSCheckpointer(
        model,
        cfg.train.output_dir,
        allow_pickle=bool(cfg.train.get("allow_pickle_weights", False)),
        allow_shape_mismatch=bool(cfg.train.get("allow_shape_mismatch", False)),
        max_to_keep=int(cfg.train.get("checkpointer", {}).get("max_to_keep", None) or 0),
        **checkpointables,
    )


def lazy_load_for_test(cfg: Any, resume: bool = False) -> torch.nn.Module:
    """The model of ``cfg`` with ``cfg.train.init_checkpoint`` (or, with ``resume``, the last
    checkpoint of ``cfg.train.output_dir``) loaded, in eval mode on ``cfg.train.device``."""
    model = instantiate(cfg.model).to(cfg.train.device)
    model = create_ddp_model(model)
    _lazy_checkpointer(cfg, model).resume_or_load(cfg.train.init_checkpoint, resume=resume)
    return model.eval()


def _lazy_train_dataset_names(cfg: Any) -> List[str]:
    """``dataloader.train.dataset.names`` of a LazyConfig (r2ios_d2's layout), else []."""
    from omegaconf import OmegaConf

    names = OmegaConf.select(cfg, "dataloader.train.dataset.names", default=None)
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names] if names is not None else []


def lazy_train(cfg: Any, resume: bool = False) -> None:
    """Train the model of a LazyConfig as :class:`R2IOSTrainer` trains a yacs one.

    ``cfg.train`` keys: ``output_dir``, ``init_checkpoint``, ``max_iter``, ``device``,
    ``seed``, ``log_period``, ``eval_period``, ``checkpointer`` (``period``,
    ``max_to_keep``: as ``SOLVER.CHECKPOINT_MAX_TO_KEEP``, never the checkpoint
    ``last_checkpoint`` names), ``ddp`` (DistributedDataParallel kwargs) and optionally
    ``allow_pickle_weights`` / ``allow_shape_mismatch`` (the ``MODEL.R2IOS`` opt-ins) and
    ``dist`` (``collective_timeout``, ``lost_process_grace``: the ``DIST`` keys, read by
    the launcher).

    Args:
        cfg: a loaded LazyConfig (``configs/lazy/*.py``).
        resume: continue from the last checkpoint in ``cfg.train.output_dir`` (optimizer, lr
            schedule, data stream and per-step seeds included), else start from
            ``cfg.train.init_checkpoint``.
    """
    model = instantiate(cfg.model).to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    record_training_datasets(
        cfg.train.output_dir,
        _lazy_train_dataset_names(cfg),
        getattr(getattr(model, "roi_heads", None), "num_classes", None),
    )
    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    trainer = SimpleTrainer(model, loader, optimizer)
    checkpointer = _lazy_checkpointer(cfg, model, trainer=trainer)
    main = comm.is_main_process()
    # The checkpointer prunes old checkpoints itself (never the tagged one), so max_to_keep
    # does not go to detectron2's PeriodicCheckpointer.
    periodic = {k: v for k, v in cfg.train.checkpointer.items() if k != "max_to_keep"}
    trainer.register_hooks(
        insert_before_evaluation(
            [
                *r2ios_hooks(int(cfg.train.seed)),
                hooks.IterationTimer(),
                hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
                hooks.PeriodicCheckpointer(checkpointer, **periodic) if main else None,
                hooks.EvalHook(cfg.train.eval_period, lambda: lazy_test(cfg, model)),
                hooks.PeriodicWriter(
                    r2ios_default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if main
                else None,
            ],
            GracefulStop(checkpointer),
        )
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.resumed_from is not None else 0
    trainer.train(start_iter, cfg.train.max_iter)
