"""Refinement sub-network predictor of R2-IOS: the segmentation-aware Fast R-CNN outputs.

The box head itself is detectron2's ``FastRCNNConvFCHead`` (``fc1`` / ``fc2`` = VGG fc6 / fc7
on 7x7 pooled ``det`` features). This predictor classifies and regresses from the
segmentation-aware feature ``concat(fc7, vec(v))`` (Sec. 3.2 of the paper), reusing
detectron2's ``FastRCNNOutputLayers`` for the layers, the box transform and the losses.
"""

from typing import Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from torch import nn

__all__ = ["SegAwareFastRCNNOutputLayers"]


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
        cls_init_std: float = 0.01,
        box_init_std: float = 0.001,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the box head output (fc7), e.g. ``ShapeSpec(channels=4096)``.
            seg_aware: concatenate the flattened mask logits ``v`` to fc7.
            mask_dim: length of ``vec(v)`` (2 * MASK_SIZE**2).
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
        self.seg_aware = seg_aware
        self.mask_dim = mask_dim
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
            cls_init_std=r.CLS_INIT_STD,
            box_init_std=r.BOX_INIT_STD,
        )
        return ret

    def forward(
        self, x: torch.Tensor, mask_logits: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (R, D) box head features (fc7), or (R, ...) flattened.
            mask_logits: (R, 2, M, M) mask logits ``v`` of the same boxes; required when
                ``seg_aware``, ignored otherwise.

        Returns:
            (R, K+1) class logits and (R, 4K) (or (R, 4) class-agnostic) box deltas.
        """
        x = torch.flatten(x, start_dim=1)
        if self.seg_aware:
            if mask_logits is None:
                raise ValueError("A seg-aware predictor needs the mask logits v")
            # v is not detached: the classification and box losses also train the
            # segmentation sub-network ("jointly optimized", Sec. 3.2).
            x = torch.cat([x, mask_logits.flatten(1)], dim=1)
        return super().forward(x)
