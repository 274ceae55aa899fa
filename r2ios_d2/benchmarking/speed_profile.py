"""Where the time of a forward pass goes: wall milliseconds per stage of the ROI heads.

:class:`StageProfile` times named sub-modules with forward hooks (per call, so that the
R2-IOS box and mask heads are timed per recursive iteration) and named functions or
methods by wrapping them for the duration of the ``with`` block. Stages are disjoint by
construction: time only modules and functions that do not contain one another.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Dict, Optional

from torch import nn

from .records import sync

__all__ = ["StageProfile", "r2ios_stages", "stock_stages"]


def r2ios_stages(heads: nn.Module) -> Dict[str, nn.Module]:
    """The timed modules of ``R2IOSROIHeads``: box pooler + head (fc6/fc7), the mask head
    (pooling of the scored maps + AE) and the seg-aware predictor, each per iteration. A
    one-level box pooler is timed at its RoIAlign, which inference calls directly."""
    levels = heads.box_pooler.level_poolers
    return {
        "box_pool": levels[0] if len(levels) == 1 else heads.box_pooler,
        "box_head": heads.box_head,
        "mask_head_ae": heads.mask_head,
        "predictor": heads.box_predictor,
    }


def stock_stages(heads: nn.Module) -> Dict[str, nn.Module]:
    """The timed modules of detectron2's ``StandardROIHeads`` with a mask head."""
    return {
        "box_pool": heads.box_pooler,
        "box_head": heads.box_head,
        "predictor": heads.box_predictor,
        "mask_pool": heads.mask_pooler,
        "mask_head": heads.mask_head,
    }


class StageProfile:
    """Accumulates wall milliseconds per stage over the passes run inside ``with``.

    Module stages are keyed ``"<name> t<k>"`` by the k-th call (1-based) within a pass
    (:meth:`new_pass` starts one), e.g. ``"box_head t2"`` = the box head of the second
    R2-IOS iteration. Function stages (:meth:`wrap`) are keyed by their name, summed over
    calls. :meth:`per_pass` divides by the number of passes.
    """

    def __init__(self, device: str, modules: Optional[Dict[str, nn.Module]] = None) -> None:
        """
        Args:
            device: where the model runs (CUDA is synchronised around every stage).
            modules: stage name -> module to time per call.
        """
        self.device = device
        self.modules = dict(modules or {})
        self.ms: Dict[str, float] = defaultdict(float)
        self.passes = 0
        self._calls: Dict[str, int] = defaultdict(int)
        self._starts: Dict[str, float] = {}
        self._handles: list = []
        self._wrapped: list = []
        self._suspended = 0

    # ------------------------------------------------------------------ instrumentation
    def wrap(self, owner: object, attr: str, name: str, contains_modules: bool = False) -> None:
        """Time ``owner.<attr>`` (a function of a module, or a method of an object) as
        stage ``name`` until the ``with`` block ends. With ``contains_modules`` the module
        stages called inside it are not timed or counted (they belong to ``name``), e.g. the
        mask head run once more on the output boxes, which is not a recursive iteration."""
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = self._now()
            self._suspended += int(contains_modules)
            try:
                return original(*args, **kwargs)
            finally:
                self._suspended -= int(contains_modules)
                self.ms[name] += self._now() - t0

        had_own = attr in getattr(owner, "__dict__", {})
        setattr(owner, attr, timed)
        self._wrapped.append((owner, attr, original, had_own))

    def time(self, name: str) -> _Span:
        """A context manager that adds its wall time to stage ``name``."""
        return _Span(self, name)

    def new_pass(self) -> None:
        """Start a new pass: module call counts restart at 1."""
        self.passes += 1
        self._calls.clear()

    def per_pass(self) -> Dict[str, float]:
        """Milliseconds per pass of every stage, in the order first seen."""
        n = max(self.passes, 1)
        return {k: v / n for k, v in self.ms.items()}

    # ---------------------------------------------------------------------------- hooks
    def _now(self) -> float:
        sync(self.device)
        return 1000.0 * time.perf_counter()

    def _pre(self, name: str) -> Callable:
        def hook(module, inputs):
            if self._suspended:
                return
            self._calls[name] += 1
            self._starts[name] = self._now()

        return hook

    def _post(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if self._suspended:
                return
            self.ms[f"{name} t{self._calls[name]}"] += self._now() - self._starts.pop(name)

        return hook

    def __enter__(self) -> StageProfile:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for owner, attr, original, had_own in reversed(self._wrapped):
            if had_own:
                setattr(owner, attr, original)
            else:  # a bound method: drop the instance attribute that shadowed it
                delattr(owner, attr)
        self._wrapped.clear()


class _Span:
    def __init__(self, profile: StageProfile, name: str) -> None:
        self.profile, self.name = profile, name

    def __enter__(self) -> None:
        self.t0 = self.profile._now()

    def __exit__(self, *exc) -> None:
        self.profile.ms[self.name] += self.profile._now() - self.t0
