"""Training infrastructure: safe atomic checkpoints, per-layer lr, CPU multi-process launch."""

from .checkpoint import CheckpointError, R2IOSCheckpointer, atomic_torch_save, atomic_write_text
from .launch import ddp_for_cpu_models, launch_cpu
from .optimizer import build_r2ios_optimizer

__all__ = [
    "CheckpointError",
    "R2IOSCheckpointer",
    "atomic_torch_save",
    "atomic_write_text",
    "build_r2ios_optimizer",
    "ddp_for_cpu_models",
    "launch_cpu",
]
