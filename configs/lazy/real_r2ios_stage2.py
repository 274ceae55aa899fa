# R2-IOS stage 2 on real photographs (= configs/real/r2ios_vgg16_real_stage2.yaml): stage 1
# fine-tuned with the reversible gate for 100 iterations at 0.3x the lr.
from .real_r2ios_stage1 import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.gate = True
model.roi_heads.test_gate = True

optimizer.lr = 0.00003
train.init_checkpoint = "output/lazy/real_r2ios_stage1/model_final.pth"
train.max_iter = 300
lr_multiplier.scheduler.milestones = [240]
lr_multiplier.warmup_length = 0.0
train.output_dir = "output/lazy/real_r2ios_stage2"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
