"""Training infrastructure: the trainers (yacs and LazyConfig), safe atomic checkpoints,
per-layer lr, multi-process launch that stops together, resumable data stream, reliability
hooks (a clean stop on preemption among them), the event writers (:mod:`.writers`), and the
shims between detectron2 versions (:mod:`.compat`), the tools' logging and usage errors
(:mod:`.defaults`), a shortened run's schedule (:mod:`.schedule`) and the training datasets'
classes saved beside the checkpoints (:mod:`.run_metadata`)."""

# compat first: importing it filters detectron2 v0.6's known-harmless warnings, which the
# modules below would otherwise raise while they import detectron2.
from .compat import create_ddp_model, ddp_for_cpu_models, filter_known_warnings

# isort: split
from .checkpoint import (
    CheckpointError,
    R2IOSCheckpointer,
    atomic_torch_save,
    atomic_write_text,
    verify_archive,
)
from .defaults import exit_on_usage_error, r2ios_default_setup, setup_r2ios_logger
from .hooks import FiniteLossCheck, GracefulStop, IterationSeed, resume_command
from .launch import ProcessLostError, launch_cpu, launch_gpu
from .optimizer import build_r2ios_optimizer, r2ios_optimizer_params, scaled_schedule_opts
from .resumable_data import build_resumable_train_loader, resumable_train_loader
from .trainer import (
    R2IOSTrainer,
    build_r2ios_evaluator,
    lazy_load_for_test,
    lazy_test,
    lazy_train,
    r2ios_hooks,
    record_training_datasets,
)
from .writers import MetricsJSONWriter, r2ios_default_writers

__all__ = [
    "CheckpointError",
    "FiniteLossCheck",
    "GracefulStop",
    "IterationSeed",
    "MetricsJSONWriter",
    "ProcessLostError",
    "R2IOSCheckpointer",
    "R2IOSTrainer",
    "atomic_torch_save",
    "atomic_write_text",
    "build_r2ios_evaluator",
    "build_r2ios_optimizer",
    "build_resumable_train_loader",
    "create_ddp_model",
    "ddp_for_cpu_models",
    "exit_on_usage_error",
    "filter_known_warnings",
    "lazy_load_for_test",
    "lazy_test",
    "lazy_train",
    "launch_cpu",
    "launch_gpu",
    "r2ios_default_setup",
    "r2ios_default_writers",
    "r2ios_hooks",
    "r2ios_optimizer_params",
    "record_training_datasets",
    "resumable_train_loader",
    "resume_command",
    "scaled_schedule_opts",
    "setup_r2ios_logger",
    "verify_archive",
]
