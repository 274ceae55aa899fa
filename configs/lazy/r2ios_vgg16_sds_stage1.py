# Paper Table 1 (SDS split, SBD annotations), stage 1: R2-IOS without the reversible gate,
# T = 4, 120k iterations (= configs/r2ios_vgg16_sds_stage1.yaml). Then run
# r2ios_vgg16_sds_stage2.py from its final weights.
from .common import dataloader, lr_multiplier, optimizer, train
from .models.r2ios_vgg16 import model

dataloader.train.dataset.names = ["voc_sds_train"]
dataloader.test.dataset.names = "voc_sds_val"

model.roi_heads.gate = False
model.roi_heads.test_gate = False  # "recursive_4": the outputs of iteration T

train.max_iter = 120000
lr_multiplier.scheduler.milestones = [90000]
train.output_dir = "output/lazy/r2ios_vgg16_sds_stage1"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
