"""Segmentation sub-network heads of R2-IOS: confidence maps and the instance-aware autoencoder.

The paper pools 40x40 features per box, scores them with 1x1 convs into 2-channel confidence
maps ``C`` and maps ``vec(C)`` through an autoencoder to the dominant-instance mask ``v``.
The 1x1 scoring conv is linear and RoIAlign is a (bilinear) linear average, so they commute:
these heads score the whole feature map once per image and pool 40x40 from the 2-channel map
("score first, pool after", DESIGN 2.2). Identical inside the image, ~C_in/2 times less memory
and compute per box, and the scored map is reused by every recursive iteration.

Three heads share that base (:class:`R2IOSMaskHead`) and differ in how ``v`` comes from ``C``
(Table 2 of the paper); each is registered in ``ROI_MASK_HEAD_REGISTRY`` and chosen by
``MODEL.ROI_MASK_HEAD.NAME``:

- ``InstanceAwareAEMaskHead``: ``v = ae_fc2(relu(ae_fc1(vec(C))))``, a bottleneck of
  ``ae_hidden_dim`` (the paper's R2-IOS);
- ``R2IOSConvMaskHead``: ``v = C`` ("w/o autoencoder");
- ``R2IOSFCMaskHead``: ``v = fc2(relu(fc1(vec(C))))`` with two ``2*M*M`` wide layers ("fully
  w/o autoencoder", no bottleneck).

Every use of ``v`` but the paper-literal seg-aware input (raw logits) depends on ``v`` only
through the foreground-minus-background logit ``d = v[1] - v[0]`` (M x M): the 2-class softmax
is ``sigmoid(d)``, the 2-class pixel cross-entropy is the binary one on ``d``. A head's last
linear layer gives ``d`` directly from the difference of its two channels' weight rows
(:meth:`R2IOSMaskHead.foreground_logits`): the same function and the same gradients for every
parameter, for half of that layer's cost (a quarter of the autoencoder's).
"""

import contextlib
import functools
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn
from torch.nn import functional as F

from .linear import derived_weights, linear_like
from .roi_align import pool_boxes

__all__ = [
    "InstanceAwareAEMaskHead",
    "R2IOSConvMaskHead",
    "R2IOSFCMaskHead",
    "R2IOSMaskHead",
    "foreground_logits",
    "r2ios_mask_head_names",
]

logger = logging.getLogger(__name__)


def r2ios_mask_head_names() -> List[str]:
    """Names of the registered R2-IOS mask heads (the values ``MODEL.ROI_MASK_HEAD.NAME``
    may take with ``R2IOSROIHeads``), sorted."""
    return sorted(
        name
        for name, obj in ROI_MASK_HEAD_REGISTRY
        if isinstance(obj, type) and issubclass(obj, R2IOSMaskHead)
    )


def foreground_logits(mask_logits: torch.Tensor) -> torch.Tensor:
    """The foreground-minus-background logit ``d = v[:, 1] - v[:, 0]`` of mask logits.

    Args:
        mask_logits: (R, 2, M, M) logits ``v``, or (R, M, M) ``d`` already (returned as is).

    Returns:
        (R, M, M) ``d``; ``softmax(v, dim=1)[:, 1] == sigmoid(d)``.
    """
    if mask_logits.dim() == 3:
        return mask_logits
    return mask_logits[:, 1] - mask_logits[:, 0]


class _HalfDifference(torch.autograd.Function):
    """``x[n:] - x[:n]`` along dim 0 for ``2n`` rows, whose backward writes ``(-g, g)`` in one
    pass (autograd's own would zero-fill two full-size gradients and add them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        n = x.shape[0] // 2
        return x[n:] - x[:n]

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.cat([-g, g])


class _BinaryCrossEntropyWithLogits(torch.autograd.Function):
    """Element-wise ``-y log sigmoid(d) - (1 - y) log sigmoid(-d)`` as ``max(d, 0) - d y +
    log(1 + exp(-|d|))``, with the gradient ``sigmoid(d) - y`` in ``d`` (targets get none).
    ``F.binary_cross_entropy_with_logits``'s function; on CPU its ``log1p`` is not
    vectorised and took ~2.5x as long forward and backward (102k pixels: 1.6 vs 0.64 ms).
    Absolute difference below 1.2e-7 per pixel (``log(1 + e)`` for ``log1p(e)``)."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(d, y)
        return d.clamp(min=0) - d * y + torch.log(1 + torch.exp(-d.abs()))

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> Tuple[torch.Tensor, None]:  # noqa: D102
        d, y = ctx.saved_tensors
        return g * (torch.sigmoid(d) - y), None


def _channel_difference(layer: nn.Linear, plane: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``x -> layer(x)[plane:] - layer(x)[:plane]`` for a linear layer with
    2 * plane outputs (channel 0 rows first, as ``vec`` of a (2, M, M) map lays them out);
    differentiable in the layer's parameters (autograd gives them the gradients they would get
    through the full layer followed by the difference)."""
    w, b = layer.weight, layer.bias
    if w.shape[0] != 2 * plane:
        raise ValueError(f"Expected a layer with {2 * plane} outputs, got {w.shape[0]}")
    return _HalfDifference.apply(w), _HalfDifference.apply(b)


def _two_fc(
    c: torch.Tensor,
    fc1: nn.Linear,
    fc2: nn.Linear,
    difference: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """``fc2(relu(fc1(vec(C))))`` as (R, 2, M, M) ``v``, or, given ``difference`` (the weight
    and bias of :func:`_channel_difference` of ``fc2``), its (R, M, M) ``d = v[:, 1] -
    v[:, 0]`` from them (half of ``fc2``)."""
    h = F.relu(fc1(c.flatten(1)))
    if difference is None:
        return fc2(h).view_as(c)
    return linear_like(fc2, h, *difference).view_as(c[:, 0])


class R2IOSMaskHead(nn.Module):
    """Base of the R2-IOS mask heads: the 1x1 scoring conv, the M x M pooler of the scored
    maps (``C``, 2 x M x M) and the mask logits ``v`` = :meth:`layers` (``C``) (2 x M x M;
    channel 0 = background, 1 = dominant foreground instance).

    Subclasses create their layers after ``super().__init__`` and then call
    :meth:`_init_weights`.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        mask_size: int = 40,
        pooler_sampling_ratio: int = 2,
        pooler_type: str = "ROIAlignV2",
    ):
        """
        Args:
            input_shape: ShapeSpec (channels, stride) of every feature map in ``in_features``.
            in_features: names of the feature maps to score and pool (one, or an FPN pyramid,
                in which case the pooler assigns each box to a level).
            mask_size: M, side of the confidence maps and masks.
            pooler_sampling_ratio: RoIAlign sampling ratio (0 = adaptive).
            pooler_type: a :class:`ROIPooler` type; must be a bilinear one ("ROIAlign",
                "ROIAlignV2") for scoring before pooling to be exact.
        """
        super().__init__()
        if pooler_type not in ("ROIAlign", "ROIAlignV2"):
            # Max pooling does not commute with the 1x1 conv: scoring first would change it.
            raise ValueError(f"Score-then-pool needs a bilinear pooler, got {pooler_type!r}")
        if mask_size < 1:
            raise ValueError(f"mask_size must be >= 1, got {mask_size}")
        self.in_features = list(in_features)
        missing = [f for f in self.in_features if f not in input_shape]
        if not self.in_features or missing:
            raise ValueError(
                f"Mask in_features {self.in_features} must be non-empty backbone outputs "
                f"({sorted(input_shape)})"
            )
        channels = {input_shape[f].channels for f in self.in_features}
        if len(channels) != 1:
            raise ValueError(f"Mask in_features must share a channel count, got {channels}")
        self.mask_size = mask_size
        self._derived: Optional[Dict[Tuple[int, bool], Tuple[torch.Tensor, torch.Tensor]]] = None
        self.score = nn.Conv2d(channels.pop(), 2, kernel_size=1)
        self.pooler = ROIPooler(
            output_size=mask_size,
            scales=tuple(1.0 / input_shape[f].stride for f in self.in_features),
            sampling_ratio=pooler_sampling_ratio,
            pooler_type=pooler_type,
        )

    @contextlib.contextmanager
    def reusing_derived_weights(self) -> Iterator[None]:
        """Inside, weights derived from the parameters (the channel difference of the last
        layer, :meth:`foreground_logits`) are computed once and shared by every call: the T
        recursive iterations of one forward pass, whose backward then runs through the
        derivation once. The parameters must not change inside. Re-entrant."""
        if self._derived is not None:
            yield
            return
        self._derived = {}
        try:
            yield
        finally:
            self._derived = None

    def _difference(self, layer: nn.Linear) -> Tuple[torch.Tensor, torch.Tensor]:
        """:func:`_channel_difference` of ``layer`` (one of this head's M x M x 2-output
        layers), from the cache inside :meth:`reusing_derived_weights`; without autograd,
        made once while the parameters are unchanged (:func:`.linear.derived_weights`)."""
        derive = functools.partial(_channel_difference, layer, self.mask_size**2)
        if self._derived is None:
            return derived_weights(layer, "channel_difference", derive)
        key = (id(layer), torch.is_grad_enabled())  # no graph-less copy where autograd runs
        if key not in self._derived:
            self._derived[key] = derived_weights(layer, "channel_difference", derive)
        return self._derived[key]

    def _init_weights(self, init_std: float) -> None:
        """Normal init of every conv/linear weight with std ``init_std``; biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.constant_(m.bias, 0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        r = cfg.MODEL.R2IOS
        in_features = [f for f in r.MASK_IN_FEATURES if f in input_shape]
        if len(in_features) != len(r.MASK_IN_FEATURES):
            # Lets a Mask R-CNN config switch to R2IOSROIHeads by the heads' names alone.
            in_features = [f for f in cfg.MODEL.ROI_HEADS.IN_FEATURES if f in input_shape]
            logger.warning(
                "MODEL.R2IOS.MASK_IN_FEATURES %s are not all backbone outputs %s; the mask "
                "head uses MODEL.ROI_HEADS.IN_FEATURES %s instead.",
                list(r.MASK_IN_FEATURES),
                sorted(input_shape),
                in_features,
            )
        return {
            "input_shape": input_shape,
            "in_features": in_features,
            "mask_size": r.MASK_SIZE,
            "pooler_sampling_ratio": r.MASK_POOLER_SAMPLING_RATIO,
            "init_std": r.MASK_INIT_STD,
        }

    @property
    def output_dim(self) -> int:
        """Length of the flattened mask logits ``vec(v)`` (2 * M * M)."""
        return 2 * self.mask_size * self.mask_size

    def score_maps(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """Score whole feature maps into 2-channel confidence maps (once per image batch).

        Args:
            features: backbone outputs; ``self.in_features`` are used, each (N, C, H_l, W_l).

        Returns:
            list of (N, 2, H_l, W_l), one per in_feature.
        """
        return [self.score(features[f]) for f in self.in_features]

    def forward(
        self,
        scored: List[torch.Tensor],
        boxes: Union[List[Boxes], torch.Tensor],
        confidence_maps: Optional[List[torch.Tensor]] = None,
        foreground_only: bool = False,
        grad_rows: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mask logits ``v`` of every box.

        Args:
            scored: output of :meth:`score_maps`.
            boxes: one ``Boxes`` per image (R_i boxes, input-image coordinates), or (R, 5)
                rows ``(image index, x1, y1, x2, y2)`` in image order (:func:`pool_boxes`).
            confidence_maps: if a list is given, the pooled confidence maps ``C``
                (R, 2, M, M) are appended to it (for the auxiliary loss and inspection).
            foreground_only: return ``d = v[:, 1] - v[:, 0]`` instead of ``v``, computed
                without the two channels where the head allows it (see
                :meth:`foreground_logits`).
            grad_rows: (R,) bool, the rows whose outputs need gradients (with autograd on);
                the others are computed without autograd, so the backward pass (pooling and
                layers) runs on the first ones only. Same values. None = all.

        Returns:
            (R, 2, M, M) logits ``v`` (R = sum R_i, images in order; channel 1 =
            foreground), or (R, M, M) ``d`` with ``foreground_only``.
        """
        if grad_rows is not None and torch.is_grad_enabled() and not bool(grad_rows.all()):
            return self._forward_split(scored, boxes, confidence_maps, foreground_only, grad_rows)
        c = pool_boxes(self.pooler, scored, boxes)
        if confidence_maps is not None:
            confidence_maps.append(c)
        return self.layers_foreground(c) if foreground_only else self.layers(c)

    def _forward_split(
        self,
        scored: List[torch.Tensor],
        boxes: Union[List[Boxes], torch.Tensor],
        confidence_maps: Optional[List[torch.Tensor]],
        foreground_only: bool,
        grad_rows: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`forward` with autograd on the ``grad_rows`` only (see there)."""
        if isinstance(boxes, torch.Tensor):
            parts = (boxes[grad_rows], boxes[~grad_rows])
        else:
            per_image = grad_rows.split([len(b) for b in boxes])
            parts = tuple(
                [Boxes(b.tensor[m if grad else ~m]) for b, m in zip(boxes, per_image)]
                for grad in (True, False)
            )
        outputs, maps = [], []
        for grad, part in zip((True, False), parts):
            with torch.set_grad_enabled(grad):
                conf: Optional[List[torch.Tensor]] = [] if confidence_maps is not None else None
                outputs.append(self(scored, part, conf, foreground_only))
                maps += conf or []
        # Rows back into their order: grad rows first in the concatenation, then the others.
        order = torch.cat([torch.nonzero(grad_rows), torch.nonzero(~grad_rows)]).squeeze(1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        if confidence_maps is not None:
            confidence_maps.append(torch.cat(maps)[inverse])
        return torch.cat(outputs)[inverse]

    def foreground_logits(
        self,
        scored: List[torch.Tensor],
        boxes: Union[List[Boxes], torch.Tensor],
        confidence_maps: Optional[List[torch.Tensor]] = None,
        grad_rows: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The foreground-minus-background logits ``d = v[:, 1] - v[:, 0]`` of every box,
        equal to :func:`foreground_logits` of the output of :meth:`forward` (same arguments):
        the same function, with the same gradients, for less compute.

        Returns:
            (R, M, M) ``d``.
        """
        return self(scored, boxes, confidence_maps, foreground_only=True, grad_rows=grad_rows)

    def layers(self, c: torch.Tensor) -> torch.Tensor:
        """``v`` from the pooled confidence maps ``C``, both (R, 2, M, M)."""
        raise NotImplementedError

    def layers_foreground(self, c: torch.Tensor) -> torch.Tensor:
        """``d = v[:, 1] - v[:, 0]`` (R, M, M) from ``C`` (R, 2, M, M); by default from
        :meth:`layers`."""
        return foreground_logits(self.layers(c))

    @staticmethod
    def per_roi_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel-wise 2-class cross-entropy, averaged over the pixels of each RoI.

        Args:
            logits: (R, 2, M, M) mask logits ``v``, or their (R, M, M) foreground-minus-
                background logits ``d`` (the loss is the binary cross-entropy on ``d``:
                the same value).
            targets: (R, M, M) bool or {0, 1} dominant-instance masks in the same frame.

        Returns:
            (R,) loss of each RoI.
        """
        if logits.numel() == 0:
            return logits.new_zeros((logits.shape[0],))
        d = foreground_logits(logits)
        return _BinaryCrossEntropyWithLogits.apply(d, targets.to(d.dtype)).mean(dim=(1, 2))

    @staticmethod
    def foreground_probs(logits: torch.Tensor) -> torch.Tensor:
        """Softmax foreground probability of mask logits.

        Args:
            logits: (R, 2, M, M) ``v``, or (R, M, M) ``d = v[:, 1] - v[:, 0]``.

        Returns:
            (R, M, M) probabilities of channel 1 (``sigmoid(d)``).
        """
        return torch.sigmoid(foreground_logits(logits))


@ROI_MASK_HEAD_REGISTRY.register()
class InstanceAwareAEMaskHead(R2IOSMaskHead):
    """The paper's head: the instance-aware denoising autoencoder
    ``v = ae_fc2(relu(ae_fc1(vec(C))))`` (2*M*M -> ``ae_hidden_dim`` -> 2*M*M); with
    ``residual`` (not in the paper) ``v = C + ae_fc2(relu(ae_fc1(vec(C))))``."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        ae_hidden_dim: int = 512,
        init_std: float = 0.001,
        residual: bool = False,
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as :class:`R2IOSMaskHead`.
            ae_hidden_dim: bottleneck width of the autoencoder (paper: 512).
            init_std: std of the normal init of every weight (biases 0; paper: 0.001).
            residual: the autoencoder's output is added to ``C`` (``MODEL.R2IOS.AE_RESIDUAL``):
                it learns the correction that removes the distracting instances from the
                confidence maps, starting from ``v = C`` (its weights start near 0) instead
                of from ``v = 0``.
        """
        # By keyword: a LazyConfig may pass input_shape as a DictConfig, which @configurable
        # would take for a config if it came first.
        super().__init__(input_shape=input_shape, **kwargs)
        if ae_hidden_dim < 1:
            raise ValueError(f"ae_hidden_dim must be >= 1, got {ae_hidden_dim}")
        self.residual = bool(residual)
        self.ae_fc1 = nn.Linear(self.output_dim, ae_hidden_dim)
        self.ae_fc2 = nn.Linear(ae_hidden_dim, self.output_dim)
        self._init_weights(init_std)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        return {
            **super().from_config(cfg, input_shape),
            "ae_hidden_dim": cfg.MODEL.R2IOS.AE_HIDDEN_DIM,
            "residual": cfg.MODEL.R2IOS.AE_RESIDUAL,
        }

    def layers(self, c: torch.Tensor) -> torch.Tensor:
        v = _two_fc(c, self.ae_fc1, self.ae_fc2)
        return c + v if self.residual else v

    def layers_foreground(self, c: torch.Tensor) -> torch.Tensor:
        d = _two_fc(c, self.ae_fc1, self.ae_fc2, self._difference(self.ae_fc2))
        return d + foreground_logits(c) if self.residual else d


@ROI_MASK_HEAD_REGISTRY.register()
class R2IOSConvMaskHead(R2IOSMaskHead):
    """ "w/o autoencoder" (Table 2): the mask logits are the confidence maps, ``v = C``."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, init_std: float = 0.001, **kwargs):
        """
        Args:
            input_shape, kwargs: as :class:`R2IOSMaskHead`.
            init_std: std of the normal init of the scoring conv (bias 0).
        """
        super().__init__(input_shape=input_shape, **kwargs)
        self._init_weights(init_std)

    def layers(self, c: torch.Tensor) -> torch.Tensor:
        return c


@ROI_MASK_HEAD_REGISTRY.register()
class R2IOSFCMaskHead(R2IOSMaskHead):
    """ "fully w/o autoencoder" (Table 2): two fully connected 2*M*M layers, no bottleneck,
    ``v = fc2(relu(fc1(vec(C))))``."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, init_std: float = 0.001, **kwargs):
        """
        Args:
            input_shape, kwargs: as :class:`R2IOSMaskHead`.
            init_std: std of the normal init of every weight (biases 0).
        """
        super().__init__(input_shape=input_shape, **kwargs)
        self.fc1 = nn.Linear(self.output_dim, self.output_dim)
        self.fc2 = nn.Linear(self.output_dim, self.output_dim)
        self._init_weights(init_std)

    def layers(self, c: torch.Tensor) -> torch.Tensor:
        return _two_fc(c, self.fc1, self.fc2)

    def layers_foreground(self, c: torch.Tensor) -> torch.Tensor:
        return _two_fc(c, self.fc1, self.fc2, self._difference(self.fc2))
