"""Training hooks for reliability: a per-term finite-loss check, per-iteration seeding and a
clean stop on a signal.

* :class:`FiniteLossCheck` stops training at the first non-finite loss, before the backward
  pass and the optimizer step (so the weights stay finite), with a ``FloatingPointError``
  that names the iteration and every offending loss term. detectron2's own check only says
  "Loss became infinite or NaN at iteration=..." after the backward pass, on the main process.
* :class:`IterationSeed` seeds torch / numpy / ``random`` from ``(seed, rank, iteration)``
  before each step, so that the randomness of step k (proposal sampling, dropout) does not
  depend on how many steps ran in this process: a resumed run repeats the uninterrupted one.
* :class:`GracefulStop` ends training on SIGTERM / SIGINT / SIGUSR1 (a cluster's preemption):
  the step in progress finishes, every process stops after the same iteration, a checkpoint
  of that iteration is written and :class:`~r2ios_d2.preemption.Preempted` is raised with
  the command that continues the run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from .. import preemption

logger = logging.getLogger(__name__)

__all__ = [
    "FiniteLossCheck",
    "GracefulStop",
    "IterationSeed",
    "insert_before_evaluation",
    "non_finite_terms",
    "resume_command",
]


def non_finite_terms(loss_dict: Dict[str, Any]) -> Dict[str, float]:
    """The entries of a loss dict whose value is NaN or +-inf, as floats."""
    bad = {}
    for k, v in loss_dict.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                if not bool(torch.isfinite(v).all()):
                    bad[k] = float("nan")
                continue
            v = float(v.detach())
        if isinstance(v, (int, float)) and not math.isfinite(v):
            bad[k] = float(v)
    return bad


class FiniteLossCheck(HookBase):
    """Raise ``FloatingPointError`` naming the iteration and loss term(s) that are not finite.

    A forward hook on the trainer's model inspects the loss dict of every training forward;
    with several processes the offending terms are gathered, so every rank stops at the same
    iteration with the same message instead of the others hanging in the gradient all-reduce.
    """

    def __init__(self) -> None:
        self._handle: Optional[Any] = None

    def before_train(self) -> None:
        self._handle = self.trainer.model.register_forward_hook(self._check)

    def after_train(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _check(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training or not isinstance(output, dict):
            return
        bad = non_finite_terms(output)
        if comm.get_world_size() > 1:
            gathered: List[Dict[str, float]] = comm.all_gather(bad)
            bad_by_rank = {r: b for r, b in enumerate(gathered) if b}
        else:
            bad_by_rank = {0: bad} if bad else {}
        if not bad_by_rank:
            return
        iteration = self.trainer.iter
        terms = sorted({k for b in bad_by_rank.values() for k in b})
        where = "; ".join(
            f"rank {r}: " + ", ".join(f"{k}={v}" for k, v in sorted(b.items()))
            for r, b in sorted(bad_by_rank.items())
        )
        values = ", ".join(
            f"{k}={float(v.detach()) if isinstance(v, torch.Tensor) and v.numel() == 1 else v}"
            for k, v in output.items()
        )
        raise FloatingPointError(
            f"Non-finite loss at iteration {iteration}: {', '.join(terms)} ({where}). "
            f"All losses of this rank: {values}. Training stopped before this step's update; "
            "try a lower SOLVER.BASE_LR, a longer SOLVER.WARMUP_ITERS or SOLVER.CLIP_GRADIENTS, "
            "and --resume from the last checkpoint."
        )


class IterationSeed(HookBase):
    """Seed the global RNGs from ``(seed, rank, iteration)`` before every step.

    Args:
        seed: the run's seed (``cfg.SEED``; a negative seed disables the hook).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def before_step(self) -> None:
        if self.seed < 0:
            return
        state = np.random.SeedSequence([self.seed % 2**32, comm.get_rank(), self.trainer.iter])
        s = int(state.generate_state(1)[0])
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


def resume_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line of this program (``sys.argv``) with ``--resume``, for the log.

    ``--resume`` goes right after the script: detectron2's parser gives every word after the
    first config override to the overrides.
    """
    words = list(sys.argv if argv is None else argv)
    if "--resume" not in words:
        words.insert(1, "--resume")
    return shlex.join([sys.executable, *words])


class GracefulStop(HookBase):
    """Stop training cleanly on a stop signal (:mod:`r2ios_d2.preemption`).

    The signal only sets a flag during the step. After each step, the processes agree on it
    (one all-reduce of an int over gloo, whichever rank got the signal), so all stop after
    the same iteration; the main process writes ``model_<iteration>.pth`` (unless a periodic
    checkpoint of that iteration was just written), every process waits for it, and
    :class:`~r2ios_d2.preemption.Preempted` ends training (exit status
    :data:`~r2ios_d2.preemption.EXIT_PREEMPTED`). ``--resume`` then continues exactly.

    Place it after the periodic checkpointer and before the evaluation hook (see
    :func:`insert_before_evaluation`): a stop never starts an evaluation.

    Args:
        checkpointer: an :class:`~r2ios_d2.engine.checkpoint.R2IOSCheckpointer` (it writes
            on the main process only).
        command: the command that continues the run (default: :func:`resume_command`).
    """

    def __init__(self, checkpointer: Any, command: Optional[str] = None) -> None:
        self.checkpointer = checkpointer
        self.command = command
        self._stack: Optional[contextlib.ExitStack] = None
        self._group: Any = None

    def before_train(self) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(preemption.stop_signals())
        self._stack.enter_context(preemption.deferred(raise_pending=False))
        if comm.get_world_size() > 1 and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # a CPU int, not a GPU sync

    def after_train(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _agreed_signal(self) -> int:
        local = preemption.stop_requested() or 0
        if comm.get_world_size() == 1:
            return local
        flag = torch.tensor([local], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def after_step(self) -> None:
        signum = self._agreed_signal()
        if signum:
            self._stop(signum)

    def _stop(self, signum: int) -> None:
        iteration = self.trainer.iter
        last = getattr(self.checkpointer, "last_saved", None)
        if last is not None and last[1] == iteration:
            name = last[0]
        else:
            name = f"model_{iteration:07d}.pth"
            self.checkpointer.save(name[: -len(".pth")], iteration=iteration)
        comm.synchronize()  # no process leaves before the checkpoint is complete
        elapsed = preemption.seconds_since_stop_request()
        when = (
            f"{elapsed:.1f} s after the signal"
            if elapsed is not None
            else "the signal reached another process"
        )
        path = os.path.join(getattr(self.checkpointer, "save_dir", ""), name)
        message = (
            f"Stopped by {preemption.signal_name(signum)} after iteration {iteration} "
            f"({when}); checkpoint {path}. Continue the run with: "
            f"{self.command or resume_command()}"
        )
        raise preemption.Preempted(signum, message)


def insert_before_evaluation(
    hook_list: Sequence[Optional[HookBase]], hook: HookBase
) -> List[Optional[HookBase]]:
    """``hook_list`` with ``hook`` before its first ``EvalHook`` / ``PeriodicWriter`` (at
    the end without either), so that it runs after the periodic checkpointer."""
    out = list(hook_list)
    for i, h in enumerate(out):
        if isinstance(h, (hooks.EvalHook, hooks.PeriodicWriter)):
            out.insert(i, hook)
            return out
    out.append(hook)
    return out
