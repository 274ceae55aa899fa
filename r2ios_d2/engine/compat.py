"""Every shim between detectron2 versions in one place (v0.6, the last release, and its main
branch), and the fixes r2ios_d2 needs in detectron2's behaviour on CPUs.

* :func:`set_local_process_group`: v0.6 has no ``comm.create_local_process_group``.
* :func:`ddp_for_cpu_models` / :func:`create_ddp_model`: detectron2 passes
  ``device_ids=[local_rank]`` to DistributedDataParallel, which torch only accepts for GPU
  modules (CPU modules need ``None``).
* :func:`save_trainer_state` / :func:`load_trainer_state`: v0.6's ``DefaultTrainer`` leaves
  its inner ``SimpleTrainer``'s state (the optimizer's momentum buffers) out of checkpoints, so
  ``--resume`` restarted the momentum; later versions save it under ``"_trainer"``.
* :func:`filter_known_warnings`: warnings that detectron2 v0.6 (and fvcore) raise with the
  torch and NumPy versions installed here, each harmless (:data:`KNOWN_WARNINGS`). Importing
  this module (which importing ``r2ios_d2`` does first) filters them, narrowly: by category,
  message and the module that raises them, so the same warning from other code still shows.
  It must run before detectron2's modules are imported, so this module imports only
  ``detectron2.utils.comm`` at the top.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, Tuple, Type

import torch
import torch.distributed as dist
from detectron2.utils import comm

if TYPE_CHECKING:
    from detectron2.engine import DefaultTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "KNOWN_WARNINGS",
    "create_ddp_model",
    "ddp_for_cpu_models",
    "filter_known_warnings",
    "load_trainer_state",
    "save_trainer_state",
    "set_local_process_group",
]

# (category, start of the message (a regex), module that raises it (a regex)), each harmless:
KNOWN_WARNINGS: Tuple[Tuple[Type[Warning], str, str], ...] = (
    # fvcore.nn (imported by detectron2.layers) scripts its focal losses at import; torch 2.x
    # deprecates torch.jit.script in favour of torch.compile. Nothing here runs those losses.
    (FutureWarning, r"`torch\.jit\.script` is deprecated", r"torch\.jit\._script"),
    # detectron2 v0.6's mapper wraps the read-only image array in a tensor that it never
    # writes to (later detectron2 versions copy it first).
    (UserWarning, r"The given NumPy array is not writable", r"detectron2\.data\.detection_utils"),
    # `python -m r2ios_d2.data.synthetic`: importing the package registers the datasets and so
    # imports the module before runpy runs it as __main__; its registration is skipped there.
    (RuntimeWarning, r"'r2ios_d2\.data\.synthetic' found in sys\.modules", r"runpy"),
)


def filter_known_warnings() -> None:
    """Ignore the :data:`KNOWN_WARNINGS` (idempotent; called when this module is imported)."""
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


filter_known_warnings()


def set_local_process_group(world_size: int) -> None:
    """Create detectron2's per-machine process group (one machine of ``world_size`` ranks)."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        comm.create_local_process_group(world_size)
    else:  # v0.6: one machine, so the local group spans every rank
        comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))


def _cpu_safe(original: Any) -> Any:
    @functools.wraps(original)
    def create(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
            kwargs["device_ids"] = None
        return original(model, **kwargs)

    return create


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` (a no-op in one process) that also wraps CPU models.

    Args:
        model: the model, on its device.
        kwargs: DistributedDataParallel arguments (e.g. ``broadcast_buffers``).
    """
    import detectron2.engine.defaults as d2_defaults

    return _cpu_safe(d2_defaults.create_ddp_model)(model, **kwargs)


@contextlib.contextmanager
def ddp_for_cpu_models() -> Iterator[None]:
    """While active, detectron2's own ``create_ddp_model`` (called inside ``DefaultTrainer``)
    wraps CPU models correctly."""
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = _cpu_safe(original)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


def save_trainer_state(trainer: DefaultTrainer, state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` (from ``DefaultTrainer.state_dict``) with the inner trainer's state (the
    optimizer's) under ``"_trainer"``, as detectron2 after v0.6 saves it."""
    state.setdefault("_trainer", trainer._trainer.state_dict())
    return state


def load_trainer_state(trainer: DefaultTrainer, state: Dict[str, Any]) -> None:
    """Restore what :func:`save_trainer_state` added, where detectron2 does not do it itself
    (v0.6); call after ``DefaultTrainer.load_state_dict``."""
    from detectron2.engine import DefaultTrainer

    if "load_state_dict" in DefaultTrainer.__dict__:  # after v0.6: detectron2 restored it
        return
    if "_trainer" in state:
        trainer._trainer.load_state_dict(state["_trainer"])
    else:
        logger.warning("Checkpoint has no optimizer state: momentum restarts from zero")
