"""RoIAlign whose CPU backward runs as matrix products.

Bilinear RoIAlign is separable: for one box, output bin ``(p, q)`` of channel ``c`` is
``sum_{y,x} Wy[p, y] * F[c, y, x] * Wx[q, x]``, where ``Wy`` (ph x H) and ``Wx`` (pw x W) hold
each axis' bilinear weights averaged over the bin's samples (torchvision's rules: samples
outside ``[-1, size]`` count as zero, coordinates clamp to the map's edge). The gradient of the
input is then ``Wy^T G[c] Wx`` per box, summed over the boxes of an image: two matrix products.
torchvision's CPU backward scatters every sample of every channel one by one; on the demo's
shapes the products take about a quarter of its time alone (mask pool, 2 x 40 x 40 per box;
box pool, 64 x 7 x 7) and half of it inside a training step. Where the feature map is large
and the samples per bin many (full-width VGG-16, sampling ratio 2) they are slower. The
forward stays torchvision's (the values are its own); the gradient equals torchvision's up to
float rounding (the sums run in another order).

:class:`R2IOSROIAlign` is detectron2's :class:`~detectron2.layers.ROIAlign` with that
backward on CPU (``MODEL.R2IOS.CPU_ROI_ALIGN_GRAD`` "matmul"; "torchvision" keeps
torchvision's); :func:`set_cpu_roi_align_grad` switches the RoIAligns of a pooler.
:func:`pool_boxes` runs a pooler on per-image ``Boxes`` or on ready (R, 5) rows.
"""

from typing import List, Tuple, Union

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_align as tv_roi_align

from .recursion import split_by_image

__all__ = [
    "CPU_ROI_ALIGN_GRADS",
    "R2IOSROIAlign",
    "pool_boxes",
    "roi_align_axis_weights",
    "roi_align_input_grad",
    "set_cpu_roi_align_grad",
]

CPU_ROI_ALIGN_GRADS = ("matmul", "torchvision")

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
) -> torch.Tensor:
    """Gradient of RoIAlign's input, as matrix products.

    Args:
        grad_output: (R, C, ph, pw) gradient of the pooled features.
        rois: (R, 5) the boxes (batch index first), as given to the forward.
        input_shape: (N, C, H, W) of the pooled feature map.
        spatial_scale, sampling_ratio, aligned: the forward's.

    Returns:
        (N, C, H, W) gradient of the feature map.
    """
    n, c, h, w = input_shape
    num, _, ph, pw = grad_output.shape
    grad = grad_output.new_zeros(n, c, h, w)
    if num == 0:
        return grad
    wy, wx = roi_align_axis_weights(
        rois.to(grad_output.dtype), (ph, pw), spatial_scale, sampling_ratio, aligned, h, w
    )
    batch = rois[:, 0].long()
    # Per box: U = Wy^T G (H x C*pw); per image: sum_r U_r Wx_r as one (C*H, R*pw) @ (R*pw, W).
    step = max(1, _CHUNK_ELEMENTS // (h * c * pw))
    for image in range(n):
        rows = torch.nonzero(batch == image).squeeze(1)
        out = grad[image].view(c * h, w)
        for chunk in rows.split(step):
            k = len(chunk)
            g = grad_output[chunk].permute(0, 2, 1, 3).reshape(k, ph, c * pw)
            u = torch.bmm(wy[chunk].transpose(1, 2), g)  # (k, H, C*pw)
            u = u.view(k, h, c, pw).permute(2, 1, 0, 3).reshape(c * h, k * pw)
            out.addmm_(u, wx[chunk].reshape(k * pw, w))
    return grad


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
    (``cpu_grad`` "matmul") or torchvision's own ("torchvision"). The forward, and anything
    off CPU or in another dtype than float32 / float64, is torchvision's."""

    def __init__(self, *args, cpu_grad: str = "matmul", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_grad = _check_grad(cpu_grad)

    @classmethod
    def from_roi_align(cls, layer: ROIAlign, cpu_grad: str) -> "R2IOSROIAlign":
        """The same RoIAlign (size, scale, sampling, alignment) with ``cpu_grad``."""
        return cls(
            layer.output_size,
            layer.spatial_scale,
            layer.sampling_ratio,
            aligned=layer.aligned,
            cpu_grad=cpu_grad,
        )

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Args: input (N, C, H, W); rois (R, 5). Returns: (R, C, ph, pw)."""
        matmul = (
            self.cpu_grad == "matmul"
            and input.device.type == "cpu"
            and input.dtype in (torch.float32, torch.float64)  # torchvision's CPU dtypes
            and input.requires_grad
            and torch.is_grad_enabled()
        )
        if not matmul:
            return super().forward(input, rois)
        if rois.dim() != 2 or rois.size(1) != 5:
            raise ValueError(f"rois must be (R, 5), got {tuple(rois.shape)}")
        return _RoIAlignMatmulGrad.apply(
            input,
            rois.to(dtype=input.dtype),
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, cpu_grad={self.cpu_grad})"


def _check_grad(cpu_grad: str) -> str:
    if cpu_grad not in CPU_ROI_ALIGN_GRADS:
        raise ValueError(f"cpu_grad must be one of {CPU_ROI_ALIGN_GRADS}, got {cpu_grad!r}")
    return cpu_grad


def set_cpu_roi_align_grad(pooler: ROIPooler, cpu_grad: str) -> ROIPooler:
    """Give every RoIAlign level of ``pooler`` the CPU backward ``cpu_grad`` (one of
    :data:`CPU_ROI_ALIGN_GRADS`); other pooler types (RoIPool, rotated) are left as they are.

    Returns:
        the same pooler, changed in place.
    """
    _check_grad(cpu_grad)
    levels: nn.ModuleList = pooler.level_poolers
    for i, layer in enumerate(levels):
        if isinstance(layer, R2IOSROIAlign):
            layer.cpu_grad = cpu_grad
        elif type(layer) is ROIAlign:
            levels[i] = R2IOSROIAlign.from_roi_align(layer, cpu_grad)
    return pooler


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
