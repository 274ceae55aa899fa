# R2-IOS heads on a ResNet-50-FPN Mask R-CNN with RPN proposals (not in the paper;
# = configs/r2ios_R_50_FPN_rpn.yaml): detectron2's R-50-FPN backbone and RPN, the R2-IOS ROI
# heads with the mask head scoring and pooling FPN levels p2-p5.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead

from .common import dataloader, lr_multiplier, optimizer, train
from .models.r2ios_vgg16 import model

_FPN_LEVELS = ["p2", "p3", "p4", "p5"]

model.backbone = L(FPN)(
    bottom_up=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=2,
    ),
    in_features=["res2", "res3", "res4", "res5"],
    out_channels=256,
    top_block=L(LastLevelMaxPool)(),
)
model.proposal_generator = L(RPN)(
    in_features=["p2", "p3", "p4", "p5", "p6"],
    head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[32], [64], [128], [256], [512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[4, 8, 16, 32, 64],
        offset=0.0,
    ),
    anchor_matcher=L(Matcher)(
        thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    batch_size_per_image=256,
    positive_fraction=0.5,
    pre_nms_topk=(2000, 1000),
    post_nms_topk=(1000, 1000),
    nms_thresh=0.7,
)
_heads = model.roi_heads
_heads.box_in_features = _FPN_LEVELS
_heads.box_pooler.scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
_heads.box_pooler.pooler_type = "ROIAlignV2"
_heads.box_head.input_shape = ShapeSpec(channels=256, height=7, width=7)
_heads.box_head.fc_dims = [1024, 1024]
_heads.box_predictor.input_shape = ShapeSpec(channels=1024)
_heads.box_predictor.test_nms_thresh = 0.5
_heads.box_predictor.smooth_l1_beta = 0.0
_heads.mask_head.input_shape = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
_heads.mask_head.in_features = _FPN_LEVELS
_heads.gate = False
_heads.test_gate = True
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [1.0, 1.0, 1.0]
model.input_format = "BGR"

# RPN proposals: no precomputed ones.
dataloader.train.dataset.load_proposals = False
dataloader.test.dataset.load_proposals = False
for _loader in (dataloader.train, dataloader.test):
    _loader.mapper.load_proposals = False
    _loader.mapper.image_format = "BGR"
    del _loader.mapper.precomputed_proposal_topk
dataloader.train.mapper.augmentations[0].short_edge_length = (480, 512, 544, 576, 608, 640)
dataloader.train.total_batch_size = 16

optimizer.lr = 0.02
optimizer.weight_decay = 0.0001
optimizer.params.pretrained_lr_factor = 1.0
train.max_iter = 24000
lr_multiplier.scheduler.values = [1.0, 0.1, 0.01]
lr_multiplier.scheduler.milestones = [18000, 22000]
lr_multiplier.warmup_length = 1000 / 24000
train.init_checkpoint = ""  # ImageNet R-50 (a .pth of tensors, or a .pkl with allow_pickle_weights)
train.output_dir = "output/lazy/r2ios_R_50_FPN"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
