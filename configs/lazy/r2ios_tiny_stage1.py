# The demo's stage 1 (= configs/synthetic/r2ios_tiny_stage1.yaml): a 1/8-width GroupNorm VGG-16
# trained from scratch on the built-in synthetic dataset with AdamW, on the CPU. Prepare the
# data and proposals first (`make demo` does, or r2ios_d2.data.synthetic's
# prepare_synthetic_benchmark).
import torch
from detectron2.layers import ShapeSpec

from .common import dataloader, lr_multiplier, optimizer, train
from .models.r2ios_vgg16 import model

_WIDTH = 0.125

model.backbone.width = _WIDTH
model.backbone.norm = "GN"
model.backbone.freeze_at = 0
_heads = model.roi_heads
_heads.num_classes = 5
_heads.positive_fraction = 0.5
_heads.box_pooler.pooler_type = "ROIAlignV2"
_heads.box_pooler.sampling_ratio = 1
_heads.box_head.input_shape = ShapeSpec(channels=int(512 * _WIDTH), height=7, width=7)
_heads.box_head.fc_dims = [256, 256]
_heads.box_predictor.input_shape = ShapeSpec(channels=256)
_heads.mask_head.input_shape = {"seg": ShapeSpec(channels=int(1024 * _WIDTH), stride=8)}
_heads.mask_head.init_std = 0.01
_heads.mask_head.pooler_sampling_ratio = 1
_heads.gate = False
_heads.test_gate = False
_heads.train_move_background = True
_heads.mask_threshold = 0.35  # test time: see the YAML
_heads.mask_from_output_box = True
_heads.output_mode = "per_class"
_heads.test_score = "mean"
_heads.refine_nms = 0.5

for _loader, _short in ((dataloader.train, (256,)), (dataloader.test, 256)):
    _loader.mapper.augmentations[0].short_edge_length = _short
    _loader.mapper.augmentations[0].max_size = 448
    _loader.num_workers = 1
dataloader.train.dataset.names = ["r2ios_synthetic_train"]
dataloader.test.dataset.names = "r2ios_synthetic_val"

optimizer._target_ = torch.optim.AdamW
del optimizer.momentum
optimizer.lr = 0.001
optimizer.weight_decay = 0.0001
optimizer.params.pretrained_lr_factor = 1.0

train.max_iter = 800
lr_multiplier.scheduler.milestones = [650]
lr_multiplier.warmup_length = 50 / 800
train.init_checkpoint = ""  # from scratch
train.device = "cpu"
train.checkpointer.period = 500
train.output_dir = "demo_output/lazy/stage1"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
