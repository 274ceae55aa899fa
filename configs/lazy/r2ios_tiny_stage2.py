# The demo's stage 2 (= configs/synthetic/r2ios_tiny_stage2.yaml): stage 1 fine-tuned with the
# reversible gate.
from .r2ios_tiny_stage1 import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.gate = True
model.roi_heads.test_gate = True
optimizer.lr = 0.0003
train.init_checkpoint = "demo_output/lazy/stage1/model_final.pth"
train.max_iter = 250
lr_multiplier.scheduler.milestones = [200]
lr_multiplier.warmup_length = 0.0
train.output_dir = "demo_output/lazy/stage2"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
