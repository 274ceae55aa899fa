# R2-IOS from a random VGG-16 on real photographs (= configs/real/r2ios_vgg16_real_scratch.yaml):
# stage 1's recipe, every layer trained, as many iterations as both stages (200 + 100).
from .real_r2ios_stage1 import dataloader, lr_multiplier, model, optimizer, train

model.backbone.freeze_at = 0
model.backbone.frozen_feature_cache_mb = 0  # nothing frozen, nothing to cache
optimizer.params.pretrained_lr_factor = 1.0  # nothing is pre-trained

train.init_checkpoint = ""
train.max_iter = 200  # the CPU time of R2-IOS's two stages (every conv learns: ~8x a step)
lr_multiplier.scheduler.milestones = [160]
lr_multiplier.warmup_length = 20 / 200
train.output_dir = "output/lazy/real_r2ios_scratch"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
