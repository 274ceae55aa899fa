"""Training infrastructure: safe atomic checkpoints, per-layer lr, CPU multi-process launch,
resumable data stream, reliability hooks."""

from .checkpoint import CheckpointError, R2IOSCheckpointer, atomic_torch_save, atomic_write_text
from .hooks import FiniteLossCheck, IterationSeed
from .launch import ddp_for_cpu_models, launch_cpu
from .optimizer import build_r2ios_optimizer, scaled_schedule_opts
from .resumable_data import build_resumable_train_loader

__all__ = [
    "CheckpointError",
    "FiniteLossCheck",
    "IterationSeed",
    "R2IOSCheckpointer",
    "atomic_torch_save",
    "atomic_write_text",
    "build_r2ios_optimizer",
    "build_resumable_train_loader",
    "ddp_for_cpu_models",
    "launch_cpu",
    "scaled_schedule_opts",
]
