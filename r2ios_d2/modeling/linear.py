"""Fully connected layers through oneDNN on CPU.

R2-IOS's heads are fully connected: the autoencoder (3200 -> 512 -> 3200 per proposal and
iteration), fc6 / fc7 and the seg-aware predictor. On CPU, torch runs ``F.linear`` in float32
through its BLAS (MKL), whose kernels depend on the CPU vendor: on an AMD EPYC (Zen, AVX-512)
one core reached ~100 GFLOPS on the autoencoder's shapes, while oneDNN (bundled with torch,
the library behind its CPU convolutions) reached ~230 on the same products: the forward, the
input gradient and the weight gradient alike. :class:`OneDNNLinear` is an ``nn.Linear`` (same
parameters, names and checkpoints) whose forward and backward run those three products
through oneDNN on CPU float32 tensors; anywhere else (CUDA, other dtypes, a torch without the
op) it is ``nn.Linear``. The results equal ``F.linear``'s up to float rounding (a different
summation order).

In eval mode, where autograd records none of its inputs (inference), a layer's product runs
on a copy of its weight in oneDNN's blocked layout, made once and kept while the weight is
unchanged (same version counter, storage and shape): ~40 % faster with the few rows of the
refinement iterations 2..T (10 rows, 3200 -> 512: 0.27 -> 0.16 ms; no loss at 2000 rows),
equal to the plain layout's up to float rounding (on the demo's val split: the same AP^r and
masks, scores within 6e-7). It costs one more copy of the weight in memory, so only weights up
to ``MODEL.R2IOS.CPU_LINEAR_PACK_MB`` are packed (the autoencoder and the predictor at every
width, not full-width fc6 / fc7). Weights derived from parameters (the mask head's channel
difference, the predictor's seg columns) are kept the same way (:func:`derived_weights`), so
that inference derives and packs them once. Training mode keeps the plain layout (the weights
change at every step).

``MODEL.R2IOS.CPU_LINEAR`` ("onednn", the default, or "torch") chooses it for the R2-IOS heads
(:func:`set_cpu_linear`); any model can be converted the same way.
"""

import functools
import logging
import weakref
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = [
    "CPU_LINEAR_BACKENDS",
    "OneDNNLinear",
    "derived_weights",
    "linear",
    "linear_like",
    "onednn_available",
    "set_cpu_linear",
]

logger = logging.getLogger(__name__)

CPU_LINEAR_BACKENDS = ("onednn", "torch")
DEFAULT_PACK_MB = 32.0
_T = TypeVar("_T")


def _onednn_op():
    """torch's oneDNN linear op (``mkldnn::_linear_pointwise``), or None where it is absent."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def onednn_available() -> bool:
    """Whether this torch runs float32 linear products through oneDNN on CPU, checked once:
    the op exists and its forward, input and weight products match ``F.linear``'s on a small
    random case (else a warning, and :class:`OneDNNLinear` stays ``nn.Linear``)."""
    op = _onednn_op()
    if op is None:
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b, gy = (torch.randn(*s, generator=g) for s in ((7, 33), (5, 33), (5,), (7, 5)))
    try:
        with torch.no_grad():  # forward, input gradient, weight gradient (transposed views)
            got = [op(x, w, b, "none", [], "")]
            got += [op(gy, w.t(), None, "none", [], ""), op(gy.t(), x.t(), None, "none", [], "")]
    except RuntimeError as e:
        logger.warning("oneDNN linear unavailable (%s); using torch's F.linear", e)
        return False
    want = (F.linear(x, w, b), gy @ w, gy.t() @ x)
    if not all(torch.allclose(a, e, rtol=1e-5, atol=1e-5) for a, e in zip(got, want)):
        logger.warning("oneDNN linear disagrees with F.linear here; using torch's F.linear")
        return False
    return True


@functools.cache
def _packing_available() -> bool:
    """Whether oneDNN's blocked weights (``mkldnn::_reorder_linear_weight``) give the plain
    layout's products here, checked once (else a warning, and weights stay plain)."""
    if not onednn_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in ((7, 33), (5, 33), (5,)))
    try:
        with torch.no_grad():
            got = torch.ops.mkldnn._linear_pointwise(x, _reorder(w), b, "none", [], "")
    except (AttributeError, RuntimeError) as e:
        logger.warning("oneDNN weight packing unavailable (%s); weights stay plain", e)
        return False
    if not torch.allclose(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5):
        logger.warning("oneDNN's packed weights disagree with F.linear here; weights stay plain")
        return False
    return True


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K) in oneDNN's blocked layout for products with any number of rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


class _UnchangedTensorCache:
    """Values computed from tensors, kept while every one of them lives and holds the same
    data: same version counter (in-place changes: optimizer steps, ``load_state_dict``),
    storage, shape and strides. An entry goes when one of its tensors is freed."""

    def __init__(self) -> None:
        self._entries: Dict[tuple, tuple] = {}

    @staticmethod
    def _state(tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
        return tuple(
            None if t is None else (t._version, t.data_ptr(), tuple(t.shape), t.stride())
            for t in tensors
        )

    def get(
        self, tag: str, tensors: Sequence[Optional[torch.Tensor]], compute: Callable[[], _T]
    ) -> _T:
        key = (tag, *(id(t) for t in tensors))
        state = self._state(tensors)
        entry = self._entries.get(key)
        if entry is not None and entry[1] == state:
            return entry[2]
        # Made as ordinary tensors (not inference tensors), usable in and out of inference mode.
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        drop = functools.partial(self._drop, key)
        refs = tuple(weakref.ref(t, drop) for t in tensors if t is not None)
        self._entries[key] = (refs, state, value)
        return value

    def _drop(self, key: tuple, ref: weakref.ref) -> None:
        entry = self._entries.get(key)
        if entry is not None and any(ref is r for r in entry[0]):
            del self._entries[key]


_CACHE = _UnchangedTensorCache()


def _recorded(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd records an operation on any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _cacheable(*tensors: Optional[torch.Tensor]) -> bool:
    # Inference tensors have no version counter to tell an in-place change by.
    return not _recorded(*tensors) and not any(t is not None and t.is_inference() for t in tensors)


def derived_weights(
    layer: nn.Linear,
    tag: str,
    derive: Callable[[], Tuple[torch.Tensor, Optional[torch.Tensor]]],
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``derive()``: a weight and bias computed from ``layer``'s parameters. In eval mode where
    autograd records neither parameter (inference), computed once per ``tag`` and kept while
    the parameters are unchanged; elsewhere computed on each call.

    Returns:
        (N, K) weight and (N,) bias (or None) for :func:`linear_like` with ``layer``.
    """
    if layer.training or not _cacheable(layer.weight, layer.bias):
        return derive()
    return _CACHE.get(tag, (layer.weight, layer.bias), derive)


def _cpu_autocast() -> bool:
    """Whether CPU autocast is on (F.linear then runs in its lower precision: left to it)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _use_onednn(*tensors: Optional[torch.Tensor]) -> bool:
    return (
        all(
            t is None or (t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2)
            for t in tensors
        )
        and onednn_available()
        and not _cpu_autocast()
    )


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``a @ b_t.T (+ bias)`` through oneDNN; ``a`` (M, K), ``b_t`` (N, K), any strides.
    An empty product (oneDNN has no primitive for it) goes through ``F.linear``."""
    if a.numel() == 0 or b_t.numel() == 0:
        return F.linear(a, b_t, bias)
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """``x @ w.T + b`` with the three products of forward and backward through oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:  # noqa: D102
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g = g.contiguous()
        gx = _mm(g, weight.t()) if need_x else None  # (M, N) @ (N, K)
        gw = _mm(g.t(), x.t()) if need_w else None  # (N, M) @ (M, K)
        gb = g.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    pack_max_bytes: float = 0.0,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for 2-D CPU float32 tensors (with
    autograd) outside CPU autocast; ``F.linear`` itself anywhere else.

    Args:
        x: (R, in) inputs.
        weight: (out, in).
        bias: (out,) or None.
        pack_max_bytes: where autograd records none of the three, a weight up to this size
            runs in oneDNN's blocked layout, made once and kept while the weight is unchanged
            (see the module docstring); 0 = never.

    Returns:
        (R, out).
    """
    if not _use_onednn(x, weight) or (bias is not None and bias.dtype != torch.float32):
        return F.linear(x, weight, bias)
    if _recorded(x, weight, bias):
        return _OneDNNLinearFunction.apply(x, weight, bias)
    if (
        0 < weight.numel() * weight.element_size() <= pack_max_bytes
        and not weight.is_inference()  # no version counter to tell a change by
        and _packing_available()
    ):
        packed = _CACHE.get("onednn_packed", (weight,), lambda: _reorder(weight))
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return _mm(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose CPU float32 products run through oneDNN (:func:`linear`); the same
    parameters and state dict. Inputs with more than 2 dims are flattened to 2 and back.

    Attributes:
        pack_max_bytes: in eval mode, inference runs weights up to this size (its own and
            those derived from it, :func:`linear_like`) in oneDNN's blocked layout
            (:func:`linear`); in training mode the plain layout always.
    """

    pack_max_bytes: float = DEFAULT_PACK_MB * 2**20

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        pack = _pack_limit(self)
        if x.dim() == 2:
            return linear(x, self.weight, self.bias, pack)
        return linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias, pack).view(
            *x.shape[:-1], self.out_features
        )


def _pack_limit(layer: OneDNNLinear) -> float:
    # In training the weights change at every step (a copy would be made per step) and the
    # products without autograd (e.g. rows whose losses train nothing) keep the plain layout's
    # rounding: packing is for a model in eval mode.
    return 0.0 if layer.training else layer.pack_max_bytes


def linear_like(
    layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` on the backend of ``layer`` (whose parameters ``weight``
    and ``bias`` are derived from, e.g. by :func:`derived_weights`): :func:`linear` for a
    :class:`OneDNNLinear`."""
    if isinstance(layer, OneDNNLinear):
        return linear(x, weight, bias, _pack_limit(layer))
    return F.linear(x, weight, bias)


def set_cpu_linear(module: nn.Module, backend: str, pack_mb: float = DEFAULT_PACK_MB) -> int:
    """Set the backend of every ``nn.Linear`` in ``module`` (in place; parameters, hooks and
    state dict unchanged): "onednn" makes each a :class:`OneDNNLinear`, "torch" a plain
    ``nn.Linear``. Subclasses of ``nn.Linear`` with their own forward are left as they are.
    ``pack_mb``: the largest weight (MiB) that inference runs in oneDNN's blocked layout
    (``MODEL.R2IOS.CPU_LINEAR_PACK_MB``; 0 = none).

    Returns:
        The number of layers whose backend is now ``backend``.
    """
    if backend not in CPU_LINEAR_BACKENDS:
        raise ValueError(
            f"CPU linear backend must be one of {CPU_LINEAR_BACKENDS}, got {backend!r}"
        )
    if not pack_mb >= 0:
        raise ValueError(f"pack_mb must be >= 0, got {pack_mb}")
    target = OneDNNLinear if backend == "onednn" else nn.Linear
    count = 0
    for m in module.modules():
        if type(m) in (nn.Linear, OneDNNLinear):
            m.__class__ = target
            if target is OneDNNLinear:
                m.pack_max_bytes = pack_mb * 2**20
            count += 1
    return count
