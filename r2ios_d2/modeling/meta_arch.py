"""``R2IOSRCNN``: detectron2's ``GeneralizedRCNN`` whose output masks are binarised at a set
threshold.

``GeneralizedRCNN`` pastes each predicted mask into the image and binarises it at 0.5
(``detector_postprocess``'s default) before any evaluator sees it, so a threshold set anywhere
else cannot change AP^r. This subclass changes only that step: the masks are binarised at
``mask_threshold`` (yacs: ``MODEL.R2IOS.MASK_THRESHOLD``, for R2-IOS and for detectron2's stock
heads alike). At 0.5 its outputs are ``GeneralizedRCNN``'s, bit for bit; parameters and
checkpoints are the same.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

__all__ = ["R2IOSRCNN"]


@META_ARCH_REGISTRY.register()
class R2IOSRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with ``pred_masks`` binarised at ``mask_threshold`` when pasted."""

    @configurable
    def __init__(self, *, mask_threshold: Optional[float] = None, **kwargs) -> None:
        """
        Args:
            mask_threshold: foreground where the pasted mask probability is >= this value, in
                (0, 1); None: the ROI heads' ``mask_threshold`` where they have one (R2-IOS),
                else 0.5 (as ``GeneralizedRCNN``).
            kwargs: as ``GeneralizedRCNN``.
        """
        super().__init__(**kwargs)
        if mask_threshold is None:
            mask_threshold = float(getattr(self.roi_heads, "mask_threshold", 0.5))
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        self.mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        ret = super().from_config(cfg)
        ret["mask_threshold"] = cfg.MODEL.R2IOS.MASK_THRESHOLD
        return ret

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """As ``GeneralizedRCNN.inference``; with ``do_postprocess`` the detections are
        mapped to each input's ``height`` x ``width`` and masks binarised at
        ``self.mask_threshold``.

        Returns:
            with ``do_postprocess``: ``[{"instances": Instances}]``, ``pred_masks`` (N, H, W)
            bool; otherwise the raw ``Instances`` (masks (N, 1, M, M) probabilities).
        """
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        out = []
        for result, inputs in zip(results, batched_inputs):
            height = inputs.get("height", result.image_size[0])
            width = inputs.get("width", result.image_size[1])
            out.append(
                {
                    "instances": detector_postprocess(
                        result, height, width, mask_threshold=self.mask_threshold
                    )
                }
            )
        return out
