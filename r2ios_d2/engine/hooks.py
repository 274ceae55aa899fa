"""Training hooks for reliability: a per-term finite-loss check and per-iteration seeding.

* :class:`FiniteLossCheck` stops training at the first non-finite loss, before the backward
  pass and the optimizer step (so the weights stay finite), with a ``FloatingPointError``
  that names the iteration and every offending loss term. detectron2's own check only says
  "Loss became infinite or NaN at iteration=..." after the backward pass, on the main process.
* :class:`IterationSeed` seeds torch / numpy / ``random`` from ``(seed, rank, iteration)``
  before each step, so that the randomness of step k (proposal sampling, dropout) does not
  depend on how many steps ran in this process: a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["FiniteLossCheck", "IterationSeed", "non_finite_terms"]


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
