# R2-IOS stage 1 on real photographs (= configs/real/r2ios_vgg16_real_stage1.yaml, where each
# budget choice is explained): the 20 PASCAL VOC classes of COCO photos, selective-search
# proposals, VGG-16 convs from HED (`make weights`) frozen and their features cached, AdamW,
# 1000 iterations on the CPU.
# Register the datasets on the command line:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/real_r2ios_stage1.py \
#     --coco-categories voc --register-coco tiny_coco_voc_train JSON IMAGES \
#     --register-coco coco_mini_voc_train JSON IMAGES \
#     --register-coco tiny_coco_voc_val JSON IMAGES \
#     'dataloader.train.dataset.proposal_dirs=[DIR1,DIR2]' \
#     'dataloader.test.dataset.proposal_dirs=[DIR3]'
import torch
from detectron2.layers import ShapeSpec

from .common import dataloader, lr_multiplier, optimizer, train
from .models.r2ios_vgg16 import model

_SEG_FC_DIM = 256  # random either way (HED has no fc): DeepLab's 1024 costs 4x more
_FC_DIM = 1024  # random fc6/fc7 (HED has no fc): 4x cheaper per RoI than VGG's 4096

model.backbone.freeze_at = 5  # conv1-conv5 fixed, their features computed once per photo
model.backbone.frozen_feature_cache_mb = 4096
model.backbone.frozen_feature_cache_dir = "output/lazy/real_frozen_features"
model.backbone.seg_fc_dim = _SEG_FC_DIM
_heads = model.roi_heads
_heads.box_pooler.pooler_type = "ROIAlignV2"  # objects are small at 320 px
_heads.box_pooler.sampling_ratio = 2
_heads.box_head.fc_dims = [_FC_DIM, _FC_DIM]
_heads.box_predictor.input_shape = ShapeSpec(channels=_FC_DIM)
_heads.mask_head.input_shape = {"seg": ShapeSpec(channels=_SEG_FC_DIM, stride=8)}
_heads.gate = False
_heads.test_gate = False  # "recursive_4": the outputs of iteration T
_heads.train_move_background = True  # as the demo's recipe
# HED's input convention (= detectron2's): BGR, 0-255, minus HED's mean, std 1.
model.pixel_mean = [104.00699, 116.66877, 122.67892]
model.pixel_std = [1.0, 1.0, 1.0]
model.input_format = "BGR"

for _loader, _short, _topk in ((dataloader.train, (320,), 2000), (dataloader.test, 320, 1000)):
    _loader.mapper.augmentations[0].short_edge_length = _short  # paper: 600
    _loader.mapper.augmentations[0].max_size = 544
    _loader.mapper.precomputed_proposal_topk = _topk
    _loader.num_workers = 1
dataloader.train.mapper.image_format = "BGR"
dataloader.train.dataset.names = ["tiny_coco_voc_train", "coco_mini_voc_train"]
dataloader.test.dataset.names = "tiny_coco_voc_val"

# AdamW (the paper's SGD does not learn masks in a few hundred steps), the paper's 0.1x lr for
# the pre-trained convs; HED has no fc, so fc6/fc7 learn at the new layers' lr.
optimizer._target_ = torch.optim.AdamW
del optimizer.momentum
optimizer.lr = 0.0001
optimizer.weight_decay = 0.0001
optimizer.params.pretrained_lr_factor = 0.1
optimizer.params.pretrained_prefixes = ["backbone.conv", "backbone.det_conv", "backbone.seg_conv"]

train.max_iter = 1000
lr_multiplier.scheduler.milestones = [800]
lr_multiplier.warmup_length = 50 / 1000
train.init_checkpoint = "checkpoints/vgg16_hed_r2ios_init.pth"  # make weights
train.device = "cpu"
train.checkpointer.period = 100000
train.output_dir = "output/lazy/real_r2ios_stage1"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
