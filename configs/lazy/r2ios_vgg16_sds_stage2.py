# Paper Table 1 (SDS split), stage 2: stage 1 fine-tuned with the reversible gate for 100k
# iterations: "R2-IOS (ours)" (= configs/r2ios_vgg16_sds_stage2.yaml).
from .r2ios_vgg16_sds_stage1 import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.gate = True
model.roi_heads.test_gate = True

train.init_checkpoint = "output/lazy/r2ios_vgg16_sds_stage1/model_final.pth"
train.max_iter = 100000
lr_multiplier.scheduler.milestones = [75000]
train.output_dir = "output/lazy/r2ios_vgg16_sds_stage2"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
