"""RoIAlign whose CPU backward (and, for few channels, forward) runs as matrix products.

Bilinear RoIAlign is separable: for one box, output bin ``(p, q)`` of channel ``c`` is
``sum_{y,x} Wy[p, y] * F[c, y, x] * Wx[q, x]``, where ``Wy`` (ph x H) and ``Wx`` (pw x W) hold
each axis' bilinear weights averaged over the bin's samples (torchvision's rules: samples
outside ``[-1, size]`` count as zero, coordinates clamp to the map's edge). The gradient of the
input is then ``Wy^T G[c] Wx`` per box, summed over the boxes of an image: two matrix products.
torchvision's CPU backward scatters every sample of every channel one by one; on the demo's
shapes the products take about a quarter of its time alone (mask pool, 2 x 40 x 40 per box;
box pool, 64 x 7 x 7) and half of it inside a training step. Where the feature map is large
and the samples per bin many (full-width VGG-16, sampling ratio 2) they are slower. The
gradient equals torchvision's up to float rounding (the sums run in another order).

The forward can run the same way, ``Wy[r] @ F[c] @ Wx[r]^T`` as two products per image and
channel (:func:`roi_align_matmul`). torchvision's CPU forward spends most of its time on the
per-sample positions and weights, shared by the channels: with the mask head's 2 channels and
40 x 40 bins the products are faster from ~50 boxes up, ~2x at 200 (every training
iteration, the first test iteration); with many channels (the box pooler's 64-512) or a few boxes
(the later test iterations' ~10) torchvision's is faster. Equal up to float rounding.

:class:`R2IOSROIAlign` is detectron2's :class:`~detectron2.layers.ROIAlign` with that
backward on CPU (``MODEL.R2IOS.CPU_ROI_ALIGN_GRAD`` "matmul"; "torchvision" keeps
torchvision's) and optionally that forward (``cpu_forward`` "matmul", for
``MATMUL_FORWARD_MIN_BOXES`` boxes or more; ``MODEL.R2IOS.CPU_MASK_POOL_FORWARD`` for the mask
head's pooler); :func:`set_cpu_roi_align_grad` and :func:`set_cpu_roi_align_forward` switch the
RoIAligns of a pooler.
:func:`pool_boxes` runs a pooler on per-image ``Boxes`` or on ready (R, 5) rows.
"""

from typing import Iterator, List, Optional, Tuple, Union

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_align as tv_roi_align

from .recursion import split_by_image

__all__ = [
    "CPU_ROI_ALIGN_FORWARDS",
    "CPU_ROI_ALIGN_GRADS",
    "MATMUL_FORWARD_MIN_BOXES",
    "R2IOSROIAlign",
    "pool_boxes",
    "roi_align_axis_weights",
    "roi_align_input_grad",
    "roi_align_matmul",
    "set_cpu_roi_align_forward",
    "set_cpu_roi_align_grad",
]

CPU_ROI_ALIGN_GRADS = ("matmul", "torchvision")
CPU_ROI_ALIGN_FORWARDS = ("matmul", "torchvision")
# Fewer boxes than this run torchvision's forward even with cpu_forward "matmul": the products'
# fixed cost (the weights, two small products per channel) is larger than its per-box cost
# there (mask pool, 2 x 40 x 40: 10 boxes 0.33 vs 0.72 ms; 64 boxes 1.85 vs 1.39 ms).
MATMUL_FORWARD_MIN_BOXES = 48

# Elements of the per-box intermediate of the backward computed at once (bounds its memory:
# 16M floats = 64 MiB, e.g. 230 boxes of full-width VGG-16 conv5 features at 7 x 7).
_CHUNK_ELEMENTS = 1 << 24


def _axis_weights(
    start: torch.Tensor, size: torch.Tensor, bins: int, grid: torch.Tensor, length: int
) -> torch.Tensor:
    """(R, bins, length) bilinear weights along one axis, summed over each bin's samples.

    Args:
        start, size: (R,) the box's start and extent on this axis, in feature-map cells.
        bins: output bins along the axis.
        grid: (R,) samples per bin along the axis (>= 0).
        length: the feature map's extent along the axis.
    """
    num = len(start)
    gmax = max(int(grid.max()), 1) if num else 1
    dtype = start.dtype
    bin_size = size / bins
    p = torch.arange(bins, dtype=dtype, device=start.device)
    i = torch.arange(gmax, dtype=dtype, device=start.device)
    g = grid.to(dtype).clamp(min=1)
    # Sample positions, as torchvision computes them: start + p * bin + (i + 0.5) * bin / grid.
    pos = (
        start[:, None, None]
        + p[None, :, None] * bin_size[:, None, None]
        + (i[None, None, :] + 0.5) * bin_size[:, None, None] / g[:, None, None]
    )
    valid = (i[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= length - 1
    low = low.clamp(max=length - 1)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(dtype))
    keep = valid.to(dtype)
    w = torch.zeros(num, bins, length, dtype=dtype, device=start.device)
    w.scatter_add_(2, low, (1 - frac) * keep)
    w.scatter_add_(2, high, frac * keep)
    return w


def roi_align_axis_weights(
    rois: torch.Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    height: int,
    width: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The separable form of RoIAlign: ``roi_align(x, rois)[r, c] == Wy[r] @ x[b_r, c] @
    Wx[r].T`` (up to float rounding) for ``b_r = rois[r, 0]``.

    Args:
        rois: (R, 5) ``(batch index, x1, y1, x2, y2)`` in input coordinates.
        output_size, spatial_scale, sampling_ratio, aligned: as for torchvision's
            ``roi_align`` (sampling_ratio <= 0: adaptive, ``ceil(box side / bins)``).
        height, width: the feature map's size.

    Returns:
        ``Wy`` (R, ph, height), already divided by the samples per bin, and ``Wx``
        (R, pw, width).
    """
    ph, pw = output_size
    rois = rois.to(torch.float32) if not rois.is_floating_point() else rois
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:  # legacy RoIAlign: boxes at least one cell wide
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gy = gx = torch.full((len(rois),), sampling_ratio, device=rois.device)
    else:
        gy, gx = torch.ceil(rh / ph).long(), torch.ceil(rw / pw).long()
    count = (gy * gx).clamp(min=1).to(rois.dtype)
    wy = _axis_weights(y1, rh, ph, gy, height) / count[:, None, None]
    return wy, _axis_weights(x1, rw, pw, gx, width)


def roi_align_input_grad(
    grad_output: torch.Tensor,
    rois: torch.Tensor,
    input_shape: Tuple[int, int, int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Gradient of RoIAlign's input, as matrix products.

    Args:
        grad_output: (R, C, ph, pw) gradient of the pooled features.
        rois: (R, 5) the boxes (batch index first), as given to the forward.
        input_shape: (N, C, H, W) of the pooled feature map.
        spatial_scale, sampling_ratio, aligned: the forward's.
        weights: :func:`roi_align_axis_weights` of these arguments if already computed
            (the product forward's), in ``grad_output``'s dtype.

    Returns:
        (N, C, H, W) gradient of the feature map.
    """
    n, c, h, w = input_shape
    num, _, ph, pw = grad_output.shape
    grad = grad_output.new_zeros(n, c, h, w)
    if num == 0:
        return grad
    wy, wx = weights or roi_align_axis_weights(
        rois.to(grad_output.dtype), (ph, pw), spatial_scale, sampling_ratio, aligned, h, w
    )
    batch = rois[:, 0].long()
    # Per box: U = Wy^T G (H x C*pw); per image: sum_r U_r Wx_r as one (C*H, R*pw) @ (R*pw, W).
    step = max(1, _CHUNK_ELEMENTS // (h * c * pw))
    for image, chunk, k in _image_chunks(batch, n, step):
        g = grad_output[chunk].permute(0, 2, 1, 3).reshape(k, ph, c * pw)
        u = torch.bmm(wy[chunk].transpose(1, 2), g)  # (k, H, C*pw)
        u = u.view(k, h, c, pw).permute(2, 1, 0, 3).reshape(c * h, k * pw)
        grad[image].view(c * h, w).addmm_(u, wx[chunk].reshape(k * pw, w))
    return grad


def _image_chunks(
    batch: torch.Tensor, num_images: int, step: int
) -> Iterator[Tuple[int, Union[slice, torch.Tensor], int]]:
    """``(image, rows, k)``: the rows of each image (batch index ``batch`` (R,)) in chunks of
    at most ``step``; ``rows`` indexes them (a full slice, without a gather, where one chunk
    is every row of the only image), ``k`` counts them. Images without rows yield nothing."""
    if num_images == 1 and len(batch) <= step:
        yield 0, slice(None), len(batch)
        return
    for image in range(num_images):
        for chunk in torch.nonzero(batch == image).squeeze(1).split(step):
            if len(chunk):
                yield image, chunk, len(chunk)


def roi_align_matmul(
    x: torch.Tensor,
    rois: torch.Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """RoIAlign's forward as matrix products: per image and channel, the map's columns
    against every box's ``Wx`` in one product, then a batched product with each box's
    ``Wy`` (:func:`roi_align_axis_weights`). Equals torchvision's ``roi_align`` up to float
    rounding.

    Args:
        x: (N, C, H, W) feature map.
        rois: (R, 5) ``(batch index, x1, y1, x2, y2)`` in input coordinates, in ``x``'s dtype.
        output_size, spatial_scale, sampling_ratio, aligned: as for torchvision's.
        weights: the ``(Wy, Wx)`` of these arguments if already computed.

    Returns:
        (R, C, ph, pw) pooled features.
    """
    n, c, h, w = x.shape
    ph, pw = output_size
    out = x.new_empty(len(rois), c, ph, pw)
    if len(rois) == 0:
        return out
    wy, wx = weights or roi_align_axis_weights(
        rois, output_size, spatial_scale, sampling_ratio, aligned, h, w
    )
    batch = rois[:, 0].long()
    step = max(1, _CHUNK_ELEMENTS // (h * pw))  # bounds the (k, H, pw) intermediate
    for image, chunk, k in _image_chunks(batch, n, step):
        wyc, cols = wy[chunk], wx[chunk].reshape(k * pw, w).t()
        for ch in range(c):
            u = (x[image, ch] @ cols).view(h, k, pw).transpose(0, 1)  # (k, H, pw)
            out[chunk, ch] = torch.bmm(wyc, u)
    return out


def _tv_input_grad(grad_output, rois, input_shape, spatial_scale, sampling_ratio, aligned):
    """torchvision's own RoIAlign backward."""
    n, c, h, w = input_shape
    ph, pw = grad_output.shape[-2:]
    return torch.ops.torchvision._roi_align_backward(
        grad_output, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned
    )


class _RoIAlignMatmul(torch.autograd.Function):
    """:func:`roi_align_matmul` with :func:`roi_align_input_grad` (``cpu_grad`` "matmul",
    on the forward's weights) or torchvision's backward."""

    @staticmethod
    def forward(ctx, x, rois, output_size, spatial_scale, sampling_ratio, aligned, cpu_grad):  # noqa: D102
        h, w = x.shape[-2:]
        weights = roi_align_axis_weights(
            rois, output_size, spatial_scale, sampling_ratio, aligned, h, w
        )
        ctx.save_for_backward(rois, *weights)
        ctx.args = (tuple(x.shape), spatial_scale, sampling_ratio, aligned)
        ctx.cpu_grad = cpu_grad
        return roi_align_matmul(
            x, rois, output_size, spatial_scale, sampling_ratio, aligned, weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        rois, wy, wx = ctx.saved_tensors
        g = grad_output.contiguous()
        if ctx.cpu_grad == "matmul":
            grad = roi_align_input_grad(g, rois, *ctx.args, weights=(wy, wx))
        else:
            grad = _tv_input_grad(g, rois, *ctx.args)
        return grad, None, None, None, None, None, None


class _RoIAlignMatmulGrad(torch.autograd.Function):
    """torchvision's RoIAlign forward with :func:`roi_align_input_grad` as its backward."""

    @staticmethod
    def forward(ctx, x, rois, output_size, spatial_scale, sampling_ratio, aligned):  # noqa: D102
        ctx.save_for_backward(rois)
        ctx.args = (tuple(x.shape), spatial_scale, sampling_ratio, aligned)
        return tv_roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        (rois,) = ctx.saved_tensors
        grad = roi_align_input_grad(grad_output.contiguous(), rois, *ctx.args)
        return grad, None, None, None, None, None


class R2IOSROIAlign(ROIAlign):
    """detectron2's ``ROIAlign`` whose input gradient on CPU is :func:`roi_align_input_grad`
    (``cpu_grad`` "matmul") or torchvision's own ("torchvision"), and whose CPU forward is
    :func:`roi_align_matmul` for :data:`MATMUL_FORWARD_MIN_BOXES` boxes or more
    (``cpu_forward`` "matmul") or torchvision's ("torchvision", the default). Anything off CPU
    or in another dtype than float32 / float64 is torchvision's."""

    def __init__(
        self, *args, cpu_grad: str = "matmul", cpu_forward: str = "torchvision", **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_grad = _check_choice("cpu_grad", cpu_grad, CPU_ROI_ALIGN_GRADS)
        self.cpu_forward = _check_choice("cpu_forward", cpu_forward, CPU_ROI_ALIGN_FORWARDS)

    @classmethod
    def from_roi_align(cls, layer: ROIAlign, **modes: str) -> "R2IOSROIAlign":
        """The same RoIAlign (size, scale, sampling, alignment) with ``modes``
        (``cpu_grad``, ``cpu_forward``)."""
        return cls(
            layer.output_size,
            layer.spatial_scale,
            layer.sampling_ratio,
            aligned=layer.aligned,
            **modes,
        )

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Args: input (N, C, H, W); rois (R, 5). Returns: (R, C, ph, pw)."""
        on_cpu = input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)
        grad = input.requires_grad and torch.is_grad_enabled()
        products = self.cpu_forward == "matmul" and len(rois) >= MATMUL_FORWARD_MIN_BOXES
        if not on_cpu or not (products or (grad and self.cpu_grad == "matmul")):
            return super().forward(input, rois)
        if rois.dim() != 2 or rois.size(1) != 5:
            raise ValueError(f"rois must be (R, 5), got {tuple(rois.shape)}")
        args = (rois.to(dtype=input.dtype), self.output_size, self.spatial_scale)
        args += (self.sampling_ratio, self.aligned)
        if products:
            return _RoIAlignMatmul.apply(input, *args, self.cpu_grad)
        return _RoIAlignMatmulGrad.apply(input, *args)

    def __repr__(self) -> str:
        modes = f"cpu_grad={self.cpu_grad}, cpu_forward={self.cpu_forward}"
        return f"{super().__repr__()[:-1]}, {modes})"


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _set_modes(pooler: ROIPooler, **modes: str) -> ROIPooler:
    """Set ``modes`` on every RoIAlign level of ``pooler``: a detectron2 ``ROIAlign`` becomes
    an :class:`R2IOSROIAlign` with them, torchvision's in the modes not given; other pooler
    types are left as they are."""
    levels: nn.ModuleList = pooler.level_poolers
    for i, layer in enumerate(levels):
        if isinstance(layer, R2IOSROIAlign):
            for name, value in modes.items():
                setattr(layer, name, value)
        elif type(layer) is ROIAlign:
            as_is = {"cpu_grad": "torchvision", "cpu_forward": "torchvision"}
            levels[i] = R2IOSROIAlign.from_roi_align(layer, **{**as_is, **modes})
    return pooler


def set_cpu_roi_align_grad(pooler: ROIPooler, cpu_grad: str) -> ROIPooler:
    """Give every RoIAlign level of ``pooler`` the CPU backward ``cpu_grad`` (one of
    :data:`CPU_ROI_ALIGN_GRADS`); other pooler types (RoIPool, rotated) are left as they are.

    Returns:
        the same pooler, changed in place.
    """
    return _set_modes(pooler, cpu_grad=_check_choice("cpu_grad", cpu_grad, CPU_ROI_ALIGN_GRADS))


def set_cpu_roi_align_forward(pooler: ROIPooler, cpu_forward: str) -> ROIPooler:
    """Give every RoIAlign level of ``pooler`` the CPU forward ``cpu_forward`` (one of
    :data:`CPU_ROI_ALIGN_FORWARDS`; "matmul" pays from ~50 boxes with few channels, see the
    module docstring); other pooler types are left as they are.

    Returns:
        the same pooler, changed in place.
    """
    forward = _check_choice("cpu_forward", cpu_forward, CPU_ROI_ALIGN_FORWARDS)
    return _set_modes(pooler, cpu_forward=forward)


def pool_boxes(
    pooler: ROIPooler, features: List[torch.Tensor], boxes: Union[List[Boxes], torch.Tensor]
) -> torch.Tensor:
    """``pooler(features, boxes)``, where ``boxes`` may also be the pooler's own (R, 5) format
    ``(batch index, x1, y1, x2, y2)`` with the rows in image order: a one-level pooler then
    pools them as they are (what ``ROIPooler`` does after converting per-image ``Boxes``,
    without the conversion), a multi-level one gets them back as per-image ``Boxes``.

    Args:
        pooler: an ``ROIPooler``.
        features: one (N, C, H_l, W_l) map per pooler level.
        boxes: N ``Boxes``, or (R, 5) rows.

    Returns:
        (R, C, ph, pw) pooled features, in the order of the boxes.
    """
    if not isinstance(boxes, torch.Tensor):
        return pooler(features, boxes)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], boxes)
    return pooler(features, split_by_image(boxes[:, 1:], boxes[:, 0].long(), len(features[0])))
