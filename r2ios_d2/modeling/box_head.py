"""Refinement sub-network predictor of R2-IOS: the segmentation-aware Fast R-CNN outputs.

The box head itself is detectron2's ``FastRCNNConvFCHead`` (``fc1`` / ``fc2`` = VGG fc6 / fc7
on 7x7 pooled ``det`` features), or :class:`VGGDropoutFCHead`, the same layers with dropout
after each fc ReLU as in Fast R-CNN's VGG-16 (``ROI_BOX_HEAD.NAME: "VGGDropoutFCHead"``).
This predictor classifies and regresses from the segmentation-aware feature
``concat(fc7, vec(v))`` (Sec. 3.2 of the paper), reusing detectron2's ``FastRCNNOutputLayers``
for the layers, the box transform and the losses. With the (default) probabilities as the
seg part it needs only ``d = v[1] - v[0]`` (see :mod:`.mask_head`).
"""

from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    build_box_head,
)
from torch import nn
from torch.nn import functional as F

from .linear import derived_weights, linear_like
from .mask_head import foreground_logits

__all__ = [
    "SEG_AWARE_INPUTS",
    "SegAwareFastRCNNOutputLayers",
    "VGGDropoutFCHead",
    "build_r2ios_box_head",
    "scale_grad",
]

SEG_AWARE_INPUTS = ("logits", "probs")


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass
    (``scale`` 0 = ``x.detach()``, 1 = ``x``).
    """
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


class SegAwareFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``cls_score`` (K+1) and ``bbox_pred`` (4K, class-specific) on ``concat(fc7, vec(v))``.

    With ``seg_aware=False`` it is a plain :class:`FastRCNNOutputLayers` on fc7 (the
    "w/o seg-aware" ablation), except for the init stds.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        seg_aware: bool = True,
        mask_dim: int = 3200,
        seg_input: str = "probs",
        seg_grad_scale: float = 0.0,
        seg_scale: float = 0.05,
        cls_init_std: float = 0.01,
        box_init_std: float = 0.001,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the box head output (fc7), e.g. ``ShapeSpec(channels=4096)``.
            seg_aware: concatenate the flattened mask logits ``v`` to fc7.
            mask_dim: length of ``vec(v)`` (2 * MASK_SIZE**2).
            seg_input: ``"logits"`` (raw ``v``, the paper's text) or ``"probs"`` (the
                per-pixel softmax of ``v`` over its 2 channels minus 0.5: bounded, zero where
                the mask is undecided, same length).
            seg_scale: factor on the seg-aware part of the feature. ``vec(v)`` has 3200
                strongly correlated entries: with Adam-type optimisers (per-weight steps of
                ~lr) the predictor's output moves ~lr * ||vec(v)||_1 per step, 10x more than
                through fc7, which destabilises the box regression unless scaled down.
            seg_grad_scale: factor on the gradient that this predictor's losses send into
                ``v`` (1 = joint, the paper; 0 = detached). Measured on the demo with raw
                logits and factor 1, the classification loss sends the segmentation branch
                38x more gradient than the mask loss (iteration 80), in directions unrelated
                to masks.
            cls_init_std, box_init_std: std of the normal init of ``cls_score`` and
                ``bbox_pred`` weights (biases 0).
            kwargs: the arguments of :class:`FastRCNNOutputLayers` (``box2box_transform``,
                ``num_classes``, loss settings, ...).
        """
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        fc_dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        in_dim = fc_dim + (mask_dim if seg_aware else 0)
        super().__init__(ShapeSpec(channels=in_dim), **kwargs)
        if seg_input not in SEG_AWARE_INPUTS:
            raise ValueError(f"seg_input must be one of {SEG_AWARE_INPUTS}, got {seg_input!r}")
        if seg_grad_scale < 0:
            raise ValueError(f"seg_grad_scale must be >= 0, got {seg_grad_scale}")
        self.seg_aware = seg_aware
        self.mask_dim = mask_dim
        self.seg_input = seg_input
        self.seg_grad_scale = float(seg_grad_scale)
        self.seg_scale = float(seg_scale)
        nn.init.normal_(self.cls_score.weight, std=cls_init_std)
        nn.init.normal_(self.bbox_pred.weight, std=box_init_std)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        r = cfg.MODEL.R2IOS
        ret.update(
            seg_aware=r.SEG_AWARE,
            mask_dim=2 * r.MASK_SIZE * r.MASK_SIZE,
            seg_input=r.SEG_AWARE_INPUT,
            seg_grad_scale=r.SEG_AWARE_GRAD_SCALE,
            seg_scale=r.SEG_AWARE_SCALE,
            cls_init_std=r.CLS_INIT_STD,
            box_init_std=r.BOX_INIT_STD,
        )
        return ret

    @property
    def needs_mask_channels(self) -> bool:
        """Whether :meth:`forward` needs both channels of ``v`` (the raw-logits seg-aware
        input); otherwise ``d = v[:, 1] - v[:, 0]`` is enough."""
        return self.seg_aware and self.seg_input == "logits"

    def forward(
        self,
        x: torch.Tensor,
        mask_logits: Optional[torch.Tensor] = None,
        mask_probs: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (R, D) box head features (fc7), or (R, ...) flattened.
            mask_logits: mask logits of the same boxes, (R, 2, M, M) ``v`` or, unless
                :attr:`needs_mask_channels`, (R, M, M) ``d = v[:, 1] - v[:, 0]``; required
                when ``seg_aware``, ignored otherwise.
            mask_probs: (R, M, M) ``sigmoid(d)`` (the foreground probabilities) if the caller
                has them (inference, where they are also the output masks); used only with
                ``seg_input`` "probs" and without autograd (it bypasses the gradient scale).

        Returns:
            (R, K+1) class logits and (R, 4K) (or (R, 4) class-agnostic) box deltas.
        """
        x = torch.flatten(x, start_dim=1)
        if not self.seg_aware:
            return super().forward(x)
        if mask_logits is None:
            raise ValueError("A seg-aware predictor needs the mask logits v")
        if self.seg_input == "logits":
            if mask_logits.dim() != 4:
                raise ValueError("seg_input 'logits' needs both channels of v, (R, 2, M, M)")
            v = scale_grad(mask_logits, self.seg_grad_scale)
            return super().forward(torch.cat([x, v.flatten(1) * self.seg_scale], dim=1))
        # probs: softmax(v) - 0.5 is (-q, q) with q = sigmoid(d) - 0.5, so the two channels'
        # weight columns act as their difference on q (the same function and gradients).
        if mask_probs is not None and not torch.is_grad_enabled():
            p = mask_probs
        else:
            p = torch.sigmoid(scale_grad(foreground_logits(mask_logits), self.seg_grad_scale))
        q = (p - 0.5).flatten(1) * self.seg_scale
        feats = torch.cat([x, q], dim=1)
        return self._seg_linear(self.cls_score, feats), self._seg_linear(self.bbox_pred, feats)

    def _seg_linear(self, layer: nn.Linear, feats: torch.Tensor) -> torch.Tensor:
        """``layer`` on ``concat(fc7, vec(softmax(v) - 0.5) * scale)`` given
        ``feats = concat(fc7, vec(q) * scale)``: the channel-1 minus channel-0 columns of its
        seg part times ``q`` (without autograd, derived once while the parameters are
        unchanged)."""
        fc_dim, plane = layer.in_features - self.mask_dim, self.mask_dim // 2

        def derive() -> Tuple[torch.Tensor, torch.Tensor]:
            w = layer.weight
            seg = w[:, fc_dim + plane :] - w[:, fc_dim : fc_dim + plane]
            return torch.cat([w[:, :fc_dim], seg], dim=1), layer.bias

        return linear_like(layer, feats, *derived_weights(layer, "seg_columns", derive))


@ROI_BOX_HEAD_REGISTRY.register()
class VGGDropoutFCHead(FastRCNNConvFCHead):
    """detectron2's ``FastRCNNConvFCHead`` with dropout after each fc layer's ReLU in training,
    as VGG-16's fc6/fc7 in Fast R-CNN (and so in the paper's refinement sub-network: drop6,
    drop7, p = 0.5). Parameters and their names are the parent's, so checkpoints load either
    way; ``MODEL.ROI_BOX_HEAD.FC_DROPOUT`` sets p (0 = the parent exactly).
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, fc_dropout: float = 0.5, **kwargs: Any):
        """
        Args:
            input_shape: (C, H, W) of the pooled features.
            fc_dropout: dropout probability after each fc ReLU in training.
            kwargs: ``FastRCNNConvFCHead``'s (``conv_dims``, ``fc_dims``, ``conv_norm``).
        """
        super().__init__(input_shape, **kwargs)
        if not 0.0 <= fc_dropout < 1.0:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.FC_DROPOUT must be in [0, 1), got {fc_dropout}")
        self.fc_dropout = fc_dropout

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret["fc_dropout"] = cfg.MODEL.ROI_BOX_HEAD.FC_DROPOUT
        return ret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (R, C, H, W) pooled features.

        Returns:
            (R, FC_DIM) features of the last fc layer.
        """
        for name, layer in self.named_children():
            x = layer(x)
            if name.startswith("fc_relu") and self.fc_dropout > 0:
                x = F.dropout(x, self.fc_dropout, self.training)
        return x


def build_r2ios_box_head(cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict[str, Any]:
    """The box branch of ``R2IOSROIHeads`` from a config: ``box_in_features``, ``box_pooler``
    and ``box_head`` as ``StandardROIHeads`` builds them, and the seg-aware ``box_predictor``.

    Args:
        cfg: the config (``MODEL.ROI_HEADS``, ``MODEL.ROI_BOX_HEAD``, ``MODEL.R2IOS``).
        input_shape: the backbone's output shapes.
    """
    # StandardROIHeads' pooler and box head (FastRCNNConvFCHead: fc1/fc2 = VGG fc6/fc7)
    # with the seg-aware predictor; built here, not by super(), which would also build
    # (and draw the random init of) a stock predictor only to discard it.
    in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    box = cfg.MODEL.ROI_BOX_HEAD
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        raise ValueError(f"ROI_HEADS.IN_FEATURES must share a channel count, got {channels}")
    res = box.POOLER_RESOLUTION
    pooler = ROIPooler(
        output_size=res,
        scales=tuple(1.0 / input_shape[f].stride for f in in_features),
        sampling_ratio=box.POOLER_SAMPLING_RATIO,
        pooler_type=box.POOLER_TYPE,
    )
    head = build_box_head(cfg, ShapeSpec(channels=channels.pop(), height=res, width=res))
    return {
        "box_in_features": in_features,
        "box_pooler": pooler,
        "box_head": head,
        "box_predictor": SegAwareFastRCNNOutputLayers(cfg, head.output_shape),
    }
