"""R2-IOS model parts, registered in detectron2's registries on import.

- ``build_r2ios_vgg_backbone`` (BACKBONE_REGISTRY): :class:`VGG16TwoBranch`;
- ``InstanceAwareAEMaskHead``, ``R2IOSConvMaskHead``, ``R2IOSFCMaskHead``
  (ROI_MASK_HEAD_REGISTRY; :class:`R2IOSMaskHead` is their base);
- :class:`SegAwareFastRCNNOutputLayers`, the seg-aware box predictor;
- ``VGGDropoutFCHead`` (ROI_BOX_HEAD_REGISTRY): fc6/fc7 with Fast R-CNN's dropout;
- ``R2IOSROIHeads`` (ROI_HEADS_REGISTRY);
- ``R2IOSRCNN`` (META_ARCH_REGISTRY): ``GeneralizedRCNN`` binarising masks at
  ``MODEL.R2IOS.MASK_THRESHOLD``;
- :func:`set_cpu_linear` / :class:`OneDNNLinear`: fully connected layers through oneDNN on
  CPU (``MODEL.R2IOS.CPU_LINEAR``), for any model;
- :class:`R2IOSROIAlign` / :func:`set_cpu_roi_align_grad` / :func:`set_cpu_roi_align_forward`:
  RoIAlign whose CPU backward and forward run as matrix products
  (``MODEL.R2IOS.CPU_ROI_ALIGN_GRAD``, ``CPU_MASK_POOL_FORWARD``), for any ``ROIPooler``.
"""

from .backbone_vgg import VGG16TwoBranch, build_r2ios_vgg_backbone
from .box_head import SegAwareFastRCNNOutputLayers, VGGDropoutFCHead
from .linear import OneDNNLinear, set_cpu_linear
from .mask_head import (
    InstanceAwareAEMaskHead,
    R2IOSConvMaskHead,
    R2IOSFCMaskHead,
    R2IOSMaskHead,
)
from .meta_arch import R2IOSRCNN
from .roi_align import R2IOSROIAlign, set_cpu_roi_align_forward, set_cpu_roi_align_grad
from .roi_heads import R2IOSROIHeads, reframe_masks

__all__ = [
    "VGG16TwoBranch",
    "build_r2ios_vgg_backbone",
    "SegAwareFastRCNNOutputLayers",
    "VGGDropoutFCHead",
    "InstanceAwareAEMaskHead",
    "R2IOSConvMaskHead",
    "R2IOSFCMaskHead",
    "R2IOSMaskHead",
    "R2IOSRCNN",
    "R2IOSROIHeads",
    "reframe_masks",
    "OneDNNLinear",
    "set_cpu_linear",
    "R2IOSROIAlign",
    "set_cpu_roi_align_forward",
    "set_cpu_roi_align_grad",
]
