"""Segmentation sub-network head of R2-IOS: confidence maps and instance-aware autoencoder.

The paper pools 40x40 features per box, scores them with 1x1 convs into 2-channel confidence
maps ``C`` and maps ``vec(C)`` through an autoencoder to the dominant-instance mask ``v``.
The 1x1 scoring conv is linear and RoIAlign is a (bilinear) linear average, so they commute:
this head scores the whole feature map once per image and pools 40x40 from the 2-channel map
("score first, pool after", DESIGN 2.2). Identical inside the image, ~C_in/2 times less memory
and compute per box, and the scored map is reused by every recursive iteration.
"""

import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn
from torch.nn import functional as F

__all__ = ["InstanceAwareAEMaskHead", "MASK_VARIANTS"]

logger = logging.getLogger(__name__)

MASK_VARIANTS = ("ae", "conv", "fc")


@ROI_MASK_HEAD_REGISTRY.register()
class InstanceAwareAEMaskHead(nn.Module):
    """Confidence maps ``C`` (2 x M x M, pooled from the scored feature map) and the mask
    logits ``v`` (2 x M x M; channel 0 = background, 1 = dominant foreground instance).

    Variants (``MODEL.R2IOS.MASK_VARIANT``, Table 2 of the paper):

    - ``"ae"``: ``v = ae_fc2(relu(ae_fc1(vec(C))))`` with a bottleneck of ``ae_hidden_dim``;
    - ``"conv"``: ``v = C`` (no autoencoder);
    - ``"fc"``: ``v = fc2(relu(fc1(vec(C))))`` with two ``2*M*M`` wide layers (no bottleneck).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        mask_size: int = 40,
        variant: str = "ae",
        ae_hidden_dim: int = 512,
        pooler_sampling_ratio: int = 2,
        pooler_type: str = "ROIAlignV2",
        init_std: float = 0.001,
    ):
        """
        Args:
            input_shape: ShapeSpec (channels, stride) of every feature map in ``in_features``.
            in_features: names of the feature maps to score and pool (one, or an FPN pyramid,
                in which case the pooler assigns each box to a level).
            mask_size: M, side of the confidence maps and masks.
            variant: ``"ae"``, ``"conv"`` or ``"fc"``.
            ae_hidden_dim: bottleneck width of the autoencoder (paper: 512).
            pooler_sampling_ratio: RoIAlign sampling ratio (0 = adaptive).
            pooler_type: a :class:`ROIPooler` type; must be a bilinear one ("ROIAlign",
                "ROIAlignV2") for scoring before pooling to be exact.
            init_std: std of the normal init of every weight (biases 0).
        """
        super().__init__()
        if variant not in MASK_VARIANTS:
            raise ValueError(f"MASK_VARIANT must be one of {MASK_VARIANTS}, got {variant!r}")
        if pooler_type not in ("ROIAlign", "ROIAlignV2"):
            # Max pooling does not commute with the 1x1 conv: scoring first would change it.
            raise ValueError(f"Score-then-pool needs a bilinear pooler, got {pooler_type!r}")
        self.in_features = list(in_features)
        channels = {input_shape[f].channels for f in self.in_features}
        if len(channels) != 1:
            raise ValueError(f"Mask in_features must share a channel count, got {channels}")
        self.mask_size = mask_size
        self.variant = variant
        self.score = nn.Conv2d(channels.pop(), 2, kernel_size=1)
        self.pooler = ROIPooler(
            output_size=mask_size,
            scales=tuple(1.0 / input_shape[f].stride for f in self.in_features),
            sampling_ratio=pooler_sampling_ratio,
            pooler_type=pooler_type,
        )
        dim = 2 * mask_size * mask_size
        if variant == "ae":
            self.ae_fc1 = nn.Linear(dim, ae_hidden_dim)
            self.ae_fc2 = nn.Linear(ae_hidden_dim, dim)
        elif variant == "fc":
            self.fc1 = nn.Linear(dim, dim)
            self.fc2 = nn.Linear(dim, dim)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.constant_(m.bias, 0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        r = cfg.MODEL.R2IOS
        in_features = [f for f in r.MASK_IN_FEATURES if f in input_shape]
        if len(in_features) != len(r.MASK_IN_FEATURES):
            # Lets a Mask R-CNN config switch to R2IOSROIHeads by ROI_HEADS.NAME alone.
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
            "variant": r.MASK_VARIANT,
            "ae_hidden_dim": r.AE_HIDDEN_DIM,
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
        boxes: List[Boxes],
        confidence_maps: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Mask logits ``v`` of every box.

        Args:
            scored: output of :meth:`score_maps`.
            boxes: one ``Boxes`` per image (R_i boxes, input-image coordinates).
            confidence_maps: if a list is given, the pooled confidence maps ``C``
                (R, 2, M, M) are appended to it (for inspection and tests).

        Returns:
            (R, 2, M, M) logits ``v`` (R = sum R_i, images in order); channel 1 = foreground.
        """
        c = self.pooler(scored, boxes)
        if confidence_maps is not None:
            confidence_maps.append(c)
        if self.variant == "conv":
            return c
        x = c.flatten(1)
        if self.variant == "ae":
            x = self.ae_fc2(F.relu(self.ae_fc1(x)))
        else:
            x = self.fc2(F.relu(self.fc1(x)))
        return x.view_as(c)

    @staticmethod
    def per_roi_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Pixel-wise 2-class cross-entropy, averaged over the pixels of each RoI.

        Args:
            logits: (R, 2, M, M) mask logits ``v``.
            targets: (R, M, M) bool or {0, 1} dominant-instance masks in the same frame.

        Returns:
            (R,) loss of each RoI.
        """
        if logits.numel() == 0:
            return logits.new_zeros((logits.shape[0],))
        return F.cross_entropy(logits, targets.long(), reduction="none").mean(dim=(1, 2))

    @staticmethod
    def foreground_probs(logits: torch.Tensor) -> torch.Tensor:
        """Softmax foreground probability of mask logits.

        Args:
            logits: (R, 2, M, M).

        Returns:
            (R, M, M) probabilities of channel 1.
        """
        return F.softmax(logits, dim=1)[:, 1]
