# Baseline on real photographs (= configs/real/mask_rcnn_heads_vgg16_real.yaml): detectron2's
# stock Mask R-CNN heads (StandardROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers,
# MaskRCNNConvUpsampleHead: 4 convs of 256, 14x14 RoIAlignV2 -> 28x28 masks) on the "det" branch
# of the same pre-trained VGG-16, with R2-IOS's data, proposals, RoI sampling, box head and
# optimiser, for as many iterations as R2-IOS's two stages (200 + 100).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)

from .real_r2ios_stage1 import dataloader, lr_multiplier, model, optimizer, train

_r2ios = model.roi_heads
_r2ios_predictor = _r2ios.box_predictor
model.backbone.out_features = ["det"]
model.roi_heads = L(StandardROIHeads)(
    num_classes=_r2ios.num_classes,
    batch_size_per_image=_r2ios.batch_size_per_image,
    positive_fraction=_r2ios.positive_fraction,
    proposal_matcher=_r2ios.proposal_matcher,
    proposal_append_gt=_r2ios.proposal_append_gt,
    box_in_features=["det"],
    box_pooler=_r2ios.box_pooler,
    box_head=_r2ios.box_head,
    box_predictor=L(FastRCNNOutputLayers)(
        input_shape=_r2ios_predictor.input_shape,
        num_classes="${..num_classes}",
        box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
        smooth_l1_beta=_r2ios_predictor.smooth_l1_beta,
        test_score_thresh=_r2ios_predictor.test_score_thresh,
        test_nms_thresh=_r2ios_predictor.test_nms_thresh,
        test_topk_per_image=_r2ios_predictor.test_topk_per_image,
    ),
    mask_in_features=["det"],
    mask_pooler=L(ROIPooler)(
        output_size=14, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2"
    ),
    mask_head=L(MaskRCNNConvUpsampleHead)(
        input_shape=ShapeSpec(channels=512, height=14, width=14),
        num_classes="${..num_classes}",
        conv_dims=[256] * 5,  # 4 convs, then the deconv (as NUM_CONV 4, CONV_DIM 256)
    ),
)

train.max_iter = 1300
lr_multiplier.scheduler.milestones = [1040]
lr_multiplier.warmup_length = 50 / 1300
train.output_dir = "output/lazy/real_mask_rcnn_heads"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
