# R2-IOS on the two-branch VGG-16 (paper Sec. 3-4), as configs/Base-R2IOS-VGG16.yaml builds it:
# detection branch (stride 16) -> RoIPool 7x7 -> fc6/fc7 -> seg-aware predictor; segmentation
# branch (stride 8) -> scored, pooled 40x40 confidence maps -> instance-aware autoencoder;
# T = 4 recursive iterations. Proposals come from the data (selective search).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import FastRCNNConvFCHead

from r2ios_d2.modeling import (
    R2IOSRCNN,
    InstanceAwareAEMaskHead,
    R2IOSROIHeads,
    SegAwareFastRCNNOutputLayers,
    VGG16TwoBranch,
)

# GeneralizedRCNN whose pasted masks are binarised at mask_threshold (default: the ROI heads').
model = L(R2IOSRCNN)(
    backbone=L(VGG16TwoBranch)(
        width=1.0,  # channel multiplier; the ShapeSpecs below follow it (det 512w, seg 1024w)
        freeze_at=2,  # conv1, conv2 fixed, as Fast R-CNN fine-tunes VGG-16 from conv3_1
        norm="",
        out_features=["det", "seg"],
    ),
    proposal_generator=None,  # precomputed proposals from the data loader
    roi_heads=L(R2IOSROIHeads)(
        num_classes=20,
        batch_size_per_image=64,  # paper: 64 RoIs per image
        positive_fraction=0.25,  # paper: 25 % foreground (IoU >= 0.5)
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        proposal_append_gt=True,
        box_in_features=["det"],
        box_pooler=L(ROIPooler)(
            output_size=7, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIPool"
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=512, height=7, width=7),
            conv_dims=[],
            fc_dims=[4096, 4096],  # VGG-16 fc6, fc7
        ),
        box_predictor=L(SegAwareFastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=4096),
            num_classes="${..num_classes}",
            box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
            smooth_l1_beta=1.0,
            test_score_thresh=0.05,
            test_nms_thresh=0.3,
            test_topk_per_image=100,
            seg_aware=True,
            mask_dim=3200,  # 2 * mask_size**2
            seg_input="probs",
            seg_scale=0.05,
            seg_grad_scale=0.0,
            cls_init_std=0.01,
            box_init_std=0.001,
        ),
        mask_head=L(InstanceAwareAEMaskHead)(
            input_shape={"seg": ShapeSpec(channels=1024, stride=8)},
            in_features=["seg"],
            mask_size=40,
            ae_hidden_dim=512,
            pooler_sampling_ratio=2,
            init_std=0.001,
        ),
        num_iterations=4,
        test_num_iterations=4,
        gate=False,
        test_gate=False,
        gate_score="all",
        conf_loss_weight=1.0,
        grad_probe_period=50,
        mask_threshold=0.5,
    ),
    # torchvision VGG-16 expects RGB in [0,1] normalised by ImageNet mean/std: same in 0-255.
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
