# Shared parts of r2ios_d2's LazyConfigs (train with tools/lazyconfig_train_net.py): data with
# precomputed (selective-search) proposals in a stream that --resume continues exactly, the
# paper's SGD with the pre-trained-layer lr, the multi-step schedule and the train settings.
# Values are those of configs/Base-R2IOS-VGG16.yaml; the model lives in models/.
import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from r2ios_d2.data import PrecomputedProposalMapper, get_r2ios_dataset_dicts
from r2ios_d2.engine import build_r2ios_evaluator, r2ios_optimizer_params, resumable_train_loader

dataloader = OmegaConf.create()
dataloader.train = L(resumable_train_loader)(
    # proposal_dirs=[...] (one per name) overrides each dataset's metadata "proposal_dir".
    dataset=L(get_r2ios_dataset_dicts)(names=["voc_sds_train"], is_train=True),
    mapper=L(PrecomputedProposalMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(600,), max_size=1000, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),  # paper: horizontal flip with probability 0.5
        ],
        image_format="RGB",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        precomputed_proposal_topk=2000,
        proposal_min_size=2.0,
    ),
    total_batch_size=2,  # Fast R-CNN: 2 images x 64 RoIs per SGD mini-batch
    seed="${train.seed}",
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_r2ios_dataset_dicts)(names="voc_sds_val", is_train=False),
    mapper=L(PrecomputedProposalMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=600, max_size=1000)],
        image_format="${...train.mapper.image_format}",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        precomputed_proposal_topk=2000,
        proposal_min_size="${...train.mapper.proposal_min_size}",
    ),
    num_workers=4,
)
dataloader.evaluator = L(build_r2ios_evaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
    mask_threshold=0.5,
)

# SGD, lr 1e-3 for new layers and 1e-4 (factor 0.1) for the pre-trained ones (paper).
optimizer = L(torch.optim.SGD)(
    params=L(r2ios_optimizer_params)(
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        pretrained_prefixes=["backbone.", "roi_heads.box_head."],
        pretrained_lr_factor=0.1,
    ),
    lr=0.001,
    momentum=0.9,
    weight_decay=0.0005,
)

# lr factor over training: x0.1 at each milestone (iterations), after a linear warm-up over
# warmup_length (a fraction of train.max_iter).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1], milestones=[90000], num_updates="${train.max_iter}"
    ),
    warmup_length=0.0,
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output/lazy",
    init_checkpoint="checkpoints/vgg16_r2ios_init.pth",  # tools/convert_vgg16.py
    max_iter=120000,
    device="cuda",
    seed=0,  # per-step seeds and the data stream: exact --resume needs seed >= 0
    log_period=20,
    eval_period=0,  # 0: evaluate once, at the end
    checkpointer=dict(period=10000, max_to_keep=100),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False),
    allow_pickle_weights=False,  # MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS
    allow_shape_mismatch=False,  # MODEL.R2IOS.ALLOW_SHAPE_MISMATCH
    # Several processes: DIST.COLLECTIVE_TIMEOUT and DIST.LOST_PROCESS_GRACE (seconds).
    dist=dict(collective_timeout=1800, lost_process_grace=30),
)
