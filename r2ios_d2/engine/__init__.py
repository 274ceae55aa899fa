"""Training infrastructure: the trainers (yacs and LazyConfig), safe atomic checkpoints,
per-layer lr, CPU multi-process launch, resumable data stream, reliability hooks, and the
shims between detectron2 versions (:mod:`.compat`)."""

from .checkpoint import CheckpointError, R2IOSCheckpointer, atomic_torch_save, atomic_write_text
from .compat import create_ddp_model, ddp_for_cpu_models
from .hooks import FiniteLossCheck, IterationSeed
from .launch import launch_cpu
from .optimizer import build_r2ios_optimizer, r2ios_optimizer_params, scaled_schedule_opts
from .resumable_data import build_resumable_train_loader, resumable_train_loader
from .trainer import (
    R2IOSTrainer,
    build_r2ios_evaluator,
    lazy_load_for_test,
    lazy_test,
    lazy_train,
    r2ios_hooks,
)

__all__ = [
    "CheckpointError",
    "FiniteLossCheck",
    "IterationSeed",
    "R2IOSCheckpointer",
    "R2IOSTrainer",
    "atomic_torch_save",
    "atomic_write_text",
    "build_r2ios_evaluator",
    "build_r2ios_optimizer",
    "build_resumable_train_loader",
    "create_ddp_model",
    "ddp_for_cpu_models",
    "lazy_load_for_test",
    "lazy_test",
    "lazy_train",
    "launch_cpu",
    "r2ios_hooks",
    "r2ios_optimizer_params",
    "resumable_train_loader",
    "scaled_schedule_opts",
]
